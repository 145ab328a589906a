"""Prometheus metrics (default registry, module level: one set per process, shared by every app).

Several models share one process, so every request, queue, phase, scorer and fallback metric carries `model`
(vLLM labels its metrics `model_name`): for a request, the served model its body picked (empty when the
request failed before a model was chosen, and for the ops routes); for a runtime (scorer calls, fallbacks,
the lane, the work rate), the model whose weights ran, which is the prefilter's folder for the one prefilter
every model shares.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psutil
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_COUNT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

REQUESTS = Counter(
    "reranker_requests_total",
    "HTTP requests by route, status and model",
    ["route", "method", "status", "model"],
)
REQUEST_LATENCY = Histogram(
    "reranker_request_duration_seconds",
    "HTTP request latency",
    ["route", "status", "model"],
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("reranker_in_flight_requests", "Rerank requests admitted and not yet answered", ["model"])
QUEUED_WORK = Gauge(
    "reranker_queued_work_seconds",
    "Estimated seconds of runtime work of the admitted requests not yet answered (admission)",
    ["model"],
)
WORK_RATE = Gauge(
    "reranker_work_rate_tokens_per_second",
    "A model's measured speed (tokens per second of its runtime's service time) that admission prices work by",
    ["model"],
)
CANCELLED = Counter(
    "reranker_cancelled_requests_total",
    "Requests whose work was stopped before it finished",
    ["reason", "model"],
)
REJECTED = Counter(
    "reranker_rejected_requests_total", "Requests refused before scoring, or timed out", ["reason", "model"]
)
DOCUMENTS_PER_REQUEST = Histogram(
    "reranker_request_documents", "Documents per rerank query", ["model"], buckets=_COUNT_BUCKETS
)
TOKENS_PER_REQUEST = Histogram(
    "reranker_request_tokens",
    "Tokens of all pairs built for one rerank query",
    ["model"],
    buckets=(0, 100, 500, 1000, 5000, 10_000, 20_000, 50_000, 100_000, 500_000),
)
BATCH_SIZE = Histogram(
    "reranker_batch_size",
    "Rows per inference batch",
    ["stage", "model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_TOKENS = Histogram(
    "reranker_batch_padded_tokens",
    "Padded tokens (rows x longest) per inference batch",
    ["stage", "model"],
    buckets=(64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
)
PREFILTER_DOCUMENTS = Counter(
    "reranker_prefilter_documents_total",
    "Documents through the prefilter, kept or dropped",
    ["outcome", "model"],
)
PREFILTER_DROP_RATIO = Histogram(
    "reranker_prefilter_drop_ratio",
    "Share of a query's documents the prefilter cut",
    ["model"],
    buckets=(0, 0.1, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 1),
)
TRUNCATED_DOCUMENTS = Counter(
    "reranker_truncated_documents_total", "Documents longer than the scored windows", ["model"]
)
CACHE_LOOKUPS = Counter(
    "reranker_cache_lookups_total", "Pair score cache lookups", ["stage", "result", "model"]
)
FALLBACKS = Counter(
    "reranker_fallbacks_total",
    "Batches a fallback backend scored",
    ["from_backend", "to_backend", "reason", "model"],
)
LANE_QUEUED = Gauge(
    "reranker_lane_queued_batches", "Batches waiting for the CPU inference lane, per model", ["model"]
)
LANE_BATCHES = Counter(
    "reranker_lane_batches_total", "Batches the CPU inference lane ran, per model", ["model"]
)
LANE_BUSY = Counter(
    "reranker_lane_busy_seconds_total",
    "Seconds the CPU inference lane spent on a model's batches (its share of the cores)",
    ["model"],
)
# `backend` is the scorer's name, the one the response's `backend` field and reranker_fallbacks_total use:
# onnx-cpu, onnx-cuda (in process), triton-grpc, triton-http; `protocol` is how it is reached (inproc, grpc,
# http); `outcome` is "ok" or the failure's reason (cuda_oom, runtime, unavailable, timeout, ...).
SCORER_CALLS = Counter(
    "reranker_scorer_calls_total",
    "Batch calls per scorer (backend: the scorer's name, as in the response) by protocol, outcome and model",
    ["backend", "protocol", "outcome", "model"],
)
PHASE_SECONDS = Histogram(
    "reranker_phase_duration_seconds",
    "Seconds one rerank call spent per phase (tokenize, lane_wait, inference, assemble) and model stage",
    ["phase", "stage", "model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TRITON_ENDPOINT_CALLS = Counter(
    "reranker_triton_endpoint_calls_total",
    "Batch calls per Triton endpoint (host:port) by outcome (ok, unavailable, timeout, error, ...)",
    ["endpoint", "outcome"],
)
TRITON_ENDPOINT_FAILURES = Counter(
    "reranker_triton_endpoint_failures_total",
    "Failed batch calls per Triton endpoint; each takes the endpoint out until a re-probe answers ready",
    ["endpoint", "reason"],
)
TRITON_ENDPOINT_IN_FLIGHT = Gauge(
    "reranker_triton_endpoint_in_flight_rows", "Rows of batches in flight per Triton endpoint", ["endpoint"]
)
TRITON_ENDPOINT_UP = Gauge(
    "reranker_triton_endpoint_up", "1 while a Triton endpoint takes batches, 0 while it is out", ["endpoint"]
)
_SHARE_BUCKETS = (0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1)
CASCADE_SAMPLES = Counter(
    "reranker_cascade_samples_total",
    "Cascaded requests picked for a fidelity measurement, by outcome",
    ["outcome", "model"],
)
CASCADE_RECALL = Histogram(
    "reranker_cascade_recall_at_10",
    "Share of the single-stage top 10 that a sampled cascaded request kept in its top 10",
    ["model"],
    buckets=_SHARE_BUCKETS,
)
CASCADE_RANK_AGREEMENT = Histogram(
    "reranker_cascade_rank_agreement",
    "Spearman correlation of a sampled cascaded ranking with the single-stage ranking",
    ["model"],
    buckets=_SHARE_BUCKETS,
)
CASCADE_RECALL_MEAN = Gauge(
    "reranker_cascade_recall_at_10_mean",
    "Mean recall@10 against single stage over the recent samples",
    ["model"],
)
CASCADE_AGREEMENT_MEAN = Gauge(
    "reranker_cascade_rank_agreement_mean",
    "Mean rank agreement with single stage over the recent samples",
    ["model"],
)
CASCADE_KEEP = Gauge("reranker_cascade_keep", "The default keep the cascade uses now (adaptive)", ["model"])
MODEL_LOAD_SECONDS = Gauge("reranker_model_load_seconds", "Seconds the model's last load took", ["model"])


class _ProcessCollector(Collector):
    """Process figures (RSS, VMS, CPU, threads), read by psutil at scrape time."""

    def __init__(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self.cache_ratio = lambda: 0.0
        self.cache_entries = lambda: 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mem = self._proc.memory_info()
        yield GaugeMetricFamily("reranker_process_rss_bytes", "Resident set size", value=mem.rss)
        yield GaugeMetricFamily("reranker_process_vms_bytes", "Virtual memory size", value=mem.vms)
        yield GaugeMetricFamily(
            "reranker_process_cpu_percent",
            "CPU use since the last scrape (100 = one core)",
            value=self._proc.cpu_percent(None),
        )
        yield GaugeMetricFamily("reranker_process_threads", "OS threads", value=self._proc.num_threads())
        yield GaugeMetricFamily(
            "reranker_cache_hit_ratio",
            "Pair score cache hits / lookups since start",
            value=self.cache_ratio(),
        )
        yield GaugeMetricFamily("reranker_cache_entries", "Pair scores cached", value=self.cache_entries())


PROCESS = _ProcessCollector()
REGISTRY.register(PROCESS)


def json_snapshot() -> dict[str, object]:
    """`GET /metrics` with `Accept: application/json` (the first version's shape): the process figures at the top,
    then every reranker_* sample (labelled ones as `name{label="value",...}`, histogram buckets left out)."""
    mem = PROCESS._proc.memory_info()
    samples: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if not sample.name.startswith("reranker_") or sample.name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return {
        "rss_bytes": mem.rss,
        "vms_bytes": mem.vms,
        "rss_mb": round(mem.rss / 2**20, 1),
        "vms_mb": round(mem.vms / 2**20, 1),
        "cpu_percent": samples.get("reranker_process_cpu_percent", 0.0),
        "num_threads": PROCESS._proc.num_threads(),
        "metrics": samples,
    }
