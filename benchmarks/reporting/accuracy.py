"""Accuracy tables: each method's runs over seeds (with the faded model's side network and retention), and the
learning-rate grids, each method at its best validation rate."""

from __future__ import annotations

import statistics

from .common import NAMES, Results, best_learning_rate, fading_columns, mean_std, name

MINUTES = {  # a run's time field: what the column says it is
    "train_minutes_to_epoch": "training minutes to the reported epoch",
    "minutes": "whole-run minutes (training and evaluation, both epochs)",
}


def minutes_key(rows: list[dict]) -> str | None:
    """The time field every one of ``rows`` recorded (the more precise first), or None."""
    return next((key for key in MINUTES if all(key in row for row in rows)), None)


def accuracy_table(by_method: dict[str, list[dict]], methods: list[str], title: str, source: str = "`python benchmarks/accuracy.py` (and `--probe`)") -> list[str]:
    """``methods``' runs (those present in ``by_method``), mean ± std over seeds; retention against the ``probe`` rows."""
    probe_test = statistics.mean(r["test"] for r in by_method["probe"]) if by_method.get("probe") else None
    timed = minutes_key([row for method, rows in by_method.items() if method != "probe" for row in rows])
    lines = [
        f"### {title}",
        "",
        f"{source}; mean ± std over seeds. For faded MDPD, the side network's "
        "test accuracy at the same epoch and retention = (faded − probe) / (side − probe)."
        + (f" Minutes: {MINUTES[timed]}, mean over the seeds, one run at a time on a shared 2-core machine." if timed else ""),
        "",
        "| method | seeds | validation | test | side network test | retention |" + (" minutes |" if timed else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if timed else ""),
    ]
    for method in [m for m in methods if m in by_method]:
        rows = by_method[method]
        minutes = f" {statistics.mean(r[timed] for r in rows):.1f} |" if timed and method != "probe" else " — |" if timed else ""
        lines.append(
            f"| {name(method)} | {len(rows)} | {mean_std([r['validation'] for r in rows])} | {mean_std([r['test'] for r in rows])} "
            f"| {fading_columns(rows, probe_test)} |" + minutes
        )
    return [*lines, ""]


def known_first(by_method: dict[str, list[dict]]) -> list[str]:
    """The methods of ``by_method``, those with a name in ``NAMES``' order, then any new ones in the file's order."""
    return [*(m for m in NAMES if m in by_method), *(m for m in by_method if m not in NAMES)]


GRIDS = {  # result file: what it holds
    "lr-grid-minilm.jsonl": "all-MiniLM-L6-v2, the first 3,000 Rotten Tomatoes training sentences",
    "lr-grid-trec-minilm.jsonl": "all-MiniLM-L6-v2, TREC question types (whole training split)",
    "lr-grid-trec-fine-5-epochs-minilm.jsonl": "all-MiniLM-L6-v2, TREC's 50 fine question types (whole training split, 5 epochs)",
    "best-rate-full-minilm.jsonl": "all-MiniLM-L6-v2, the whole Rotten Tomatoes training split, each method at its 3,000-sentence grid's best rate",
    "two-phase-minilm.jsonl": "all-MiniLM-L6-v2, the whole Rotten Tomatoes training split: MDPD in two phases, and LayerNorm tuning + checkpointing",
}


def learning_rate_grid_lines(file: str, title: str, by_method: dict[str, list[dict]]) -> list[str]:
    """Validation accuracy per method and learning rate (mean over the seeds run), then each method at its best
    rate (``best_learning_rate``): validation, test and the minutes of training to the reported epoch. ``by_method``:
    the rows of result file ``file``."""
    chosen, best = best_learning_rate(by_method)
    rates = sorted({row["learning_rate"] for rows in by_method.values() for row in rows})
    lines = [
        f"### Learning-rate grid: {title}", "",
        f"`python benchmarks/accuracy.py --learning-rates ...` (`results/{file}`). Validation accuracy per rate (mean over "
        "the seeds run there); the best rate is chosen on the seeds every rate was run with (the grid's); at it, mean ± std over its seeds, and the training minutes "
        "to the reported epoch (one run at a time on this 2-core machine, not a quiet one).", "",
        "| method | " + " | ".join(f"{rate:g}" for rate in rates) + " | best rate | seeds | validation | test | minutes |",
        "|---|" + "---:|" * (len(rates) + 5),
    ]  # fmt: skip
    for method in known_first(by_method):
        cells = []
        for rate in rates:
            values = [row["validation"] for row in by_method[method] if row["learning_rate"] == rate]
            cells.append(f"{statistics.mean(values):.3f}" if values else "–")
        rows = chosen[method]
        minutes = statistics.mean(row["train_minutes_to_epoch"] for row in rows)
        lines.append(
            f"| {name(method)} | " + " | ".join(cells) + f" | {best[method]:g} | {len(rows)} | {mean_std([r['validation'] for r in rows])} "
            f"| {mean_std([r['test'] for r in rows])} | {minutes:.1f} |"
        )
    return [*lines, ""]


def grids(results: Results, titles: dict[str, str]) -> dict[str, tuple[str, dict[str, list[dict]]]]:
    """The grid files of ``titles`` (file -> title) present: file -> (title, rows by method)."""
    return {file: (title, results.by_method(file)) for file, title in titles.items() if results.exists(file)}


ABLATION = ["mdpd", "mdpd_logits_only", "mdpd_features_only", "mdpd_mask_0.25", "mdpd_mask_0.75"]


def rotten_tomatoes_lines(results: Results, file: str) -> list[str]:
    """Every method's runs at the fixed rates of ``accuracy.py`` without a grid (``LEARNING_RATES``)."""
    title = "Accuracy: all-MiniLM-L6-v2 on Rotten Tomatoes (the standard split; test at the best validation epoch)"
    return accuracy_table(results.by_method(file, results.full_data_only), [m for m in NAMES if m not in ABLATION[1:]], title)


def ablation_lines(results: Results, file: str) -> list[str]:
    """The ablation runs on a training subset by design, so ``full_data_only`` does not apply."""
    ablation = results.by_method(file)
    sizes = sorted({r["train_size"] for rows in ablation.values() for r in rows})
    title = f"Ablation (the paper's Table 5 and Fig. A, in miniature: {', '.join(map(str, sizes))} training sentences)"
    return accuracy_table(ablation, ABLATION, title)  # retention against the probe on the same subset


ACCURACY_TABLES = {"accuracy-minilm.jsonl": rotten_tomatoes_lines, "ablation-minilm.jsonl": ablation_lines}
