"""Bad input fails early and says what to do: one table of cases across config fields, mismatched adapters,
corrupt files, bad batches and API misuse.

Each case builds what it needs and names the object the bad call must leave as it was (the caller's base
model, the PEFT model, or nothing for a config), the exception type, and a pattern its message must hold:
the argument and what it allows. The object is compared before and after: its modules, forward hooks,
gradient checkpointing flags, every tensor and ``config.problem_type``.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import TrainingArguments

from conftest import VOCAB, text_batch, tiny_mdpd_model, tiny_text_model, tiny_vit
from mdpd_peft import MDPDConfig, MDPDTrainer


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory) -> Path:
    """An MDPD adapter of the conftest's tiny BERT (4 layers, width 64, 3 labels), saved as PEFT saves it."""
    folder = tmp_path_factory.mktemp("adapter")
    tiny_mdpd_model().save_pretrained(folder)
    return folder


def copy_adapter(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def snapshot(module) -> dict:
    """What a bad call must not change."""
    return {
        "modules": [
            (name, type(m).__name__, len(m._forward_hooks), len(m._forward_pre_hooks), getattr(m, "gradient_checkpointing", None))
            for name, m in module.named_modules()
        ],
        "tensors": {name: tensor.detach().clone() for name, tensor in module.state_dict().items()},
        "problem_type": module.config.problem_type,
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["problem_type"] == before["problem_type"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, tensor in before["tensors"].items():
        torch.testing.assert_close(after["tensors"][name], tensor, rtol=0, atol=0, equal_nan=True, msg=name)


def config(**kwargs):
    return lambda tmp_path, adapter: (None, lambda: MDPDConfig(task_type="SEQ_CLS", **kwargs))


def changed_config(field: str, value):
    """A valid config changed after construction, attached to a fresh model."""

    def build(tmp_path, adapter):
        model, mdpd_config = tiny_text_model(), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4)
        setattr(mdpd_config, field, value)
        return model, lambda: get_peft_model(model, mdpd_config)

    return build


def attached(**kwargs):
    def build(tmp_path, adapter):
        model = tiny_text_model()
        return model, lambda: get_peft_model(model, MDPDConfig(task_type="SEQ_CLS", **kwargs))

    return build


def loaded_into(model_factory, edit=None):
    """``PeftModel.from_pretrained`` of (a copy of) the saved adapter, ``edit``-ed, into ``model_factory()``."""

    def build(tmp_path, adapter):
        folder = copy_adapter(adapter, tmp_path / "adapter")
        if edit is not None:
            edit(folder)
        model = model_factory()
        return model, lambda: PeftModel.from_pretrained(model, folder)

    return build


def bert(**kwargs):
    def factory():
        torch.manual_seed(0)
        settings = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, num_labels=3)
        return transformers.BertForSequenceClassification(transformers.BertConfig(**{**settings, **kwargs})).eval()

    return factory


def truncate(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def edit_config(**changes):
    def edit(folder: Path) -> None:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


def warmed_up(model):
    """``model`` after one training forward on a good batch: the first one drops PeftModel's input-grad hook (see
    ``MDPDModel._begin_forward``), which is not what the bad call that follows may change."""
    model.train()(**text_batch())
    return model


def peft_forward(batch_changes: dict, train: bool = False, family: str = "bert"):
    """A forward of an MDPD model of ``family`` on the conftest's batch with ``batch_changes`` (None deletes a key)."""

    def build(tmp_path, adapter):
        model = warmed_up(get_peft_model(tiny_text_model(family), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4)))
        model.train(train)
        batch = {**text_batch(), **batch_changes}
        batch = {key: value for key, value in batch.items() if value is not None}
        return model, lambda: model(**batch)

    return build


def vit_forward(tmp_path, adapter):
    model = get_peft_model(tiny_vit(), MDPDConfig(modules_to_save=["classifier"], reduction_factor=4))
    return model, lambda: model(pixel_values=torch.zeros(0, 1, 16, 16))


def nan_embedding_row(tmp_path, adapter):
    model = warmed_up(tiny_mdpd_model())
    with torch.no_grad():
        model.get_input_embeddings().weight[7] = float("nan")
    batch = text_batch()
    batch["input_ids"][1, 3] = 7
    return model, lambda: model(**batch)


def gates_of_unipt(tmp_path, adapter):
    model = tiny_mdpd_model(side_network="unipt")
    return model, lambda: model.base_model.gate_values()


def eval_path(tmp_path, adapter):
    model = tiny_mdpd_model()
    return model, lambda: model.base_model.set_eval_path("both")


def second_adapter_of_other_shape(tmp_path, adapter):
    model = get_peft_model(tiny_text_model(num_labels=2), MDPDConfig(task_type="SEQ_CLS", reduction_factor=4))
    return model, lambda: model.load_adapter(str(adapter), adapter_name="other")


def trainer_for(model_factory):
    def build(tmp_path, adapter):
        output_dir = tmp_path / "never-created"

        def action():
            MDPDTrainer(model=model_factory(), args=TrainingArguments(str(output_dir), report_to=[], use_cpu=True))

        def checked():  # Trainer.__init__ must not have run: it creates output_dir
            try:
                action()
            finally:
                assert not output_dir.exists()

        return None, checked

    return build


def resume_from(checkpoint_files: dict | None):
    """``MDPDTrainer.train(resume_from_checkpoint=...)``: a checkpoint folder holding ``checkpoint_files`` (name ->
    bytes), or ``True`` over an output dir without checkpoints when None."""

    def build(tmp_path, adapter):
        trainer = MDPDTrainer(model=tiny_mdpd_model(), args=TrainingArguments(str(tmp_path / "run"), report_to=[], use_cpu=True, max_steps=1))
        if checkpoint_files is None:
            return trainer.model, lambda: trainer.train(resume_from_checkpoint=True)
        folder = tmp_path / "run" / "checkpoint-3"
        folder.mkdir(parents=True)
        for name, content in checkpoint_files.items():
            (folder / name).write_bytes(content if content is not None else (adapter / name).read_bytes()[:100])
        return trainer.model, lambda: trainer.train(resume_from_checkpoint=str(folder))

    return build


NAN, INF = math.nan, math.inf
ALLOWED_RATIO = r"mask_ratio must be a float in \[0, 1\)"
CASES = [
    # ---- config fields: types, non-finite values, values out of range
    ("mask_ratio-str", config(mask_ratio="0.5"), ValueError, r"MDPDConfig.mask_ratio='0.5' is invalid: " + ALLOWED_RATIO),
    ("mask_ratio-None", config(mask_ratio=None), ValueError, r"MDPDConfig.mask_ratio=None .*" + ALLOWED_RATIO),
    ("backbone_task_loss_weight-None", config(backbone_task_loss_weight=None), ValueError, r"backbone_task_loss_weight=None .* finite float >= 0"),
    ("side_layers-int", config(side_layers=3), ValueError, r"side_layers=3 .* a non-empty list of layer indices"),
    ("side_layers-str-item", config(side_layers=[0, "1"]), ValueError, r"side_layers=\[0, '1'\] .* list of layer indices"),
    ("deep_layers_start-str", config(deep_layers_start="1"), ValueError, r"deep_layers_start='1' .* None or an integer >= 0"),
    ("deep_loss_weight-nan", config(deep_loss_weight=NAN), ValueError, r"deep_loss_weight=nan .* finite float >= 0"),
    ("logits_loss_weight-inf", config(logits_loss_weight=INF), ValueError, r"logits_loss_weight=inf .* finite float >= 0"),
    ("shallow_loss_weight-negative", config(shallow_loss_weight=-1e-5), ValueError, r"shallow_loss_weight=-1e-05 .* finite float >= 0"),
    ("gate_temperature-nan", config(gate_temperature=NAN), ValueError, r"gate_temperature=nan .* finite float > 0"),
    ("gate_init-nan", config(gate_init=NAN), ValueError, r"gate_init=nan .* a finite float"),
    ("gate_init-str", config(gate_init="0"), ValueError, r"gate_init='0' .* a finite float"),
    ("reduction_factor-bool", config(reduction_factor=True), ValueError, r"reduction_factor=True .* an integer >= 1"),
    ("reduction_factor-str", config(reduction_factor="8"), ValueError, r"reduction_factor='8' .* an integer >= 1"),
    ("fading_interval-float", config(fading_interval=1.5), ValueError, r"fading_interval=1.5 .* an integer >= 1"),
    ("aligner_rank-float", config(aligner_rank=4.0), ValueError, r"aligner_rank=4.0 .* None or an integer >= 1"),
    ("dtl_rank-zero", config(dtl_rank=0), ValueError, r"dtl_rank=0 .* an integer >= 1"),
    ("dtl_conv_kernel-even", config(dtl_conv_kernel=2), ValueError, r"dtl_conv_kernel=2 .* an odd integer >= 1"),
    ("dtl_inject_from-negative", config(dtl_inject_from=-1), ValueError, r"dtl_inject_from=-1 .* None or an integer >= 0"),
    ("side_network-unknown", config(side_network="nope"), ValueError, r"side_network='nope' .* one of \('ladder'"),
    ("side_network-None", config(side_network=None), ValueError, r"side_network=None .* one of \('ladder'"),
    ("eval_path-None", config(eval_path=None), ValueError, r"eval_path=None .* one of \('backbone', 'side'\)"),
    ("nonfinite_loss-unknown", config(nonfinite_loss="ignore"), ValueError, r"nonfinite_loss='ignore' .* one of \('raise', 'skip'\)"),
    ("target_modules-int", config(target_modules=3), ValueError, r"target_modules=3 .* a list of module names or a regex"),
    ("layers_path-int", config(layers_path=5), ValueError, r"layers_path=5 .* a dotted module path"),
    # ---- configs changed after construction: checked again when attached, before the model changes
    ("changed-mask_ratio", changed_config("mask_ratio", 1.5), ValueError, r"mask_ratio=1.5 .*" + ALLOWED_RATIO),
    ("changed-side_network", changed_config("side_network", "nope"), ValueError, r"side_network='nope' .* one of"),
    ("changed-gate_temperature", changed_config("gate_temperature", 0), ValueError, r"gate_temperature=0 .* > 0"),
    ("changed-deep_loss_weight", changed_config("deep_loss_weight", NAN), ValueError, r"deep_loss_weight=nan"),
    # ---- values that depend on the model
    ("side_layers-out-of-range", attached(side_layers=[7]), ValueError, r"side_layers=\[7\] .* \[0, 3\] \(the model has 4 layers\)"),
    ("reduction_factor-wider-than-model", attached(reduction_factor=128), ValueError, r"reduction_factor=128 .* \[1, 64\]"),
    # ---- mismatched adapters: refused before PEFT wraps anything
    ("adapter-other-num_labels", loaded_into(bert(num_labels=2)), ValueError, r"head_outputs=3, but this model has head_outputs=2.*num_labels=3"),
    ("adapter-fewer-layers", loaded_into(bert(num_hidden_layers=2)), ValueError, r"num_layers=4, but this model has num_layers=2"),
    ("adapter-other-width", loaded_into(bert(hidden_size=32)), ValueError, r"layer_widths=\[64, 64, 64, 64\], but this model has layer_widths=\[32"),
    ("second-adapter-other-num_labels", second_adapter_of_other_shape, ValueError, r"head_outputs=3, but this model has head_outputs=2"),
    # ---- corrupt or incomplete files
    ("adapter-truncated-weights", loaded_into(tiny_text_model, truncate), ValueError, r"adapter_model.safetensors cannot be read .* cut short"),
    ("adapter-missing-weights", loaded_into(tiny_text_model, lambda f: (f / "adapter_model.safetensors").unlink()), FileNotFoundError, r"no adapter_model.safetensors"),
    ("adapter-config-bad-value", loaded_into(tiny_text_model, edit_config(mask_ratio=1.5)), ValueError, r"mask_ratio=1.5 .*" + ALLOWED_RATIO),
    ("adapter-config-bad-type", loaded_into(tiny_text_model, edit_config(side_layers="all")), ValueError, r"side_layers='all' .* list of layer indices"),
    ("resume-truncated-checkpoint", resume_from({"trainer_state.json": b"{}", "adapter_model.safetensors": None}), ValueError, r"checkpoint-3' cannot be resumed from: adapter_model.safetensors cannot be read"),
    ("resume-checkpoint-without-state", resume_from({"adapter_model.safetensors": None}), ValueError, r"checkpoint-3' cannot be resumed from: no readable trainer_state.json"),
    ("resume-true-without-checkpoints", resume_from(None), ValueError, r"resume_from_checkpoint=True, but .* holds no complete checkpoint"),
    # ---- bad batches: caught in the hooks, before transformers fails somewhere deep (or switches problem_type)
    ("batch-size-0", peft_forward({"input_ids": torch.zeros(0, 16, dtype=torch.long), "attention_mask": None, "labels": None}), ValueError, r"input_ids has batch size 0"),
    ("sequence-longer-than-positions", peft_forward({"input_ids": torch.ones(2, 65, dtype=torch.long), "attention_mask": None, "labels": None}), ValueError, r"input_ids has 65 tokens .* position table holds 64"),
    ("roberta-sequence-longer-than-positions", peft_forward({"input_ids": torch.full((2, 63), 5), "attention_mask": None, "labels": None}, family="roberta"), ValueError, r"63 tokens .* holds 62: truncate"),
    ("negative-token-ids", peft_forward({"input_ids": torch.full((2, 8), -1), "attention_mask": None, "labels": None}), ValueError, r"input_ids must be token ids in \[0, 119\] .* \[-1, -1\]"),
    ("token-ids-past-vocab", peft_forward({"input_ids": torch.full((2, 8), VOCAB), "attention_mask": None, "labels": None}), ValueError, r"input_ids must be token ids in \[0, 119\]"),
    ("float-class-labels", peft_forward({"labels": torch.zeros(6)}, train=True), ValueError, r"labels are torch.float32 of shape \(6,\), but the model has num_labels=3: .*labels.long\(\)"),
    ("labels-out-of-range", peft_forward({"labels": torch.full((6,), 3)}, train=True), ValueError, r"labels must be class ids in \[0, 2\] .* \[3, 3\]"),
    ("training-forward-without-labels", peft_forward({"labels": None}, train=True), ValueError, r"needs the task's targets: pass labels="),
    ("image-batch-size-0", vit_forward, ValueError, r"pixel_values has batch size 0"),
    ("nan-embedding-row", nan_embedding_row, FloatingPointError, r"loss term\(s\) .*task=nan.* at training forward pass 2"),
    # ---- API misuse
    ("gate_values-of-unipt", gates_of_unipt, ValueError, r"side_network='unipt' .* 'ladder' for gate_values\(\)"),
    ("set_eval_path-unknown", eval_path, ValueError, r"eval_path='both' .* one of \('backbone', 'side'\)"),
    ("trainer-plain-model", trainer_for(tiny_text_model), TypeError, r"get_peft_model\(model, MDPDConfig\(...\)\); got BertForSequenceClassification"),
    ("trainer-lora-model", trainer_for(lambda: get_peft_model(tiny_text_model(), LoraConfig(task_type="SEQ_CLS"))), TypeError, r"got PeftModelForSequenceClassification"),
]


@pytest.mark.parametrize("build, error, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_fails_early_naming_the_argument_and_what_it_allows(tmp_path, saved_adapter, build, error, message):
    subject, action = build(tmp_path, saved_adapter)
    before = snapshot(subject) if subject is not None else None
    with pytest.raises(error, match=message):
        action()
    if subject is not None:
        assert_unchanged(before, snapshot(subject))


def test_the_table_covers_every_kind_of_bad_input():
    assert len(CASES) >= 40 and len({case[0] for case in CASES}) == len(CASES)
