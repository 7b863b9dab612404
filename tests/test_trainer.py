"""MDPDTrainer: loss-term logging, two-path evaluation, exact resume, faded model + card, Hub push without network."""

import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset
from huggingface_hub import HfApi, RepoUrl
from transformers import AutoTokenizer, TrainingArguments

from conftest import VOCAB, assert_loads_without_mdpd_peft, text_batch, tiny_mdpd_model
from mdpd_peft import MDPDTrainer


def token_dataset(rows: int = 48, length: int = 12, seed: int = 0) -> Dataset:
    generator = np.random.RandomState(seed)
    mask = np.ones((rows, length), dtype=np.int64)
    mask[::3, length // 2 :] = 0  # every third row padded
    return Dataset.from_dict(
        {
            "input_ids": generator.randint(5, VOCAB, (rows, length)).tolist(),
            "attention_mask": mask.tolist(),
            "labels": generator.randint(0, 3, rows).tolist(),
        }
    )


def accuracy(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def make_trainer(output_dir, max_steps: int = 4, processing_class=None, side_learning_rate=None, **arguments) -> MDPDTrainer:
    args = TrainingArguments(
        str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-2,
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **arguments,
    )
    return MDPDTrainer(
        model=tiny_mdpd_model(),
        args=args,
        train_dataset=token_dataset(),
        eval_dataset=token_dataset(rows=32, seed=1),
        compute_metrics=accuracy,
        processing_class=processing_class,
        side_learning_rate=side_learning_rate,
    )


def trainable_state(trainer: MDPDTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_training_logs_every_loss_term_and_the_gates(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        for name in ("loss_task", "loss_shallow", "loss_deep", "loss_logits", "gate_0", "gate_3"):
            assert np.isfinite(entry[name]), name
        assert 0 < entry["gate_0"] < 1
        # each term is logged times its weight: they add up to the loss
        terms = ("loss_task", "loss_shallow", "loss_deep", "loss_logits", "loss_backbone_task")
        assert sum(entry[name] for name in terms) == pytest.approx(entry["loss"], rel=1e-5)


def test_evaluate_reports_the_faded_and_the_side_path(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    metrics = trainer.evaluate()
    for name in ("eval_faded_loss", "eval_faded_accuracy", "eval_side_loss", "eval_side_accuracy"):
        assert name in metrics
    assert trainer.model.base_model.peft_config["default"].eval_path == "backbone"  # restored afterwards

    # The faded figure is the faded model's: fade a copy and measure it directly.
    faded = trainer.save_faded_model(tmp_path / "faded")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(faded).eval()
    data = token_dataset(rows=32, seed=1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])).logits
    expected = (logits.argmax(-1) == torch.tensor(data["labels"])).float().mean().item()
    assert metrics["eval_faded_accuracy"] == pytest.approx(expected)


def test_side_learning_rate_gives_the_side_network_its_own_rate_on_the_same_schedule(tmp_path):
    trainer = make_trainer(tmp_path, side_learning_rate=1e-3)  # args.learning_rate 1e-2: the faded parameters'
    trainer.train()
    tuner = trainer.model.base_model
    side = {id(p) for p in [*tuner.mdpd_side.parameters(), *tuner.mdpd_distill.parameters()]}
    groups = trainer.optimizer.param_groups
    assert sorted(id(p) for group in groups for p in group["params"]) == sorted(id(p) for p in trainer.model.parameters() if p.requires_grad)
    rates = set()
    for group in groups:
        (in_side,) = {id(p) in side for p in group["params"]}  # no group mixes the two
        assert group["initial_lr"] == (1e-3 if in_side else 1e-2)
        rates.add((in_side, group["weight_decay"]))
    assert rates == {(True, 0.0), (False, 0.0)}  # both kinds present (weight decay 0 in these arguments)
    assert len({round(group["lr"] / group["initial_lr"], 12) for group in groups}) == 1  # one schedule scales both
    assert trainer.state.log_history[0]["learning_rate"] == pytest.approx(1e-2 * 3 / 4)  # the faded parameters' rate is logged (the side's: 7.5e-4)
    with pytest.raises(ValueError, match="side_learning_rate.*positive float"):
        make_trainer(tmp_path / "bad", side_learning_rate=0.0)


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    uninterrupted = make_trainer(tmp_path / "a", max_steps=6, save_steps=3)
    uninterrupted.train()
    expected = trainable_state(uninterrupted)

    resumed = make_trainer(tmp_path / "b", max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    actual = trainable_state(resumed)
    assert actual.keys() == expected.keys()
    assert any("mdpd_side" in name for name in actual) and any("mdpd_copies" in name for name in actual)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_save_faded_model_writes_model_tokenizer_and_card(tmp_path, minilm_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    trainer = make_trainer(tmp_path, processing_class=tokenizer)
    trainer.train()
    trainer.evaluate()
    note = "These weights were fine-tuned for saliency before: not the original checkpoint."
    folder = Path(trainer.save_faded_model(datasets=["rotten_tomatoes"], base_model_note=note))
    assert folder == tmp_path / "faded"
    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= files
    assert not any(name.startswith("adapter_") for name in files)

    card = (folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers"
    assert {"mdpd", "side-network-distillation"} <= set(metadata["tags"])
    assert metadata["datasets"] == ["rotten_tomatoes"]
    assert metadata["metrics"] == ["accuracy"]
    assert "base_model" not in metadata  # the base was built in memory, not loaded from the Hub
    assert "r = 4" in card and "λ = 0.5" in card and "side network `ladder`" in card and "(an LST ladder)" in card
    assert "eval_faded_accuracy" in card and "eval_side_accuracy" in card
    assert "trainable parameters" in card and "MiB" in card
    assert f"## Base model\n\n{note}\n" in card


def test_push_to_hub_uploads_the_faded_model_that_loads_without_mdpd_peft(tmp_path):
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploads.append({"repo_id": repo_id, "files": sorted(p.name for p in Path(folder_path).iterdir()), **kwargs})
        shutil.copytree(folder_path, tmp_path / "hub" / repo_id)  # what the Hub would now serve
        return "https://huggingface.co/user/tiny-mdpd/commit/0"

    def no_commit(self, *args, **kwargs):
        raise AssertionError("create_commit must not be reached: upload_folder is the only upload")

    with (
        mock.patch.object(HfApi, "create_repo", return_value=RepoUrl("https://huggingface.co/user/tiny-mdpd")) as create_repo,
        mock.patch.object(HfApi, "upload_folder", upload_folder),
        mock.patch.object(HfApi, "create_commit", no_commit),
    ):
        trainer = make_trainer(tmp_path / "run", hub_model_id="user/tiny-mdpd")
        trainer.train()
        trainer.evaluate()
        trainer.push_to_hub(datasets="rotten_tomatoes")

    assert create_repo.call_args.args[0] == "user/tiny-mdpd"
    (upload,) = uploads
    assert upload["repo_id"] == "user/tiny-mdpd"
    assert upload["files"] == ["README.md", "config.json", "model.safetensors"]
    assert "adapter_config.json" in upload["delete_patterns"]

    peft_model = trainer.model.eval()
    batch = text_batch(num_labels=3)
    with torch.no_grad():
        expected = peft_model(**batch).logits
    pushed = tmp_path / "hub" / "user" / "tiny-mdpd"
    assert assert_loads_without_mdpd_peft(pushed, batch, expected, "AutoModelForSequenceClassification") == "BertForSequenceClassification"


def test_trainer_rejects_a_model_without_an_mdpd_adapter(tmp_path):
    from conftest import tiny_text_model

    with pytest.raises(TypeError, match=r"get_peft_model\(model, MDPDConfig"):
        MDPDTrainer(model=tiny_text_model(), args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))


def test_teacher_logits_fade_the_backbone_against_a_given_teacher_without_the_side_network(tmp_path):
    """``MDPDTrainer(teacher_logits=...)``: the fade phase alone, Eq. 3's teacher the given logits (a row per training
    example); the side network and distillation modules stay as they were, the LayerNorm copies and head learn."""
    data = token_dataset(rows=16)
    teacher = torch.randn(len(data), 3, generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=2, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    trainer = MDPDTrainer(model=tiny_mdpd_model(), args=args, train_dataset=data, teacher_logits=teacher)
    side = {id(p) for p in trainer._mdpd_model().side_parameters()}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and not any(id(after[n]) in side for n in moved)  # only the faded parameters learned
    assert all(p.requires_grad for p in trainer._mdpd_model().side_parameters())  # frozen for the run only
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all({k for k in entry if k.startswith("loss_")} == {"loss_logits", "loss_backbone_task"} for entry in logged)
    assert not any(k.startswith("gate_") for entry in logged for k in entry)  # nor are its gates logged
    evaluated = trainer.evaluate(data)
    assert "eval_faded_loss" in evaluated and not any(k.startswith("eval_side_") for k in evaluated)  # the side network is not part of the run
    with pytest.raises(ValueError, match="one per train_dataset example"):
        MDPDTrainer(model=tiny_mdpd_model(), args=args, train_dataset=data, teacher_logits=teacher[:-1])
    with pytest.raises(ValueError, match="teacher_logits"):
        MDPDTrainer(model=tiny_mdpd_model(), args=args, train_dataset=data, teacher_logits=[[0.0, 1.0, 0.0]] * len(data))
    with pytest.raises(ValueError, match="num_labels=3"):
        MDPDTrainer(model=tiny_mdpd_model(), args=args, train_dataset=data, teacher_logits=teacher[:, :2])
