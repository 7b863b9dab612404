"""DTL's compact side network as a PEFT method of its own ("dtl"): kept at inference, never merged."""

import pytest
import torch
import transformers
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from mdpd_peft import DTLConfig, DTLModel
from conftest import image_batch, text_batch, tiny_text_model, tiny_vit, train_steps


def inputs_of(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def test_vit_b16_trains_about_0_04m_parameters_plus_the_head():
    config = transformers.ViTConfig(num_labels=100)  # ViT-B/16 shape: 768 wide, 12 layers
    model = get_peft_model(transformers.ViTForImageClassification(config), DTLConfig(modules_to_save=["classifier"]))
    assert isinstance(model.base_model, DTLModel)
    csn = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".dtl_csn." in n)
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" in n)
    assert csn == 12 * 2 * 768 * 2  # 36,864: the paper's ~0.04M
    assert head == 768 * 100 + 100
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == csn + head


@pytest.mark.parametrize("conv_kernel", [None, 3])
def test_gradient_enters_blocks_from_m_on_only(conv_kernel):
    """Blocks before M build no graph (their outputs need no gradient); from M on they carry the side information."""
    model = get_peft_model(tiny_vit(), DTLConfig(modules_to_save=["classifier"], conv_kernel=conv_kernel))
    needs_grad = []
    for layer in model.base_model.model.vit.layers:
        layer.register_forward_hook(lambda module, args, output: needs_grad.append(output[0].requires_grad if isinstance(output, tuple) else output.requires_grad))
    model.train()
    output = model(**image_batch())
    assert needs_grad == [False, False, True, True]  # M = 4 // 2
    output.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".dtl_csn." in n)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_starts_as_the_base_model_and_disables_cleanly():
    base = tiny_text_model()
    batch = inputs_of(text_batch())
    with torch.no_grad():
        expected = base(**batch).logits
    model = get_peft_model(base, DTLConfig(task_type="SEQ_CLS")).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=0)  # B starts at zero
    train_steps(model, text_batch())
    model.eval()
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, expected)
        with model.disable_adapter():
            # the maps stop and the trained head copy is switched off: the base model exactly
            torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=0)


def test_round_trip_and_no_merge(tmp_path):
    model = get_peft_model(tiny_vit(), DTLConfig(modules_to_save=["classifier"], conv_kernel=3, rank=3))
    batch = image_batch()
    train_steps(model, batch)
    model.eval()
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.dtl_csn.fusion.conv.weight" in keys and any("classifier" in k for k in keys)
    assert not any(".default." in k for k in keys)
    assert isinstance(PeftConfig.from_pretrained(tmp_path), DTLConfig)
    restored = PeftModel.from_pretrained(tiny_vit(), tmp_path).eval()
    assert restored.peft_config["default"].rank == 3
    with torch.no_grad():
        torch.testing.assert_close(restored(**inputs_of(batch)).logits, model(**inputs_of(batch)).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"DTL cannot be merged.*MDPDConfig\(side_network='dtl'\)"):
        restored.merge_and_unload()
    with pytest.raises(ValueError, match="DTL cannot be merged"):
        restored.merge_adapter()
    unloaded = restored.unload()
    assert type(unloaded) is transformers.ViTForImageClassification
    with torch.no_grad():
        torch.testing.assert_close(unloaded(**inputs_of(batch)).logits, tiny_vit()(**inputs_of(batch)).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=0), r"DTLConfig.rank=0 is invalid: rank must be an integer >= 1"),
        (dict(conv_kernel=2), r"DTLConfig.conv_kernel=2 is invalid"),
        (dict(inject_from=-1), r"DTLConfig.inject_from=-1 is invalid"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DTLConfig(**kwargs)


def test_inject_from_beyond_the_model_is_refused():
    with pytest.raises(ValueError, match=r"DTLConfig.inject_from=4 is invalid: inject_from must be None or an integer in \[0, 3\]"):
        get_peft_model(tiny_text_model(), DTLConfig(task_type="SEQ_CLS", inject_from=4))


def test_gradient_checkpointing_is_refused_with_a_clear_error():
    model = get_peft_model(tiny_text_model(), DTLConfig(task_type="SEQ_CLS"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    with pytest.raises(ValueError, match="DTL cannot train with gradient checkpointing"):
        model(**text_batch())
    model.eval()
    with torch.no_grad():
        model(**inputs_of(text_batch()))  # inference is unaffected


def test_a_deep_copy_runs_its_own_side_network():
    """The hooks follow the copy (the benchmarks deep-copy what each method deploys): the copy's outputs equal the
    original's, pass after pass, and training the original leaves the copy as it was."""
    import copy

    model = get_peft_model(tiny_vit(), DTLConfig(modules_to_save=["classifier"], conv_kernel=3))
    batch = image_batch()
    train_steps(model, batch)
    model.eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        expected = model(**inputs_of(batch)).logits
        for _ in range(2):
            torch.testing.assert_close(twin(**inputs_of(batch)).logits, expected, rtol=0, atol=0)
    train_steps(model, batch)
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(**inputs_of(batch)).logits, expected, rtol=0, atol=0)
