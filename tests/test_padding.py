"""Heavy padding changes nothing for real tokens: the side network's attention, states, pooling and
logits, the training loss terms, and the masked-generation block G.

The same sentences run padded to 12 and to 40 tokens (a sequence-level and a token-level task).
``tests/test_training.py`` already covers the side logits of a sequence task in eval mode and that
``sample_token_mask`` never masks padding; the deep term's random mask depends on the sequence length,
so G is compared on its own, on features of real tokens.
"""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from mdpd_peft import MDPDConfig
from conftest import text_batch, tiny_text_model, without_dropout

LENGTH, PADDED_LENGTH = 12, 40
TASK_TYPES = {"seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS"}
PADDING_VALUES = {"input_ids": 0, "attention_mask": 0, "labels": -100}


def padded(batch: dict, length: int) -> dict:
    """``batch`` right-padded to ``length`` tokens: token id 0, attention mask 0, per-token label -100."""
    extra = length - batch["input_ids"].shape[1]
    return {name: F.pad(value, (0, extra), value=PADDING_VALUES[name]) if value.dim() == 2 else value for name, value in batch.items()}


def padding_case(task: str, **config_kwargs):
    """A tiny dropout-free BERT under MDPD for ``task`` and 4 sentences of at most 12 tokens (the first
    has 7 real tokens, so it is padded even at length 12); token labels are -100 on padding."""
    model = without_dropout(tiny_text_model(task=task))
    peft_model = get_peft_model(model, MDPDConfig(task_type=TASK_TYPES[task], reduction_factor=4, **config_kwargs))
    batch = text_batch(batch=4, length=LENGTH, pad_from=7)
    if task == "token_cls":
        labels = torch.randint(0, 3, (4, LENGTH), generator=torch.Generator().manual_seed(3))
        batch["labels"] = labels.masked_fill(batch["attention_mask"] == 0, -100)
    return peft_model, batch


def run_recording_side(peft_model, batch: dict):
    """One forward pass; also returns what the side network read (backbone states, real-token mask) and
    the side states it produced, recorded by a forward hook on it."""
    record = {}

    def record_side(module, args, output):
        states = args[0]  # BackboneStates
        record.update(backbone_states=states.layer_outputs, real=states.real, side_states=output.features)

    handle = peft_model.base_model.mdpd_side["default"].register_forward_hook(record_side)
    try:
        output = peft_model(**batch)
    finally:
        handle.remove()
    return output, record


def real_part(tensor: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The real tokens' rows of a (B, N, ...) tensor, N >= the length of the (B, n) mask ``real``."""
    return tensor[:, : real.shape[1]][real]


@pytest.mark.parametrize("task", list(TASK_TYPES))
def test_side_path_of_real_tokens_ignores_padding_length(task):
    """Eval on the side path: side attention attends to real keys only, so every side state of a real
    token, the side logits (pooled over real tokens, or per real token) and the side task loss match."""
    peft_model, batch = padding_case(task, eval_path="side")
    peft_model.eval()
    with torch.no_grad():
        (short, short_side), (long, long_side) = (run_recording_side(peft_model, padded(batch, n)) for n in (LENGTH, PADDED_LENGTH))
    real = short_side["real"]
    assert torch.equal(long_side["real"], F.pad(real, (0, PADDED_LENGTH - LENGTH), value=False))
    for short_state, long_state in zip(short_side["side_states"], long_side["side_states"], strict=True):
        torch.testing.assert_close(real_part(long_state, real), real_part(short_state, real), atol=1e-5, rtol=1e-5)
    if task == "token_cls":
        torch.testing.assert_close(real_part(long.logits, real), real_part(short.logits, real), atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(long.logits, short.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long.loss, short.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", list(TASK_TYPES))
def test_training_loss_terms_ignore_padding_length(task):
    """Training mode: the side task term, the shallow imitation term (Eq. 4, real tokens only), Eq. 3
    (per-token logits masked to real tokens) and the backbone's own task term are unchanged."""
    peft_model, batch = padding_case(task)
    peft_model.train()
    short, long = (peft_model(**padded(batch, n)).mdpd_losses for n in (LENGTH, PADDED_LENGTH))
    for name in ("task", "shallow", "logits", "backbone_task"):
        torch.testing.assert_close(long[name], short[name], atol=1e-5, rtol=1e-5, msg=name)


def test_generation_block_lets_no_padding_into_real_tokens():
    """G's 3x3 convolutions over the 1 x N token row read each token's neighbours. Its input has padding
    zeroed (Eq. 6 as implemented), so what G generates for a real token, the last real one beside the
    padding included, must not depend on how much padding follows (distillation.py: padding tokens
    "leak into no real token"). The input here is the deepest backbone state, padding zeroed."""
    peft_model, batch = padding_case("seq_cls", eval_path="side")
    generator = peft_model.base_model.mdpd_distill["default"].generators[-1]
    peft_model.eval()
    generated = []
    with torch.no_grad():
        for length in (LENGTH, PADDED_LENGTH):
            _, side = run_recording_side(peft_model, padded(batch, length))
            zeroed = side["backbone_states"][-1] * side["real"].unsqueeze(-1)
            generated.append(generator(zeroed, side["real"].unsqueeze(-1).float(), False))
    real = padded(batch, LENGTH)["attention_mask"].bool()
    torch.testing.assert_close(real_part(generated[1], real), real_part(generated[0], real), atol=1e-5, rtol=1e-5)
