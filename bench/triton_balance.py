"""Least outstanding work or round robin? The gateway over two real tritonservers on loopback, both rules side by
side in one run: two healthy replicas, then one replica slowed to about a quarter of its speed (its process group
is stopped 150 ms of every 200 ms, as a replica sharing its GPU with other work would be).

    python bench/triton_balance.py --repository model_repository [--seconds 8] [--rounds 2] [--clients 8]

Both servers serve `reranker` from the repository with the local python-backend config (export/triton_local.py);
one gateway per rule runs in this process (cache off, prefilter off). Phases alternate rule by rule and round
by round (the second round in reverse order), so load from other work on the machine hits both alike. Printed:
requests/s, p50/p99 latency and the share of batches the second replica took, per rule and scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service import free_ports  # noqa: E402
from export.triton_local import TritonServer, install  # noqa: E402

QUERY = "Does vitamin D supplementation reduce the risk of fractures in older adults?"
SENTENCES = [
    "Vitamin D supplementation at higher doses reduced hip and nonvertebral fractures in adults aged 65 and older.",
    "The railway timetable changes in spring when new trains arrive at the harbour station.",
    "Calcium and vitamin D given together lowered fracture incidence among elderly women in care homes.",
    "A recipe for sourdough bread needs flour, water, salt and a mature starter.",
    "Bone mineral density was unchanged after one year of vitamin D in healthy young men.",
]


class Gateway:
    """The real app under uvicorn in a thread of this process."""

    def __init__(self, **settings: object) -> None:
        import uvicorn

        from gateway.app import create_app
        from gateway.config import load_settings

        (self.port,) = free_ports(1)
        app = create_app(load_settings(host="127.0.0.1", port=self.port, **settings))
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gateway:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.server.started:
            raise RuntimeError("gateway did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def batches_per_endpoint(gateway: Gateway) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{gateway.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("reranker_triton_endpoint_calls_total{") and 'outcome="ok"' in line:
            endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
            out[endpoint] = out.get(endpoint, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def load(gateway: Gateway, seconds: float, clients: int, documents: int) -> list[float]:
    """Closed-loop clients for `seconds`; the latencies of the requests answered 200 by Triton."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        n = 0
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop:
                n += 1
                body = {
                    "query": QUERY,
                    "documents": [f"{SENTENCES[d % 5]} ({index}.{n}.{d})" for d in range(documents)],
                }
                started = time.perf_counter()
                response = http.post(f"{gateway.url}/rerank", json=body)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200 and response.json()["backend"] == "triton-grpc":
                        latencies.append(elapsed)
                    else:
                        errors.append(f"{response.status_code} {response.text[:100]}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 90)
    if errors:
        raise RuntimeError(f"{len(errors)} requests not answered by Triton, e.g. {errors[0]}")
    return latencies


@contextlib.contextmanager
def slowed(server: TritonServer, stop_s: float = 0.15, run_s: float = 0.05) -> Iterator[None]:
    """Stop the server's process group `stop_s` of every `stop_s + run_s` seconds (python-backend stubs too)."""
    assert server.process is not None
    group = server.process.pid
    done = threading.Event()

    def duty() -> None:
        while not done.is_set():
            os.killpg(group, signal.SIGSTOP)
            done.wait(stop_s)
            os.killpg(group, signal.SIGCONT)
            done.wait(run_s)

    thread = threading.Thread(target=duty, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        os.killpg(group, signal.SIGCONT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--documents", type=int, default=20)
    args = parser.parse_args(argv)

    triton = install(ROOT / ".triton", quiet=True)
    with tempfile.TemporaryDirectory(prefix="triton-balance-") as tmp:
        repository = Path(tmp) / "repository"
        source = args.repository / "reranker"
        for name in ("configs/cpu.pbtxt", "1/model.py", "1/model.onnx"):
            (repository / "reranker" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, repository / "reranker" / name)
        servers = []
        for label in ("a", "b"):
            http, grpc, metrics = free_ports(3)
            servers.append(
                TritonServer(
                    triton,
                    repository,
                    http_port=http,
                    grpc_port=grpc,
                    metrics_port=metrics,
                    log_path=Path(tmp) / f"{label}.log",
                )
            )
        with contextlib.ExitStack() as stack:
            for server in servers:
                stack.enter_context(server)
            for server in servers:
                server.wait_ready(180)
            a, b = (s.grpc_url for s in servers)
            common = {
                "model_repository": args.repository,
                "prefilter_name": "",
                "device": "cpu",
                "cache_size": 0,
                "threads": 1,
                "max_in_flight": 64,
                "triton_url": f"{a},{b}",
            }
            gateways = {
                rule: stack.enter_context(Gateway(**common, triton_balance=rule))
                for rule in ("least_outstanding", "round_robin")
            }
            for gateway in gateways.values():  # warm both servers through both gateways
                load(gateway, 2.0, 2, args.documents)
            results: dict[tuple[str, str], dict[str, list[float]]] = {}
            order = [(s, r) for s in ("healthy", "b slowed") for r in gateways]
            for round_index in range(args.rounds):
                for scenario, rule in order if round_index % 2 == 0 else order[::-1]:
                    gateway = gateways[rule]
                    before = batches_per_endpoint(gateway)
                    with slowed(servers[1]) if scenario == "b slowed" else contextlib.nullcontext():
                        latencies = load(gateway, args.seconds, args.clients, args.documents)
                    after = batches_per_endpoint(gateway)
                    split = {e: after.get(e, 0) - before.get(e, 0) for e in (a, b)}
                    entry = results.setdefault((scenario, rule), {"rps": [], "lat": [], "b_share": []})
                    entry["rps"].append(len(latencies) / args.seconds)
                    entry["lat"].extend(latencies)
                    entry["b_share"].append(split[b] / max(1.0, split[a] + split[b]))
    print(
        f"{args.clients} clients, {args.documents} documents per request, {args.seconds:g} s x {args.rounds} per cell"
    )
    print(f"{'scenario':<10} {'rule':<18} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'share on b':>11}")
    for (scenario, rule), entry in results.items():
        lat = sorted(entry["lat"])
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
        print(
            f"{scenario:<10} {rule:<18} {statistics.mean(entry['rps']):7.2f} "
            f"{1000 * statistics.median(lat):8.0f} {1000 * p99:8.0f} {statistics.mean(entry['b_share']):10.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
