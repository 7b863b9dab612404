"""Attention kernels and reduced precision: MDPD trains and fades whatever kernel and dtype the base
model computes with, and the faded model keeps the base model's dtype."""

import pytest
import torch
import transformers
from peft import get_peft_model

from mdpd_peft import MDPDConfig
from conftest import check_train_and_fade, text_batch, tiny_text_model, train_steps, without_dropout



def mdpd_config() -> MDPDConfig:
    """Sequence classification at side width 16, as ``tiny_mdpd_model``."""
    return MDPDConfig(task_type="SEQ_CLS", reduction_factor=4)


def tiny_bert(attn_implementation: str):
    """``tiny_text_model()``'s BERT, same weights, running attention with ``attn_implementation``."""
    reference = tiny_text_model()
    model = transformers.AutoModelForSequenceClassification.from_config(reference.config, attn_implementation=attn_implementation)
    model.load_state_dict(reference.state_dict())
    assert model.config._attn_implementation == attn_implementation
    return model.eval()


def assert_all_finite(peft_model) -> None:
    """Every parameter, trained or frozen, side network included, is finite."""
    bad = [name for name, param in peft_model.named_parameters() if not torch.isfinite(param).all()]
    assert not bad, f"{len(bad)} non-finite parameters, the first: {bad[:3]}"


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_kernel_trains_and_fades(attn_implementation):
    check_train_and_fade(tiny_bert(attn_implementation), mdpd_config(), text_batch())


def test_eager_and_sdpa_attention_give_the_same_loss_terms():
    """The hooks read the layers' outputs whatever kernel computed them: one batch (with padding), the
    same weights and, with dropout off and one seed, the same deep-layer mask give the same terms."""
    terms = {}
    for attn_implementation in ("eager", "sdpa"):
        peft_model = get_peft_model(without_dropout(tiny_bert(attn_implementation)), mdpd_config())
        peft_model.train()
        torch.manual_seed(0)
        terms[attn_implementation] = peft_model(**text_batch()).mdpd_losses
    assert set(terms["eager"]) == {"task", "shallow", "deep", "logits", "backbone_task"}
    for name, value in terms["eager"].items():
        torch.testing.assert_close(terms["sdpa"][name], value, atol=1e-5, rtol=1e-5, msg=name)


def test_bf16_autocast_trains_and_fades():
    """Mixed precision on CPU: fp32 weights, bf16 matmuls (as ``Trainer(bf16=True)`` or accelerate runs)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        peft_model = check_train_and_fade(tiny_text_model(), mdpd_config(), text_batch())
    assert_all_finite(peft_model)


def test_bf16_base_trains_and_fades_in_its_dtype():
    """A base model loaded in bf16 trains without NaN (its LayerNorm copies train as float32 masters),
    fades to what its backbone path computed, and stays bf16."""
    peft_model = check_train_and_fade(tiny_text_model().to(torch.bfloat16), mdpd_config(), text_batch())
    assert_all_finite(peft_model)
    assert {param.dtype for param in peft_model.get_base_model().parameters()} == {torch.bfloat16}


def test_fp16_base_trains_features_and_refuses_to_train_a_fp16_head():
    """fp16: the LayerNorm copies and the side network train (float32 masters), so feature extraction
    works; PEFT's fp16 copy of a task head would turn NaN under AdamW, so MDPD says what to do instead."""
    from transformers import BertModel

    base = BertModel(tiny_text_model().config).to(torch.float16).eval()
    batch = text_batch()
    del batch["labels"]
    peft_model = check_train_and_fade(base, MDPDConfig(task_type="FEATURE_EXTRACTION", reduction_factor=4), batch)
    assert_all_finite(peft_model)
    with pytest.raises(ValueError, match="Load the model in float32 and train with fp16 autocast"):
        get_peft_model(tiny_text_model().to(torch.float16), mdpd_config())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_trainable_tensor_learns_at_a_fine_tuning_learning_rate(dtype):
    """Three AdamW steps at lr 1e-3 move every trainable tensor: the backbone's LayerNorm copies and head
    as well as the side network, whatever dtype the base model was loaded in."""
    peft_model = get_peft_model(tiny_text_model().to(dtype), mdpd_config())
    before = {name: param.detach().clone() for name, param in peft_model.named_parameters() if param.requires_grad}
    train_steps(peft_model, text_batch(), steps=3, lr=1e-3)
    assert_all_finite(peft_model)
    unchanged = [name for name, param in peft_model.named_parameters() if name in before and torch.equal(param, before[name])]
    assert not unchanged, f"{len(unchanged)} trainable tensors never moved: {unchanged}"
