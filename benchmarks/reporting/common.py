"""What every table of the report shares: the result files, the methods' names, the best-rate choice and number formats.

Nothing here imports another report module, torch or matplotlib: the benchmark scripts import ``best_learning_rate``
and the row loaders from here, and ``report.py --check`` renders every page with no heavier import than this.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1]  # benchmarks/
REPOSITORY = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"

NAMES = {
    "full": "full fine-tuning",
    "lora": "LoRA r=8 (query, value)",
    "layernorm": "LayerNorm tuning",
    "lora_checkpointed": "LoRA r=8 + gradient checkpointing",
    "layernorm_checkpointed": "LayerNorm tuning + gradient checkpointing",
    "bitfit": "BitFit",
    "side_kept": "ladder side network kept (LST)",
    "linear_probe": "linear probe, trained on the state cache as the kept side networks are",
    "side_task": "ladder side network kept, trained on the state cache",
    "side_task_r8_lst": "ladder side network kept, the earlier default (r=8, LST's head count)",
    "side_task_unipt": "UniPT side network kept, trained on the state cache",
    "mdpd": "MDPD, faded (defaults)",
    "mdpd_backprop": "MDPD, fading by plain backprop (paper)",
    "mdpd_head_only": "MDPD, head-only fading",
    "mdpd_last_1": "MDPD, fading the last layer's LayerNorms",
    **{f"mdpd_last_{k}": f"MDPD, fading the last {k} layers' LayerNorms" for k in (2, 3, 4, 5)},
    "mdpd_every_2": "MDPD, LayerNorms learning every 2nd step",
    "mdpd_every_3": "MDPD, LayerNorms learning every 3rd step",
    "mdpd_every_4": "MDPD, LayerNorms learning every 4th step",
    "mdpd_block_local": "MDPD, block-local fading",
    "mdpd_fade_stored": "MDPD fade phase on stored side logits (side network frozen)",
    "mdpd_two_phase": "MDPD in two phases (side phase on the state cache, fade on stored side logits)",
    "mdpd_side_at_1e-2": "MDPD, faded; side network at 1e-2 (side_learning_rate), faded parameters at the grid's rate",
    **{f"side_kept_{net}": f"{title} side network kept" for net, title in (("unipt", "UniPT"), ("sherl", "SHERL"), ("dtl", "DTL"), ("dtl+", "DTL+"))},
    **{f"mdpd_{net}": f"MDPD on {title}, faded" for net, title in (("unipt", "UniPT"), ("sherl", "SHERL"), ("dtl", "DTL"), ("dtl+", "DTL+"))},
    "dtl": "DTL (its own PEFT method, kept)",
    "dtl+": "DTL+ (its own PEFT method, kept)",
    "probe": "linear probe (frozen encoder)",
    "mdpd_logits_only": "MDPD, logits path only (S→B): no feature distillation",
    "mdpd_features_only": "MDPD, feature path only (B→S): no logits distillation",
    "mdpd_no_distillation": "MDPD, no distillation (all distillation weights 0)",
    "mdpd_mask_0.25": "MDPD, mask ratio λ = 0.25",
    "mdpd_mask_0.75": "MDPD, mask ratio λ = 0.75",
}
MODELS = ["bert-base", "minilm", "vit-base", "dinov2-small", "tiny"]  # the order of the memory/speed tables
FULL_SPLIT = 10000  # fewer training examples than this: a subset run (the smoke tests', the grids' 3,000 sentences)


def name(method: str) -> str:
    """A method's name in the tables; a method no table knows yet keeps its key, so a new result file still renders."""
    return NAMES.get(method, method)


def short_name(method: str) -> str:
    """``name`` without its parenthesis: "LoRA r=8", "DTL"."""
    return name(method).split(" (")[0]


class Results:
    """The result files of one folder, each read once; it remembers which were read, so the report can name the files
    that no table reads (a new kind of run that wants its table).

    Args:
        folder: the folder of the suites' result files (``benchmarks/results/``).
        full_data_only: count only accuracy runs on the whole training split (``FULL_SPLIT``) where a table asks for
            that; False for the smoke tests' 32-sentence runs.
    """

    def __init__(self, folder: Path, full_data_only: bool = True) -> None:
        self.folder = Path(folder)
        self.full_data_only = full_data_only
        self.read: set[str] = set()

    def exists(self, name: str) -> bool:
        return (self.folder / name).exists()

    def names(self, pattern: str) -> list[str]:
        """The files matching ``pattern``, sorted by name."""
        return sorted(path.name for path in self.folder.glob(pattern))

    def json(self, name: str) -> dict:
        self.read.add(name)
        return json.loads((self.folder / name).read_text())

    def rows(self, name: str) -> list[dict]:
        """A JSON-lines file's rows; none where the file is absent."""
        if not self.exists(name):
            return []
        self.read.add(name)
        return [json.loads(line) for line in (self.folder / name).read_text().splitlines() if line.strip()]

    def by_method(self, name: str, full_data_only: bool = False) -> dict[str, list[dict]]:
        """A JSON-lines file's rows grouped by method (``full_data_only``: whole-split runs only)."""
        return by_method(self.rows(name), full_data_only=full_data_only)

    def unread(self) -> list[str]:
        """The result files no table has read."""
        return sorted(path.name for path in self.folder.iterdir() if path.suffix in (".json", ".jsonl") and path.name not in self.read)


def by_method(rows: list[dict], task: str | None = None, train_size: int | None = None, full_data_only: bool = False) -> dict[str, list[dict]]:
    """``rows`` grouped by method, keeping those of ``task`` (a row without one is Rotten Tomatoes), of ``train_size``
    examples, and with ``full_data_only`` those on the whole split."""
    grouped = defaultdict(list)
    for row in rows:
        if task is not None and row.get("task", "rotten_tomatoes") != task:
            continue
        if train_size is not None and row["train_size"] != train_size:
            continue
        if full_data_only and row.get("train_size", 0) < FULL_SPLIT:
            continue
        grouped[row["method"]].append(row)
    return grouped


def accuracy_rows(path: Path, full_data_only: bool = True) -> dict[str, list[dict]]:
    """An accuracy result file's rows by method (``full_data_only``: whole-split runs only); for the benchmark scripts."""
    return by_method([json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()], full_data_only=full_data_only)


def best_learning_rate(by_method: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Per method, the runs at the learning rate whose mean validation accuracy is best, and that rate.

    Rates are compared on the seeds every rate was run with (a grid on seed 0, then more seeds at its best rate:
    the grid's choice stands, and a rate's extra seeds cannot move it); with no seed in common, on each rate's own.
    A tie there goes to the better mean over all of each rate's seeds.
    """
    chosen, rates = {}, {}
    for method, rows in by_method.items():
        by_rate = defaultdict(list)
        for row in rows:
            by_rate[row["learning_rate"]].append(row)
        shared_seeds = set.intersection(*({r.get("seed") for r in runs} for runs in by_rate.values()))

        def validation(rate: float) -> tuple[float, float]:
            compared = [r for r in by_rate[rate] if r.get("seed") in shared_seeds] or by_rate[rate]
            return statistics.mean(r["validation"] for r in compared), statistics.mean(r["validation"] for r in by_rate[rate])

        rates[method] = max(by_rate, key=validation)
        chosen[method] = by_rate[rates[method]]
    return chosen, rates


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def retention(row: dict, probe_test: float) -> float:
    """How much of the side network's gain over the linear probe the faded model keeps; undefined (nan) when the side
    network does not beat the probe."""
    gain = row["side_test"] - probe_test
    return (row["test"] - probe_test) / gain if gain > 0 else float("nan")


def fading_columns(rows: list[dict], probe_test: float | None) -> str:
    """Side network test accuracy and retention over the runs that recorded the side network."""
    with_side = [r for r in rows if "side_test" in r]
    if not with_side:
        return "— | —"
    seeds = f" ({len(with_side)} of {len(rows)} seeds)" if len(with_side) < len(rows) else ""
    retained = "—"
    if probe_test is not None:  # over the runs whose side network beats the probe (undefined otherwise)
        defined = [value for value in (retention(r, probe_test) for r in with_side) if not math.isnan(value)]
        retained = (mean_std(defined) if defined else "undefined") + (f" ({len(defined)} of {len(rows)} seeds)" if len(defined) < len(rows) else "")
    return f"{mean_std([r['side_test'] for r in with_side])}{seeds} | {retained}"


def header(result: dict) -> list[str]:
    """A memory/speed run's command, date, device and library versions."""
    versions = ", ".join(f"{library} {version}" for library, version in result["versions"].items())
    return [f"`{result['command']}` — {result['date']}, {result['device']}, {versions}", ""]


def image_size(result: dict) -> int | None:
    """A memory/speed run's image side in pixels; None for text (ViT runs before the field was recorded: 224)."""
    return result.get("image_size") or (224 if result["model"].startswith("vit") else None)


def batch_shape(result: dict) -> str:
    size = image_size(result)
    return f"batch {result['batch']} " + (f"images at {size} px" if size else f"x {result['length']} tokens")


# Gradient checkpointing recomputes the same arithmetic (torch restores the RNG state for dropout): a checkpointed
# method's accuracy is its plain run's, so the plots and the decision table take it from there.
CHECKPOINTED = {"lora_checkpointed": "lora", "layernorm_checkpointed": "layernorm"}
CHECKPOINTED_NOTE = "The checkpointed methods are placed at their plain runs' accuracy: checkpointing recomputes the same arithmetic."
