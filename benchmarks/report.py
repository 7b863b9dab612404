"""Build ``benchmarks/RESULTS.md`` and the accuracy-vs-memory plot from the suites' result files.

    python benchmarks/report.py

Reads ``results/memory_speed-*.json``, ``results/sweep-*.json`` and ``results/accuracy-minilm.jsonl``;
writes ``RESULTS.md`` (generated tables, then the target checks, then ``analysis.md`` verbatim) and
``accuracy_vs_memory.png``. Nothing is typed in by hand except ``analysis.md``.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
NAMES = {
    "full": "full fine-tuning",
    "lora": "LoRA r=8 (query, value)",
    "layernorm": "LayerNorm tuning",
    "bitfit": "BitFit",
    "side_kept": "ladder side network kept (LST)",
    "mdpd": "MDPD, faded (defaults)",
    "mdpd_backprop": "MDPD, fading by plain backprop (paper)",
    "mdpd_head_only": "MDPD, head-only fading",
    "probe": "linear probe (frozen encoder)",
}


def header(result: dict) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in result["versions"].items())
    return [f"`{result['command']}` — {result['date']}, {result['device']}, {versions}", ""]


def memory_speed_table(result: dict) -> list[str]:
    lines = [
        f"### {result['model']}, batch {result['batch']} x {result['length']} tokens",
        "",
        *header(result),
        "| method | trainable | peak training MiB | x LoRA | step time x LoRA | inference x base | inference x side-kept |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, row in result["methods"].items():
        lines.append(
            f"| {NAMES[method]} | {row['trainable_parameters']:,} | {row['peak_mib']:.1f} | {row['peak_vs_lora']:.2f} "
            f"| {row['step_vs_lora']:.2f} | {row['latency_vs_base']:.2f} | {row['latency_vs_side_kept']:.2f} |"
        )
    return [*lines, ""]


def sweep_table(result: dict) -> list[str]:
    methods = list(result["runs"][0]["peak_mib"])
    lines = [
        "### Peak training memory (MiB) as the work grows",
        "",
        *header(result),
        "| batch x length | " + " | ".join(NAMES[m] for m in methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for run in result["runs"]:
        lines.append(f"| {run['batch']} x {run['length']} | " + " | ".join(f"{run['peak_mib'][m]:.0f}" for m in methods) + " |")
    return [*lines, ""]


def accuracy_rows(path: Path, full_data_only: bool = True) -> dict[str, list[dict]]:
    by_method = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if not full_data_only or row.get("train_size", 0) >= 10000:  # smoke runs use a subset
            by_method[row["method"]].append(row)
    return by_method


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def accuracy_table(by_method: dict[str, list[dict]]) -> list[str]:
    lines = [
        "### Accuracy: all-MiniLM-L6-v2 on Rotten Tomatoes (main job's split; test at the best validation epoch)",
        "",
        "`python benchmarks/accuracy.py` (and `--probe`); mean ± std over seeds.",
        "",
        "| method | seeds | validation | test |",
        "|---|---:|---:|---:|",
    ]
    for method in [m for m in NAMES if m in by_method]:
        rows = by_method[method]
        lines.append(
            f"| {NAMES[method]} | {len(rows)} | {mean_std([r['validation'] for r in rows])} | {mean_std([r['test'] for r in rows])} |"
        )
    return [*lines, ""]


def target_checks(bert_base: dict | None, by_method: dict[str, list[dict]]) -> list[str]:
    """MDPD's targets from the benchmark issue, each with its measured number."""
    checks = []
    if bert_base is not None:
        mdpd = bert_base["methods"]["mdpd"]
        checks.append(("peak training memory <= 0.25x LoRA (BERT-base, 16 x 128)", f"{mdpd['peak_vs_lora']:.2f}x", mdpd["peak_vs_lora"] <= 0.25))
        checks.append(("training step time <= 1.0x LoRA", f"{mdpd['step_vs_lora']:.2f}x", mdpd["step_vs_lora"] <= 1.0))
        checks.append(("faded inference latency 1.00x base (± 3%)", f"{mdpd['latency_vs_base']:.3f}x", abs(mdpd["latency_vs_base"] - 1) <= 0.03))
    if by_method.get("mdpd") and by_method.get("lora"):
        faded = statistics.mean(r["test"] for r in by_method["mdpd"])
        lora = statistics.mean(r["test"] for r in by_method["lora"])
        seeds = min(len(by_method["mdpd"]), len(by_method["lora"]))
        measured = f"{100 * (faded - lora):+.1f} points ({seeds} seed{'s' if seeds > 1 else ''})"
        checks.append(("faded test accuracy >= LoRA - 0.5 points", measured, faded >= lora - 0.005))
    lines = ["## MDPD's targets", "", "| target | measured | |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {'met' if met else '**missed**'} |" for name, value, met in checks]
    return [*lines, ""]


def plot(memory: dict, by_method: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for method, row in memory["methods"].items():
        if method in by_method:
            accuracy = statistics.mean(r["test"] for r in by_method[method])
            axes.scatter(row["peak_mib"], 100 * accuracy, s=60)
            axes.annotate(NAMES[method], (row["peak_mib"], 100 * accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axes.set_xlabel(f"peak training memory, MiB ({memory['model']}, batch {memory['batch']} x {memory['length']})")
    axes.set_ylabel("test accuracy, % (Rotten Tomatoes)")
    axes.set_title("Accuracy vs training memory")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(results: Path = HERE / "results", output_dir: Path = HERE, full_data_only: bool = True) -> Path:
    """Write ``RESULTS.md`` (and the plot when MiniLM memory and accuracy runs exist) into ``output_dir``.

    ``full_data_only=False`` also counts accuracy runs on a training subset (the CI smoke test's).
    """
    lines = ["# Benchmark results", "", "Generated by `python benchmarks/report.py` from `benchmarks/results/`.", ""]
    memory_speed = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("memory_speed-*.json"))}
    sweeps = [json.loads(p.read_text()) for p in sorted(results.glob("sweep-*.json"))]
    accuracy_file = results / "accuracy-minilm.jsonl"
    by_method = accuracy_rows(accuracy_file, full_data_only) if accuracy_file.exists() else {}
    bert_base = next((r for r in memory_speed.values() if r["model"] == "bert-base" and r["batch"] == 16 and r["length"] == 128), None)

    lines += target_checks(bert_base, by_method)
    lines += ["## Memory and speed", ""]
    for result in memory_speed.values():
        lines += memory_speed_table(result)
    for result in sweeps:
        lines += sweep_table(result)
    if by_method:
        lines += ["## Accuracy", ""] + accuracy_table(by_method)
    # The accuracy runs are MiniLM's, so the plot takes MiniLM's memory (any model's if none was measured).
    memory = next((r for r in memory_speed.values() if r["model"] == "minilm"), next(iter(memory_speed.values()), None))
    if memory is not None and by_method:
        plot(memory, by_method, output_dir / "accuracy_vs_memory.png")
        lines += ["![accuracy vs peak training memory](accuracy_vs_memory.png)", ""]
    analysis = HERE / "analysis.md"
    if analysis.exists():
        lines += [analysis.read_text()]
    (output_dir / "RESULTS.md").write_text("\n".join(lines))
    return output_dir / "RESULTS.md"


if __name__ == "__main__":
    main()
