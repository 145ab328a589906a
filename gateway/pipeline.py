"""The reranking pipeline: dedupe -> cache -> prefilter -> cross-encoder -> sigmoid -> sort -> top_n.

Knows neither HTTP nor a runtime: it talks to `Scorer`s (gateway.backends.base) that the loader built.
Tokenization and batch assembly run in a worker thread, inference in the scorers' own lanes, so the
event loop only schedules.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gateway import metrics
from gateway.cache import CachedScore, PairScoreCache
from gateway.cascade import (
    AdaptiveKeep,
    CascadeSample,
    Fidelity,
    FidelitySampler,
    cascade_order,
    select_survivors,
)
from gateway.config import Settings
from gateway.domain import (
    MAX_CHUNKS_PER_DOC,
    BatchScores,
    EncodedBatch,
    PhaseTimes,
    RerankOutcome,
    RerankQuery,
    ScoredDocument,
    Stage,
    join_backends,
    validate_query,
)
from gateway.errors import InputTooLong
from gateway.models import LoadedModels, ModelStage
from gateway.tokenization import build_batch, plan_batches

log = logging.getLogger(__name__)

Loader = Callable[[], LoadedModels]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """relevance_score: the logistic of the logit, computed in float32."""
    x = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


@dataclass
class _Job:
    """One query's documents for one stage. `origin[i]`: the request's index of `documents[i]` (errors name
    it); `truncate`: the request's choice on the cross-encoder, always on for the prefilter (an internal
    first cut whose window is narrower than the model's)."""

    query: RerankQuery
    documents: list[str]
    origin: list[int]
    max_length: int
    max_chunks: int
    overlap: int
    truncate: bool


@dataclass
class _StageScores:
    per_job: list[list[CachedScore]]
    backends: str  # who scored the batches ("" when everything came from the cache)
    cache_hits: list[int]
    query_truncated: list[bool]
    timings: PhaseTimes = field(default_factory=PhaseTimes)


@dataclass
class _Prepared:
    batches: list[tuple[EncodedBatch, list[tuple[int, int, tuple[int, int], int]]]]
    chunked: dict[tuple[int, int], bool]
    truncated: dict[tuple[int, int], bool]
    query_truncated: list[bool]


@dataclass
class _Plan:
    query: RerankQuery
    unique: list[str]
    doc_to_unique: list[int]
    keep: int
    use_prefilter: bool
    notes: list[str]  # warnings from fitting the request to the limits
    shift: dict[int, int]  # request index -> characters cut from a document's start (left truncation)
    ranked: bool = False
    origin: list[int] = field(default_factory=list)  # unique index -> the request's index (first occurrence)
    survivors: list[int] = field(default_factory=list)
    prefilter: list[CachedScore] = field(default_factory=list)
    survivor_logits: dict[int, float] = field(default_factory=dict)  # cross-encoder, by unique index


class Reranker:
    """Two-stage reranking service object; one per app. Load once, then `rerank` concurrently."""

    def __init__(self, settings: Settings, loader: Loader, *, cache: PairScoreCache | None = None):
        """`loader` builds the models (the composition root, gateway/app.py, hands in the runtimes')."""
        self.settings = settings
        self._loader = loader
        self._models: LoadedModels | None = None
        self._load_task: asyncio.Task[LoadedModels] | None = None
        self.cache = cache if cache is not None else PairScoreCache(settings.cache_size, settings.cache_ttl_s)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="tokenize"
        )
        metrics.PROCESS.cache_ratio = lambda: self.cache.hit_ratio
        self.adaptive_keep = AdaptiveKeep(  # the configured keep is honoured even outside the bounds
            settings.keep,
            target=settings.cascade_target_recall,
            low=min(settings.cascade_keep_min, settings.keep),
            high=max(settings.cascade_keep_max, settings.keep),
        )
        self._active = 0  # foreground rerank calls running; the fidelity sampler yields to them
        self.sampler = FidelitySampler(
            settings.cascade_sample_rate, busy=lambda: self._active > 0, on_result=self._on_fidelity
        )
        metrics.PROCESS.cache_entries = lambda: len(self.cache)

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def loader(self) -> Loader:
        return self._loader

    @property
    def models(self) -> LoadedModels | None:
        return self._models

    @property
    def loaded(self) -> bool:
        return self._models is not None

    async def load(self) -> LoadedModels:
        """Load the models once (in a thread); concurrent callers share one load, a failure is retried."""
        if self._models is not None:
            return self._models
        if self._load_task is None:
            self._load_task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._loader))
        task = self._load_task
        try:
            self._models = await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._load_task is task:
                self._load_task = None
            raise
        calibrated = self._models.reranker.spec.cascade.get("keep")
        if calibrated and "keep" not in self.settings.model_fields_set:
            self.adaptive_keep.start_at(int(calibrated))  # RERANKER_KEEP, when set, wins
        return self._models

    async def ready(self) -> bool:
        models = self._models
        if models is None:
            return False
        for stage in models.stages():
            if not await stage.scorer.ready():
                return False
        return True

    async def close(self) -> None:
        self.sampler.cancel()
        await self.sampler.wait()
        if self._models is not None:
            for stage in self._models.stages():
                await stage.scorer.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict[str, Any]:
        s = self.settings
        models = self._models
        return {
            "loaded": models is not None,
            "models": {st.spec.role: st.describe() for st in models.stages()} if models else {},
            "backend": models.reranker.scorer.name if models else None,
            "max_input_length": models.reranker.max_length if models else s.max_length,
            "device": models.device_report if models else {},
            "pipeline": {
                "keep": self.adaptive_keep.keep if s.prefilter_name else 0,
                "cascade": {
                    "input_ranked_default": s.cascade_input_ranked,
                    "rule": s.cascade_rule,
                    "unranked": s.cascade_unranked,
                    "adaptive_keep": self.adaptive_keep.summary(),
                    "fidelity": self.sampler.summary(),
                },
                "max_chunks_per_doc": s.max_chunks_per_doc,
                "chunk_overlap_tokens": s.chunk_overlap_tokens,
                "token_budget": s.token_budget,
                "gpu_token_budget": s.gpu_token_budget,
                "max_batch_size": s.max_batch_size,
                "cpu_precision": s.cpu_precision,
                "cache_size": s.cache_size,
                "cache_ttl_s": s.cache_ttl_s,
            },
        }

    # --- scoring ------------------------------------------------------------------------------
    async def rerank(self, query: RerankQuery) -> RerankOutcome:
        return (await self.rerank_many([query]))[0]

    async def rerank_many(self, queries: Sequence[RerankQuery]) -> list[RerankOutcome]:
        """Rank every query; the batches of all queries are built and scored together."""
        for q in queries:
            validate_query(q)
        self._active += 1
        try:
            models = await self.load()
            plans, outcomes = await self._rerank_plans(models, queries)
        finally:
            self._active -= 1
        for plan in plans:
            if plan.use_prefilter:
                self._offer_sample(models, plan)
        return outcomes

    def keep_for(self, query: RerankQuery) -> tuple[int, bool]:
        """The keep this query runs with (0: single stage) and whether its input counts as ranked: the
        request's own choices, else the server's defaults (unranked input may be single stage)."""
        s = self.settings
        ranked = s.cascade_input_ranked if query.ranked_input is None else query.ranked_input
        if query.keep is not None:
            return query.keep, ranked
        if not ranked and s.cascade_unranked == "single-stage":
            return 0, ranked
        return self.adaptive_keep.keep, ranked

    async def _rerank_plans(
        self, models: LoadedModels, queries: Sequence[RerankQuery]
    ) -> tuple[list[_Plan], list[RerankOutcome]]:
        s = self.settings
        fitted = [fit_to_limits(q, s) for q in queries]
        plans: list[_Plan] = []
        for q, notes, shift in fitted:
            index: dict[str, int] = {}
            doc_to_unique = [index.setdefault(doc, len(index)) for doc in q.documents]
            keep, ranked = self.keep_for(q)
            use_pre = models.prefilter is not None and keep > 0 and len(index) > keep
            plan = _Plan(q, list(index), doc_to_unique, keep, use_pre, notes, shift, ranked)
            plan.origin = _first_index(plan)
            plans.append(plan)

        pre_plans = [p for p in plans if p.use_prefilter]
        pre_hits = dict.fromkeys(map(id, plans), 0)
        if pre_plans:
            assert models.prefilter is not None
            pre = await self._score_stage(
                models.prefilter,
                [
                    _Job(p.query, p.unique, p.origin, models.prefilter.max_length, 1, 0, truncate=True)
                    for p in pre_plans
                ],
            )
            for p, scores, hits in zip(pre_plans, pre.per_job, pre.cache_hits, strict=True):
                p.prefilter = scores
                p.survivors = select_survivors(
                    [sc.logit for sc in scores], p.keep, rule=s.cascade_rule, ranked=p.ranked
                )
                pre_hits[id(p)] = hits
                dropped = len(scores) - len(p.survivors)
                metrics.PREFILTER_DOCUMENTS.labels("kept").inc(len(p.survivors))
                metrics.PREFILTER_DOCUMENTS.labels("dropped").inc(dropped)
                metrics.PREFILTER_DROP_RATIO.observe(dropped / len(scores))
        for p in plans:
            if not p.use_prefilter:
                p.survivors = list(range(len(p.unique)))

        ce = await self._score_stage(
            models.reranker, [self._reranker_job(models, p, p.survivors) for p in plans]
        )
        for p, scores in zip(plans, ce.per_job, strict=True):
            p.survivor_logits = {u: sc.logit for u, sc in zip(p.survivors, scores, strict=True)}
        started = time.perf_counter()
        outcomes = [
            self._assemble(models, p, scores, hits + pre_hits[id(p)], ce.backends, qtrunc)
            for p, scores, hits, qtrunc in zip(
                plans, ce.per_job, ce.cache_hits, ce.query_truncated, strict=True
            )
        ]
        assembled = time.perf_counter() - started
        metrics.PHASE_SECONDS.labels("assemble", "reranker").observe(assembled)
        timings = ce.timings + PhaseTimes(assemble=assembled)
        if pre_plans:
            timings = timings + pre.timings
        return plans, [replace(o, timings=timings) for o in outcomes]

    # --- cascade fidelity ---------------------------------------------------------------------
    def _on_fidelity(self, result: Fidelity) -> None:
        self.adaptive_keep.observe(result.recall_at_10, result.keep)

    def _offer_sample(self, models: LoadedModels, plan: _Plan) -> None:
        """Hand a cascaded request to the fidelity sampler (which decides whether to measure it)."""
        kept = plan.survivor_logits
        cut = tuple(u for u in range(len(plan.unique)) if u not in kept)
        if not cut or self.sampler.rate <= 0:
            return
        # The cascade's ranking, as _assemble orders it: rescored first, then the cut by prefilter score.
        order = cascade_order(kept, [sc.logit for sc in plan.prefilter], list(kept))
        sample = CascadeSample(tuple(order), dict(kept), cut, plan.keep)

        async def score_cut(indices: Sequence[int]) -> list[float] | None:
            logits: list[float] = []
            step = 4  # a few pairs at a time: foreground work waits at most this long for the lane
            for start in range(0, len(indices), step):
                if self._active:
                    return None
                job = self._reranker_job(models, plan, indices[start : start + step])
                scored = await self._score_stage(models.reranker, [job])
                logits.extend(sc.logit for sc in scored.per_job[0])
            return logits

        self.sampler.offer(sample, score_cut)

    def _reranker_job(self, models: LoadedModels, plan: _Plan, unique: Sequence[int]) -> _Job:
        """The cross-encoder's job for these unique documents of a plan, with the request's pair settings
        (the same ones for the foreground and the fidelity sampler, so both share the pair cache)."""
        q, s = plan.query, self.settings
        return _Job(
            q,
            [plan.unique[u] for u in unique],
            [plan.origin[u] for u in unique],
            min(q.max_length or models.reranker.max_length, models.reranker.max_length),
            min(q.max_chunks_per_doc or s.max_chunks_per_doc, MAX_CHUNKS_PER_DOC),
            s.chunk_overlap_tokens if q.overlap_tokens is None else q.overlap_tokens,
            truncate=q.truncate,
        )

    def _assemble(
        self,
        models: LoadedModels,
        plan: _Plan,
        ce_scores: list[CachedScore],
        cache_hits: int,
        backends: str,
        query_truncated: bool,
    ) -> RerankOutcome:
        q = plan.query
        n = len(q.documents)
        by_unique: dict[int, CachedScore] = dict(zip(plan.survivors, ce_scores, strict=True))
        logits = np.empty(n, dtype=np.float32)
        rescored = np.zeros(n, dtype=bool)
        for i, u in enumerate(plan.doc_to_unique):
            score = by_unique.get(u)
            if score is not None:
                logits[i] = score.logit
                rescored[i] = True
            else:
                logits[i] = plan.prefilter[u].logit
        probs = sigmoid(logits)
        # Rescored documents first (by cross-encoder score), then the ones the prefilter cut (by its score).
        order = sorted(range(n), key=lambda i: (not rescored[i], -logits[i], i))
        top = order if q.top_n is None else order[: q.top_n]
        results = tuple(
            ScoredDocument(
                index=i,
                logit=float(logits[i]),
                relevance_score=float(probs[i]),
                stage="reranker" if rescored[i] else "prefilter",
                chunk=_shifted(by_unique[plan.doc_to_unique[i]].chunk, plan.shift.get(i, 0))
                if rescored[i]
                else None,
            )
            for i in top
        )
        tokens = sum(sc.tokens for sc in ce_scores) + sum(sc.tokens for sc in plan.prefilter)
        truncated = sum(1 for sc in ce_scores if sc.truncated)
        stages: tuple[Stage, ...] = ()
        if n:
            stages = ("prefilter", "reranker") if plan.use_prefilter else ("reranker",)
        warnings: list[str] = list(plan.notes)
        if query_truncated:
            warnings.append("the query was truncated to fit max_length")
        if truncated:
            warnings.append(
                f"{truncated} document(s) were longer than the scored window(s) and were truncated"
            )
        metrics.DOCUMENTS_PER_REQUEST.observe(n)
        metrics.TOKENS_PER_REQUEST.observe(tokens)
        if truncated:
            metrics.TRUNCATED_DOCUMENTS.inc(truncated)
        return RerankOutcome(
            results=results,
            model=models.reranker.spec.model_id,
            backend=backends or ("cache" if n else models.reranker.scorer.name),
            stages=stages,
            top_n_applied=q.top_n is not None and q.top_n < n,
            prompt_tokens=tokens,
            truncated_documents=truncated,
            cache_hits=cache_hits,
            warnings=tuple(warnings),
        )

    async def _score_stage(self, stage: ModelStage, jobs: list[_Job]) -> _StageScores:
        """Scores of every job's documents: cache first, then tokenize + batch + score the misses."""
        role = stage.spec.role
        namespaces = [
            f"{stage.spec.version}|{job.max_length}|{job.max_chunks}|{job.overlap}|"
            f"{job.query.truncation_direction}|{job.truncate}"
            for job in jobs
        ]
        keys = [
            [self.cache.key(ns, job.query.query, doc) for doc in job.documents]
            for ns, job in zip(namespaces, jobs, strict=True)
        ]
        found = [self.cache.get_many(k) for k in keys]
        hits = [sum(1 for f in fs if f is not None) for fs in found]
        misses = [[i for i, f in enumerate(fs) if f is None] for fs in found]
        total_hits = sum(hits)
        total_misses = sum(map(len, misses))
        if total_hits:
            metrics.CACHE_LOOKUPS.labels(role, "hit").inc(total_hits)
        if total_misses:
            metrics.CACHE_LOOKUPS.labels(role, "miss").inc(total_misses)
        query_truncated = [False] * len(jobs)
        backends = ""
        timings = PhaseTimes()
        if total_misses:
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            prepared: _Prepared = await loop.run_in_executor(self._pool, self._prepare, stage, jobs, misses)
            tokenized = time.perf_counter()
            query_truncated = prepared.query_truncated
            results: list[BatchScores] = await asyncio.gather(
                *(stage.scorer.score(batch) for batch, _ in prepared.batches)
            )
            timings = _phase_times(role, started, tokenized, time.perf_counter(), results)
            best: dict[tuple[int, int], tuple[float, tuple[int, int], int, int]] = {}
            for (batch, owners), result in zip(prepared.batches, results, strict=True):
                metrics.BATCH_SIZE.labels(role).observe(batch.size)
                metrics.BATCH_TOKENS.labels(role).observe(batch.size * batch.seq_len)
                backends = join_backends(backends, result.backend) if backends else result.backend
                for (j, i, chars, ntok), logit in zip(owners, result.logits.tolist(), strict=True):
                    prev = best.get((j, i))
                    if prev is None:
                        best[(j, i)] = (logit, chars, ntok, 1)
                    else:
                        top = (logit, chars) if logit > prev[0] else (prev[0], prev[1])
                        best[(j, i)] = (top[0], top[1], prev[2] + ntok, prev[3] + 1)
            new_entries: list[tuple[bytes, CachedScore]] = []
            for j, miss in enumerate(misses):
                for i in miss:
                    logit, chars, ntok, _ = best[(j, i)]
                    score = CachedScore(
                        logit=float(np.float32(logit)),
                        chunk=chars if prepared.chunked[(j, i)] else None,
                        tokens=ntok,
                        truncated=prepared.truncated[(j, i)],
                    )
                    found[j][i] = score
                    new_entries.append((keys[j][i], score))
            self.cache.put_many(new_entries)
        per_job = [[f for f in fs if f is not None] for fs in found]
        return _StageScores(
            per_job=per_job,
            backends=backends,
            cache_hits=hits,
            query_truncated=query_truncated,
            timings=timings,
        )

    def _prepare(self, stage: ModelStage, jobs: list[_Job], misses: list[list[int]]) -> _Prepared:
        """Worker thread: tokenize the missing pairs, cut length buckets, pad each batch to its longest."""
        s = self.settings
        windows = []
        owners: list[tuple[int, int, tuple[int, int], int]] = []
        chunked: dict[tuple[int, int], bool] = {}
        truncated: dict[tuple[int, int], bool] = {}
        query_truncated = [False] * len(jobs)
        for j, (job, miss) in enumerate(zip(jobs, misses, strict=True)):
            if not miss:
                continue
            enc = stage.tokenizer.encode_pairs(
                job.query.query,
                [job.documents[i] for i in miss],
                max_length=job.max_length,
                max_chunks=job.max_chunks,
                overlap=job.overlap,
                direction=job.query.truncation_direction,
                truncate=job.truncate,
                names=[job.origin[i] for i in miss],
            )
            query_truncated[j] = enc.query_truncated
            for k, i in enumerate(miss):
                chunked[(j, i)] = enc.chunked[k]
                truncated[(j, i)] = enc.truncated[k]
            for w in enc.windows:
                windows.append(w)
                owners.append((j, miss[w.doc], w.chars, len(w.ids)))
        max_rows = (
            1 if stage.one_row_batches else min(filter(None, [s.max_batch_size, stage.scorer.max_batch_size]))
        )
        plan = plan_batches([len(w.ids) for w in windows], token_budget=stage.token_budget, max_rows=max_rows)
        input_names = stage.scorer.input_names
        pad_id = stage.tokenizer.pad_id
        batches = [
            (build_batch([windows[k] for k in rows], input_names, pad_id), [owners[k] for k in rows])
            for rows in plan
        ]
        return _Prepared(batches, chunked, truncated, query_truncated)


def _phase_times(
    role: str, started: float, tokenized: float, scored: float, results: Sequence[BatchScores]
) -> PhaseTimes:
    """One stage's phases, observed in the histograms. The batches run concurrently (or queue in one lane
    behind each other): lane_wait is the wait before the first of them started, inference the rest."""
    tokenize = tokenized - started
    lane_wait = min((r.queued_s for r in results), default=0.0)
    inference = max(0.0, scored - tokenized - lane_wait)
    metrics.PHASE_SECONDS.labels("tokenize", role).observe(tokenize)
    metrics.PHASE_SECONDS.labels("lane_wait", role).observe(lane_wait)
    metrics.PHASE_SECONDS.labels("inference", role).observe(inference)
    return PhaseTimes(tokenize=tokenize, lane_wait=lane_wait, inference=inference)


def fit_to_limits(q: RerankQuery, settings: Settings) -> tuple[RerankQuery, list[str], dict[int, int]]:
    """Bring a request within the character limits and the chunk maximum.

    The character limits bound memory (far above what a window can use): with truncation on, a longer
    query or document is cut to them in the truncation direction and a warning says so; with truncation
    off, InputTooLong names the document's index and the limit. Also returns, per document cut from its
    start, how many characters were cut (to report chunk offsets in the document as sent).
    """
    notes: list[str] = []
    shift: dict[int, int] = {}
    left = q.truncation_direction == "left"
    query = q.query
    if len(query) > settings.max_query_chars:
        if not q.truncate:
            raise InputTooLong(
                f"the query has {len(query)} characters; the limit max_query_chars is "
                f"{settings.max_query_chars} (truncation is off)",
                limit="max_query_chars",
                value=settings.max_query_chars,
            )
        query = query[-settings.max_query_chars :] if left else query[: settings.max_query_chars]
        notes.append(f"the query was cut to max_query_chars ({settings.max_query_chars} characters)")
    limit = settings.max_document_chars
    documents = list(q.documents)
    cut = 0
    for i, doc in enumerate(documents):
        if len(doc) <= limit:
            continue
        if not q.truncate:
            raise InputTooLong(
                f"document {i} has {len(doc)} characters; the limit max_document_chars is {limit} "
                "(truncation is off)",
                limit="max_document_chars",
                value=limit,
            )
        cut += 1
        if left:
            shift[i] = len(doc) - limit
            documents[i] = doc[-limit:]
        else:
            documents[i] = doc[:limit]
    if cut:
        notes.append(f"{cut} document(s) were cut to max_document_chars ({limit} characters)")
    chunks = q.max_chunks_per_doc
    if chunks is not None and chunks > MAX_CHUNKS_PER_DOC:
        notes.append(
            f"max_chunks_per_doc {chunks} is above the server's maximum {MAX_CHUNKS_PER_DOC}; "
            f"{MAX_CHUNKS_PER_DOC} were used"
        )
        chunks = MAX_CHUNKS_PER_DOC
    if query is q.query and not notes:
        return q, notes, shift
    return replace(q, query=query, documents=tuple(documents), max_chunks_per_doc=chunks), notes, shift


def _first_index(plan: _Plan) -> list[int]:
    """The request's index of each unique document (its first occurrence)."""
    first = [-1] * len(plan.unique)
    for i, u in enumerate(plan.doc_to_unique):
        if first[u] < 0:
            first[u] = i
    return first


def _shifted(chunk: tuple[int, int] | None, by: int) -> tuple[int, int] | None:
    return chunk if chunk is None or not by else (chunk[0] + by, chunk[1] + by)
