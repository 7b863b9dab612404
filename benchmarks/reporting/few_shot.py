"""Few labels per task (``few_shot.py``): kept side networks against SetFit, the frozen embedding's probe and LoRA at
8, 16 and 64 examples per class and on the whole split; then the validation grid behind the few-label settings."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict

from .common import Results, mean_std

TASKS = {"rotten_tomatoes": "Rotten Tomatoes (2 classes)", "trec": "TREC coarse (6 classes)", "sms_spam": "SMS spam (2 classes, 13% spam)"}
PLOT = "few_shot.png"
METHODS = {  # the per-task tables' rows, in this order
    "setfit": "SetFit, defaults",
    "setfit_paper": "SetFit, the paper's settings",
    "side_task": "kept side network (defaults), 100 steps at 3e-3",
    "side_task_issue": "kept side network, 20 epochs at 3e-3",
    "side_task_probe_init_100_steps": "kept side network, head fitted as the probe first, gate shut, 100 steps at 3e-3",
    "side_task_probe_init_100_steps_1e-3": "kept side network, head fitted as the probe first, gate shut, 100 steps at 1e-3",
    "side_task_probe_init_attention_100_steps": "kept side network, attention pooling, head fitted as the probe first, gate shut, 100 steps at 3e-3",
    "side_task_probe_init_attention_100_steps_1e-3": "kept side network, attention pooling, head fitted as the probe first, gate shut, 100 steps at 1e-3",
    "side_task_attention": "kept side network, attention pooling (defaults otherwise), 100 steps at 3e-3",
    "side_task_contrastive": "kept side network, contrastive pairs on the cache (800 steps at 3e-4), then the probe fit",
    "side_task_contrastive_attention": "kept side network, attention pooling, contrastive pairs on the cache (800 steps at 3e-4), then the probe fit",
    "side_task_5_epochs": "kept side network (defaults), 5 epochs at 3e-3",
    "side_task_attention_5_epochs": "kept side network, attention pooling (defaults otherwise), 5 epochs at 3e-3",
    "embedding_probe": "frozen embedding + logistic regression",
    "lora": "LoRA r=8 (q, v), best rate",
}
# The plot's lines (the tables hold every variant): SetFit, the defaults, the documented few-label starts, the probe, LoRA,
# and the defaults' whole-split run (5 epochs: a point of its own)
PLOTTED = {
    "setfit": "SetFit, defaults",
    "side_task": "kept side network, defaults",
    "side_task_probe_init_100_steps_1e-3": "kept, probe start, mean pooling (1e-3)",
    "side_task_probe_init_attention_100_steps": "kept, probe start, attention pooling (3e-3)",
    "side_task_contrastive_attention": "kept, contrastive pairs, attention pooling",
    "side_task_5_epochs": "kept, defaults, 5 epochs (whole split)",
    "embedding_probe": "frozen embedding + logistic regression",
    "lora": "LoRA r=8 (q, v), best rate",
}
PROBE_INIT = re.compile(r"side_task_probe_init_(?P<steps>\d+)_steps(?:_(?P<rate>[0-9.e-]+?))?(?:_wd_(?P<decay>[0-9.]+))?$")


def method_title(method: str) -> str:
    """A method's row title; the grid's probe-init variants spelled out from their key."""
    if method in METHODS:
        return METHODS[method]
    match = PROBE_INIT.match(method)
    if match is None:
        return method
    decay = f", weight decay {match['decay']}" if match["decay"] else ""
    return f"head fitted as the probe first, gate shut, {match['steps']} steps at {match['rate'] or '3e-3'}{decay}"


def k_order(groups: dict) -> list[str]:
    """Examples per class as measured, the whole split last."""
    ks = {key[1] for key in groups}
    return sorted((k for k in ks if k != "all"), key=int) + (["all"] if "all" in ks else [])


def grouped(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """(task, k, method) -> the runs to report; LoRA's at the rate with the best mean validation accuracy, each run
    carrying the rates that cell tried (``grid``)."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["task"], str(row["k"]), row["method"])].append(row)
    for key, runs in groups.items():
        if key[2] == "lora":
            by_rate = defaultdict(list)
            for run in runs:
                by_rate[run["settings"]["learning_rate"]].append(run)
            best = max(by_rate.values(), key=lambda same: statistics.mean(run["validation"] for run in same))
            groups[key] = [{**run, "grid": sorted(by_rate)} for run in best]
    return groups


def load(results: Results) -> dict[tuple[str, str, str], list[dict]]:
    return grouped([row for task in TASKS for row in results.rows(f"few-shot-{task}-minilm.jsonl")])


def accuracy_cells(runs: list[dict]) -> str:
    validation = [run["validation"] for run in runs if run.get("validation") is not None]
    return f"{mean_std(validation) if validation else '—'} | {mean_std([run['test'] for run in runs])}"


def task_table(groups: dict, task: str, methods: list[str], title=method_title) -> list[str]:
    lines = ["| examples per class | method | draws | validation | test | training min | cache build min |", "|---:|---|---:|---:|---:|---:|---:|"]
    for k in k_order(groups):
        for method in methods:
            runs = groups.get((task, k, method))
            if not runs:
                continue
            cache = [run["cache_build_minutes"] for run in runs if run.get("cache_build_minutes") is not None]
            rate = f" ({runs[0]['settings']['learning_rate']:g} of {', '.join(f'{r:g}' for r in runs[0]['grid'])})" if method == "lora" else ""
            capped = f" (capped at {runs[0]['steps']} steps)" if any(run.get("capped") for run in runs) else ""
            lines.append(f"| {k} | {title(method)}{rate}{capped} | {len(runs)} | {accuracy_cells(runs)} | "
                         f"{statistics.mean(run['train_minutes'] for run in runs):.2f} | {f'{statistics.mean(cache):.3f}' if cache else ''} |")  # fmt: skip
    return [*lines, ""]


def serving_cost_lines(results: Results) -> list[str]:
    """Serving N tasks in units of one encoder pass (``serving.py``'s MiniLM run): SetFit serves N tuned bodies."""
    if not results.exists("serving-minilm-cpu.json"):
        return []
    measured = results.json("serving-minilm-cpu.json")
    lines = ["Serving N tasks, in encoder passes (`results/serving-minilm-cpu.json`: MiniLM, batch 32 x 64 tokens, CPU):", "",
             "| tasks N | SetFit: N tuned bodies | kept side networks: one pass + N side networks |", "|---:|---:|---:|"]  # fmt: skip
    for row in measured["rows"]:
        seconds = row["seconds"]
        lines.append(f"| {row['tasks']} | {seconds['merged_models'] / seconds['encoder_pass']:.2f} | {seconds['side_tasks'] / seconds['encoder_pass']:.2f} |")
    return [*lines, ""]


def few_shot_lines(results: Results) -> list[str]:
    """A table per task, the plot, what serving costs, and the few-label grid."""
    groups = load(results)
    tasks = [task for task in TASKS if any(key[0] == task for key in groups)]
    if not tasks:
        return []
    lines = [
        "## Few labels per task", "",
        "`python benchmarks/few_shot.py` (`results/few-shot-<task>-minilm.jsonl`): the packaged all-MiniLM-L6-v2 for every "
        "method, k examples per class drawn by SetFit's sampler (seeded draws), the fixed validation and test splits; "
        "accuracy of the final model, mean ± std over draws (SetFit chooses nothing on validation: no validation column); "
        "LoRA ran the first 3 draws at each rate of its grid, the other methods 5. "
        "Training minutes on one thread; the kept side network's cache build (its encoder pass over the draw) apart, near "
        "zero where a variant ran right after another on the same rows and reused its cache. "
        "The whole split (`all`) is one run on the whole training split; LoRA and LayerNorm tuning on the whole Rotten Tomatoes and TREC "
        "splits are in the kept side networks' per-task tables above, at their best rates.", "",
    ]  # fmt: skip
    for task in tasks:
        lines += [f"### {TASKS[task]}", "", *task_table(groups, task, list(METHODS))]
    lines += [f"![test accuracy against examples per class]({PLOT})", "", *serving_cost_lines(results)]
    grid = grouped(results.rows("few-shot-grid-trec-minilm.jsonl"))
    if grid:
        variants = sorted({key[2] for key in grid}, key=lambda method: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", method)])
        lines += ["### The few-label grid (TREC coarse, `results/few-shot-grid-trec-minilm.jsonl`)", "",
                  "The kept side network with its head fitted as the probe first and the gate shut, at each number of steps "
                  "(batch 32) and rate; validation chooses.", "", *task_table(grid, "trec", variants)]  # fmt: skip
    return lines
