"""MDPD on a CUDA device: training and fading, bf16 and fp16 autocast, flash_attention_2, the allocator's peak.

Skipped without CUDA (so on the CPU machines the suite runs on); ``benchmarks/gpu_check.sh`` runs them first.
"""

import importlib.util

import pytest
import torch
import transformers
from conftest import text_batch, tiny_mdpd_model, without_dropout

from mdpd_peft.memory import LiveTensorBytes, PeakMemory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def cuda_batch() -> dict:
    return {key: value.to(CUDA) for key, value in text_batch().items()}


def adamw_steps(model, batch: dict, steps: int = 3, autocast_dtype: torch.dtype | None = None) -> list[float]:
    """AdamW steps, under CUDA autocast when ``autocast_dtype`` is given (fp16 with a gradient scaler); the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    model.train()
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_trains_and_fades_on_cuda_as_on_cpu():
    """The same steps on CUDA and on CPU give the same faded weights, to float rounding (masks are drawn on each
    device's own generator, so the feature terms are switched off here)."""
    faded = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = without_dropout(tiny_mdpd_model(shallow_loss_weight=0.0, deep_loss_weight=0.0)).to(device)
        adamw_steps(model, {key: value.to(device) for key, value in text_batch().items()})
        faded[device] = model.merge_and_unload().state_dict()
    for name, weight in faded["cpu"].items():
        torch.testing.assert_close(faded["cuda"][name].cpu(), weight, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_trains_without_nans(dtype):
    model = tiny_mdpd_model().to(CUDA)
    losses = adamw_steps(model, cuda_batch(), steps=5, autocast_dtype=dtype)
    assert all(torch.isfinite(torch.tensor(losses)))
    faded = model.merge_and_unload()
    assert all(torch.isfinite(p).all() for p in faded.parameters())


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
def test_flash_attention_2_gives_the_loss_terms_of_sdpa():
    """BERT under flash_attention_2 in bf16, padding included: the same loss terms as sdpa, to bf16 rounding."""
    terms = {}
    for implementation in ("sdpa", "flash_attention_2"):
        torch.manual_seed(0)
        model = without_dropout(tiny_mdpd_model()).to(CUDA, torch.bfloat16)
        model.get_base_model().set_attn_implementation(implementation)
        model.train()
        torch.manual_seed(1)
        output = model(**cuda_batch())
        output.loss.backward()
        terms[implementation] = {name: value.item() for name, value in output.mdpd_losses.items()}
    for name, value in terms["sdpa"].items():
        assert terms["flash_attention_2"][name] == pytest.approx(value, rel=5e-2, abs=1e-2), name


def test_allocator_peak_covers_the_counted_tensor_bytes():
    """One optimizer step measured twice at once: CUDA's allocator peak (what memory_speed.py reports on GPUs) is
    never below the live tensor bytes the CPU counter counts for the same step (the allocator rounds blocks up)."""
    model = tiny_mdpd_model().to(CUDA)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = cuda_batch()
    model.train()
    with PeakMemory(CUDA) as allocator, LiveTensorBytes() as counter:
        model(**batch).loss.backward()
        optimizer.step()
    assert counter.peak_bytes > 0 and allocator.peak_bytes >= counter.peak_bytes


def test_faded_model_runs_in_bf16_on_cuda():
    model = tiny_mdpd_model().to(CUDA)
    adamw_steps(model, cuda_batch())
    faded = model.merge_and_unload().to(torch.bfloat16).eval()
    assert type(faded) is transformers.BertForSequenceClassification
    with torch.no_grad():
        logits = faded(**{k: v for k, v in cuda_batch().items() if k != "labels"}).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
