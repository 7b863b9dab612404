"""The multi-process tests' launcher: a launch that runs past its time leaves no process behind."""

import time
from pathlib import Path

import pytest
from launching import launch

HANGING_WORKER = """
import os, sys, time
from pathlib import Path
Path(sys.argv[1], f"{os.getpid()}.pid").touch()
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # killed, not yet reaped


def test_a_timeout_kills_the_workers_torchrun_started_in_their_own_sessions(tmp_path):
    (tmp_path / "hang.py").write_text(HANGING_WORKER)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="ran past 30 s; every process it started was killed"):
        launch(tmp_path / "hang.py", [str(tmp_path)], processes=2, timeout=30)
    assert time.monotonic() - started < 60  # the launch did not wait for its orphans
    workers = [int(path.stem) for path in tmp_path.glob("*.pid")]
    assert len(workers) == 2, "the workers had not started within the timeout"
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)
