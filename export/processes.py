"""Child processes that die with their parent: the one helper bench, the tests and `make triton` start with.

`popen` starts a command in a process group of its own (a terminal's Ctrl-C reaches only the parent, which
then stops the child in order, and `stop` can reach the child's own children) and, on Linux, asks the kernel
to send the child `death_signal` when the parent dies (prctl PR_SET_PDEATHSIG), so a SIGKILLed launcher or
test runner leaves no server behind. `stop` is SIGTERM, a bounded wait, then SIGKILL to the whole group.

The parent-death signal fires when the *thread* that started the child exits: start long-lived children from
a thread that lives as long as they should (the main thread). Stdlib only; the gateway does not use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _libc_prctl()


def parent_death_signal_supported() -> bool:
    return _PRCTL is not None


def _child_setup(parent_pid: int, death_signal: int | None) -> Callable[[], None]:
    """Runs in the child between fork and exec: own process group, then the parent-death signal."""

    def setup() -> None:
        os.setpgid(0, 0)
        if death_signal is None or _PRCTL is None:
            return
        _PRCTL(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), death_signal)

    return setup


def popen(
    command: Sequence[str], *, death_signal: int | None = signal.SIGTERM, **kwargs: Any
) -> subprocess.Popen[Any]:
    """subprocess.Popen in a new process group that gets `death_signal` when this process dies.

    SIGTERM (the default) lets a server shut down in order; None leaves the child running after us.
    """
    if "start_new_session" in kwargs or "preexec_fn" in kwargs or "process_group" in kwargs:
        raise ValueError("popen sets the process group and preexec_fn itself")
    return subprocess.Popen(list(command), preexec_fn=_child_setup(os.getpid(), death_signal), **kwargs)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group `pid` leads; nothing if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def reap(process: subprocess.Popen[Any], grace_s: float = 20.0, kill_wait_s: float = 10.0) -> int | None:
    """Wait for a process already asked to stop; SIGKILL its whole group if it does not within `grace_s`.

    Whatever is left of the group afterwards (children of a process that exited) is killed too.
    """
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(kill_wait_s)
    kill_group(process.pid)
    return process.returncode


def stop(
    process: subprocess.Popen[Any],
    grace_s: float = 20.0,
    *,
    whole_group: bool = True,
    kill_wait_s: float = 10.0,
) -> int | None:
    """SIGTERM (the group, or only the leader when it stops its own children in order), wait, SIGKILL."""
    if process.poll() is None:
        if whole_group:
            kill_group(process.pid, signal.SIGTERM)
        else:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    return reap(process, grace_s, kill_wait_s)
