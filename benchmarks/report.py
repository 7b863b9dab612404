"""Render the benchmark pages from the suites' result files, or check that the pages on disk are up to date.

    python benchmarks/report.py            # write every generated page and the plots
    python benchmarks/report.py --check    # exit 1, listing each generated page that differs from its rendering

Generated from ``benchmarks/results/`` (and the hand-written ``benchmarks/analysis.md`` and
``benchmarks/analysis_history.md``): ``benchmarks/RESULTS.md``, its docs-site copy ``docs/benchmarks/results.md`` (plots
named, not linked), the superseded runs' ``docs/benchmarks/history.md``, and the decision table in ``README.md`` and
``docs/benchmarks/index.md`` between ``<!-- results:decision-table:start -->`` and ``<!-- results:decision-table:end -->``;
and the plots (PNG)
beside ``RESULTS.md``. ``--check`` renders the pages in memory, without drawing (matplotlib's PNG bytes are not stable
across runs, so the plots are not checked), and without importing torch or matplotlib. Each kind of table is a module
of ``benchmarks/reporting/``.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reporting.common import BENCHMARKS, REPOSITORY, RESULTS, Results  # noqa: E402
from reporting.pages import TABLE_HOLDERS, draw_plots, render, table_block, with_table_block  # noqa: E402

DIFF_LINES = 40  # of each differing page's unified diff, in --check's report


def generated(results: Results, repository: Path = REPOSITORY, table_holders: tuple[Path, ...] = TABLE_HOLDERS) -> dict[Path, str]:
    """Every generated file under ``repository`` and its text, and each of ``table_holders`` with its decision table."""
    pages = {repository / relative: text for relative, text in render(results).items()}
    block = table_block(results)
    pages |= {page: with_table_block(page, block) for page in table_holders}
    return pages


def differences(pages: dict[Path, str]) -> list[str]:
    """Each page whose file differs from its rendering: its path and the start of a unified diff (on disk -> rendered)."""
    report = []
    for path, text in pages.items():
        on_disk = path.read_text() if path.exists() else ""
        if on_disk != text:
            diff = list(difflib.unified_diff(on_disk.splitlines(), text.splitlines(), f"{path} (on disk)", f"{path} (rendered)", lineterm=""))
            more = [f"... {len(diff) - DIFF_LINES} more diff lines"] if len(diff) > DIFF_LINES else []
            report += [f"{path} is out of date" + ("" if path.exists() else " (missing)"), *diff[:DIFF_LINES], *more, ""]
    return report


def main(results: Path = RESULTS, output_dir: Path = BENCHMARKS, full_data_only: bool = True) -> Path:
    """Write every generated page and the plots whose results exist; returns ``RESULTS.md``'s path.

    With ``output_dir`` other than ``benchmarks/`` (the smoke tests'), ``RESULTS.md``, its docs copy ``results.md``,
    ``history.md`` and the plots go there, and the pages holding the decision table are left alone. ``full_data_only=False`` also counts accuracy
    runs on a training subset (the smoke tests').
    """
    loaded, output_dir = Results(results, full_data_only), Path(output_dir)
    if output_dir == BENCHMARKS:
        pages = generated(loaded)
    else:
        pages = {output_dir / relative.name: text for relative, text in render(loaded).items()}
    for path, text in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    draw_plots(loaded, output_dir)
    return output_dir / "RESULTS.md"


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="render in memory and exit 1 where a generated page differs from the file on disk (plots: not checked)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of result files (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if not args.check:
        print(main(args.results))
        return 0
    report = differences(generated(Results(args.results)))
    if report:
        print("\n".join(report) + "\nRegenerate them: python benchmarks/report.py", file=sys.stderr)
        return 1
    print("Every generated page is up to date (plots not checked).")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
