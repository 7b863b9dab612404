"""Serving N tasks from one encoder pass (``serving.py``): kept side tasks against N merged LoRA models and a mixed LoRA batch."""

from __future__ import annotations

from .common import Results

PLOT = "serving.png"


def serving_table(file: str, result: dict) -> list[str]:
    """One model's run: throughput per number of tasks and the ratios against the LoRA ways."""
    shape = f"batch {result['batch']}" + (f" x {result['length']} tokens" if result["model"] != "vit-base" else " images at 224 px")
    lines = [
        f"### {result['model']}, {shape}", "",
        f"`python benchmarks/serving.py --model {result['model']}` (`results/{file}`; {result['environment']['threads']} threads, median of "
        f"{result['repeats']} rounds, the three ways interleaved). Inputs served to all N tasks per second; ratios against N merged "
        "LoRA models run one after another.", "",
        "| N tasks | side tasks, inputs/s | N merged models | mixed LoRA batch | side tasks / merged | side tasks / mixed LoRA | side networks' cost, x an encoder pass | serving weights, x one model |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for row in result["rows"]:
        throughput = row["throughput"]
        lines.append(
            f"| {row['tasks']} | {throughput['side_tasks']:.1f} | {throughput['merged_models']:.1f} | {throughput['mixed_lora']:.1f} "
            f"| **{row['side_tasks_vs_merged']:.2f}x** | {row['side_tasks_vs_mixed_lora']:.2f}x | {row['side_share_of_a_pass']:.2f} "
            f"| {row['weights_vs_one_model']:.2f}x |"
        )
    return [*lines, ""]


def load(results: Results) -> dict[str, dict]:
    """Every throughput run (file name -> result); ``serving.py --profile``'s op-group files have no table yet."""
    return {file: results.json(file) for file in results.names("serving-*.json") if not file.startswith("serving-profile-")}


def serving_lines(results: Results) -> list[str]:
    """A table per serving run, then the throughput plot."""
    runs = load(results)
    lines = [line for file, result in runs.items() for line in serving_table(file, result)]
    return [*lines, f"![serving throughput]({PLOT})", ""] if runs else []
