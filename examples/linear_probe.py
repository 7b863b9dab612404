"""The frozen-encoder linear probe: the model's own task head trained on frozen features, the floor for fading.

The encoder runs once over every split (forward only); a forward pre-hook on the head records the
features the head sees (for BERT-style models the pooled [CLS] vector). A fresh copy of the head is
then trained on them with AdamW, and the epoch with the best validation accuracy is kept.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

HEAD_NAMES = ("classifier", "score")


def task_head(model: nn.Module) -> nn.Module:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no task head named one of {HEAD_NAMES}.")


@torch.no_grad()
def head_inputs(model: nn.Module, dataset, collator, batch_size: int = 64, desc: str = "probe features"):
    """(features, labels): what the task head receives for every row of ``dataset``, and the labels."""
    features, labels = [], []
    handle = task_head(model).register_forward_pre_hook(lambda module, args: features.append(args[0].detach().cpu()))
    model.eval()
    try:
        for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collator), desc=desc, leave=False):
            labels.append(batch.pop("labels"))
            model(**batch)
    finally:
        handle.remove()
    return torch.cat(features), torch.cat(labels)


def head_accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        return (head(features).argmax(-1) == labels).float().mean().item()


def linear_probe(model: nn.Module, splits: dict, collator, epochs: int = 20, learning_rate: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """Train a copy of ``model``'s head on its frozen features; ``{split: accuracy}`` at the best validation epoch."""
    cached = {name: head_inputs(model, dataset, collator, desc=f"probe features ({name})") for name, dataset in splits.items()}
    torch.manual_seed(seed)
    head = copy.deepcopy(task_head(model))
    for module in head.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate)
    features, labels = cached["train"]
    best = {"validation": -1.0}
    for _ in tqdm(range(epochs), desc="probe training", leave=False):
        head.train()
        for index in torch.randperm(len(labels)).split(64):
            loss = nn.functional.cross_entropy(head(features[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scores = {name: head_accuracy(head, *data) for name, data in cached.items() if name != "train"}
        if scores["validation"] > best["validation"]:
            best = scores
    return best
