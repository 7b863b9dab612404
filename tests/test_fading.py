"""Fading: merge_and_unload returns the plain transformers model that the backbone path computed."""

import pytest
import torch
from accelerate import Accelerator
from transformers import BertForSequenceClassification

from mdpd_peft import gathered_faded_model

from conftest import assert_loads_without_mdpd_peft, text_batch, tiny_mdpd_model, tiny_text_model, train_steps


def trained_peft_model():
    model = tiny_mdpd_model()
    train_steps(model, text_batch(), steps=3)
    return model.eval()


def all_hooks(module):
    return [
        (name, kind)
        for name, sub in module.named_modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
        if getattr(sub, kind)
    ]


def test_merge_and_unload_returns_the_plain_model_with_equal_logits():
    peft_model = trained_peft_model()
    batch = text_batch()
    with torch.no_grad():
        expected = peft_model(**batch).logits
    faded = peft_model.merge_and_unload()
    assert type(faded) is BertForSequenceClassification
    assert all_hooks(faded) == []
    assert not hasattr(faded, "peft_config")
    assert [n for n, _ in faded.named_modules()] == [n for n, _ in tiny_text_model().named_modules()]
    assert set(faded.state_dict()) == set(tiny_text_model().state_dict())
    with torch.no_grad():
        torch.testing.assert_close(faded.eval()(**batch).logits, expected, rtol=0, atol=0)


def test_faded_model_differs_from_base_only_in_layernorms_and_head():
    base = tiny_text_model().state_dict()
    faded = trained_peft_model().merge_and_unload().state_dict()
    changed = {name for name in base if not torch.equal(base[name], faded[name])}
    assert changed and all("LayerNorm" in name or name.startswith("classifier.") for name in changed)


def test_unload_returns_the_untouched_base():
    peft_model = trained_peft_model()
    base = peft_model.unload()
    assert all_hooks(base) == []
    reference = tiny_text_model().state_dict()
    for name, value in base.state_dict().items():
        assert torch.equal(value, reference[name]), name


def test_faded_folder_loads_without_mdpd_peft(tmp_path):
    peft_model = trained_peft_model()
    batch = text_batch()
    with torch.no_grad():
        expected = peft_model(**batch).logits
    peft_model.merge_and_unload().save_pretrained(tmp_path / "faded")
    assert (tmp_path / "faded" / "model.safetensors").exists()
    loaded_class = assert_loads_without_mdpd_peft(tmp_path / "faded", batch, expected, "AutoModelForSequenceClassification")
    assert loaded_class == "BertForSequenceClassification"


def test_eval_path_side_predicts_with_the_side_head():
    peft_model = trained_peft_model()
    batch = text_batch()
    with torch.no_grad():
        backbone = peft_model(**batch)
        peft_model.base_model.set_eval_path("side")
        side = peft_model(**batch)
    assert backbone.logits.shape == side.logits.shape
    assert not torch.allclose(backbone.logits, side.logits)
    assert torch.isfinite(side.loss)
    assert not hasattr(backbone, "mdpd_losses")


@pytest.mark.parametrize("dtype, adapter_name", [(torch.float32, "default"), (torch.bfloat16, "sentiment")])
def test_gathered_faded_model_equals_fading_the_model_itself(dtype, adapter_name):
    """gathered_faded_model (what MDPDTrainer.save_faded_model and the accelerate loop use) rebuilds the model from
    its gathered weights: the same faded tensors and dtype as fading the trained model in place."""
    peft_model = tiny_mdpd_model(adapter_name=adapter_name)
    peft_model.to(dtype)
    train_steps(peft_model, text_batch(), steps=2)
    gathered = gathered_faded_model(peft_model, Accelerator(cpu=True))
    in_place = peft_model.merge_and_unload()
    assert type(gathered) is type(in_place) and gathered.dtype == dtype
    expected = in_place.state_dict()
    assert gathered.state_dict().keys() == expected.keys()
    for name, tensor in gathered.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
