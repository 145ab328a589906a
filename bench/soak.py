"""Soak: closed-loop clients on the gateway over a local tritonserver that is SIGKILLed on a schedule.

The failure this guards against (issue 11): one failed Triton call closed the shared gRPC channel, every
sibling call on it raised CancelledError, and a burst of requests answered 500. Here `--clients` clients send
`/rerank` requests of `--documents` short documents (cache off, prefilter off, so every request reaches a
backend) for `--minutes`; every `--kill-every` seconds tritonserver's process group gets SIGKILL and is
started again at once. Every status is counted; the run fails (exit 1) on any 5xx or transport error.

    python -m bench.soak --model-repository model_repository --minutes 10 --clients 32 --kill-every 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.service import Gateway, triton_server
from export import processes

QUERY = "Does vitamin D supplementation reduce the risk of fractures in older adults?"
TOPICS = [
    "Vitamin D supplementation reduced hip fractures in adults aged 65 and older.",
    "The railway timetable changes in spring when new trains arrive.",
    "Calcium and vitamin D lowered fracture incidence among elderly women.",
    "A recipe for sourdough bread needs flour, water, salt and a starter.",
    "Bone mineral density was unchanged after a year of vitamin D in young men.",
]


def documents(count: int, request: int) -> list[str]:
    return [f"{TOPICS[d % len(TOPICS)]} (note {request}-{d})" for d in range(count)]


async def drive(url: str, clients: int, docs: int, seconds: float, timeout_s: float) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    backends: Counter[str] = Counter()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def one_client() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                sent += 1
                body = {"query": QUERY, "documents": documents(docs, sent)}
                started = time.perf_counter()
                try:
                    response = await client.post("/rerank", json=body)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                    backends[response.json().get("backend", "?")] += 1
                elif response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        await asyncio.gather(*(one_client() for _ in range(clients)))
    latencies.sort()
    return {
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "backends": dict(backends),
        "p50_s": latencies[len(latencies) // 2] if latencies else None,
        "p99_s": latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


async def killer(server: Any, every_s: float, seconds: float, kills: list[float]) -> None:
    """SIGKILL tritonserver's process group every `every_s` seconds and start it again at once."""
    started = time.monotonic()
    while time.monotonic() - started + every_s < seconds:
        await asyncio.sleep(every_s)
        if server.process is not None:
            processes.kill_group(server.process.pid)
            kills.append(round(time.monotonic() - started, 1))
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.wait_ready, 300.0)


async def soak(args: argparse.Namespace, gateway: Gateway, server: Any) -> dict[str, Any]:
    seconds = args.minutes * 60
    kills: list[float] = []
    kill_task = asyncio.create_task(killer(server, args.kill_every, seconds, kills))
    try:
        result = await drive(gateway.url, args.clients, args.documents, seconds, args.request_timeout)
    finally:
        kill_task.cancel()
        await asyncio.gather(kill_task, return_exceptions=True)
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    fallbacks = [line for line in metrics.splitlines() if line.startswith("reranker_fallbacks_total{")]
    return {**result, "kills_at_s": kills, "fallback_counters": fallbacks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--documents", type=int, default=23)
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--triton-timeout", type=float, default=10.0)
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--work", type=Path, default=Path("bench/.work/soak"))
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    with triton_server(args.model_repository, args.work / "tritonserver.log") as server:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        env = {
            "RERANKER_MODEL_REPOSITORY": str(args.model_repository.resolve()),
            "RERANKER_PREFILTER_NAME": "",
            "RERANKER_CACHE_SIZE": "0",
            "RERANKER_DEVICE": "cpu",
            "RERANKER_TRITON_URL": url,
            "RERANKER_TRITON_PROTOCOL": args.protocol,
            "RERANKER_TRITON_TIMEOUT_S": str(args.triton_timeout),
            "RERANKER_FALLBACK_REPROBE_S": "1",
            "RERANKER_LOG_LEVEL": "warning",
        }
        with Gateway(env=env, log_path=args.work / "gateway.log") as gateway:
            result = asyncio.run(soak(args, gateway, server))
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("work", "out")}
    result["settings"]["model_repository"] = str(args.model_repository)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    failures = {k: v for k, v in result["statuses"].items() if not k.isdigit() or int(k) >= 500}
    if failures:
        print(f"FAILED: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
