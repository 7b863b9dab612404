"""Serving N tasks from one encoder pass: kept side tasks against N merged LoRA models and a mixed LoRA batch
(``serving.py``), where the side tasks' time goes (``serving.py --profile``), on ONNX Runtime (``serving_onnx.py``)
and over HTTP (``serving_http.py``)."""

from __future__ import annotations

from .common import Results

PLOT = "serving.png"


def serving_table(file: str, result: dict) -> list[str]:
    """One model's run: throughput per number of tasks and the ratios against the LoRA ways."""
    shape = f"batch {result['batch']}" + (f" x {result['length']} tokens" if result["model"] != "vit-base" else " images at 224 px")
    settings = f", {settings_text(result['settings'])}" if result.get("settings") else ""
    lines = [
        f"### {result['model']}, {shape}{settings}", "",
        f"`python benchmarks/serving.py --model {result['model']}` (`results/{file}`; {result['environment']['date']}, {result['environment']['threads']} threads, median of "
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
    """Every in-process throughput run of ``serving.py`` (file name -> result)."""
    return {file: results.json(file) for file in results.names("serving-*.json") if not file.startswith(("serving-profile-", "serving-onnx-", "serving-http-"))}


def serving_lines(results: Results) -> list[str]:
    """A table per in-process serving run and the throughput plot, then the profiles, ONNX Runtime and HTTP runs."""
    runs = load(results)
    lines = [line for file, result in runs.items() for line in serving_table(file, result)]
    return [*lines, *([f"![serving throughput]({PLOT})", ""] if runs else []), *deployment_lines(results)]


def settings_text(settings: dict) -> str:
    """The kept ladders' settings a run measured, where not ``SideTaskConfig``'s defaults."""
    if not settings:
        return "the kept defaults"
    parts = []
    for key, value in settings.items():
        if key == "reduction_factor":
            parts.append(f"r = {value}")
        elif key == "side_head_dim":
            parts.append("the backbone's head count" if value is None else f"{value}-wide heads")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def profile_table(file: str, result: dict) -> list[str]:
    """Where the side tasks' part of a pass goes, op group by op group, per N (``serving.py --profile``)."""
    rows = result["rows"]
    groups = list(rows[0]["side_ms"])
    lines = [
        f"### Profile, {result['model']}, batch {result['batch']} x {result['length']} tokens, {settings_text(result.get('settings', {}))}", "",
        f"`python benchmarks/serving.py --profile` (`results/{file}`; {result['environment']['threads']} threads): torch.profiler's self CPU "
        f"time per operator, summed by op group, for the bundle's pass less the encoder's own; median of {result['repeats']} passes.", "",
        "| op group | " + " | ".join(f"N = {row['tasks']}, ms" for row in rows) + " |",
        "|---|" + "---:|" * len(rows),
        *(f"| {group} | " + " | ".join(f"{row['side_ms'][group]:.1f}" for row in rows) + " |" for group in groups),
        "| **side tasks in all** | " + " | ".join(f"**{sum(row['side_ms'].values()):.1f}**" for row in rows) + " |",
        "| the encoder pass | " + " | ".join(f"{row['encoder_ms']:.1f}" for row in rows) + " |",
        "| side share of a pass | " + " | ".join(f"{row['side_share_of_a_pass']:.3f}" for row in rows) + " |", "",
    ]  # fmt: skip
    return lines


def onnx_table(file: str, result: dict) -> list[str]:
    """The bundle and N merged models on ONNX Runtime against PyTorch (``serving_onnx.py``)."""
    lines = [
        f"### ONNX Runtime, {result['model']}, batch {result['batch']} x {result['length']} tokens", "",
        f"`python benchmarks/serving_onnx.py` (`results/{file}`; {result['threads']} threads; median of {result['repeats']} interleaved "
        "rounds): the bundle exported by `export_onnx` as one graph, and the N merged models each exported the standard way, "
        "timed on ONNX Runtime and on PyTorch.", "",
        "| N tasks | ORT / PyTorch, bundle | ORT / PyTorch, merged models | bundle / merged, PyTorch | bundle / merged, ORT | largest logit difference, bundle |",
        "|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for row in result["rows"]:
        lines.append(
            f"| {row['tasks']} | {row['ort_vs_torch_bundle']:.2f}x | {row['ort_vs_torch_merged']:.2f}x | {row['bundle_vs_merged_torch']:.2f}x "
            f"| **{row['bundle_vs_merged_ort']:.2f}x** | {row['largest_logit_difference']['bundle']:.1e} |"
        )
    return [*lines, ""]


def http_table(file: str, result: dict) -> list[str]:
    """The HTTP server under load: the bundle against the same deployment serving N merged models (``serving_http.py``)."""
    lines = [
        f"### Over HTTP (`mdpd-peft serve`), {result['model']}", "",
        f"`python benchmarks/serving_http.py` (`results/{file}`): {result['concurrency']} requests in flight on the loopback, at most "
        f"{result['requests']} measured requests or {result['seconds']:g} s per server and N, {result['request']}; one replica of "
        f"{result['settings']['num_cpus']:g} CPU, dynamic batches of up to {result['settings']['max_batch_size']} inputs.", "",
        "| N tasks | bundle, inputs/s | N merged models, inputs/s | throughput ratio | bundle p50 / p99, ms | merged p50 / p99, ms | status codes (bundle; merged) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for row in result["rows"]:
        side, merged = row["side_tasks"], row["merged_models"]
        codes = "; ".join(", ".join(f"{code}: {count}" for code, count in server["status_counts"].items()) for server in (side, merged))
        lines.append(
            f"| {row['tasks']} | {side['throughput_inputs_per_s']:.1f} | {merged['throughput_inputs_per_s']:.1f} | **{row['side_tasks_vs_merged_throughput']:.2f}x** "
            f"| {side['p50_ms']:.0f} / {side['p99_ms']:.0f} | {merged['p50_ms']:.0f} / {merged['p99_ms']:.0f} | {codes} |"
        )
    return [*lines, ""]


def deployment_lines(results: Results) -> list[str]:
    """The profiles, the ONNX Runtime runs and the HTTP load tests."""
    tables = {"serving-profile-*.json": profile_table, "serving-onnx-*.json": onnx_table, "serving-http-*.json": http_table}
    return [line for pattern, table in tables.items() for file in results.names(pattern) for line in table(file, results.json(file))]
