"""Real uvicorn servers on 127.0.0.1 (free port, bounded waits, always stopped) for the gateway tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from export import processes

ROOT = Path(__file__).resolve().parents[3]
# The injectable GPU stand-ins live beside the unit tests.
sys.path.insert(0, str(ROOT / "tests" / "unit" / "gateway"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


class GatewayProcess:
    """`python -m gateway` in a child process, the way `make serve` runs it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("wb")
        full_env = {
            **os.environ,
            "RERANKER_HOST": "127.0.0.1",
            "RERANKER_PORT": str(self.port),
            "RERANKER_THREADS": "2",
            **env,
        }
        self.proc = processes.popen(
            [sys.executable, "-m", "gateway"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        processes.stop(self.proc, 15)
        self._log.close()

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class ThreadServer:
    """uvicorn serving an app built in this process (so a test can inject a GPU probe or a session)."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.server.should_exit = True
                raise TimeoutError("in-process uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def gateway_process(
    real_model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("gateway") / "server.log"
    server = GatewayProcess(
        {
            "RERANKER_MODEL_REPOSITORY": str(real_model_repository),
            "RERANKER_MAX_DOCUMENTS": "50",
            "RERANKER_MAX_DOCUMENT_CHARS": "5000",
            "RERANKER_MAX_QUERY_CHARS": "200",
            "RERANKER_MAX_BODY_BYTES": "200000",
            "RERANKER_KEEP": "3",
            "RERANKER_CASCADE_UNRANKED": "prefilter",
            "RERANKER_LOG_LEVEL": "info",
        },
        log,
    )
    try:
        wait_ready(server.url, 120, server.proc)
        yield server
    finally:
        server.stop()
