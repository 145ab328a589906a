"""Prometheus metrics (default registry, module level: one set per process, shared by every app)."""

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
    "reranker_requests_total", "HTTP requests by route and status", ["route", "method", "status"]
)
REQUEST_LATENCY = Histogram(
    "reranker_request_duration_seconds", "HTTP request latency", ["route", "status"], buckets=_LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("reranker_in_flight_requests", "Rerank requests being processed")
REJECTED = Counter("reranker_rejected_requests_total", "Requests refused before scoring", ["reason"])
DOCUMENTS_PER_REQUEST = Histogram(
    "reranker_request_documents", "Documents per rerank query", buckets=_COUNT_BUCKETS
)
TOKENS_PER_REQUEST = Histogram(
    "reranker_request_tokens",
    "Tokens of all pairs built for one rerank query",
    buckets=(0, 100, 500, 1000, 5000, 10_000, 20_000, 50_000, 100_000, 500_000),
)
BATCH_SIZE = Histogram(
    "reranker_batch_size", "Rows per inference batch", ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
BATCH_TOKENS = Histogram(
    "reranker_batch_padded_tokens",
    "Padded tokens (rows x longest) per inference batch",
    ["stage"],
    buckets=(64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
)
PREFILTER_DOCUMENTS = Counter(
    "reranker_prefilter_documents_total", "Documents through the prefilter, kept or dropped", ["outcome"]
)
PREFILTER_DROP_RATIO = Histogram(
    "reranker_prefilter_drop_ratio",
    "Share of a query's documents the prefilter cut",
    buckets=(0, 0.1, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 1),
)
TRUNCATED_DOCUMENTS = Counter(
    "reranker_truncated_documents_total", "Documents longer than the scored windows"
)
CACHE_LOOKUPS = Counter("reranker_cache_lookups_total", "Pair score cache lookups", ["stage", "result"])
FALLBACKS = Counter(
    "reranker_fallbacks_total", "Batches a fallback backend scored", ["from_backend", "to_backend", "reason"]
)
SCORER_CALLS = Counter(
    "reranker_scorer_calls_total", "Scorer batch calls", ["backend", "protocol", "outcome"]
)
_SHARE_BUCKETS = (0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1)
CASCADE_SAMPLES = Counter(
    "reranker_cascade_samples_total",
    "Cascaded requests picked for a fidelity measurement, by outcome",
    ["outcome"],
)
CASCADE_RECALL = Histogram(
    "reranker_cascade_recall_at_10",
    "Share of the single-stage top 10 that a sampled cascaded request kept in its top 10",
    buckets=_SHARE_BUCKETS,
)
CASCADE_RANK_AGREEMENT = Histogram(
    "reranker_cascade_rank_agreement",
    "Spearman correlation of a sampled cascaded ranking with the single-stage ranking",
    buckets=_SHARE_BUCKETS,
)
CASCADE_RECALL_MEAN = Gauge(
    "reranker_cascade_recall_at_10_mean", "Mean recall@10 against single stage over the recent samples"
)
CASCADE_AGREEMENT_MEAN = Gauge(
    "reranker_cascade_rank_agreement_mean", "Mean rank agreement with single stage over the recent samples"
)
CASCADE_KEEP = Gauge("reranker_cascade_keep", "The default keep the cascade uses now (adaptive)")
MODEL_LOAD_SECONDS = Gauge("reranker_model_load_seconds", "Seconds the last model load took")


class _ProcessCollector(Collector):
    """The seed's process figures (RSS, VMS, CPU, threads), read by psutil at scrape time."""

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
