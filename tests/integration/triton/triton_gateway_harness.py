"""The real gateway app under uvicorn in a thread, and a reader for its /metrics text (Triton tests)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from export.triton_local import TritonInstall, TritonServer, TritonSetupError

START_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 180.0  # a tritonserver's start on shared cores


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def running_triton(install: TritonInstall, repository: Path, log_dir: Path) -> Iterator[TritonServer]:
    """A tritonserver over `repository` on free loopback ports, ready; always stopped on exit.

    A server that dies during its start-up is started once more (fresh ports, its own log): tritonserver 2.51's
    gRPC event engine has aborted at start-up on a loaded machine ("epoll_wait error: Bad file descriptor",
    exit -6), once in many starts, before serving anything. A second failure fails the test."""
    server = None
    for attempt in (1, 2):
        http_port, grpc_port, metrics_port = free_ports(3)
        server = TritonServer(
            install,
            repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            log_path=log_dir / f"tritonserver-{attempt}.log",
        )
        try:
            server.start()
            server.wait_ready(READY_TIMEOUT_S)
            break
        except TritonSetupError as exc:
            server.stop()
            if attempt == 2 or "exited with code" not in str(exc):
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.stop()


class Gateway:
    """The real app under uvicorn in a thread, on a free port; `stop()` is bounded."""

    def __init__(self, port: int, **settings: object) -> None:
        import uvicorn

        from gateway.app import create_app
        from gateway.config import load_settings

        self.port = port
        self.settings = load_settings(host="127.0.0.1", port=self.port, **settings)
        config = uvicorn.Config(
            create_app(self.settings), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway-under-test", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the gateway exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not start in {START_TIMEOUT_S:.0f}s")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(10)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
