"""export.processes: children in their own process group that die with their parent and stop in bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from export import processes

REPO_ROOT = Path(__file__).resolve().parents[3]
# A parent that starts `sleep` through processes.popen, prints the child's pid, and waits to be killed.
PARENT = """
import sys, time
from export import processes
child = processes.popen(["sleep", "120"])
print(child.pid, flush=True)
time.sleep(120)
"""
# A child that ignores SIGTERM: only the SIGKILL after the grace period stops it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"


def gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(
    not processes.parent_death_signal_supported(), reason="prctl(PR_SET_PDEATHSIG) is Linux-only"
)
def test_child_dies_with_a_sigkilled_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert os.getpgid(child_pid) == child_pid, "the child leads a process group of its own"
        assert not gone(child_pid, 0.3)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert gone(child_pid, 5.0), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(10)


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace_period() -> None:
    child = processes.popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    returncode = processes.stop(child, 0.5)
    assert returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5.0


def test_stop_ends_a_polite_child_with_sigterm() -> None:
    child = processes.popen(["sleep", "120"])
    assert processes.stop(child, 10) == -signal.SIGTERM


def test_popen_refuses_to_be_told_how_to_group() -> None:
    with pytest.raises(ValueError, match="process group"):
        processes.popen(["true"], start_new_session=True)
