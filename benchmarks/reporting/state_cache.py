"""The backbone-state cache (``state_cache.py``'s parts): its size, read speed, side training on it against the live
backbone, a learning-rate sweep on one cache, one step's memory, and smaller caches' accuracy cost."""

from __future__ import annotations

from collections import defaultdict

from .common import Results, mean_std

PLOT = "state_cache_time.png"


def load(results: Results) -> dict[str, list[dict]]:
    """Every ``state_cache-*.json`` file's parts: part (``figures``, ``storage``, ``timings``, ...) -> its results."""
    parts = defaultdict(list)
    for file in results.names("state_cache-*.json"):
        for part, result in results.json(file).items():
            parts[part].append(result)
    return parts


def size_lines(figures: dict) -> list[str]:
    return [
        "### Size (`python benchmarks/state_cache.py --figures`; train split, real tokens only)", "",
        "| model | max length | layers stored | dtype | bytes per example (mean) | bytes per full-length example | train split MiB |",
        "|---|---:|---|---|---:|---:|---:|",
        *(f"| {r['model']} | {r['max_length']} | {r['side_layers']} ({r['stored_states']} states) | {r['dtype']} | "
          f"{r['bytes_per_example']:,.0f} | {r['bytes_per_full_length_example']:,} | {r['total_mib']:,.0f} |" for r in figures["rows"]),
        "",
    ]  # fmt: skip


STORES = {"safetensors": "safetensors, bfloat16", "safetensors, int8": "safetensors, int8 (dequantized on read)", "arrow": "Arrow table, bfloat16"}


def storage_lines(storage: dict) -> list[str]:
    def written(store: dict) -> str:
        return f"{store['written_examples_per_s']:,.0f}" if store.get("written_examples_per_s") else "—"

    return [
        f"### Read and write speed (`--storage`: {storage['examples']:,} random bf16 examples of {storage['mean_tokens']:.0f} tokens x "
        f"{storage['states']} states x {storage['width']}, shuffled batches of 32 collated to float32, the faster of 2 reads and of 2 writes)", "",
        "| store | read examples/s | read MiB/s (stored bytes) | written examples/s |", "|---|---:|---:|---:|",
        *(f"| {title} | {storage[store]['examples_per_s']:,.0f} | {storage[store]['mib_per_s']:,.0f} | {written(storage[store])} |"
          for store, title in STORES.items() if store in storage),
        "",
    ]  # fmt: skip


def timings_lines(model: str, examples: int, rate: float, runs: list[dict]) -> list[str]:
    """Side training cached against uncached, per epoch count: the first seed's wall times, every seed's accuracy."""
    lines = [
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
    return [*lines, ""]


def sweep_lines(sweep: dict) -> list[str]:
    lines = [
        f"### A 4-rate sweep of the side network on one cache against 4 uncached runs: {sweep['model']}, {sweep['epochs']} epochs each (`--sweep`)", "",
        "| learning rate | uncached s | cached s (build s) | side test, uncached | side test, cached |", "|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for rate in dict.fromkeys(run["learning_rate"] for run in sweep["runs"]):
        uncached, cached = (next(r for r in sweep["runs"] if r["learning_rate"] == rate and r["cached"] == flag) for flag in (False, True))
        build = f" ({cached['build_s']:.0f})" if cached["build_s"] is not None else ""
        lines.append(f"| {rate:g} | {uncached['wall_s']:.0f} | {cached['wall_s']:.0f}{build} | {uncached['side_test']:.3f} | {cached['side_test']:.3f} |")
    return [*lines, "", f"All four cached runs together took {sweep['cached_vs_uncached']:.2f}x the four uncached runs.", ""]


def memory_lines(result: dict) -> list[str]:
    peaks = result["peak_mib"]
    return [
        f"### Peak memory of one side-training step: {result['model']} shape, batch {result['batch']} x {result['length']} tokens (`--memory`)", "",
        "Tensor bytes of one AdamW step above the weights (as the memory tables above count them), the cached step's "
        "collation included.", "",
        "| live backbone (no-grad forward + side path) MiB | on cached states MiB | on cached states, `recompute=False` MiB |",
        "|---:|---:|---:|",
        f"| {peaks['live']:.1f} | {peaks['cached']:.1f} | {peaks['cached_kept']:.1f} |", "",
    ]  # fmt: skip


def variants_lines(result: dict) -> list[str]:
    lines = [
        f"### Smaller caches and their accuracy cost: {result['model']}, {result['train_examples']:,} training examples, "
        f"{result['epochs']} epochs on the cache (`--variants`)", "",
        "| cache | MiB | side test |", "|---|---:|---:|",
    ]  # fmt: skip
    for variant in dict.fromkeys(run["variant"] for run in result["runs"]):
        runs = [run for run in result["runs"] if run["variant"] == variant]
        lines.append(f"| {variant} | {runs[0]['cache_mib']:,.0f} | {mean_std([run['side_test'] for run in runs])} |")
    return [*lines, ""]


def state_cache_lines(results: Results) -> list[str]:
    """The state cache's section, every part present (the timings of one model and rate merged across files)."""
    parts = load(results)
    if not parts:
        return []
    lines = ["## The backbone-state cache", ""]
    for figures in parts.get("figures", []):
        lines += size_lines(figures)
    for storage in parts.get("storage", []):
        lines += storage_lines(storage)
    by_model = defaultdict(list)
    for timings in parts.get("timings", []):
        by_model[timings["model"], timings["train_examples"], timings["learning_rate"]] += timings["runs"]
    for (model, examples, rate), runs in by_model.items():
        lines += timings_lines(model, examples, rate, runs)
    for sweep in parts.get("sweep", []):
        lines += sweep_lines(sweep)
    for result in parts.get("memory", []):
        lines += memory_lines(result)
    for result in parts.get("variants", []):
        lines += variants_lines(result)
    if parts.get("timings"):
        lines += [f"![side training time, live vs cached]({PLOT})", ""]
    return lines
