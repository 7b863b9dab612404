"""Nothing poisons, loses or runs: non-finite loss terms never reach the weights, a fault mid-save leaves the
previous model loadable, a half-written checkpoint is never resumed from, and loading runs no pickled code.

Faults are injected into the real writers (safetensors' ``save_file`` as transformers and PEFT call it, the
Trainer's ``TrainerState.save_to_json``) by a stand-in that writes half the file, then raises as a full disk does.
"""

import os
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, TrainerState, TrainingArguments

from conftest import text_batch, tiny_mdpd_model, tiny_text_model
from mdpd_peft import MDPDTrainer
from test_trainer import token_dataset

NAN_TOKEN = 7  # the token whose embedding row is made NaN


def poisoned(model):
    """``model`` with a NaN embedding row for ``NAN_TOKEN``: any batch holding it gives non-finite loss terms."""
    with torch.no_grad():
        model.get_input_embeddings().weight[NAN_TOKEN] = float("nan")
    return model


def trainables(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def trainer(output_dir, model=None, dataset=None, **arguments) -> MDPDTrainer:
    args = TrainingArguments(
        str(output_dir), per_device_train_batch_size=8, learning_rate=1e-2, report_to=[], use_cpu=True, disable_tqdm=True,
        seed=0, **{"max_steps": 4, "logging_steps": 2, **arguments},
    )  # fmt: skip
    return MDPDTrainer(model=model or tiny_mdpd_model(), args=args, train_dataset=dataset or token_dataset())


def half_written(write, when=lambda path: True):
    """A stand-in for safetensors' ``save_file`` (``write``) that writes half the file and raises where ``when(path)``."""

    def writer(tensors, filename, *args, **kwargs):
        write(tensors, filename, *args, **kwargs)
        if when(str(filename)):
            Path(filename).write_bytes(Path(filename).read_bytes()[: os.path.getsize(filename) // 2])
            raise OSError(28, "No space left on device (injected)")

    return writer


# ------------------------------------------------------------------------------------ non-finite losses


def test_a_nan_term_raises_under_the_trainer_naming_term_and_step_before_any_weight_changes(tmp_path):
    rows = token_dataset()
    rows = rows.map(lambda row: {"input_ids": [NAN_TOKEN, *row["input_ids"][1:]]})
    run = trainer(tmp_path, model=poisoned(tiny_mdpd_model()), dataset=rows)
    before = trainables(run.model)
    with pytest.raises(FloatingPointError, match=r"loss term\(s\) task=nan.* at training forward pass 1: .*\(Trainer step 1\)"):
        run.train()
    after = trainables(run.model)
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert all(p.grad is None for p in run.model.parameters())


def test_skip_leaves_the_weights_and_optimizer_untouched_and_logs_no_zero_loss(tmp_path):
    rows = token_dataset().map(lambda row: {"input_ids": [NAN_TOKEN, *row["input_ids"][1:]]})  # every batch is bad
    run = trainer(tmp_path, model=poisoned(tiny_mdpd_model(nonfinite_loss="skip")), dataset=rows)
    before = trainables(run.model)
    with pytest.warns(RuntimeWarning, match=r"task=nan.* Skipping this step"):
        run.train()
    after = trainables(run.model)
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert all(not state for state in run.optimizer.state.values())  # AdamW never stepped
    logged = [entry for entry in run.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(np.isnan(entry["loss"]) and entry["skipped_batches"] == 2 for entry in logged)
    assert not any(key.startswith("loss_") for entry in logged for key in entry)


def test_skip_in_a_plain_loop_gives_zero_gradients_and_says_so():
    model = poisoned(tiny_mdpd_model(nonfinite_loss="skip")).train()
    batch = text_batch()
    batch["input_ids"][0, 2] = NAN_TOKEN
    with pytest.warns(RuntimeWarning, match="Skipping this step"):
        output = model(**batch)
    assert output.mdpd_skipped and torch.isnan(output.loss)
    output.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not model(**text_batch()).mdpd_skipped  # a good batch trains as usual


def test_block_local_checks_each_layer_loss_before_its_backward():
    model = poisoned(tiny_mdpd_model(fading="block_local")).train()
    batch = text_batch()
    batch["input_ids"][:, 2] = NAN_TOKEN
    with pytest.raises(FloatingPointError, match=r"local_0=nan"):
        model(**batch)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------- faults while saving


def test_a_fault_while_saving_the_faded_model_keeps_the_previous_one(tmp_path):
    run = trainer(tmp_path, max_steps=2)
    run.train()
    folder = Path(run.save_faded_model())
    saved = {path.name: path.read_bytes() for path in folder.iterdir()}
    run.train()  # the model changes; a new save would differ
    with mock.patch("transformers.modeling_utils.safe_save_file", half_written(save_file)):
        with pytest.raises(OSError, match="injected"):
            run.save_faded_model()
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == saved
    assert sorted(path.name for path in tmp_path.iterdir() if "faded" in path.name) == ["faded"]  # no staging left
    model = AutoModelForSequenceClassification.from_pretrained(folder)  # loads, whole
    assert type(model).__name__ == "BertForSequenceClassification"


def test_a_fault_while_saving_the_adapter_keeps_the_previous_one(tmp_path):
    run = trainer(tmp_path, max_steps=2)
    run.train()
    run.save_model()
    weights = (tmp_path / "adapter_model.safetensors").read_bytes()
    expected = trainables(PeftModel.from_pretrained(tiny_text_model(), tmp_path))
    run.train()
    with mock.patch("peft.peft_model.safe_save_file", half_written(save_file)), pytest.raises(OSError, match="injected"):
        run.save_model()
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == weights
    assert not [path.name for path in tmp_path.iterdir() if "staging" in path.name]
    loaded = PeftModel.from_pretrained(tiny_text_model(), tmp_path)
    assert all(torch.equal(value, dict(loaded.named_parameters())[name]) for name, value in expected.items())


@pytest.mark.parametrize("fault", ["adapter weights", "trainer state"])
def test_a_checkpoint_cut_short_is_never_resumed_from(tmp_path, fault):
    """The run crashes while saving checkpoint-4; resume_from_checkpoint=True takes checkpoint-2 and ends where an
    uninterrupted run ends (step 4)."""
    save_to_json = TrainerState.save_to_json

    def crash_in_checkpoint_4(state, path):
        if "checkpoint-4" in path:
            Path(path).write_text('{"global_step": 4,')  # cut short
            raise OSError(28, "No space left on device (injected)")
        save_to_json(state, path)

    patches = {
        "adapter weights": mock.patch("peft.peft_model.safe_save_file", half_written(save_file, when=lambda path: "checkpoint-4" in path)),
        "trainer state": mock.patch.object(TrainerState, "save_to_json", crash_in_checkpoint_4),
    }
    crashed = trainer(tmp_path, save_steps=2)
    with patches[fault], pytest.raises(OSError, match="injected"):
        crashed.train()
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").exists()
    assert (tmp_path / "checkpoint-4").exists() == (fault == "trainer state")  # staged adapter files never arrived

    resumed = trainer(tmp_path, save_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.train(resume_from_checkpoint=True)
    skipped = [str(w.message) for w in caught if "Not resuming from" in str(w.message)]
    assert skipped == ([f"Not resuming from {tmp_path / 'checkpoint-4'}: no readable trainer_state.json, which the Trainer writes last (its save was cut short)."] if fault == "trainer state" else [])
    assert resumed.state.global_step == 4 and (tmp_path / "checkpoint-4" / "trainer_state.json").exists()


# ------------------------------------------------------------------------------------- no code on load


class WritesMarker:
    """A pickle that, when unpickled, creates the file ``path``: what a planted checkpoint file would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_planted_pickles_are_never_executed_on_load_or_resume(tmp_path):
    marker = tmp_path / "code-ran"
    run = trainer(tmp_path / "run", max_steps=2, save_steps=2)
    run.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    adapter = tmp_path / "adapter"  # a pickled adapter file where PEFT looks for one when safetensors is absent
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes((checkpoint / "adapter_config.json").read_bytes())
    torch.save(WritesMarker(marker), adapter / "adapter_model.bin")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save(WritesMarker(marker), checkpoint / name)

    with pytest.raises(Exception, match="Weights only load failed"):
        PeftModel.from_pretrained(tiny_text_model(), adapter)
    with pytest.raises(Exception, match="Weights only load failed"):
        trainer(tmp_path / "run", max_steps=4, save_steps=2).train(resume_from_checkpoint=True)
    assert not marker.exists()

    torch.load(adapter / "adapter_model.bin", weights_only=False)  # the control: the planted pickle is live
    assert marker.exists()
