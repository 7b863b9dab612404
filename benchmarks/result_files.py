"""Where the benchmark suites write their results, and how: one JSON file per run, or one JSON line per measured row
(``reporting/`` reads them back)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def append_row(path: str | Path, row: dict) -> None:
    """Print ``row`` and append it to the JSON-lines file ``path`` as soon as it is measured, so that an interrupted
    sweep keeps its runs and runs accumulate across invocations."""
    print(json.dumps(row))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("a") as file:
        file.write(json.dumps(row) + "\n")


def write_result(result: dict, path: str | Path) -> None:
    """Write one run's ``result`` to the JSON file ``path`` (its folder made if needed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")
