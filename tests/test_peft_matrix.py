"""Our version of PEFT's generic test matrix (``tests/testing_common.py`` ``PeftCommonTester``,
``tests/test_custom_models.py``, ``tests/test_config.py``), for the two methods this package registers,
``mdpd`` (faded at the end) and ``dtl`` (kept at inference), on tiny BERT, RoBERTa and ViT.

Every check that applies to a side-network method has a test here, named after PEFT's: save/load
(safetensors, selected adapters, ``low_cpu_mem_usage``, several adapters, adapter names), merge /
unmerge / idempotent merge / ``safe_merge`` (also refusing NaN) / unload, disable / enable (also while
merged), add / set / delete adapters, ``requires_grad`` switches (``set_requires_grad``,
``disable_adapter_layers``, inference mode), ``autocast_adapter_dtype``, training updates only the
trainables, gradient checkpointing, ``in_features`` / ``out_features``, ``inputs_embeds``, model cards.
Adapters are perturbed (PEFT's ``init_weights=False``) so that adapter and base outputs differ.

PEFT checks that do not apply, and why:
- merging for ``dtl``: DTL adds a sum over blocks that no weight can hold; every merge raises (tested);
- ``test_merge_layers_multi`` / several adapters merged or active at once: a norm is replaced by one
  trained copy and one side network runs per forward, so MDPD refuses to merge two adapters (tested) and
  mixed adapter batches (``adapter_names=`` in forward) have no meaning;
- ``add_weighted_adapter`` and its variants: arithmetic on low-rank deltas; MDPD holds copies, not deltas;
- ``generate`` and its variants, prompt learning, ``inputs_embeds`` for decoders: encoders only;
- ``bias`` options and the bias warnings: neither config has a ``bias`` field;
- ``trainable_token_indices``, embedding-layer targets and resized embeddings, tied weights: neither
  method targets embeddings;
- ``rank_pattern``/``alpha_pattern``, DoRA, LoRA conversion and the per-method variants (VeRA, BOFT, ...):
  LoRA-family options;
- ``device_map`` / multi-device placement and ``merge_layers_fp16`` on an accelerator: no GPU here
  (``autocast_adapter_dtype`` is checked in bfloat16 on CPU instead);
- pickle serialisation (``safe_serialization=False``): covered by the no-pickle test of the issue's part B.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper

from mdpd_peft import DTLConfig, MDPDConfig
from mdpd_peft.layer import MDPDLayer
from conftest import image_batch, text_batch, tiny_text_model, tiny_vit, train_steps, without_dropout

METHODS = ("mdpd", "dtl")
FAMILIES = ("bert", "roberta", "vit")
CASES = [(method, family) for method in METHODS for family in FAMILIES]
SIDE_CONTAINERS = {"mdpd": ("mdpd_side", "mdpd_distill"), "dtl": ("dtl_csn",)}


def base_model(family: str, dtype: torch.dtype = torch.float32):
    model = tiny_vit() if family == "vit" else tiny_text_model(family)
    return without_dropout(model).to(dtype)


def config_for(method: str, family: str, **kwargs):
    task = dict(modules_to_save=["classifier"]) if family == "vit" else dict(task_type="SEQ_CLS")
    if method == "mdpd":
        return MDPDConfig(reduction_factor=4, **task, **kwargs)
    return DTLConfig(**task, **kwargs)


def batch_for(family: str) -> dict:
    return image_batch() if family == "vit" else text_batch()


def inputs_of(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def perturb(model, adapter_name: str = "default", seed: int = 0) -> None:
    """Move every weight of the adapter away from its initial value (PEFT tests with ``init_weights=False``)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if f".{adapter_name}." in f".{name}." and parameter.is_floating_point():
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


def peft_model(method: str, family: str, adapter_name: str = "default", **kwargs):
    model = get_peft_model(base_model(family), config_for(method, family), adapter_name=adapter_name, **kwargs)
    perturb(model, adapter_name)
    return model.eval()


def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs_of(batch)).logits


def base_logits(family: str) -> torch.Tensor:
    return logits(base_model(family).eval(), batch_for(family))


def adapter_parameters(model, adapter_name: str) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if f".{adapter_name}." in f".{n}."}


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def side_parameters(model, method: str, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    tuner = model.base_model
    return {
        f"{container}.{n}": p for container in SIDE_CONTAINERS[method] for n, p in getattr(tuner, container)[adapter_name].named_parameters()
    }


def mdpd_only(method: str) -> None:
    if method != "mdpd":
        pytest.skip("dtl cannot be merged (checked by test_merge_and_unload)")


# ------------------------------------------------------------------------------------------- attributes


@pytest.mark.parametrize("family", FAMILIES)
def test_in_features_out_features_exposed(family):
    """PEFT's layers expose the wrapped module's sizes; a norm's width for both (dtl wraps no layer)."""
    model = peft_model("mdpd", family)
    layers = [m for m in model.modules() if isinstance(m, MDPDLayer)]
    assert layers and all((m.in_features, m.out_features) == (64, 64) for m in layers)


@pytest.mark.parametrize("method, family", [(method, family) for method, family in CASES if family != "vit"])
def test_prepare_for_training(method, family):
    """PEFT's check: right after ``get_peft_model`` the input embeddings' output does not require grad (the
    default fading="checkpointed" turns checkpointing on only at the first training pass, so PeftModel adds no
    input-grad hook); a training pass then still reaches the norm copies."""
    model = get_peft_model(base_model(family), config_for(method, family))
    batch = batch_for(family)
    assert not model.get_input_embeddings()(batch["input_ids"]).requires_grad
    model.train()
    model(**batch).loss.backward()
    assert model.get_base_model().is_activation_checkpointing == (method == "mdpd")
    assert not model.get_input_embeddings()(batch["input_ids"]).requires_grad
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and ("mdpd_copies" in n or "modules_to_save" in n))


@pytest.mark.parametrize("method, family", CASES)
def test_adapter_name_makes_no_difference(method, family):
    batch = batch_for(family)
    torch.manual_seed(0)
    first = peft_model(method, family)
    torch.manual_seed(0)
    other = peft_model(method, family, adapter_name="other")
    torch.testing.assert_close(logits(first, batch), logits(other, batch), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_embeds_works(family):
    """An encoder called with ``inputs_embeds`` instead of ids trains through the side network too."""
    if family == "vit":
        pytest.skip("ViT takes pixel_values only")
    model = peft_model("mdpd", family)
    batch = batch_for(family)
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach()
    model.train()
    output = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert torch.isfinite(output.loss) and {"task", "shallow", "deep"} <= set(output.mdpd_losses)


# ----------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("method, family", CASES)
def test_save_pretrained_safetensors_round_trip(method, family, tmp_path):
    model = peft_model(method, family)
    model.save_pretrained(tmp_path)
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in tmp_path.iterdir()}
    assert not (tmp_path / "adapter_model.bin").exists()
    loaded = PeftModel.from_pretrained(base_model(family), tmp_path).eval()
    saved, restored = adapter_parameters(model, "default"), adapter_parameters(loaded, "default")
    assert saved.keys() == restored.keys() and all(torch.equal(saved[n], restored[n]) for n in saved)
    batch = batch_for(family)
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("method, family", CASES)
def test_load_model_low_cpu_mem_usage(method, family, tmp_path):
    """Loading onto meta placeholders gives the same model as loading plainly (PeftModel and load_adapter)."""
    model = peft_model(method, family)
    model.save_pretrained(tmp_path)
    batch = batch_for(family)
    loaded = PeftModel.from_pretrained(base_model(family), tmp_path, low_cpu_mem_usage=True).eval()
    assert not any(p.is_meta for p in loaded.parameters())
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), rtol=0, atol=0)
    loaded.load_adapter(tmp_path, adapter_name="again", low_cpu_mem_usage=True)
    loaded.set_adapter("again")
    assert not any(p.is_meta for p in loaded.parameters())
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("method, family", CASES)
def test_save_pretrained_selected_adapters_and_load_multiple(method, family, tmp_path):
    model = peft_model(method, family)
    model.add_adapter("other", config_for(method, family))
    perturb(model, "other", seed=1)
    batch = batch_for(family)
    expected = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        expected[name] = logits(model, batch)
    assert not torch.allclose(expected["default"], expected["other"])

    model.save_pretrained(tmp_path / "one", selected_adapters=["other"])
    assert [p.name for p in (tmp_path / "one").iterdir() if p.is_dir()] == ["other"]
    model.save_pretrained(tmp_path / "all")
    loaded = PeftModel.from_pretrained(base_model(family), tmp_path / "all").eval()
    loaded.load_adapter(tmp_path / "all" / "other", adapter_name="other")
    for name in ("default", "other"):
        loaded.set_adapter(name)
        torch.testing.assert_close(logits(loaded, batch), expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("method, family", CASES)
def test_inference_mode_load_has_no_trainables_and_records_no_graph(method, family, tmp_path):
    """``is_trainable=False``: nothing requires grad and eval logits carry no autograd graph (issue 17, defect 5:
    the input-embedding hook of checkpointed fading made every such forward record the backbone)."""
    peft_model(method, family).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(base_model(family), tmp_path).eval()
    assert not trainable(loaded)
    assert not loaded(**inputs_of(batch_for(family))).logits.requires_grad
    trainable_load = PeftModel.from_pretrained(base_model(family), tmp_path, is_trainable=True)
    assert set(side_parameters(trainable_load, method)) and all(p.requires_grad for p in side_parameters(trainable_load, method).values())


# ------------------------------------------------------------------------------------ merge / unload


@pytest.mark.parametrize("method, family", CASES)
def test_merge_and_unload(method, family):
    model = peft_model(method, family)
    batch = batch_for(family)
    adapted = logits(model, batch)
    if method == "dtl":
        for merge in (model.merge_adapter, model.merge_and_unload):
            with pytest.raises(ValueError, match="DTL cannot be merged"):
                merge()
        torch.testing.assert_close(logits(model, batch), adapted, rtol=0, atol=0)  # nothing changed
        return
    assert not torch.allclose(adapted, base_logits(family))
    model.merge_adapter()
    model.merge_adapter()  # idempotent: PEFT warns and keeps the merged state
    torch.testing.assert_close(logits(model, batch), adapted, rtol=0, atol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, batch), adapted, rtol=0, atol=0)
    faded = model.merge_and_unload(safe_merge=True)
    assert type(faded) is type(base_model(family))
    assert not any(isinstance(m, (MDPDLayer, ModulesToSaveWrapper)) for m in faded.modules())
    torch.testing.assert_close(logits(faded, batch), adapted, rtol=0, atol=0)


@pytest.mark.parametrize("method, family", CASES)
def test_unload_returns_the_base_model(method, family):
    model = peft_model(method, family)
    unloaded = model.unload()
    assert type(unloaded) is type(base_model(family))
    torch.testing.assert_close(logits(unloaded, batch_for(family)), base_logits(family), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("poisoned", ["norm copy", "task head"])
def test_safe_merge_refuses_non_finite_weights(family, poisoned):
    """Issue 17, defect 8: ``safe_merge=True`` refuses NaN in a norm copy or the head, before changing anything."""
    model = peft_model("mdpd", family)
    batch = batch_for(family)
    marker = ".mdpd_copies.default." if poisoned == "norm copy" else ".modules_to_save.default."
    name, parameter = next((n, p) for n, p in model.named_parameters() if marker in n)
    with torch.no_grad():
        parameter.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="^NaNs detected in the merged weights. The adapter default seems to be broken: safe_merge=True refused to merge .*hold NaN or inf"):
        model.merge_and_unload(safe_merge=True)
    with pytest.raises(ValueError, match="^NaNs detected in the merged weights. The adapter default seems to be broken"):
        model.merge_adapter(safe_merge=True) if poisoned == "norm copy" else model.merge_and_unload(safe_merge=True)
    assert not any(m.merged for m in model.modules() if isinstance(m, MDPDLayer))
    assert any(isinstance(m, MDPDLayer) for m in model.modules())  # still an adapter model
    assert model(**inputs_of(batch)).logits.shape == base_logits(family).shape  # its hooks still run


@pytest.mark.parametrize("family", FAMILIES)
def test_merging_two_adapters_at_once_raises(family):
    model = peft_model("mdpd", family)
    model.add_adapter("other", config_for("mdpd", family))
    with pytest.raises(ValueError, match="MDPD can merge one adapter per module"):
        model.base_model.merge_adapter(["default", "other"])


@pytest.mark.parametrize("family", FAMILIES)
def test_delete_merged_adapter_raises_without_mutation(family):
    model = peft_model("mdpd", family)
    model.merge_adapter()
    with pytest.raises(ValueError, match="while they are merged"):
        model.delete_adapter("default")
    assert "default" in model.peft_config and "default" in model.base_model.mdpd_side


# -------------------------------------------------------------------------------- disable / enable


@pytest.mark.parametrize("method, family", CASES)
def test_disable_adapter_gives_the_base_output(method, family):
    model = peft_model(method, family)
    batch = batch_for(family)
    adapted, base = logits(model, batch), base_logits(family)
    assert not torch.allclose(adapted, base)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, batch), base, rtol=0, atol=0)
    torch.testing.assert_close(logits(model, batch), adapted, rtol=0, atol=0)
    model.train()
    with model.disable_adapter():  # training mode: no side path, no distillation terms
        output = model(**batch)
    assert not getattr(output, "mdpd_losses", None)


@pytest.mark.parametrize("family", FAMILIES)
def test_disable_adapter_while_merged_gives_the_base_output(family):
    """Issue 17, defect 3: as PEFT's LoRA and LN tuning, a disabled merged adapter unmerges first."""
    model = peft_model("mdpd", family)
    batch = batch_for(family)
    adapted = logits(model, batch)
    model.merge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, batch), base_logits(family), rtol=0, atol=0)
    torch.testing.assert_close(logits(model, batch), adapted, rtol=0, atol=0)


@pytest.mark.parametrize("method, family", CASES)
def test_disable_adapter_layers_freezes_the_side_network(method, family):
    """Issue 17, defect 6: ``disable_adapter_layers`` freezes every adapter weight, side network included, and
    ``enable_adapter_layers`` gives back the same trainables."""
    model = peft_model(method, family)
    before = trainable(model)
    assert set(side_parameters(model, method)) and before >= {n for n in trainable(model) if "side" in n or "csn" in n}
    model.base_model.disable_adapter_layers()
    assert not any(p.requires_grad for p in side_parameters(model, method).values())
    assert not [n for n in trainable(model) if ".default." in n and "modules_to_save" not in n]
    model.base_model.enable_adapter_layers()
    assert trainable(model) == before


# -------------------------------------------------------------------------- add / set / delete


@pytest.mark.parametrize("method, family", CASES)
def test_set_adapter_switches_output_and_trainables(method, family):
    model = peft_model(method, family)
    model.add_adapter("other", config_for(method, family))
    perturb(model, "other", seed=1)
    batch = batch_for(family)
    first = logits(model, batch)
    model.set_adapter("other")
    assert model.active_adapters == ["other"]
    assert not torch.allclose(logits(model, batch), first)
    assert all(p.requires_grad for p in side_parameters(model, method, "other").values())
    assert not any(p.requires_grad for p in side_parameters(model, method, "default").values())


@pytest.mark.parametrize("method, family", CASES)
def test_add_adapter_rejects_duplicate_name_without_mutation(method, family):
    model = peft_model(method, family)
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError):
        model.add_adapter("default", config_for(method, family))
    assert {n: p for n, p in model.named_parameters()}.keys() == state.keys()
    assert all(torch.equal(p, state[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("method, family", CASES)
def test_delete_adapter(method, family):
    """Issue 17, defects 1 and 2: deleting cleans every container, keeps the other adapter active, and after
    the last adapter is gone the base model runs as loaded."""
    model = peft_model(method, family)
    model.add_adapter("delete_me", config_for(method, family))
    model.set_adapter("delete_me")
    model.delete_adapter("delete_me")
    assert "delete_me" not in model.peft_config and model.active_adapters == ["default"]
    tuner = model.base_model
    for container in (*SIDE_CONTAINERS[method], "mdpd_local"):
        assert "delete_me" not in getattr(tuner, container, {})
    for module in model.modules():
        assert "delete_me" not in getattr(module, "mdpd_copies", {}) and "delete_me" not in getattr(module, "modules_to_save", {})
    assert all(p.requires_grad for p in side_parameters(model, method).values())
    batch = batch_for(family)
    assert torch.isfinite(logits(model, batch)).all()
    with pytest.raises(ValueError, match="does not exist"):
        model.delete_adapter("unknown")
    model.delete_adapter("default")
    assert model.active_adapters == []
    with torch.no_grad():
        plain = model.base_model(**inputs_of(batch)).logits
    if method == "mdpd":  # DTL's task head wrapper keeps no original once its last adapter is gone
        torch.testing.assert_close(plain, base_logits(family), rtol=0, atol=0)
    model.train()
    assert model.base_model(**batch).loss is not None


# ----------------------------------------------------------------------------------- requires_grad


@pytest.mark.parametrize("method, family", CASES)
def test_set_requires_grad(method, family):
    """Issue 17, defect 6: ``set_requires_grad(name, ...)`` reaches the side network and the distiller."""
    model = peft_model(method, family)
    model.add_adapter("other", config_for(method, family))
    before = trainable(model)
    model.set_requires_grad("default", requires_grad=False)
    assert not any(p.requires_grad for p in adapter_parameters(model, "default").values())
    model.set_requires_grad(["default"], requires_grad=True)
    assert trainable(model) == before | set(adapter_parameters(model, "default")) - {
        n for n in adapter_parameters(model, "default") if n.startswith("base_model.mdpd_distill.") and n not in before
    }
    model.set_requires_grad("other", requires_grad=True)
    assert all(p.requires_grad for p in side_parameters(model, method, "other").values())


@pytest.mark.parametrize("method, family", CASES)
def test_training_updates_only_the_trainables(method, family):
    model = peft_model(method, family)
    names = trainable(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, batch_for(family), steps=2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= names
    assert {n for n in names if ".mdpd_side." in n or ".dtl_csn." in n} <= changed


# ---------------------------------------------------------------------------------------- dtype


@pytest.mark.parametrize("method, family", CASES)
@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype(method, family, autocast):
    """Issue 17, defect 7: in a bfloat16 model every adapter weight is float32 by default and bfloat16 with
    ``autocast_adapter_dtype=False``, side network included; both train. The task head's copy keeps the model's
    dtype either way, as PEFT's ``modules_to_save`` do."""
    model = get_peft_model(base_model(family, torch.bfloat16), config_for(method, family), autocast_adapter_dtype=autocast)
    expected = torch.float32 if autocast else torch.bfloat16
    weights = adapter_parameters(model, "default")
    assert {p.dtype for n, p in weights.items() if ".modules_to_save." not in n} == {expected}
    assert {p.dtype for n, p in weights.items() if ".modules_to_save." in n} == {torch.bfloat16}
    output = train_steps(model, batch_for(family), steps=1)
    assert torch.isfinite(output.loss)


# ------------------------------------------------------------------------------ gradient checkpointing


@pytest.mark.parametrize("method, family", CASES)
def test_training_gradient_checkpointing(method, family):
    """Gradient checkpointing turned on by the user (reentrant, transformers' default) gives MDPD the gradients
    of a plain run; DTL refuses it with an error that says what to do."""
    batch = batch_for(family)
    if method == "dtl":
        model = base_model(family)
        model.gradient_checkpointing_enable()
        model = get_peft_model(model, config_for(method, family)).train()
        with pytest.raises(ValueError, match="DTL cannot train with gradient checkpointing"):
            model(**batch)
        return
    grads = []
    for checkpointed in (False, True):
        model = base_model(family)
        if checkpointed:
            model.gradient_checkpointing_enable()
        model = get_peft_model(model, config_for(method, family, fading="backprop"))
        perturb(model)
        model.train()
        torch.manual_seed(0)
        model(**batch).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------- model cards


@pytest.mark.parametrize("method, family", CASES)
def test_model_card(method, family, tmp_path):
    """PEFT's adapter card: written when none exists, and an existing card keeps its text."""
    model = peft_model(method, family)
    model.save_pretrained(tmp_path / "new")
    card = (tmp_path / "new" / "README.md").read_text()
    assert "library_name: peft" in card
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "README.md").write_text("---\nlicense: mit\n---\n\nMy own notes.\n")
    model.save_pretrained(tmp_path / "existing")
    card = (tmp_path / "existing" / "README.md").read_text()
    assert "My own notes." in card and "license: mit" in card and "library_name: peft" in card

