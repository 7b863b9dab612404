"""The model card (README.md) of a faded model: Hub metadata plus how MDPD trained it."""

from __future__ import annotations

import os
import re

from huggingface_hub import ModelCard, ModelCardData

from .config import MDPDConfig
from .side_networks import SIDE_NETWORKS

TAGS = ["mdpd", "side-network-distillation"]
METRIC_PATHS = {"faded": "backbone", "side": "side"}  # evaluation metric prefix -> eval path of the tuner (MDPDTrainer.evaluate)
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def hub_id_or_none(name_or_path: str | None) -> str | None:
    """``base_model`` metadata only makes sense for a Hub id, never for a local folder."""
    if not name_or_path or os.path.isdir(name_or_path) or not HUB_ID.match(name_or_path):
        return None
    return name_or_path


def evaluation_table(metrics: dict[str, float]) -> list[str]:
    return [
        "The faded model is what this repository contains; the side network's figures show what fading kept.",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {name} | {value:.4f} |" for name, value in metrics.items()),
    ]


def faded_model_card(
    config: MDPDConfig,
    model_class: str,
    metrics: dict[str, float],
    metric_names: list[str],
    trainable_parameters: int,
    total_parameters: int,
    peak_training_memory_bytes: int | None,
    memory_device: str | None,
    datasets: list[str] | None = None,
    extra_tags: list[str] | None = None,
    model_name: str | None = None,
    base_model_note: str | None = None,
) -> ModelCard:
    """A card whose YAML says ``library_name: transformers`` (the faded model needs nothing else).

    ``metrics`` are the figures for the table (faded and side path); ``metric_names`` go to the metadata;
    ``base_model_note`` is what a user must know about the base weights (where they come from, what they were
    trained for), in its own section.
    """
    base_id = hub_id_or_none(config.base_model_name_or_path)
    base = f"`{base_id}`" if base_id else "a local base model"
    data = ModelCardData(
        library_name="transformers",
        base_model=base_id,
        tags=TAGS + [tag for tag in (extra_tags or []) if tag not in TAGS],
        datasets=datasets or None,
        metrics=metric_names or None,
    )
    memory = (
        f"{peak_training_memory_bytes / 2**20:.1f} MiB ({memory_device}; tensors allocated during one optimizer "
        "step, weights excluded)"
        if peak_training_memory_bytes is not None
        else "not measured"
    )
    lines = [
        f"# {model_name or model_class}",
        "",
        f"A plain `{model_class}` fine-tuned from {base} with **Masked Dual Path Distillation (MDPD)** "
        f"and faded: a side network ({SIDE_NETWORKS[config.side_network].title}) trained beside the frozen encoder, the two paths distilled each "
        "other, and the backbone's LayerNorms and task head learned from the side network's logits "
        f"{'and from the task loss on their own logits ' if config.backbone_task_loss_weight else ''}"
        "before the side network was dropped. The model has the base architecture and loads with "
        "`transformers` alone; inference costs what the base model costs.",
        "",
        *(["## Base model", "", base_model_note, ""] if base_model_note else []),
        "## Training",
        "",
        f"- method: MDPD (mdpd-peft), side network `{config.side_network}`, reduction factor r = {config.reduction_factor}, "
        f"mask ratio λ = {config.mask_ratio}, loss weights shallow/deep/logits = "
        f"{config.shallow_loss_weight:g}/{config.deep_loss_weight:g}/{config.logits_loss_weight:g}, "
        f"backbone task loss weight {config.backbone_task_loss_weight:g}",
        f"- trainable parameters during training: {trainable_parameters:,} of {total_parameters:,} "
        f"({100 * trainable_parameters / total_parameters:.2f}%)",
        f"- peak training memory: {memory}",
        "",
        "## Evaluation",
        "",
        *(evaluation_table(metrics) if metrics else ["Not evaluated before saving."]),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModel  # or the AutoModelFor... class of the task",
        'model = AutoModel.from_pretrained("<this repository>")',
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
