"""Memory and speed tables: ``memory_speed.py``'s runs (every method, or ``--methods``), its ``--sweep`` and
``--side-path``, and ``distributed_memory.py``'s runs per process."""

from __future__ import annotations

from .common import MODELS, Results, batch_shape, header, image_size, name


def memory_speed_table(result: dict) -> list[str]:
    """One memory/speed run's table; the column against the side-kept model only where the run had one."""
    side_kept = any("latency_vs_side_kept" in row for row in result["methods"].values())
    lines = [
        f"### {result['model']}, {batch_shape(result)}",
        "",
        *header(result),
        "| method | trainable | peak training MiB | x LoRA | step time x LoRA | inference x base |" + (" inference x side-kept |" if side_kept else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if side_kept else ""),
    ]
    for method, row in result["methods"].items():
        lines.append(
            f"| {name(method)} | {row['trainable_parameters']:,} | {row['peak_mib']:.1f} | {row['peak_vs_lora']:.2f} "
            f"| {row['step_vs_lora']:.2f} | {row['latency_vs_base']:.2f} |" + (f" {row['latency_vs_side_kept']:.2f} |" if side_kept else "")
        )
    return [*lines, ""]


def side_path_lines(result: dict) -> list[str]:
    return [
        f"### MDPD's side path alone, {result['model']}, batch {result['batch']} x {result['length']} tokens",
        "",
        *header(result),
        "The ladder side network (fused `scaled_dot_product_attention`, no attention matrix stored) and the "
        "distillation heads, forward, backward and AdamW step on the backbone states the hooks hand them:",
        "",
        "| peak MiB | MDPD step's peak MiB | backbone states read, MiB | step time x MDPD step | step time x LoRA step |",
        "|---:|---:|---:|---:|---:|",
        f"| {result['peak_mib']:.1f} | {result['mdpd_peak_mib']:.1f} | {result['backbone_states_mib']:.1f} "
        f"| {result['step_vs_mdpd']:.2f} | {result['step_vs_lora']:.2f} |",
        "",
    ]


def sweep_table(result: dict) -> list[str]:
    methods = list(result["runs"][0]["peak_mib"])
    lines = [
        "### Peak training memory (MiB) as the work grows",
        "",
        *header(result),
        "| batch x length | " + " | ".join(name(m) for m in methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for run in result["runs"]:
        lines.append(f"| {run['batch']} x {run['length']} | " + " | ".join(f"{run['peak_mib'][m]:.0f}" for m in methods) + " |")
    return [*lines, ""]


DISTRIBUTED = {  # sharding: (title, what is measured, columns as (heading, key); the last is compared with 1 process)
    "ddp": (
        "Peak training memory per process, 1 and 2 data-parallel processes",
        "Each process's peak for one optimizer step on its share of the batch "
        "(the largest over the processes); accelerate prepares the model (DDP for 2 processes) and runs the mixed precision.",
        [("peak MiB per process", "peak_mib")],
    ),
    "fsdp2": (
        "Memory per process under FSDP2, 1 and 2 processes",
        "Each process shards the model itself (`fully_shard` on each encoder layer, then the root; bf16: "
        "`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`). Weights count: the resident weight shards, "
        "the gradient shards after backward and the optimizer state after the step, and the step's peak above the "
        "weights (gathered layers, activations, gradients, new optimizer state). Total = weights + step peak; "
        "each figure the largest over the processes.",
        [("weights MiB", "weight_mib"), ("gradients MiB", "gradient_mib"), ("optimizer state MiB", "optimizer_state_mib"),
         ("step peak MiB", "peak_mib"), ("total MiB per process", "total_mib")],
    ),
}  # fmt: skip


def distributed_table(result: dict) -> list[str]:
    title, measured, columns = DISTRIBUTED[result.get("sharding", "ddp")]
    compared = columns[-1][1]
    lines = [
        f"### {title}: {result['model']}, global batch {result['batch']} x {result['length']} tokens",
        "",
        *header(result),
        measured,
        "",
        "| method | mixed precision | processes x batch per process | " + " | ".join(heading for heading, _ in columns) + " | x 1 process |",
        "|---|---|---|" + "---:|" * (len(columns) + 1),
    ]
    single = {(run["method"], run["mixed_precision"]): run[compared] for run in result["runs"] if run["processes"] == 1}
    for run in result["runs"]:
        ratio = run[compared] / single[run["method"], run["mixed_precision"]]
        figures = " | ".join(f"{run[key]:.1f}" for _, key in columns)
        lines.append(f"| {name(run['method'])} | {run['mixed_precision']} | {run['processes']} x {run['per_process_batch']} | {figures} | {ratio:.2f} |")
    return [*lines, ""]


SUITE_TABLES = {  # a JSON result file's suite (its name's first part): its renderer
    "memory_speed": memory_speed_table,
    "selected": memory_speed_table,
    "sweep": sweep_table,
    "side_path": side_path_lines,
    "distributed": distributed_table,
}
OTHER_SUITES = ("sweep-*.json", "side_path-*.json", "distributed-*.json")  # rendered after the per-model tables


def suite_lines(results: Results, file: str) -> list[str]:
    """The table of one JSON result file, by its suite."""
    return SUITE_TABLES[file.split("-")[0]](results.json(file))


def memory_speed_results(results: Results, skip: set[str] = frozenset()) -> dict[str, dict]:
    """The memory/speed runs (file name -> result) but ``skip``'s, by model (``MODELS``' order) and image size."""
    files = [file for file in results.names("memory_speed-*.json") + results.names("selected-*.json") if file not in skip]
    loaded = {file: results.json(file) for file in sorted(files)}
    return dict(sorted(loaded.items(), key=lambda item: (MODELS.index(item[1]["model"]), image_size(item[1]) or 0)))


def memory_lines(results: Results, skip: set[str] = frozenset()) -> list[str]:
    """The memory and speed section: a table per memory/speed run, then the other suites' runs, ``skip``'s files aside."""
    lines = ["## Memory and speed", ""]
    for result in memory_speed_results(results, skip).values():
        lines += memory_speed_table(result)
    for pattern in OTHER_SUITES:
        for file in results.names(pattern):
            if file not in skip:
                lines += suite_lines(results, file)
    return lines
