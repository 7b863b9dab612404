"""Superseded runs: result files measured under settings that are no longer today's, or replaced by later runs of the
same question. ``docs/benchmarks/history.md`` renders them, each group with what differed; ``RESULTS.md`` never does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .accuracy import ACCURACY_TABLES, learning_rate_grid_lines
from .common import Results
from .image import image_transfer_lines
from .memory import suite_lines
from .side_tasks import task_lines


@dataclass(frozen=True)
class Superseded:
    """A group of superseded result files.

    Args:
        heading: the group's section heading.
        why: what differed from today's runs, or what replaced them.
        files: its result files, in the order they render.
        render: ``(results, files present) -> lines`` of the group's tables.
    """

    heading: str
    why: str
    files: tuple[str, ...]
    render: Callable[[Results, tuple[str, ...]], list[str]]


def each_file(render: Callable[[Results, str], list[str]]) -> Callable[[Results, tuple[str, ...]], list[str]]:
    """A group renderer that renders each file on its own, then names it."""

    def lines(results: Results, files: tuple[str, ...]) -> list[str]:
        return [line for file in files for line in [*render(results, file), f"From `results/{file}`.", ""]]

    return lines


def trec_fine_two_epochs(results: Results, file: str) -> list[str]:
    title = "all-MiniLM-L6-v2, TREC's 50 fine question types (whole training split, 2 epochs)"
    return learning_rate_grid_lines(file, title, results.by_method(file))


IMAGE_KEPT_10_EPOCHS = (
    "side-task-grid-fashion-mnist-dinov2.jsonl",  # grid
    "side-task-fashion-mnist-dinov2.jsonl",  # seeds at its best rate
    "side-task-layer-scale-unfolded-fashion-mnist-dinov2.jsonl",  # pruned init before and after it folds layer scale
    "side-task-layer-scale-folded-fashion-mnist-dinov2.jsonl",
)
SUPERSEDED = (
    Superseded(
        "Memory and speed before the ladder recomputed its side steps in backward",
        "Measured from 22 to 30 November 2026, before the ladder recomputed each side step (gated mix and side block) in "
        "backward: MDPD's and the side networks' peak memory and step time here are higher than today's (MDPD at BERT-base "
        "16 x 128: 299.1 MiB here; today's run is `selected-checkpointed-bert-base-cpu.json`). The baselines' figures "
        "(LoRA, LayerNorm tuning, BitFit, full fine-tuning) are unchanged.",
        ("memory_speed-bert-base-cpu.json", "selected-bert-base-cpu.json", "selected-block-local-bert-base-cpu.json",
         "selected-fading-bert-base-cpu.json", "selected-vit-base-cpu.json", "sweep-bert-base-cpu.json",
         "side_path-bert-base-cpu.json", "distributed-bert-base-cpu.json", "distributed-fsdp2-bert-base-cpu.json"),
        each_file(suite_lines),
    ),
    Superseded(
        "Accuracy at fixed learning rates",
        "Measured on 22 November 2026 with every method at a fixed, hand-picked learning rate (full fine-tuning 1e-4; LoRA, "
        "LayerNorm tuning, BitFit and DTL 1e-3; the side networks and MDPD 3e-3), most methods on one seed; the ablation "
        "ran every variant at MDPD's then rate 3e-3 (its best rate is 1e-2). The learning-rate grids replaced them: "
        "LayerNorm tuning's and BitFit's deficit here is their rate. The targets still read one row from here: the "
        "linear probe on Rotten Tomatoes, retention's floor (the probe has no learning rate).",
        ("accuracy-minilm.jsonl", "ablation-minilm.jsonl"),
        each_file(lambda results, file: ACCURACY_TABLES[file](results, file)),
    ),
    Superseded(
        "TREC fine in the protocol's 2 epochs",
        "On 50 classes LoRA and LayerNorm tuning have not converged in 2 epochs; the 5-epoch grid replaced this one.",
        ("lr-grid-trec-fine-minilm.jsonl",),
        each_file(trec_fine_two_epochs),
    ),
    Superseded(
        "The image task's kept side networks at 10 epochs",
        "The first runs of the kept side networks on Fashion-MNIST, 10 epochs on the state cache; the 30-epoch runs "
        "replaced them. The two layer-scale grids compare the pruned init before and after it folds DINOv2's layer scale "
        "into the copied weights (today's init folds it).",
        IMAGE_KEPT_10_EPOCHS,
        lambda results, files: task_lines(results, "fashion-mnist", (IMAGE_KEPT_10_EPOCHS[:2],), IMAGE_KEPT_10_EPOCHS[2:]),
    ),
    Superseded(
        "Image transfer on a small ViT pretrained here",
        "A 6-layer, 64-wide ViT pretrained here on the scikit-learn digits 0-4 (900 images) and adapted to 5-9: it ranks "
        "methods on that toy only. The DINOv2-small benchmark on Fashion-MNIST replaced it as the image benchmark.",
        ("image_transfer-digits.jsonl",),
        lambda results, files: image_transfer_lines(results),
    ),
)  # fmt: skip


def superseded_files() -> set[str]:
    """Every superseded result file (the current pages skip them)."""
    return {file for group in SUPERSEDED for file in group.files}


def history_lines(results: Results) -> list[str]:
    """Every group with a file present: its heading, what differed, and its tables."""
    lines = []
    for group in SUPERSEDED:
        present = tuple(file for file in group.files if results.exists(file))
        if present:
            lines += [f"## {group.heading}", "", group.why, "", *group.render(results, present)]
    return lines
