"""DTL against LoRA and full fine-tuning on a small real image task: transfer between halves of scikit-learn's digits.

    python benchmarks/image_transfer.py                    # every method, seeds 0 1 2, each at every learning rate of the grid
    python benchmarks/image_transfer.py --methods lora dtl --seeds 0 --epochs 2 --output /tmp/smoke.jsonl  # smoke

No pretrained ViT can be had offline, so the backbone is pretrained here, on real images: a small ViT
(8 x 8 pixels in 2 x 2 patches, 6 layers, width 64) learns to tell the digits 0-4 apart (``--pretrain-epochs``,
seed 0, the same backbone for every run). Every method then adapts it to the digits 5-9, which it has
never seen: a fixed 60/20/20 split of those images, AdamW, batch 32, ``--epochs`` epochs, test accuracy at
the epoch with the best validation accuracy. Methods as in ``methods.py`` (LoRA on ``q_proj``/``v_proj``,
DTL and DTL+ kept, MDPD faded with the ladder and with DTL as side networks, which also record their side
network's accuracy) plus ``probe`` (the head alone on the frozen backbone). Every method runs at every
learning rate of ``--learning-rates`` (the text suite's rates are in the default grid, but a model this
small is not where they were chosen); ``report.py`` reports, per method, the rate with the best mean
validation accuracy over the seeds, so no test accuracy picks anything. Each (method, learning rate,
seed) run appends one JSON line to ``--output``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from methods import METHODS, SIDE_NETWORK_METHODS, optimizer_for, trainable_parameters
from result_files import append_row
from tqdm.auto import tqdm


def _probe(model: torch.nn.Module) -> torch.nn.Module:
    """The head alone on the frozen backbone: the floor."""
    model.requires_grad_(False)
    model.classifier.requires_grad_(True)
    return model


BUILDERS = {
    "probe": _probe,
    **{name: METHODS[name] for name in ("full", "lora", "mdpd")},
    **{name: SIDE_NETWORK_METHODS[name] for name in ("dtl", "dtl+", "mdpd_dtl")},
}
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "image_transfer-digits.jsonl"


def digits(classes: range) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits of ``classes`` as (N, 1, 8, 8) pixels in [0, 1] and labels counted from 0."""
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = np.isin(data.target, list(classes))
    pixels = torch.tensor(data.images[keep] / 16.0, dtype=torch.float32).unsqueeze(1)
    return pixels, torch.tensor(data.target[keep] - classes.start)


def split(pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = [0, int(0.6 * len(order)), int(0.8 * len(order)), len(order)]
    return {name: (pixels[order[a:b]], labels[order[a:b]]) for name, a, b in zip(("train", "validation", "test"), cut, cut[1:])}


def batches(pixels: torch.Tensor, labels: torch.Tensor, size: int, generator: torch.Generator | None = None):
    order = torch.randperm(len(labels), generator=generator) if generator is not None else torch.arange(len(labels))
    for start in range(0, len(order), size):
        index = order[start : start + size]
        yield {"pixel_values": pixels[index], "labels": labels[index]}


def fit(model, data: dict, learning_rate: float, epochs: int, seed: int, evaluate) -> list[dict]:
    """AdamW with a linear decay; ``evaluate(model)`` after every epoch, its results returned per epoch."""
    optimizer = optimizer_for(model, learning_rate)
    steps = epochs * -(-len(data["train"][1]) // 32)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        model.train()
        for batch in batches(*data["train"], 32, generator):
            model(**batch).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        history.append(evaluate(model))
    return history


@torch.no_grad()
def accuracy(model, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predictions = torch.cat([model(pixel_values=batch["pixel_values"]).logits.argmax(-1) for batch in batches(pixels, labels, 256)])
    return (predictions == labels).float().mean().item()


def pretrained_backbone(epochs: int) -> dict[str, torch.Tensor]:
    """A ViT trained from scratch on the digits 0-4 (seed 0): the 'pretrained' encoder every method starts from."""
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(backbone_config(num_labels=5))
    data = split(*digits(range(0, 5)))
    history = fit(model, data, 1e-3, epochs, seed=0, evaluate=lambda m: accuracy(m, *data["test"]))
    print(f"backbone: digits 0-4 test accuracy {history[-1]:.3f} after {epochs} epochs", file=sys.stderr)
    return {name: value for name, value in model.state_dict().items() if not name.startswith("classifier")}


def backbone_config(num_labels: int) -> transformers.ViTConfig:
    return transformers.ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
        intermediate_size=128, num_labels=num_labels,
    )


def run(method: str, learning_rate: float, seed: int, backbone: dict, data: dict, epochs: int) -> dict:
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(backbone_config(num_labels=5))
    model.load_state_dict(backbone, strict=False)  # a fresh head per seed
    model = BUILDERS[method](model)
    mdpd = method.startswith("mdpd")

    def evaluate(trained) -> dict:
        scores = {split_name: accuracy(trained, *data[split_name]) for split_name in ("validation", "test")}
        if mdpd:  # the side network's accuracy at the same epoch, as in accuracy.py
            trained.base_model.set_eval_path("side")
            scores.update(side_validation=accuracy(trained, *data["validation"]), side_test=accuracy(trained, *data["test"]))
            trained.base_model.set_eval_path("backbone")
        return scores

    history = fit(model, data, learning_rate, epochs, seed, evaluate)
    best = max(range(epochs), key=lambda epoch: history[epoch]["validation"])
    return {"method": method, "learning_rate": learning_rate, "seed": seed, "trainable_parameters": trainable_parameters(model), "epoch": best + 1, **history[best]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--learning-rates", nargs="+", type=float, default=list(LEARNING_RATES))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    backbone = pretrained_backbone(args.pretrain_epochs)
    data = split(*digits(range(5, 10)))
    results = []
    runs = [(m, lr, s) for m in args.methods for lr in args.learning_rates for s in args.seeds]
    for method, learning_rate, seed in tqdm(runs, desc="image transfer"):
        row = run(method, learning_rate, seed, backbone, data, args.epochs)
        append_row(args.output, row)
        results.append(row)
    return results


if __name__ == "__main__":
    main()
