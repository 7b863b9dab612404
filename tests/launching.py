"""Launching a script on several CPU processes (torchrun) for the multi-process tests, and ending every process
of a launch that runs past its time.

torchrun starts each worker in a session of its own, so killing the launcher's process group misses them: a
worker stuck in its exit survives, keeps the output pipe open and blocks the test run. Each launch therefore
marks its environment, which every process it creates inherits, and a timeout kills whatever carries the mark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

MARK = "MDPD_TEST_LAUNCH"


def launch(script: Path, args: list[str], processes: int, timeout: float) -> None:
    """Runs ``script`` on ``processes`` CPU processes (torchrun) or on one (plain python); fails the test with the
    output's tail when it exits non-zero or runs past ``timeout`` seconds (then no process of it is left).

    ``--standalone`` lets the rendezvous bind a free port: no fixed MASTER_PORT to collide with another run.
    """
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), str(script), *args]
    mark = uuid.uuid4().hex
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", MARK: mark}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True) as run:
        try:
            output, _ = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_marked(mark)
            output, _ = run.communicate()
            pytest.fail(f"{script.name} on {processes} process(es) ran past {timeout} s; every process it started was killed:\n{output[-4000:]}")
    code = run.returncode
    assert code == 0, f"{script.name} exited with {signal.Signals(-code).name if code < 0 else code}:\n{output[-4000:]}"


def marked(mark: str) -> list[int]:
    """The live processes whose environment carries ``mark`` (a killed one's environment reads empty)."""
    entry = f"{MARK}={mark}".encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours
            if entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                pids.append(int(pid))
    return pids


def kill_marked(mark: str, patience: float = 10.0) -> None:
    """SIGKILL every process carrying ``mark``, again until none is left (one may be starting another meanwhile)."""
    deadline = time.monotonic() + patience
    while pids := marked(mark):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of launch {mark} survived SIGKILL for {patience} s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def exit_without_teardown() -> None:
    """A worker's last call, once its results are written and its process group is closed: flush and leave
    without the interpreter's teardown, in which a torchrun worker was seen to hang now and then (finalizers
    and library threads met in a timing-dependent order) after its work had finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
