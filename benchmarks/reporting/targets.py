"""MDPD against its targets: memory, step time and latency from the BERT-base 16 x 128 run, accuracy per task at each
method's best validation rate, each with its measured figure and the results it comes from."""

from __future__ import annotations

import statistics

from .common import Results, best_learning_rate, retention, short_name
from .image import IMAGE_BENCHMARK

Check = tuple[str, str, str, bool]  # target, measured, from, met

# Per task: the best-rate, multi-seed result file the accuracy targets read, and the file with the linear probe
# on the same split (retention's floor; None where no probe was run).
TARGET_TASKS = {
    "Rotten Tomatoes": ("best-rate-full-minilm.jsonl", "accuracy-minilm.jsonl"),
    "TREC": ("lr-grid-trec-minilm.jsonl", None),
    "Fashion-MNIST (DINOv2-small)": IMAGE_BENCHMARK,
}


def memory_targets(file: str, result: dict) -> list[Check]:
    """MDPD's memory, step-time and latency targets, from one BERT-base 16 x 128 run (file ``file``)."""
    mdpd, checkpointed = result["methods"]["mdpd"], result["methods"].get("lora_checkpointed")
    source = f"`{file}`, {result['date']}"
    checks = [
        ("peak training memory <= 0.25x LoRA (BERT-base, 16 x 128)", f"{mdpd['peak_vs_lora']:.2f}x", source, mdpd["peak_vs_lora"] <= 0.25),
        ("training step time <= 1.0x LoRA", f"{mdpd['step_vs_lora']:.2f}x", source, mdpd["step_vs_lora"] <= 1.0),
        ("faded inference latency 1.00x base (± 3%)", f"{mdpd['latency_vs_base']:.3f}x", source, abs(mdpd["latency_vs_base"] - 1) <= 0.03),
    ]
    if checkpointed is not None:
        step = mdpd["step_s"] / checkpointed["step_s"]
        checks += [
            ("peak training memory below LoRA + checkpointing's", f"{mdpd['peak_mib']:.1f} vs {checkpointed['peak_mib']:.1f} MiB", source, mdpd["peak_mib"] < checkpointed["peak_mib"]),
            ("training step time <= LoRA + checkpointing's", f"{step:.2f}x", source, step <= 1.0),
        ]  # fmt: skip
    return checks


def accuracy_targets(task: str, file: str, by_method: dict[str, list[dict]], probe: tuple[str, list[dict]] | None) -> list[Check]:
    """MDPD's accuracy targets on one task, each method at its best validation rate in file ``file``; ``probe``:
    the file and rows of the linear probe on the same split, for retention."""
    chosen, rates = best_learning_rate(by_method)
    test = {method: statistics.mean(row["test"] for row in rows) for method, rows in chosen.items()}

    def source(*methods: str) -> str:
        return f"`{file}`: " + ", ".join(f"{short_name(m)} at {rates[m]:g} x {len(chosen[m])} seeds" for m in methods)

    checks = []
    for baseline, label, margin in (("lora", "LoRA", -0.5), ("layernorm", "LayerNorm tuning", 1.0)):
        if "mdpd" in test and baseline in test:
            gap = 100 * (test["mdpd"] - test[baseline])
            target = f"{task}: faded test accuracy >= {label} {'+' if margin > 0 else '-'} {abs(margin):.1f} points"
            checks.append((target, f"{gap:+.1f} points", source("mdpd", baseline), gap >= margin))
    with_side = [row for row in chosen.get("mdpd", []) if "side_test" in row]
    if with_side and probe is not None:
        probe_file, probes = probe
        retained = statistics.mean(retention(row, statistics.mean(p["test"] for p in probes)) for row in with_side)
        floor = f" (floor: the linear probe in `{probe_file}`, {len(probes)} seed{'s' if len(probes) > 1 else ''})"
        checks.append((f"{task}: retention >= 0.9", f"{retained:.2f}", source("mdpd") + floor, retained >= 0.9))
    return checks


def target_checks(checks: list[Check]) -> list[str]:
    """The targets table: each target with its measured number and the results it comes from."""
    lines = [
        "## MDPD's targets",
        "",
        "Accuracy at each method's best validation learning rate, mean over the seeds named; memory and step time "
        "from today's BERT-base run (step time: interleaved medians on a shared 2-core machine, so noisy).",
        "",
        "| target | measured | from | |",
        "|---|---:|---|---|",
    ]
    lines += [f"| {target} | {value} | {source} | {'met' if met else '**missed**'} |" for target, value, source, met in checks]
    return [*lines, ""]


def target_lines(results: Results, memory_speed: dict[str, dict]) -> list[str]:
    """The targets table: memory and speed from the first BERT-base 16 x 128 run of ``memory_speed`` (file -> result)
    with MDPD in it, accuracy from the best-rate files."""
    checks = []
    for file, result in memory_speed.items():
        if result["model"] == "bert-base" and (result["batch"], result["length"]) == (16, 128) and "mdpd" in result["methods"]:
            checks += memory_targets(file, result)
            break
    for task, (file, probe_file) in TARGET_TASKS.items():
        if results.exists(file):
            probes = results.by_method(probe_file, results.full_data_only).get("probe") if probe_file else None
            checks += accuracy_targets(task, file, results.by_method(file), (probe_file, probes) if probes else None)
    return target_checks(checks) if checks else []
