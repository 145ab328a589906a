"""Start the real HTTP service (and Triton) for a benchmark, drive it with concurrent clients, always stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from export import processes

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServiceError(RuntimeError):
    """The service did not start, or answered something a benchmark cannot use."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all bound at once, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def peak_rss_bytes(pids: Sequence[int]) -> int:
    """Sum of the peak resident sets (VmHWM) of these processes: the memory a configuration really needed."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total


def process_tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


@dataclass
class Gateway:
    """`python -m gateway` with RERANKER_* settings, on a free loopback port. A context manager: it always stops."""

    env: dict[str, str]
    log_path: Path
    ready_timeout_s: float = 600.0
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    extra_pids: list[int] = field(default_factory=list)  # other processes this configuration needs (Triton)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gateway:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
        env.update(self.env)
        env.update({"RERANKER_HOST": "127.0.0.1", "RERANKER_PORT": str(self.port)})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = processes.popen(
                [sys.executable, "-m", "gateway"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServiceError(f"gateway exited with {self.process.returncode}: {self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.5)
        raise ServiceError(f"gateway not ready after {self.ready_timeout_s:.0f}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        return ""

    def pids(self) -> list[int]:
        own = process_tree(self.process.pid) if self.process is not None else []
        return own + [p for pid in self.extra_pids for p in process_tree(pid)]

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes(self.pids())

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            processes.stop(process)

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def triton_server(repository: Path, log_path: Path, ready_timeout_s: float = 300.0) -> Iterator[Any]:
    """The local tritonserver of `make triton` (export/triton_local.py) over `repository`, stopped on exit."""
    from export import triton_local

    install = triton_local.install(quiet=True)
    http_port, grpc_port, metrics_port = free_ports(3)
    server = triton_local.TritonServer(
        install=install,
        repository=repository,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_path=log_path,
    )
    with server:
        server.wait_ready(ready_timeout_s)
        yield server


def _metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            with contextlib.suppress(ValueError):
                total += float(value)
    return total


def triton_served(url: str) -> dict[str, float]:
    """Did Triton really score, or did the fallback to local ONNX Runtime quietly take over?"""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        "triton_calls_ok": sum(
            _metric_value(text, "reranker_scorer_calls_total", outcome="ok", backend=f"triton-{protocol}")
            for protocol in ("grpc", "http")
        ),
        "fallbacks": _metric_value(text, "reranker_fallbacks_total"),
    }


@dataclass
class LoadResult:
    latencies_s: list[float]
    wall_s: float
    errors: dict[str, int]
    rankings: list[list[int]]  # per request, document indices best first (request order)
    scores: list[list[float]]  # per request, relevance score per document index


def rerank_body(query: str, documents: Sequence[str], keep: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "documents": list(documents), "top_n": len(documents)}
    if keep is not None:
        body["keep"] = keep
    return body


async def _drive(url: str, requests: Sequence[dict[str, Any]], clients: int, timeout_s: float) -> LoadResult:
    """`clients` concurrent closed-loop clients share the request list; each sends its next when answered."""
    latencies: list[float] = [float("nan")] * len(requests)
    rankings: list[list[int]] = [[] for _ in requests]
    scores: list[list[float]] = [[] for _ in requests]
    errors: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def one_client() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/rerank", json=requests[i])
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    continue
                latencies[i] = time.perf_counter() - t
                results = r.json()["results"]
                rankings[i] = [int(x["index"]) for x in results]
                per_doc = [float("nan")] * len(requests[i]["documents"])
                for x in results:
                    per_doc[int(x["index"])] = float(x["relevance_score"])
                scores[i] = per_doc

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return LoadResult(latencies, wall, errors, rankings, scores)


def drive(
    url: str, requests: Sequence[dict[str, Any]], clients: int = 1, timeout_s: float = 900.0
) -> LoadResult:
    return asyncio.run(_drive(url, requests, clients, timeout_s))
