"""`make triton` (python -m export.triton_local serve) as a user runs it: the server dies with its launcher,
a second launch names the running server instead of clobbering it, and `stop` finds a server by its ports.

Each launcher runs on free ports over a repository of the tiny exported reranker, with a pid file of its own.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from export import processes
from export.triton_local import TritonInstall

REPO_ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slow, pytest.mark.triton]
READY_TIMEOUT_S = 180.0
GONE_WITHIN_S = 15.0


class Launcher:
    def __init__(self, repository: Path, pid_file: Path, ports: list[int], log: Path) -> None:
        self.ports, self.pid_file, self.log = ports, pid_file, log
        self.args = [
            "--model-repository", str(repository), "--pid-file", str(pid_file),
            "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def run(self, command: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "export.triton_local", command, *self.args],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip

    def start(self) -> int:
        """Start `serve`, wait until the server answers; the tritonserver pid from the pid file."""
        with self.log.open("wb") as log:
            self.process = processes.popen(
                [sys.executable, "-m", "export.triton_local", "serve", *self.args],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"launcher exited: {self.log.read_text()[-3000:]}"
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{self.ports[0]}/v2/health/ready", timeout=2).status_code
                    == 200
                ):
                    return int(self.pid_file.read_text().split()[0])
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"server not ready in {READY_TIMEOUT_S}s: {self.log.read_text()[-3000:]}")

    def close(self) -> None:
        if self.process is not None:
            processes.stop(self.process, 30)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


@pytest.fixture
def launcher(
    triton_install: TritonInstall,
    tiny_triton_repository: Path,
    free_ports: Callable[[int], list[int]],
    tmp_path: Path,
) -> Iterator[Launcher]:
    server = Launcher(tiny_triton_repository, tmp_path / "tritonserver.pid", free_ports(3), tmp_path / "log")
    try:
        yield server
    finally:
        server.close()
        if server.pid_file.exists():
            server.run("stop")


def test_second_launch_names_the_running_server_and_sigkilled_launcher_takes_it_down(
    launcher: Launcher, tmp_path: Path
) -> None:
    server_pid = launcher.start()
    record = launcher.pid_file.read_text()
    tree = [server_pid, *(c.pid for c in psutil.Process(server_pid).children(recursive=True))]
    ports = ", ".join(map(str, launcher.ports))
    expected = (
        f"a tritonserver (pid {server_pid}) already serves on ports {ports}; `make triton-stop` stops it"
    )

    second = launcher.run("serve")  # the same pid file: the recorded server
    assert second.returncode == 1 and expected in second.stderr, second.stderr
    assert launcher.pid_file.read_text() == record, "the first server's record must stay"

    launcher.pid_file.rename(tmp_path / "moved.pid")  # a lost record: found by its ports instead
    third = launcher.run("serve")
    assert (
        third.returncode == 1 and f"a tritonserver (pid {server_pid}) already serves on ports" in third.stderr
    )
    (tmp_path / "moved.pid").rename(launcher.pid_file)
    assert alive(server_pid) and httpx.get(f"http://127.0.0.1:{launcher.ports[0]}/v2/health/ready").is_success

    assert launcher.process is not None
    launcher.process.send_signal(signal.SIGKILL)
    launcher.process.wait(10)
    left = wait_gone(tree, GONE_WITHIN_S)
    assert not left, f"still running {GONE_WITHIN_S:.0f}s after the launcher was killed: {left}"


def test_stop_finds_an_unrecorded_server_by_its_ports(launcher: Launcher) -> None:
    server_pid = launcher.start()
    launcher.pid_file.unlink()  # what the old `make triton` did to a running server's record
    result = launcher.run("stop")
    assert result.returncode == 0
    assert f"stopped the tritonserver with pid {server_pid}" in result.stderr, result.stderr
    assert not wait_gone([server_pid], 5.0)
    assert launcher.process is not None and launcher.process.wait(30) is not None  # the launcher saw it end

    nothing = launcher.run("stop")
    assert nothing.returncode == 0 and "no tritonserver runs" in nothing.stderr
