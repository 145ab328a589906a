"""Scoring one stage (prefilter or cross-encoder) for many queries at once: the pair cache first, then the
misses tokenized in a worker thread, cut into length buckets, scored by the stage's scorer, and each
document reduced to its best window.

Typed records carry the work: a `PairJob` per query, a `WindowOwner` per scored window, a `BestWindow`
per document while its windows come back, a `StageResult` for the caller. Every batch's service time (its
runtime call less its wait for the lane) goes to the stage's `WorkMeter` (gateway/cost.py): the speed
admission prices this model's work by. `warm_up` measures it at load on synthetic pairs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from gateway import metrics
from gateway.cache import CachedScore, PairScoreCache
from gateway.domain import BatchScores, EncodedBatch, PhaseTimes
from gateway.models import ModelStage
from gateway.plan import PairOptions
from gateway.tokenization import Window, build_batch, plan_batches


@dataclass(frozen=True)
class PairJob:
    """One query's documents for one stage. `origin[i]`: the request's index of `documents[i]` (errors
    name it)."""

    query: str
    documents: Sequence[str]
    origin: Sequence[int]
    pairs: PairOptions


@dataclass(frozen=True)
class WindowOwner:
    """Whose window a batch row is: job `job`, document `doc` of that job."""

    job: int
    doc: int
    chars: tuple[int, int]
    tokens: int


@dataclass
class BestWindow:
    """A document's windows folded as their logits come back: the best one wins, tokens add up."""

    logit: float
    chars: tuple[int, int]
    tokens: int

    def add(self, logit: float, chars: tuple[int, int], tokens: int) -> None:
        if logit > self.logit:
            self.logit, self.chars = logit, chars
        self.tokens += tokens


@dataclass
class StageResult:
    per_job: list[list[CachedScore]]  # per job, per document
    backends: tuple[str, ...]  # who scored the batches, in order, once each (empty: all from the cache)
    cache_hits: list[int]
    query_truncated: list[bool]
    timings: PhaseTimes = field(default_factory=PhaseTimes)


@dataclass
class _Prepared:
    batches: list[tuple[EncodedBatch, list[WindowOwner]]]
    chunked: dict[tuple[int, int], bool]
    truncated: dict[tuple[int, int], bool]
    query_truncated: list[bool]


class StageScorer:
    """Scores pairs on one loaded stage, through the shared pair cache."""

    def __init__(
        self,
        stage: ModelStage,
        cache: PairScoreCache,
        pool: Executor,
        *,
        role: str,
        max_batch_size: int,
        model: str = "",
    ):
        self.stage = stage
        self.role = role  # "reranker" or "prefilter": this stage's place in the pipeline (metric label)
        self.model = model  # the served model whose requests this scores (metric label)
        self.cache = cache
        self._pool = pool
        self.max_rows = min(filter(None, [max_batch_size, stage.max_rows]))

    async def score(
        self, jobs: Sequence[PairJob], *, cached: bool = True, measured: bool = True
    ) -> StageResult:
        """Every job's documents scored: cached scores where present, the rest tokenized and run (`cached`
        False: no cache lookups or entries, every pair is run; `measured` False: the meter is not told)."""
        keys = [
            [
                self.cache.key(job.pairs.cache_namespace(self.stage.spec.version), job.query, d)
                for d in job.documents
            ]
            if cached
            else []
            for job in jobs
        ]
        found: list[list[CachedScore | None]] = [
            self.cache.get_many(k) if cached else [None] * len(job.documents)
            for k, job in zip(keys, jobs, strict=True)
        ]
        hits = [sum(1 for f in fs if f is not None) for fs in found]
        misses = [[i for i, f in enumerate(fs) if f is None] for fs in found]
        if cached:
            self._count_lookups(sum(hits), sum(map(len, misses)))
        result = StageResult(per_job=[], backends=(), cache_hits=hits, query_truncated=[False] * len(jobs))
        if any(misses):
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(self._pool, self._prepare, jobs, misses)
            tokenized = time.perf_counter()
            scored = await asyncio.gather(
                *(self._run(batch, owners, measured) for batch, owners in prepared.batches)
            )
            result.timings = self._phase_times(started, tokenized, time.perf_counter(), scored)
            result.query_truncated = prepared.query_truncated
            best, result.backends = self._fold(prepared, scored)
            new_entries: list[tuple[bytes, CachedScore]] = []
            for j, miss in enumerate(misses):
                for i in miss:
                    window = best[(j, i)]
                    score = CachedScore(
                        logit=float(np.float32(window.logit)),
                        chunk=window.chars if prepared.chunked[(j, i)] else None,
                        tokens=window.tokens,
                        truncated=prepared.truncated[(j, i)],
                    )
                    found[j][i] = score
                    if cached:
                        new_entries.append((keys[j][i], score))
            self.cache.put_many(new_entries)
        result.per_job = [[f for f in fs if f is not None] for fs in found]
        return result

    async def _run(self, batch: EncodedBatch, owners: Sequence[WindowOwner], measured: bool) -> BatchScores:
        """One batch through the runtime; its service time (the call less its wait for the lane) and its
        tokens go to the stage's meter."""
        started = time.perf_counter()
        result = await self.stage.scorer.score(batch)
        if measured:
            tokens = sum(o.tokens for o in owners)
            self.stage.meter.record(tokens, started + result.queued_s, time.perf_counter())
        return result

    async def warm_up(self, *, pair_tokens: int | None = None) -> None:
        """Measure this stage's speed before traffic does: one short pair to wake the runtime (its first call
        allocates), then synthetic pairs of `pair_tokens` (default and at most: the stage's window, the long
        documents that cost most a token; a 16-layer decoder measured 1,284 tokens/s on 256-token pairs and
        826 on full 512-token windows, and admission priced a flood 36% short) filling two batches of its
        token budget, through the real tokenizer, batching and runtime, past the cache."""
        stage = self.stage
        length = min(pair_tokens or stage.max_length, stage.max_length)
        opts = PairOptions(max_length=length, max_chunks=1, overlap=0, truncate=True, direction="right")
        words = _WARM_UP_TEXT.split()
        document = " ".join(words[i % len(words)] for i in range(length))  # a word is a token or more
        count = max(2, -(-2 * stage.token_budget // length))
        await self.score([PairJob(_WARM_UP_QUERY, [document[:200]], [0], opts)], cached=False, measured=False)
        docs = [f"{i} {document}" for i in range(count)]
        await self.score([PairJob(_WARM_UP_QUERY, docs, list(range(count)), opts)], cached=False)

    def _count_lookups(self, hits: int, misses: int) -> None:
        if hits:
            metrics.CACHE_LOOKUPS.labels(self.role, "hit", self.model).inc(hits)
        if misses:
            metrics.CACHE_LOOKUPS.labels(self.role, "miss", self.model).inc(misses)

    def _fold(
        self, prepared: _Prepared, scored: Sequence[BatchScores]
    ) -> tuple[dict[tuple[int, int], BestWindow], tuple[str, ...]]:
        """Each document's best window over the batches' logits, and who scored them."""
        best: dict[tuple[int, int], BestWindow] = {}
        backends: list[str] = []
        for (batch, owners), result in zip(prepared.batches, scored, strict=True):
            metrics.BATCH_SIZE.labels(self.role, self.model).observe(batch.size)
            metrics.BATCH_TOKENS.labels(self.role, self.model).observe(batch.size * batch.seq_len)
            backends.extend(b for b in result.backends if b not in backends)
            for owner, logit in zip(owners, result.logits.tolist(), strict=True):
                key = (owner.job, owner.doc)
                if key in best:
                    best[key].add(logit, owner.chars, owner.tokens)
                else:
                    best[key] = BestWindow(logit, owner.chars, owner.tokens)
        return best, tuple(backends)

    def _prepare(self, jobs: Sequence[PairJob], misses: list[list[int]]) -> _Prepared:
        """Worker thread: tokenize the missing pairs, cut length buckets, pad each batch to its longest."""
        windows: list[Window] = []
        owners: list[WindowOwner] = []
        chunked: dict[tuple[int, int], bool] = {}
        truncated: dict[tuple[int, int], bool] = {}
        query_truncated = [False] * len(jobs)
        tokenizer = self.stage.tokenizer
        for j, (job, miss) in enumerate(zip(jobs, misses, strict=True)):
            if not miss:
                continue
            opts = job.pairs
            enc = tokenizer.encode_pairs(
                job.query,
                [job.documents[i] for i in miss],
                max_length=opts.max_length,
                max_chunks=opts.max_chunks,
                overlap=opts.overlap,
                direction=opts.direction,
                truncate=opts.truncate,
                names=[job.origin[i] for i in miss],
                instruction=opts.instruction,
            )
            query_truncated[j] = enc.query_truncated
            for k, i in enumerate(miss):
                chunked[(j, i)] = enc.chunked[k]
                truncated[(j, i)] = enc.truncated[k]
            for w in enc.windows:
                windows.append(w)
                owners.append(WindowOwner(j, miss[w.doc], w.chars, len(w.ids)))
        plan = self._plan([len(w.ids) for w in windows], [o.job for o in owners])
        names, pad_id, side = self.stage.scorer.input_names, tokenizer.pad_id, tokenizer.padding_side
        batches = [
            (
                build_batch([windows[k] for k in rows], names, pad_id, padding_side=side),
                [owners[k] for k in rows],
            )
            for rows in plan
        ]
        return _Prepared(batches, chunked, truncated, query_truncated)

    def _plan(self, lengths: Sequence[int], jobs: Sequence[int]) -> list[list[int]]:
        """Length buckets; within each query when the stage's scorer computes a shared prompt head once
        (`ModelStage.per_query_batches`: every batch then shares one head)."""
        budget = self.stage.token_budget
        if self.stage.per_query_batches:
            return _by_job(lengths, jobs, budget, self.max_rows)
        return plan_batches(lengths, token_budget=budget, max_rows=self.max_rows)

    def _phase_times(
        self, started: float, tokenized: float, scored: float, results: Sequence[BatchScores]
    ) -> PhaseTimes:
        """One stage's phases, observed in the histograms. The batches run concurrently (or queue in one lane
        behind each other): lane_wait is the wait before the first of them started, inference the rest."""
        tokenize = tokenized - started
        lane_wait = min((r.queued_s for r in results), default=0.0)
        inference = max(0.0, scored - tokenized - lane_wait)
        metrics.PHASE_SECONDS.labels("tokenize", self.role, self.model).observe(tokenize)
        metrics.PHASE_SECONDS.labels("lane_wait", self.role, self.model).observe(lane_wait)
        metrics.PHASE_SECONDS.labels("inference", self.role, self.model).observe(inference)
        return PhaseTimes(tokenize=tokenize, lane_wait=lane_wait, inference=inference)


def _by_job(lengths: Sequence[int], jobs: Sequence[int], token_budget: int, max_rows: int) -> list[list[int]]:
    """Length buckets within each job: every batch then holds one query's windows (one shared head)."""
    plan: list[list[int]] = []
    for job in dict.fromkeys(jobs):
        rows = [k for k, j in enumerate(jobs) if j == job]
        buckets = plan_batches([lengths[k] for k in rows], token_budget=token_budget, max_rows=max_rows)
        plan.extend([rows[i] for i in bucket] for bucket in buckets)
    return plan


_WARM_UP_QUERY = "how do rivers carry sediment to the sea"
_WARM_UP_TEXT = (
    "Rivers carry sand, silt and clay downstream; where the current slows near the coast the sediment settles "
    "and builds deltas, marshes and bars, while storms and tides move it along the shore again."
)
