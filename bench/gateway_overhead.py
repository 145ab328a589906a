"""Gateway figures on SciFact: docs/s single- vs two-stage, HTTP overhead over bare session.run,
length-bucketing speedup, resident memory.

    python bench/gateway_overhead.py --repository model_repository [--queries 5] [--keeps 0,20,30,50]

It starts `python -m gateway` (cache off, so every request is scored) on a free 127.0.0.1 port, and
in this process loads the same int8 cross-encoder with the gateway's own session options to time bare
`session.run` on exactly the batches the gateway builds. HTTP requests and bare runs alternate per
query, so load from other processes on the machine hits both sides alike. Data: ../shared/data/scifact
(document text = (title + " " + text).strip(); the first N queries of bm25_top100.jsonl, 100
candidates each). The JSON report goes to --out; a summary is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export import processes  # noqa: E402
from gateway.backends.onnx_local import make_session  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.repository import read_model_spec  # noqa: E402
from gateway.tokenization import PairTokenizer, build_batch, plan_batches  # noqa: E402


def load_scifact(data: Path, n_queries: int, n_docs: int) -> list[dict[str, Any]]:
    corpus: dict[str, str] = {}
    with (data / "corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            corpus[d["_id"]] = (d.get("title", "") + " " + d.get("text", "")).strip()
    queries = {}
    with (data / "queries.jsonl").open() as fh:
        for line in fh:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    with (data / "qrels" / "test.tsv").open() as fh:
        next(fh)
        for line in fh:
            qid, did, rel = line.strip().split("\t")
            qrels.setdefault(qid, {})[did] = int(rel)
    out = []
    with (data / "bm25_top100.jsonl").open() as fh:
        for line in fh:
            run = json.loads(line)
            ids = run["doc_ids"][:n_docs]
            out.append(
                {
                    "qid": run["query_id"],
                    "query": queries[run["query_id"]],
                    "doc_ids": ids,
                    "docs": [corpus[i] for i in ids],
                    "qrels": qrels.get(run["query_id"], {}),
                }
            )
            if len(out) == n_queries:
                break
    return out


def ndcg10(ranked_ids: list[str], rels: dict[str, int]) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked_ids[:10]))
    ideal = sorted(rels.values(), reverse=True)[:10]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m gateway` in a child process; RSS sampled every 20 ms for the peak."""

    def __init__(self, repository: Path, env_extra: dict[str, str], log: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "RERANKER_MODEL_REPOSITORY": str(repository),
            "RERANKER_PORT": str(self.port),
            "RERANKER_HOST": "127.0.0.1",
            "RERANKER_CACHE_SIZE": "0",
            "RERANKER_LOG_LEVEL": "warning",
            "RERANKER_MAX_IN_FLIGHT": "64",
            "RERANKER_REQUEST_TIMEOUT_S": "600",
            **env_extra,
        }
        self.log = log.open("w")
        self.proc = processes.popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.ps = psutil.Process(self.proc.pid)
        self.url = f"http://127.0.0.1:{self.port}"
        self.peak = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def wait_ready(self, timeout_s: float = 120) -> float:
        started = time.perf_counter()
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    self._sampler.start()
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gateway not ready after {timeout_s}s")

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        self._stop.set()
        processes.stop(self.proc, 15)
        self.log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--keeps", default="0,20,30,50", help="keep values to compare (0 = single stage)")
    ap.add_argument("--bucketing-queries", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / ".work" / "gateway_overhead.json")
    args = ap.parse_args()
    settings = Settings(model_repository=args.repository)
    keeps = [int(k) for k in args.keeps.split(",")]
    data = load_scifact(args.data, args.queries, args.docs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "load_avg_start": os.getloadavg()},
        "settings": {"token_budget": settings.token_budget, "threads": settings.intra_op_threads},
        "queries": len(data),
        "docs_per_query": args.docs,
    }

    # Bare session: the gateway's session options, tokenizer and batch plan, nothing else.
    spec = read_model_spec(args.repository, settings.model_name)
    tok = PairTokenizer.from_dir(spec.tokenizer_dir, max_length=spec.max_length)
    path = spec.variant_path("int8")
    assert path is not None
    session = make_session(path, device="cpu", threads=settings.intra_op_threads)
    input_names = tuple(i.name for i in session.get_inputs())

    def gateway_batches(item: dict[str, Any], budget: int) -> list[Any]:
        enc = tok.encode_pairs(item["query"], item["docs"])
        plan = plan_batches(
            [len(w.ids) for w in enc.windows], token_budget=budget, max_rows=settings.max_batch_size
        )
        return [build_batch([enc.windows[k] for k in rows], input_names, tok.pad_id) for rows in plan]

    me = psutil.Process()

    def cpu_s(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    bare_cpu: list[float] = []

    def bare(batches: list[Any], sess: Any = session) -> float:
        c = cpu_s(me)
        t = time.perf_counter()
        for b in batches:
            sess.run(["logits"], b.inputs)
        elapsed = time.perf_counter() - t
        bare_cpu.append(cpu_s(me) - c)
        return elapsed

    server = Server(args.repository, {}, args.out.with_suffix(".server.log"))
    try:
        ready_s = server.wait_ready()
        report["memory_mb"] = {"after_load": round(server.rss_mb(), 1)}
        report["ready_seconds"] = round(ready_s, 2)
        client = httpx.Client(base_url=server.url, timeout=600)
        warm = data[0]
        client.post("/rerank", json={"query": warm["query"], "documents": warm["docs"][:8], "keep": 0})
        bare(gateway_batches(warm, settings.token_budget)[-1:])

        # 1. Overhead: HTTP + tokenization + sort vs bare session.run on the same batches (single stage).
        # Wall time is at the mercy of other processes on a shared host; CPU seconds (server process for
        # the request, this process for the bare runs; ORT spinning is off) are the steadier measure.
        http_s, bare_s, http_cpu, bare_cpu_q = [], [], [], []
        for item in data:
            c = cpu_s(server.ps)
            t = time.perf_counter()
            r = client.post("/rerank", json={"query": item["query"], "documents": item["docs"], "keep": 0})
            http_s.append(time.perf_counter() - t)
            http_cpu.append(cpu_s(server.ps) - c)
            r.raise_for_status()
            bare_s.append(bare(gateway_batches(item, settings.token_budget)))
            bare_cpu_q.append(bare_cpu[-1])
        overhead = sum(http_s) / sum(bare_s) - 1
        per_query = [h / b - 1 for h, b in zip(http_s, bare_s, strict=True)]
        report["overhead"] = {
            "http_seconds": round(sum(http_s), 3),
            "bare_session_run_seconds": round(sum(bare_s), 3),
            "overhead_pct": round(100 * overhead, 1),
            "median_per_query_pct": round(100 * statistics.median(per_query), 1),
            "server_cpu_seconds": round(sum(http_cpu), 3),
            "bare_cpu_seconds": round(sum(bare_cpu_q), 3),
            "cpu_overhead_pct": round(100 * (sum(http_cpu) / sum(bare_cpu_q) - 1), 1),
        }

        # 2. Two-stage vs single-stage docs/s (and nDCG@10 on these queries), through HTTP.
        stages: dict[str, Any] = {}
        for keep in keeps:
            c0 = cpu_s(server.ps)
            t0 = time.perf_counter()
            ndcgs = []
            stage_names: list[str] = []
            for item in data:
                r = client.post(
                    "/rerank", json={"query": item["query"], "documents": item["docs"], "keep": keep}
                )
                r.raise_for_status()
                body = r.json()
                stage_names = body["stages"]
                if item["qrels"]:
                    ndcgs.append(
                        ndcg10([item["doc_ids"][res["index"]] for res in body["results"]], item["qrels"])
                    )
            elapsed = time.perf_counter() - t0
            cpu = cpu_s(server.ps) - c0
            stages[str(keep)] = {
                "cpu_seconds_per_query": round(cpu / len(data), 3),
                # docs/s on `threads` cores nobody else uses, estimated from the server's CPU seconds
                "docs_per_s_cpu_equivalent": round(
                    len(data) * args.docs * settings.intra_op_threads / cpu, 1
                ),
                "stages": stage_names,
                "docs_per_s": round(len(data) * args.docs / elapsed, 1),
                "seconds_per_query": round(elapsed / len(data), 3),
                "ndcg@10": round(statistics.mean(ndcgs), 4) if ndcgs else None,
            }
            print(f"keep={keep}: {stages[str(keep)]}", flush=True)
        single = stages.get("0", {}).get("docs_per_s")
        single_cpu = stages.get("0", {}).get("cpu_seconds_per_query")
        for value in stages.values():
            value["speedup_vs_single"] = round(value["docs_per_s"] / single, 2) if single else None
            value["cpu_speedup_vs_single"] = (
                round(single_cpu / value["cpu_seconds_per_query"], 2) if single_cpu else None
            )
        report["two_stage"] = stages
        report["memory_mb"]["after_workload"] = round(server.rss_mb(), 1)
        report["memory_mb"]["peak_sampled"] = round(server.peak / 2**20, 1)
        m = client.get("/metrics").text
        report["server_threads"] = next(
            (
                float(line.split()[-1])
                for line in m.splitlines()
                if line.startswith("reranker_process_threads ")
            ),
            None,
        )
    finally:
        server.stop()

    if args.bucketing_queries <= 0:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0

    # 3. Length bucketing vs padding: same pairs, bare int8 session (server stopped).
    names = ("bucketed", "one_padded_batch", "unsorted_batches_of_16")
    bucket = dict.fromkeys(names, 0.0)
    bucket_cpu = dict.fromkeys(names, 0.0)
    for item in data[: args.bucketing_queries]:
        windows = tok.encode_pairs(item["query"], item["docs"]).windows
        plans = {
            "bucketed": gateway_batches(item, settings.token_budget),
            "one_padded_batch": [build_batch(windows, input_names, tok.pad_id)],
            "unsorted_batches_of_16": [
                build_batch(windows[i : i + 16], input_names, tok.pad_id) for i in range(0, len(windows), 16)
            ],
        }
        for name in names:
            bucket[name] += bare(plans[name])
            bucket_cpu[name] += bare_cpu[-1]
    pairs = args.docs * min(args.bucketing_queries, len(data))
    report["bucketing"] = {
        k: {
            "seconds": round(v, 3),
            "cpu_seconds": round(bucket_cpu[k], 3),
            "pairs_per_s": round(pairs / v, 1),
        }
        for k, v in bucket.items()
    }
    for other, label in (("one_padded_batch", "one_padded_batch"), ("unsorted_batches_of_16", "unsorted_16")):
        report["bucketing"][f"speedup_vs_{label}"] = round(bucket[other] / bucket["bucketed"], 2)
        report["bucketing"][f"cpu_speedup_vs_{label}"] = round(bucket_cpu[other] / bucket_cpu["bucketed"], 2)

    # 4. Reference: bare fp32 ORT on the same bucketed batches (the 27.9 pairs/s baseline's setup).
    fp32 = make_session(
        spec.folder / spec.variants["fp32"]["file"], device="cpu", threads=settings.intra_op_threads
    )
    sub = data[: args.bucketing_queries]
    fp32_s = fp32_cpu = int8_s = int8_cpu = 0.0
    for item in sub:
        batches = gateway_batches(item, settings.token_budget)
        fp32_s += bare(batches, fp32)
        fp32_cpu += bare_cpu[-1]
        int8_s += bare(batches)
        int8_cpu += bare_cpu[-1]
    threads = settings.intra_op_threads
    report["bare_pairs_per_s"] = {
        "fp32": round(pairs / fp32_s, 1),
        "int8": round(pairs / int8_s, 1),
        # pairs per second of `threads` fully available cores, from CPU seconds
        "fp32_cpu_equivalent": round(pairs * threads / fp32_cpu, 1),
        "int8_cpu_equivalent": round(pairs * threads / int8_cpu, 1),
    }
    report["machine"]["load_avg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
