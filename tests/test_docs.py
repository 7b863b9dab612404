"""The documentation is tested like the code: the site builds with no warning, every Python block of README.md and
docs/ runs offline as written, every public name is in the API reference, and the README stays a short front page.

Python blocks of one file run in order in one namespace, like a notebook, so a page can build on its earlier blocks.
A block that cannot run here (it needs a GPU, several processes or the Hub) carries a marker on the line before its
fence, ``<!-- docs-test: skip (needs the Hub) -->``, and is reported as skipped with that reason. Every file's blocks
run in one subprocess (imports are paid once), each file in a fresh namespace and its own temporary working folder,
offline (``HF_HUB_OFFLINE=1``), so they leave nothing behind, on one thread (the blocks are tiny).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
DOC_FILES = [README, *sorted(DOCS.rglob("*.md"))]
SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>.+)\)\s*-->")
OPENING_FENCE = re.compile(r"^(?P<indent>\s*)```python\s*$")
README_MAX_LINES = 200
INSTALL_WITHIN_LINES = 30
BLOCKS_TIMEOUT_S = 900

# Runs in the subprocess: argv[1] is a JSON file of {file: [{"line", "code"}]}, argv[2] where to write the results.
RUNNER = r"""
import contextlib, io, json, os, sys, tempfile, time, traceback

blocks_by_file, results = json.load(open(sys.argv[1])), {}
for name, blocks in blocks_by_file.items():
    started, output, error = time.perf_counter(), io.StringIO(), None
    namespace = {"__name__": "__main__"}
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # what a block writes lands here
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            for block in blocks:
                try:
                    exec(compile(block["code"], f"{name}, block at line {block['line']}", "exec"), namespace)
                except BaseException:
                    error = traceback.format_exc()
                    break
        os.chdir(tempfile.gettempdir())  # leave the folder before it is removed
    results[name] = {"error": error, "output": output.getvalue()[-6000:], "seconds": time.perf_counter() - started}
json.dump(results, open(sys.argv[2], "w"))
"""


@dataclass(frozen=True)
class CodeBlock:
    file: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    code: str
    skip_reason: str | None


def python_blocks(path: Path) -> list[CodeBlock]:
    """The ```python blocks of a Markdown file, dedented (a block may sit in a list item), with their skip markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = OPENING_FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, start = len(opening["indent"]), index
        index += 1
        body = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][indent:])
            index += 1
        previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marker = SKIP_MARKER.search(previous)
        blocks.append(CodeBlock(str(path.relative_to(ROOT)), start + 1, "\n".join(body) + "\n", marker["reason"] if marker else None))
        index += 1
    return blocks


BLOCKS = [block for path in DOC_FILES for block in python_blocks(path)]
FILES_WITH_RUNNABLE_BLOCKS = sorted({block.file for block in BLOCKS if block.skip_reason is None})
SKIPPED_BLOCKS = [block for block in BLOCKS if block.skip_reason is not None]


@pytest.fixture(scope="session")
def block_results(request, tmp_path_factory) -> dict:
    """Run the runnable blocks of every selected file, once, in one subprocess; file -> its result."""
    selected = {item.callspec.params["doc_file"] for item in request.session.items if item.originalname == "test_python_blocks_run"}
    blocks = {
        file: [{"line": block.line, "code": block.code} for block in BLOCKS if block.file == file and block.skip_reason is None]
        for file in FILES_WITH_RUNNABLE_BLOCKS
        if file in selected
    }
    folder = tmp_path_factory.mktemp("doc_blocks")
    (folder / "blocks.json").write_text(json.dumps(blocks))
    (folder / "runner.py").write_text(RUNNER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"  # the blocks are tiny: on a busy machine, two threads per op fight for the cores (~10x slower)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(folder / "runner.py"), str(folder / "blocks.json"), str(folder / "results.json")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCKS_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, f"the block runner failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("doc_file", FILES_WITH_RUNNABLE_BLOCKS)
def test_python_blocks_run(doc_file, block_results):
    result = block_results[doc_file]
    assert result["error"] is None, f"a Python block of {doc_file} failed:\n{result['error']}\nIts output:\n{result['output']}"


@pytest.mark.parametrize("block", SKIPPED_BLOCKS, ids=[f"{block.file}:{block.line}" for block in SKIPPED_BLOCKS])
def test_marked_block_is_skipped(block):
    pytest.skip(f"{block.file}, block at line {block.line}: {block.skip_reason}")


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link, anchor or API reference, a page missing from the nav or a docstring
    griffe cannot read fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert done.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings or [done.stderr[-3000:]])


def documented_identifiers() -> set[str]:
    """What the reference pages render: the identifiers of their ``::: identifier`` lines."""
    return {match[1] for page in REFERENCE.glob("*.md") for match in re.finditer(r"^:::\s*([\w.]+)", page.read_text(encoding="utf-8"), re.M)}


def documented_object(identifier: str):
    """The object an identifier names (a module, or an attribute of one), or None."""
    module_name, _, attribute = identifier.rpartition(".")
    for name, rest in ((identifier, None), (module_name, attribute)):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module if rest is None else getattr(module, rest, None)
    return None


def test_every_public_name_is_in_the_api_reference():
    import mdpd_peft

    identifiers = documented_identifiers()
    modules = [obj for obj in map(documented_object, identifiers) if inspect.ismodule(obj)]
    missing = [
        name
        for name in mdpd_peft.__all__
        if f"mdpd_peft.{name}" not in identifiers and not any(getattr(module, name, None) is getattr(mdpd_peft, name) for module in modules)
    ]
    pages = ", ".join(sorted(page.name for page in REFERENCE.glob("*.md")))
    assert not missing, (
        f"mdpd_peft.__all__ names {missing}, which the API reference does not document. Add a line `::: mdpd_peft.<name>` "
        f"to the page of docs/reference/ where the name belongs ({pages}), or a new page there listed under "
        "'API reference' in mkdocs.yml."
    )


def test_every_reference_line_names_an_object():
    unknown = sorted(identifier for identifier in documented_identifiers() if documented_object(identifier) is None)
    assert not unknown, f"docs/reference/ renders identifiers that do not exist: {unknown}"


def test_the_readme_is_a_short_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it at most {README_MAX_LINES} and move detail to docs/"
    head = "\n".join(lines[:INSTALL_WITHIN_LINES])
    assert "pip install torch==" in head and "pip install -e ." in head, f"the install commands must be within the README's first {INSTALL_WITHIN_LINES} lines"


def test_ci_runs_the_readmes_test_command():
    """``.ci/run`` runs the README's test command line for line: what a fresh machine runs is what CI runs."""
    readme_commands = [line.strip() for line in README.read_text(encoding="utf-8").splitlines() if line.rstrip().endswith("python -m pytest -q")]
    assert len(readme_commands) == 1, f"README.md should hold one test command (a line ending in 'python -m pytest -q'), found {readme_commands}"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert readme_commands[0] in ci_lines, f".ci/run does not run the README's test command:\n{readme_commands[0]}"
