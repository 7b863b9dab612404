"""Adapters round-trip through real safetensors files and PeftModel.from_pretrained."""

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from mdpd_peft import MDPDConfig
from conftest import text_batch, tiny_mdpd_model, tiny_text_model, train_steps


def trained(adapter_name="default"):
    model = tiny_mdpd_model(adapter_name)
    train_steps(model, text_batch(), steps=3)
    return model


def adapter_state(model, adapter_name):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{adapter_name}." in f"{n}."}


@pytest.mark.parametrize("saved_as, loaded_as", [("default", "default"), ("default", "second"), ("mine", "default")])
def test_round_trip_is_bit_exact(tmp_path, saved_as, loaded_as):
    model = trained(saved_as)
    model.save_pretrained(tmp_path)
    saved_keys = set(load_file(tmp_path / (saved_as if saved_as != "default" else "") / "adapter_model.safetensors"))
    assert not any(f".{saved_as}." in key for key in saved_keys)  # the adapter name never leaks into the file
    assert any(key.startswith("base_model.mdpd_side.") for key in saved_keys)
    assert any(".mdpd_copies." in key for key in saved_keys)
    assert any("classifier" in key for key in saved_keys)

    path = tmp_path / saved_as if saved_as != "default" else tmp_path
    restored = PeftModel.from_pretrained(tiny_text_model(), path, adapter_name=loaded_as)
    original = adapter_state(model, saved_as)
    loaded = adapter_state(restored, loaded_as)
    assert len(original) == len(loaded) > 0
    for name, value in original.items():
        assert torch.equal(value, loaded[name.replace(f".{saved_as}.", f".{loaded_as}.")]), name

    batch = text_batch()
    model.eval(), restored.eval()
    for path_name in ("backbone", "side"):
        model.base_model.set_eval_path(path_name)
        restored.base_model.set_eval_path(path_name)
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, restored(**batch).logits), path_name


def test_loaded_adapter_can_keep_training(tmp_path):
    trained().save_pretrained(tmp_path)
    frozen = PeftModel.from_pretrained(tiny_text_model(), tmp_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    restored = PeftModel.from_pretrained(tiny_text_model(), tmp_path, is_trainable=True)
    side_before = restored.base_model.mdpd_side["default"].embed_down.weight.detach().clone()
    output = train_steps(restored, text_batch(), steps=2)
    assert torch.isfinite(output.loss)
    assert not torch.equal(side_before, restored.base_model.mdpd_side["default"].embed_down.weight)


def test_second_adapter_beside_the_first(tmp_path):
    model = trained()
    model.add_adapter("other", MDPDConfig(task_type="SEQ_CLS", reduction_factor=2, side_layers=[1, 3]))
    model.set_adapter("other")
    assert model.base_model.mdpd_side["other"].width == 32
    output = train_steps(model, text_batch(), steps=2)
    assert torch.isfinite(output.loss)
    model.save_pretrained(tmp_path)
    restored = PeftModel.from_pretrained(tiny_text_model(), tmp_path / "other", adapter_name="other")
    for name, value in adapter_state(model, "other").items():
        assert torch.equal(value, dict(restored.named_parameters())[name]), name


def test_an_adapter_with_fading_layers_reloads_with_the_same_trainables(tmp_path):
    model = tiny_mdpd_model(fading_layers=2)
    model.save_pretrained(tmp_path)
    restored = PeftModel.from_pretrained(tiny_text_model(), tmp_path, is_trainable=True)
    names = [{n for n, p in m.named_parameters() if p.requires_grad and "mdpd_copies" in n} for m in (model, restored)]
    assert names[0] == names[1] and all(".layer.2." in n or ".layer.3." in n for n in names[0])


def test_a_block_local_adapter_reloads_with_its_layer_probes(tmp_path):
    model = tiny_mdpd_model(fading="block_local")
    train_steps(model, text_batch(), steps=2)
    model.save_pretrained(tmp_path)
    assert any(key.startswith("base_model.mdpd_local.") for key in load_file(tmp_path / "adapter_model.safetensors"))
    restored = PeftModel.from_pretrained(tiny_text_model(), tmp_path, is_trainable=True)
    loaded = dict(restored.named_parameters())
    probes = {n: p for n, p in model.named_parameters() if ".mdpd_local." in n}
    assert len(probes) == 2 * 4  # a weight and a bias per layer
    for name, value in probes.items():
        assert torch.equal(value, loaded[name]) and loaded[name].requires_grad, name
