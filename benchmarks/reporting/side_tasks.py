"""The kept side networks' accuracy per task (``accuracy.py --methods side_task ...`` on the state cache): each
learning-rate grid, the seeds at its best rate beside LoRA and LayerNorm tuning at theirs, and ``adding_a_task.py``'s
runs (a kept task's whole run against LoRA + checkpointing's)."""

from __future__ import annotations

import statistics

from .common import Results, best_learning_rate, by_method, mean_std

TASK_NAMES = {"rotten_tomatoes": "Rotten Tomatoes (2 classes)", "trec": "TREC coarse (6 classes)", "trec_fine": "TREC fine (50 classes)",
              "fashion-mnist": "Fashion-MNIST on DINOv2-small (10 classes)", "brown_pos": "Brown Corpus part of speech (a tag per word, Brown's tagset)"}  # fmt: skip
METHOD_NAMES = {
    "side_task": "side task kept (ladder r=16, 16-wide heads, gated head)",
    "side_task_r8_lst": "side task, the earlier default (ladder r=8, LST's head count)",
    "side_task_r8_first_and_mean": "side task, r=8, the first token beside the mean of the others",
    "linear_probe_first_and_mean": "linear probe, the first token beside the mean of the others",
    "side_task_gate_at_encoder": "side task, gate starting at the encoder",
    "side_task_side_head": "side task, LST head (side state alone)",
    "side_task_r4": "side task, ladder r=4",
    "side_task_smoothing": "side task, label smoothing 0.1",
    "side_task_unipt": "side task, UniPT",
    "side_task_distilled": "side task + feature distillation (Eq. 1-7)",
    "side_task_distilled_side_head": "side task + feature distillation, LST head",
    "side_task_lst_heads": "side task, LST's side head count",
    **{f"side_task_head_dim_{width}": f"side task, side heads {width} wide" for width in (8, 16, 48)},
    "side_task_head_dim_16_layers_1_3_5": "side task, side heads 16 wide, side layers 1, 3, 5",
    "side_task_head_dim_16_r16": "side task, side heads 16 wide, r=16",
    "side_task_head_dim_16_r16_layers_1_3_5": "side task, side heads 16 wide, r=16, side layers 1, 3, 5",
    "side_task_first_and_mean": "side task, the first token beside the mean of the others",
    "side_task_first_and_mean_r4": "side task, the first token beside the mean of the others, r=4",
    "side_task_attention": "side task, attention pooling (a learned query over the tokens)",
    "linear_probe": "linear probe (mean-pooled final states)",
    "layernorm": "LayerNorm tuning",
    "lora": "LoRA r=8 (query, value)",
}
# Where a task's kept side networks read otherwise: the image task's pool the CLS token (SideTaskConfig(pooling="first")).
TASK_METHOD_NAMES = {"fashion-mnist": {"linear_probe": "linear probe (CLS token's final state)"}}
# Where the kept side networks' runs are: (learning-rate grid, seeds at its best rate on the whole split)
SIDE_TASK_FILES = {
    "rotten_tomatoes": ("side-task-grid-minilm.jsonl", "side-task-rotten_tomatoes-minilm.jsonl"),
    "trec": ("side-task-grid-trec-minilm.jsonl", "side-task-trec-minilm.jsonl"),
    "trec_fine": ("side-task-grid-trec-fine-minilm.jsonl", "side-task-trec-fine-minilm.jsonl"),
    "fashion-mnist": ("side-task-grid-30-epochs-fashion-mnist-dinov2.jsonl", "side-task-30-epochs-fashion-mnist-dinov2.jsonl"),
    "brown_pos": ("lr-grid-token-brown_pos-minilm.jsonl", "token-brown_pos-minilm.jsonl"),  # every method's grid and seeds
}
# Further grids of a task's kept side networks, as file names or patterns: variants of the default
MORE_GRIDS = {task: (f"side-task-head-width-{task}-*.jsonl", f"side-task-int8-{task}-*.jsonl") for task in ("rotten_tomatoes", "trec", "trec_fine")}
# attention pooling at the rate the mean-pooled default's grid chose (its own grid chose 1e-2 by 0.3 points of validation)
MORE_GRIDS["rotten_tomatoes"] = ("side-task-variants-minilm.jsonl", "side-task-attention-rate-rotten_tomatoes-minilm.jsonl", *MORE_GRIDS["rotten_tomatoes"])
MORE_GRIDS["fashion-mnist"] = ("side-task-head-width-fashion-mnist-dinov2.jsonl", "side-task-first-and-mean-fashion-mnist-dinov2.jsonl")
MORE_GRIDS["brown_pos"] = ("lr-grid-token-brown_pos-2-epochs-minilm.jsonl",)
# Where the baselines' runs are: (grid file, best-rate file whose runs at the grid's best rate are the seeds)
BASELINE_FILES = {
    "rotten_tomatoes": ("lr-grid-minilm.jsonl", "best-rate-full-minilm.jsonl"),
    "trec": ("lr-grid-trec-minilm.jsonl", "lr-grid-trec-minilm.jsonl"),
    # 50 classes: in the protocol's 2 epochs LoRA (0.70 validation) and LayerNorm tuning (0.83) have not converged
    # (lr-grid-trec-fine-minilm.jsonl), so they train 5 epochs, as the kept side networks do
    "trec_fine": ("lr-grid-trec-fine-5-epochs-minilm.jsonl", "lr-grid-trec-fine-5-epochs-minilm.jsonl"),
    "fashion-mnist": ("accuracy-fashion-mnist-dinov2.jsonl", "accuracy-fashion-mnist-dinov2.jsonl"),
    "brown_pos": ("lr-grid-token-brown_pos-minilm.jsonl", "token-brown_pos-minilm.jsonl"),
}


def method_name(method: str, task: str) -> str:
    return TASK_METHOD_NAMES.get(task, {}).get(method) or METHOD_NAMES.get(method, method)


def row_name(method: str, task: str, rows: list[dict]) -> str:
    """The method's name, and how its runs were evaluated where that was not through the encoder (``--cached-eval``)."""
    cached = any(row.get("evaluation") == "cached" for row in rows)
    dtype = next((row["cache_dtype"] for row in rows if row.get("cache_dtype")), None)
    return method_name(method, task) + (f", trained on a state cache in {dtype}" if dtype else "") + (", evaluated on cached states" if cached else "")


def grid_tables(task: str, grid_file: str, grid: list[dict]) -> list[str]:
    """One validation-accuracy table per training-set size of a learning-rate grid file."""
    lines = []
    for size in sorted({row["train_size"] for row in grid}):
        grouped = by_method(grid, task, train_size=size)
        _, best = best_learning_rate(grouped)
        rates = sorted({row["learning_rate"] for row in grid if row["train_size"] == size})
        lines += [
            f"Learning-rate grid, {size:,} training examples (`results/{grid_file}`), validation accuracy:", "",
            "| method | epochs | " + " | ".join(f"{rate:g}" for rate in rates) + " | best rate | test at the best rate |",
            "|---|---:|" + "---:|" * len(rates) + "---:|---:|",
        ]  # fmt: skip
        for method, method_rows in grouped.items():
            cells = [mean_std([r["validation"] for r in method_rows if r["learning_rate"] == rate]) if any(r["learning_rate"] == rate for r in method_rows) else "—" for rate in rates]
            tests = [r["test"] for r in method_rows if r["learning_rate"] == best[method]]
            lines.append(f"| {row_name(method, task, method_rows)} | {method_rows[0].get('epochs', 2)} | " + " | ".join(cells) + f" | {best[method]:g} | {mean_std(tests)} |")
        lines.append("")
    return lines


def baseline_runs(results: Results, task: str, train_size: int) -> dict[str, list[dict]]:
    """LoRA's and LayerNorm tuning's runs on ``task`` at their own grid's best rate (``BASELINE_FILES``)."""
    grid_file, seed_file = BASELINE_FILES[task]
    grid_rows = results.rows(grid_file)
    if not grid_rows:
        return {}
    _, best = best_learning_rate({m: r for m, r in by_method(grid_rows, task).items() if m in ("lora", "layernorm")})
    seed_rows = by_method(results.rows(seed_file), task, train_size=train_size)
    return {m: runs for m, rate in best.items() if (runs := [r for r in seed_rows.get(m, []) if r["learning_rate"] == rate])}


def seed_table(results: Results, task: str, seeds: list[dict], source: str, side_grid: str) -> list[str]:
    """Each method at its best rate (of grid file ``side_grid``), over seeds, on the whole split: the kept side network, its probe, and LoRA and
    LayerNorm tuning at their own grids' best rates; minutes: cache build (once per task) + training to the reported epoch."""
    grouped = {**by_method(seeds, task), **baseline_runs(results, task, seeds[0]["train_size"])}
    build = [r["cache_build_minutes"] for r in seeds if r.get("cache_build_minutes")]
    lines = [
        f"Seeds ({seeds[0]['train_size']:,} training examples; `results/{source}`): the kept side networks at the best rate of "
        f"their grid (`results/{side_grid}`), LoRA and LayerNorm tuning at their own grids' best rates "
        f"(`results/{BASELINE_FILES[task][1]}`); mean ± std over seeds. Minutes of training to the reported "
        f"epoch, one run at a time on this 2-core machine" + (f"; the state cache's build took {statistics.mean(build):.1f} min, once for the task." if build else "."), "",
        "| method | rate | epochs | seeds | validation | test | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for method, rows in grouped.items():
        minutes = mean_std([r["train_minutes_to_epoch"] for r in rows]) if all("train_minutes_to_epoch" in r for r in rows) else "—"
        lines.append(
            f"| {row_name(method, task, rows)} | {rows[0]['learning_rate']:g} | {rows[0].get('epochs', 2)} | {len(rows)} "
            f"| {mean_std([r['validation'] for r in rows])} | {mean_std([r['test'] for r in rows])} | {minutes} |"
        )
    return [*lines, ""]


def task_lines(results: Results, task: str, runs: tuple[tuple[str, str], ...], more_grids: tuple[str, ...] = ()) -> list[str]:
    """One task's kept side networks: the grids of ``runs`` ((grid, seeds) file pairs) and of ``more_grids`` (file names
    or patterns), then each seeds table."""
    more = [file for pattern in more_grids for file in results.names(pattern)]
    grids = {file: results.rows(file) for file in [*(grid_file for grid_file, _ in runs), *more]}
    seeds = {(grid_file, seed_file): results.rows(seed_file) for grid_file, seed_file in runs}
    if not any(grids.values()) and not any(seeds.values()):
        return []
    lines = [f"### {TASK_NAMES[task]}", ""]
    for file, grid in grids.items():
        lines += grid_tables(task, file, grid)
    for (grid_file, seed_file), rows in seeds.items():
        if rows:
            lines += seed_table(results, task, rows, seed_file, grid_file)
    return lines


def accuracy_lines(results: Results) -> list[str]:
    return [line for task in TASK_NAMES for line in task_lines(results, task, (SIDE_TASK_FILES[task],), MORE_GRIDS.get(task, ()))]


def adding_a_task_lines(results: Results) -> list[str]:
    """``adding_a_task.py``'s runs: a kept task's whole run (cache build included) against LoRA + checkpointing's."""
    runs = [results.json(file) for file in results.names("adding_a_task-*.json")]
    if not runs:
        return []
    lines = [
        "### Adding a task", "",
        "`python benchmarks/adding_a_task.py` (`results/adding_a_task-<task>-minilm.json`): one process, the kept side "
        "network (state cache built from scratch, then trained on it) and LoRA + gradient checkpointing on the same whole "
        "training split, each at its grid's best rate and timed to its reported epoch (evaluation excluded).", "",
        "| task | seed | cache build, min | side training, min | kept task, min | its test | LoRA + checkpointing, min | its test | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for run in runs:
        side, lora = run["side_task"], run["lora_checkpointed"]
        lines.append(
            f"| {TASK_NAMES[run['task']]} | {run['seed']} | {side['cache_build_minutes']:.2f} | {side['train_minutes_to_epoch']:.2f} "
            f"| {run['side_task_minutes']:.2f} | {side['test']:.3f} | {run['lora_checkpointed_minutes']:.2f} | {lora['test']:.3f} "
            f"| **{run['ratio']:.2f}x** |"
        )
    return [*lines, ""]
