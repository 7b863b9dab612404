"""The report's plots (PNG, matplotlib's file-only backend). Each section module says which runs a plot draws and
links it; this module only draws. matplotlib's output is not byte-stable, so ``report.py --check`` does not check them."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

from .common import CHECKPOINTED, batch_shape, best_learning_rate, name, short_name


def pyplot():
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: Path) -> None:
    """Write ``figure`` to ``path`` and free it."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)


def accuracy_vs_memory(memory: dict, by_method: dict[str, list[dict]], path: Path, task: str = "Rotten Tomatoes") -> None:
    """Test accuracy against peak training memory (checkpointed methods at their plain runs' accuracy)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for method, row in memory["methods"].items():
        runs = by_method.get(method) or by_method.get(CHECKPOINTED.get(method))
        if runs:
            accuracy = statistics.mean(r["test"] for r in runs)
            axes.scatter(row["peak_mib"], 100 * accuracy, s=40)
            axes.annotate(name(method), (row["peak_mib"], 100 * accuracy), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axes.set_xscale("log")  # from a kept side network's tens of MiB to full fine-tuning's hundreds
    from matplotlib.ticker import ScalarFormatter  # plain MiB on the ticks (pyplot() has imported matplotlib)

    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(ScalarFormatter())
    axes.set_xlabel(f"peak training memory, MiB, log scale ({memory['model']}, {batch_shape(memory)})")
    axes.set_ylabel(f"test accuracy, % ({task}, best rate)")
    axes.set_title("Accuracy vs training memory")
    save(figure, path)


def accuracy_vs_time(grids: dict[str, dict[str, list[dict]]], path: Path) -> None:
    """Test accuracy at each method's best validation rate against its training minutes, one panel per grid
    (title -> its rows by method)."""
    plt = pyplot()
    figure, panels = plt.subplots(1, len(grids), figsize=(6 * len(grids), 4), squeeze=False)
    for axes, (title, by_method) in zip(panels[0], grids.items()):
        chosen, _ = best_learning_rate(by_method)
        for method, rows in chosen.items():
            minutes = statistics.mean(row["train_minutes_to_epoch"] for row in rows)
            accuracy = 100 * statistics.mean(row["test"] for row in rows)
            axes.scatter(minutes, accuracy, s=60)
            axes.annotate(short_name(method), (minutes, accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
        axes.set_xlabel("training minutes to the reported epoch (2 CPU cores)")
        axes.set_ylabel("test accuracy, % (best validation rate)")
        axes.set_title(textwrap.fill(title, 70), fontsize=9)
        axes.margins(0.15)  # room for the labels
    save(figure, path)


def state_cache_time(timings: list[dict], path: Path) -> None:
    """Side training's whole-run wall time against epochs, live and on the cache, per model (the first seed's runs)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for result in timings:
        first_seed = min(run["seed"] for run in result["runs"])
        for cached, style in ((False, "o-"), (True, "s--")):
            runs = sorted((run for run in result["runs"] if run["cached"] == cached and run["seed"] == first_seed), key=lambda run: run["epochs"])
            if len({run["epochs"] for run in runs}) > 1:
                label = f"{result['model']}, {result['train_examples']:,} examples, {'on the cache (build included)' if cached else 'live backbone'}"
                axes.plot([run["epochs"] for run in runs], [run["wall_s"] for run in runs], style, label=label)
    axes.set_xlabel("epochs of side training")
    axes.set_ylabel("whole-run wall time, s")
    axes.set_title("Side training: live backbone vs backbone-state cache")
    axes.legend(fontsize=8)
    save(figure, path)


def serving(runs: dict[str, dict], path: Path) -> None:
    """Throughput of N tasks from one pass over N merged models, against N, per model (``runs``: file -> result)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for result in runs.values():
        axes.plot([row["tasks"] for row in result["rows"]], [row["side_tasks_vs_merged"] for row in result["rows"]], "o-", label=result["model"])
    axes.axhline(1.0, color="gray", linewidth=0.8)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("tasks served on the same inputs (N)")
    axes.set_ylabel("throughput, x N merged LoRA models")
    axes.set_title("Kept side tasks: one encoder pass for N tasks")
    axes.legend(fontsize=8)
    save(figure, path)


def few_shot(groups: dict, tasks: dict[str, str], methods: dict[str, str], ks: list[str], path: Path) -> None:
    """Test accuracy against examples per class, a panel per task, a line per method with its std band."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, (task, title) in zip(axes[0], tasks.items()):
        for index, (method, label) in enumerate(methods.items()):
            points = [(i, [run["test"] for run in groups[(task, k, method)]]) for i, k in enumerate(ks) if groups.get((task, k, method))]
            if not points:
                continue
            x = [i for i, _ in points]
            mean = [statistics.mean(tests) for _, tests in points]
            std = [statistics.stdev(tests) if len(tests) > 1 else 0.0 for _, tests in points]
            (line,) = axis.plot(x, mean, marker="o", color=f"C{index}", label=textwrap.shorten(label, 48))  # one colour per method
            axis.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=line.get_color(), alpha=0.15)
        axis.set_xticks(range(len(ks)), [k if k != "all" else "whole split" for k in ks])
        axis.set_xlabel("training examples per class")
        axis.set_ylabel("test accuracy")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    labelled = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}  # every panel's methods
    axes[0][0].legend(labelled.values(), labelled.keys(), fontsize=7, loc="upper left")
    save(figure, path)
