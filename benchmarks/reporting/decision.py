"""The decision table that opens ``RESULTS.md`` (and the README's results section): the four ways to fine-tune for
less memory, side by side on the main benchmark (MiniLM on Rotten Tomatoes), and the verdict that follows from them.

Every figure comes from a result file: accuracy from each method's multi-seed runs at its best rate, memory from one
``memory_speed.py`` run that measured all four, training time from the runs that timed each (see ``ROWS``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .common import CHECKPOINTED, Results, best_learning_rate, by_method

MEMORY_RUN = "memory_speed-minilm-cpu.json"  # MiniLM, batch 32 x 64: the model and batch shape the accuracy runs train
SERVING_RUN = "serving-minilm-cpu.json"
ADDING_A_TASK = "adding_a_task-rotten_tomatoes-minilm.json"


@dataclass(frozen=True)
class Row:
    """One way to fine-tune and where its figures come from.

    Args:
        method: its key in the memory run (``memory_speed.py``'s method names).
        title: the row's name.
        meaning: what the method is and what it ships.
        ships: what it deploys.
        accuracy: (result file, method) whose runs at their best rate give validation / test accuracy.
        time: (result file, method) whose runs give the training minutes; a ``.json`` file holds one run per method
            under its name (``adding_a_task.py``'s).
    """

    method: str
    title: str
    meaning: str
    ships: str
    accuracy: tuple[str, str]
    time: tuple[str, str]


ROWS = (
    Row("mdpd", "Faded MDPD",
        "a ladder side network trains beside the frozen encoder and distils into the encoder's LayerNorms and head; "
        "`merge_and_unload()` drops it and ships the plain transformers model",
        "a plain transformers model", ("best-rate-full-minilm.jsonl", "mdpd"), ("best-rate-full-minilm.jsonl", "mdpd")),
    Row("side_kept", "Kept side network",
        "one side network per task on a frozen encoder that every task shares, trained on the encoder's cached states "
        "(`SideTaskConfig`); it stays at inference, so one encoder pass serves every task",
        "the encoder and a side network per task", ("side-task-rotten_tomatoes-minilm.jsonl", "side_task"), (ADDING_A_TASK, "side_task")),
    Row("layernorm_checkpointed", "LayerNorm tuning + gradient checkpointing",
        "PEFT's LayerNorm tuning (every LayerNorm's scale and shift, and the head: what the faded model ships) with "
        "transformers' gradient checkpointing; ships the plain model",
        "a plain transformers model", ("best-rate-full-minilm.jsonl", "layernorm"), ("two-phase-minilm.jsonl", "layernorm_checkpointed")),
    Row("lora_checkpointed", "LoRA + gradient checkpointing",
        "LoRA r=8 on the attention's query and value with gradient checkpointing, the usual low-memory choice; "
        "merged, it ships the plain model",
        "a plain transformers model (merged)", ("best-rate-full-minilm.jsonl", "lora"), (ADDING_A_TASK, "lora_checkpointed")),
)  # fmt: skip
REFERENCE = "lora_checkpointed"  # the row the time ratios compare with


def time_runs(results: Results, file: str, method: str) -> list[dict]:
    """``method``'s timed runs in ``file`` (a JSON-lines file's rows, or the run a ``.json`` file holds under its name)."""
    if file.endswith(".jsonl"):
        return by_method(results.rows(file)).get(method, [])
    return [results.json(file)[method]] if results.exists(file) else []


def training_minutes(run: dict) -> float:
    """A run's training minutes over all its epochs, evaluation excluded, plus the state cache's build where the run
    built one. The runs record the minutes to their reported (best validation) epoch, so these are scaled to every epoch
    trained (the protocol's 2 where a run does not record its epochs); a kept side network's run records its cache's
    build apart (``cache_build_minutes``)."""
    return run["train_minutes_to_epoch"] / run["epoch"] * run.get("epochs", 2) + (run.get("cache_build_minutes") or 0)


@dataclass
class Figures:
    """One row's measured figures (None where the result file is missing)."""

    rate: float | None = None
    seeds: int = 0
    validation: float | None = None
    test: float | None = None
    peak_mib: float | None = None
    latency_vs_base: float | None = None
    minutes: float | None = None
    timed_runs: int = 0


def figures(results: Results) -> dict[str, Figures]:
    """Each row's figures, by the row's method."""
    memory = results.json(MEMORY_RUN)["methods"] if results.exists(MEMORY_RUN) else {}
    measured = {}
    for row in ROWS:
        found = Figures()
        file, method = row.accuracy
        runs = by_method(results.rows(file)).get(method)
        if runs:
            chosen, rates = best_learning_rate({method: runs})
            found.rate, found.seeds = rates[method], len(chosen[method])
            found.validation = statistics.mean(run["validation"] for run in chosen[method])
            found.test = statistics.mean(run["test"] for run in chosen[method])
        if row.method in memory:
            found.peak_mib, found.latency_vs_base = memory[row.method]["peak_mib"], memory[row.method]["latency_vs_base"]
        timed = time_runs(results, *row.time)
        if timed:
            found.minutes, found.timed_runs = statistics.mean(training_minutes(run) for run in timed), len(timed)
        measured[row.method] = found
    return measured


def cell(value: float | None, form: str) -> str:
    return "—" if value is None else format(value, form)


def table_lines(measured: dict[str, Figures]) -> list[str]:
    reference = measured[REFERENCE].minutes
    lines = [
        "| method | validation / test accuracy | peak training MiB | training minutes | x LoRA + checkpointing | inference x base model | ships as |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in ROWS:
        found = measured[row.method]
        accuracy = f"{cell(found.validation, '.3f')} / {cell(found.test, '.3f')}"
        ratio = f"{found.minutes / reference:.2f}x" if found.minutes is not None and reference else "—"
        lines.append(f"| {row.title} | {accuracy} | {cell(found.peak_mib, '.1f')} | {cell(found.minutes, '.1f')} | {ratio} | {cell(found.latency_vs_base, '.2f')} | {row.ships} |")
    return lines


def sources_lines(results: Results, measured: dict[str, Figures]) -> list[str]:
    """Where each column comes from."""
    accuracy = "; ".join(
        f"{row.title}: `{row.accuracy[0]}`" + (f" at {measured[row.method].rate:g}, {measured[row.method].seeds} seeds" if measured[row.method].rate else "")
        for row in ROWS
    )
    minutes = "; ".join(f"{row.title}: `{row.time[0]}`, {measured[row.method].timed_runs} run{'s' if measured[row.method].timed_runs != 1 else ''}" for row in ROWS)
    memory = results.json(MEMORY_RUN) if results.exists(MEMORY_RUN) else None
    shape = f"all-MiniLM-L6-v2, batch {memory['batch']} x {memory['length']} tokens, {memory['date']}" if memory else "not measured"
    checkpointed = ", ".join(f"`{row.accuracy[1]}`" for row in ROWS if CHECKPOINTED.get(row.method) == row.accuracy[1])
    return [
        f"- **Accuracy**: all-MiniLM-L6-v2 on Rotten Tomatoes, the whole training split (10,246 sentences), test accuracy "
        f"at the best validation epoch, mean over seeds at each method's best validation rate ({accuracy}). Gradient "
        f"checkpointing recomputes the same arithmetic, so the checkpointed rows show their plain runs' accuracy ({checkpointed}).",
        f"- **Peak training memory**: one `memory_speed.py` run that measured all four (`{MEMORY_RUN}`: {shape}); tensor bytes "
        "of the first optimizer step above the weights, exact on CPU. The kept side network's figure is the ladder "
        "trained through the live encoder (`side_kept`); trained on cached states the encoder is not run at all.",
        f"- **Training minutes**: all epochs (2 for the encoder methods, 5 for the kept side network), evaluation excluded, "
        f"mean over the runs that timed it ({minutes}); the kept side network's include building the state cache, once per "
        "task. The kept side network and LoRA + checkpointing ran in one process, one after the other; the others in "
        "separate runs on the same shared 2-core CPU machine, so treat differences under ~20% as noise.",
        f"- **Inference**: latency of what each method ships against the untouched encoder, from `{MEMORY_RUN}` "
        "(1.00x for every plain model; its spread is the timing noise).",
    ]


def serving_gain(results: Results) -> tuple[int, float] | None:
    """The most tasks the MiniLM serving run served, and its throughput against that many merged models."""
    if not results.exists(SERVING_RUN):
        return None
    last = results.json(SERVING_RUN)["rows"][-1]
    return last["tasks"], last["side_tasks_vs_merged"]


def verdict_lines(results: Results, measured: dict[str, Figures]) -> list[str]:
    mdpd, kept, layernorm, lora = (measured[row.method] for row in ROWS)
    lines = []
    if None not in (lora.test, lora.peak_mib, layernorm.test, mdpd.test, layernorm.minutes, mdpd.minutes):
        lines.append(
            f"- **One task: prefer LoRA + gradient checkpointing** ({lora.test:.3f} test at {lora.peak_mib:.1f} MiB; it "
            f"ships the plain model), or LayerNorm tuning + checkpointing for the faded model's accuracy ({layernorm.test:.3f} test, "
            f"faded MDPD's {mdpd.test:.3f}) in {layernorm.minutes / mdpd.minutes:.2f}x its training time, with no side network."
        )
    gain = serving_gain(results)
    if None not in (kept.test, kept.minutes, lora.minutes) and gain is not None:
        tasks, ratio = gain
        lines.append(
            f"- **Many tasks on one encoder: keep side networks.** Each new task trains on cached encoder states in "
            f"{kept.minutes / lora.minutes:.2f}x LoRA + checkpointing's time ({kept.test:.3f} test here), and one encoder "
            f"pass serves them all: {ratio:.1f}x the throughput of {tasks} merged LoRA models when serving {tasks} tasks (`{SERVING_RUN}`). "
            f"A single kept task runs {kept.latency_vs_base:.2f}x the plain model's latency and needs this package to load."
        )
    if mdpd.test is not None and layernorm.test is not None:
        lines.append(
            "- **Faded MDPD** ships the plain model too, but lands at LayerNorm tuning's accuracy "
            f"({mdpd.test:.3f} test, LayerNorm tuning's {layernorm.test:.3f}): its side network teaches the faded parameters nothing "
            "they do not learn alone. It is for research on side-network distillation."
        )
    return lines


def measured_anything(measured: dict[str, Figures]) -> bool:
    return any(found.test is not None or found.peak_mib is not None for found in measured.values())


def decision_lines(results: Results) -> list[str]:
    """``RESULTS.md``'s opening section: the table, what each row means, the verdict, and how each figure was measured."""
    measured = figures(results)
    if not measured_anything(measured):
        return []
    meanings = [f"- **{row.title}**: {row.meaning}." for row in ROWS]
    return ["## Which method to use", "", "The main benchmark, all-MiniLM-L6-v2 on Rotten Tomatoes:", "", *table_lines(measured), "",
            *meanings, "", *verdict_lines(results, measured), "", "How each figure was measured:", "", *sources_lines(results, measured), ""]  # fmt: skip


def table_only(results: Results) -> list[str]:
    """The table alone: what the README and the docs' benchmarks page hold between their markers (their own text
    around it gives the conditions and the verdict)."""
    measured = figures(results)
    return table_lines(measured) if measured_anything(measured) else ["No benchmark results yet."]
