"""The generated pages, rendered in memory from the result files: ``benchmarks/RESULTS.md``, its docs-site copy
``docs/benchmarks/results.md``, the superseded runs' ``docs/benchmarks/history.md``, and the decision table in
``README.md`` (between ``README_MARKERS``). ``report.py`` writes them, or checks that the files on disk match."""

from __future__ import annotations

import re
from pathlib import Path

from . import plots
from .accuracy import GRIDS, grids, learning_rate_grid_lines
from .common import BENCHMARKS, CHECKPOINTED_NOTE, REPOSITORY, Results, best_learning_rate
from .decision import decision_lines, table_only
from .distillation import distillation_lines, fade_from_teacher_lines
from .few_shot import PLOTTED as FEW_SHOT_PLOTTED
from .few_shot import PLOT as FEW_SHOT_PLOT
from .few_shot import TASKS as FEW_SHOT_TASKS
from .few_shot import few_shot_lines, k_order
from .few_shot import load as few_shot_runs
from .history import history_lines, superseded_files
from .image import IMAGE_BENCHMARK, IMAGE_PLOT, IMAGE_TITLE, best_rate_runs, image_benchmark_lines, plotted_memory
from .memory import memory_lines, memory_speed_results
from .serving import PLOT as SERVING_PLOT
from .serving import load as serving_runs
from .serving import serving_lines
from .side_tasks import accuracy_lines as side_task_accuracy_lines
from .side_tasks import adding_a_task_lines
from .state_cache import PLOT as STATE_CACHE_PLOT
from .state_cache import load as state_cache_parts
from .state_cache import state_cache_lines
from .targets import TARGET_TASKS, target_lines

ANALYSIS = BENCHMARKS / "analysis.md"  # hand-written: what the current tables mean
HISTORY_NOTES = BENCHMARKS / "analysis_history.md"  # hand-written: what the superseded runs showed
RESULTS_MD = BENCHMARKS / "RESULTS.md"
DOCS_RESULTS = REPOSITORY / "docs" / "benchmarks" / "results.md"
DOCS_HISTORY = REPOSITORY / "docs" / "benchmarks" / "history.md"
README = REPOSITORY / "README.md"
DOCS_BENCHMARKS = REPOSITORY / "docs" / "benchmarks" / "index.md"
TABLE_HOLDERS = (README, DOCS_BENCHMARKS)  # the hand-written pages that hold the decision table between README_MARKERS
README_MARKERS = ("<!-- results:decision-table:start -->", "<!-- results:decision-table:end -->")
TIME_PLOT, MEMORY_PLOT = "accuracy_vs_time.png", "accuracy_vs_memory.png"
BEST_RATE_FILE = TARGET_TASKS["Rotten Tomatoes"][0]  # MiniLM's best-rate runs on Rotten Tomatoes: the memory plot's accuracy
IMAGE_LINK = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<file>[^)]+)\)$")


def text_grids(results: Results) -> dict:
    return grids(results, GRIDS)


def rotten_tomatoes_memory(memory_speed: dict[str, dict]) -> dict | None:
    """The memory run the accuracy-vs-memory plot places the methods by: MiniLM's (the best-rate runs are MiniLM's),
    any model's where MiniLM was not measured."""
    return next((r for r in memory_speed.values() if r["model"] == "minilm"), next(iter(memory_speed.values()), None))


def accuracy_section(results: Results, memory_speed: dict[str, dict]) -> list[str]:
    """The text tasks' learning-rate grids and best-rate runs, knowledge distillation, and the two accuracy plots."""
    lines = ["## Accuracy on text tasks", ""]
    text = text_grids(results)
    for file, (title, by_method) in text.items():
        lines += learning_rate_grid_lines(file, title, by_method)
    lines += distillation_lines(results)
    lines += fade_from_teacher_lines(results)
    if text or results.exists(IMAGE_BENCHMARK[0]):
        lines += [f"![accuracy vs training time at each method's best rate]({TIME_PLOT})", ""]
    if rotten_tomatoes_memory(memory_speed) is not None and results.exists(BEST_RATE_FILE):
        lines += [f"![accuracy vs peak training memory, Rotten Tomatoes at each method's best rate]({MEMORY_PLOT})", "", CHECKPOINTED_NOTE, ""]
    return lines if len(lines) > 2 else []


def image_section(results: Results, memory_speed: dict[str, dict]) -> list[str]:
    """The image benchmark: its learning-rate grid, then every method at its best rate, the probe and the kept side networks."""
    if not results.exists(IMAGE_BENCHMARK[0]):
        return []
    grid = learning_rate_grid_lines(IMAGE_BENCHMARK[0], IMAGE_TITLE, results.by_method(IMAGE_BENCHMARK[0]))
    return ["## Image benchmark", "", *grid, *image_benchmark_lines(results, memory_speed)]


def kept_section(results: Results) -> list[str]:
    kept = [*serving_lines(results), *side_task_accuracy_lines(results), *adding_a_task_lines(results)]
    return ["## Kept side networks: many tasks, one encoder pass", "", *kept] if kept else []


def unread_lines(results: Results) -> list[str]:
    """The result files no table has read yet (a new kind of run that wants its table in ``reporting/``)."""
    unread = results.unread()
    if not unread:
        return []
    return ["## Result files without a table yet", "", "Measured, but no table of this page renders them yet:", "",
            *(f"- `results/{file}`" for file in unread), ""]  # fmt: skip


def link_or_name(lines: list[str], for_docs: bool) -> list[str]:
    """``lines`` with their plot links, or (``for_docs``: the docs site links no image outside docs/) the plot's file name."""
    if not for_docs:
        return lines
    named = []
    for line in lines:
        match = IMAGE_LINK.match(line)
        named.append(f"Plot ({match['alt']}): `benchmarks/{match['file']}` in the repository." if match else line)
    return named


def results_page(results: Results, for_docs: bool = False) -> str:
    """``RESULTS.md``, or (``for_docs``) its docs-site copy. Renders after ``history_page`` so that it can name the
    result files neither page reads."""
    memory_speed = memory_speed_results(results, skip=superseded_files())
    history = "[history page](history.md)" if for_docs else "[history page](../docs/benchmarks/history.md)"
    lines = [
        "# Benchmark results", "",
        "Generated by `python benchmarks/report.py` from the result files in `benchmarks/results/` and the hand-written "
        "analysis at the end (`benchmarks/analysis.md`); `python benchmarks/report.py --check` says whether it is up to date. "
        "Every run is on CPU, on a shared 2-core machine: memory is exact tensor bytes, time is a ratio measured in one "
        f"process where a table says so. Runs that later runs replaced are on the {history}.", "",
    ]  # fmt: skip
    lines += decision_lines(results)
    lines += target_lines(results, memory_speed)
    lines += accuracy_section(results, memory_speed)
    lines += image_section(results, memory_speed)
    lines += kept_section(results)
    lines += few_shot_lines(results)
    lines += memory_lines(results, skip=superseded_files())
    lines += state_cache_lines(results)
    if ANALYSIS.exists():
        lines += [ANALYSIS.read_text().rstrip("\n"), ""]
    lines += unread_lines(results)
    return "\n".join(link_or_name(lines, for_docs))


def history_page(results: Results) -> str:
    """``docs/benchmarks/history.md``: the superseded runs' tables, then what they showed (``HISTORY_NOTES``)."""
    lines = [
        "# Superseded benchmark runs", "",
        "Generated by `python benchmarks/report.py` from `benchmarks/results/`. These runs were measured under settings "
        "that are no longer the defaults, or were replaced by later runs of the same question; none of their figures is "
        "current. The current figures are on the [results page](results.md).", "",
        *history_lines(results),
    ]  # fmt: skip
    if HISTORY_NOTES.exists():
        lines += [HISTORY_NOTES.read_text().rstrip("\n"), ""]
    return "\n".join(lines)


def table_block(results: Results) -> str:
    """What the README and the docs' benchmarks page hold between ``README_MARKERS``: the decision table."""
    note = "<!-- Generated by `python benchmarks/report.py` (benchmarks/reporting/decision.py); edit there, not here. -->"
    return "\n".join([README_MARKERS[0], note, "", *table_only(results), "", README_MARKERS[1]])


def with_table_block(page: Path, block: str) -> str:
    """``page``'s text with what stands between ``README_MARKERS`` replaced by ``block`` (markers included)."""
    text = page.read_text()
    start, end = text.find(README_MARKERS[0]), text.find(README_MARKERS[1])
    if start < 0 or end < start:
        raise ValueError(f"{page} has no {README_MARKERS[0]} ... {README_MARKERS[1]} markers for the decision table")
    return text[:start] + block + text[end + len(README_MARKERS[1]) :]


def render(results: Results) -> dict[Path, str]:
    """Every generated page's text, by its path relative to the repository (the README's block apart: ``readme_block``)."""
    history = history_page(results)  # first: the results page names the files that neither page reads
    return {
        RESULTS_MD.relative_to(REPOSITORY): results_page(results),
        DOCS_RESULTS.relative_to(REPOSITORY): results_page(results, for_docs=True),
        DOCS_HISTORY.relative_to(REPOSITORY): history,
    }


def draw_plots(results: Results, folder: Path) -> None:
    """Every plot whose runs exist, into ``folder``."""
    memory_speed = memory_speed_results(results, skip=superseded_files())
    timings = state_cache_parts(results).get("timings")
    if timings:
        plots.state_cache_time(timings, folder / STATE_CACHE_PLOT)
    panels = {title: by_method for title, by_method in grids(results, {**GRIDS, IMAGE_BENCHMARK[0]: IMAGE_TITLE}).values()}
    if panels:
        plots.accuracy_vs_time(panels, folder / TIME_PLOT)
    memory = rotten_tomatoes_memory(memory_speed)
    if memory is not None and results.exists(BEST_RATE_FILE):
        plots.accuracy_vs_memory(memory, best_learning_rate(results.by_method(BEST_RATE_FILE))[0], folder / MEMORY_PLOT)
    image_memory = plotted_memory(memory_speed)
    if image_memory is not None and results.exists(IMAGE_BENCHMARK[0]):
        plots.accuracy_vs_memory(image_memory, best_rate_runs(results), folder / IMAGE_PLOT, task="Fashion-MNIST")
    runs = serving_runs(results)
    if runs:
        plots.serving(runs, folder / SERVING_PLOT)
    few_shot = few_shot_runs(results)
    if few_shot:
        tasks = {task: title for task, title in FEW_SHOT_TASKS.items() if any(key[0] == task for key in few_shot)}
        plots.few_shot(few_shot, tasks, FEW_SHOT_PLOTTED, k_order(few_shot), folder / FEW_SHOT_PLOT)
