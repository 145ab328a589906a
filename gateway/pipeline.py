"""The reranking pipeline of one served model: plan -> prefilter (cascade) -> cross-encoder -> assemble.

`Reranker` only orchestrates named parts, like TEI's `Infer`: `plan_request` (gateway/plan.py) resolves the
request, `StageScorer` (gateway/scoring.py) scores a stage through the pair cache, `Cascade`
(gateway/cascade.py) decides keep and survivors, `assemble` (gateway/assembly.py) ranks. Knows neither HTTP
nor a runtime: the models come from a loader the composition root (gateway/app.py) hands in. With `warm_up`
the load ends by measuring each stage's speed on synthetic pairs (`ModelSpeed`, gateway/speed.py), which
admission prices this model's work by from the first request on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from gateway import metrics
from gateway.assembly import StageScores, assemble
from gateway.cache import CachedScore, PairScoreCache
from gateway.cascade import Cascade, CascadeConfig
from gateway.config import Settings
from gateway.domain import PhaseTimes, RerankOutcome, RerankQuery
from gateway.models import LoadedModels, ModelSlot
from gateway.plan import PlanLimits, RequestPlan, StageWindows, plan_request
from gateway.scoring import PairJob, StageResult, StageScorer
from gateway.speed import ModelSpeed

Loader = Callable[[], LoadedModels]


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline depends on (a slice of `Settings`, merged with the model's own table); `model` is the
    served model's name, the `model` label of its metrics."""

    limits: PlanLimits = field(default_factory=PlanLimits)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    max_batch_size: int = 64
    model: str = "reranker"

    @classmethod
    def from_settings(cls, s: Settings, model: str | None = None) -> PipelineConfig:
        return cls(
            PlanLimits.from_settings(s),
            CascadeConfig.from_settings(s),
            s.max_batch_size,
            model=model or s.model_name,
        )


def default_pool() -> ThreadPoolExecutor:
    """Tokenization and batch assembly run here, off the event loop."""
    return ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="tokenize")


class Reranker:
    """One served model's pipeline. Load once, then `rerank` concurrently."""

    def __init__(
        self,
        config: PipelineConfig,
        loader: Loader,
        *,
        cache: PairScoreCache | None = None,
        pool: Executor | None = None,
        warm_up: bool = False,
    ) -> None:
        self.config = config
        self.name = config.model
        self.slot = ModelSlot(loader)
        self.cache = cache if cache is not None else PairScoreCache(50_000, 3600.0)
        self._pool = pool or default_pool()
        self._owns_pool = pool is None
        self._warm_up = warm_up  # measure each stage's speed at load (else the first requests measure it)
        self.speed = ModelSpeed(config.model)  # what admission prices this model's work by
        self._active = 0  # foreground rerank calls running; the fidelity sampler yields to them
        self.cascade = Cascade(config.cascade, busy=lambda: self._active > 0, model=config.model)
        self._stages: dict[str, StageScorer] = {}

    @property
    def models(self) -> LoadedModels | None:
        return self.slot.models

    @property
    def loaded(self) -> bool:
        return self.slot.models is not None

    async def load(self) -> LoadedModels:
        models = await self.slot.load()
        if not self._stages:  # the first caller back from the (shared) load builds the stage scorers
            self.cascade.calibrated(models.reranker.spec.cascade.get("keep"))
            self._stages = _stage_scorers(models, self.cache, self._pool, self.config)
            self.speed.attach(models, self._stages)
            if self._warm_up:
                await self.speed.warm_up()
        return models

    async def ready(self) -> bool:
        return await self.slot.ready()

    async def close(self) -> None:
        await self.cascade.close()
        await self.slot.close()
        if self._owns_pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def rerank(self, query: RerankQuery) -> RerankOutcome:
        return (await self.rerank_many([query]))[0]

    async def rerank_many(self, queries: Sequence[RerankQuery]) -> list[RerankOutcome]:
        """Rank every query; the batches of all queries are built and scored together."""
        await self.load()
        return await self.run(self.plan(queries))

    def plan(self, queries: Sequence[RerankQuery]) -> list[RequestPlan]:
        """Each query checked and resolved against the loaded model (raises for a query that breaks a rule)."""
        models = self.slot.require()
        template = models.reranker.spec.template
        windows = StageWindows(
            models.reranker.max_length,
            models.prefilter.max_length if models.prefilter else None,
            takes_instruction=template is not None,
            reranker_specials=models.reranker.tokenizer.special_tokens,
            prefilter_specials=models.prefilter.tokenizer.special_tokens if models.prefilter else 0,
            default_instruction=template.default_instruction if template else None,
        )
        limits, keep_for = self.config.limits, self.cascade.keep_for
        return [plan_request(q, limits, windows, keep_for(q.keep, q.ranked_input)) for q in queries]

    async def run(self, plans: Sequence[RequestPlan]) -> list[RerankOutcome]:
        self._active += 1
        try:
            cascaded = [p for p in plans if p.use_prefilter]
            pre = (
                await self._stages["prefilter"].score(
                    [_job(p, range(len(p.unique)), pre=True) for p in cascaded]
                )
                if cascaded
                else None
            )
            survivors = {id(p): list(range(len(p.unique))) for p in plans}
            if pre is not None:
                for p, scores in zip(cascaded, pre.per_job, strict=True):
                    survivors[id(p)] = self.cascade.survivors(
                        [s.logit for s in scores], p.keep, ranked=p.ranked
                    )
            ce = await self._stages["reranker"].score([_job(p, survivors[id(p)]) for p in plans])
        finally:
            self._active -= 1
        return self._assemble(plans, survivors, pre, ce, cascaded)

    def _assemble(
        self,
        plans: Sequence[RequestPlan],
        survivors: dict[int, list[int]],
        pre: StageResult | None,
        ce: StageResult,
        cascaded: list[RequestPlan],
    ) -> list[RerankOutcome]:
        models = self.slot.require()
        started = time.perf_counter()
        pre_of = {id(p): (pre.per_job[k], pre.cache_hits[k]) for k, p in enumerate(cascaded)} if pre else {}
        scored_by = "+".join(ce.backends)
        outcomes = []
        for k, p in enumerate(plans):
            kept = dict(zip(survivors[id(p)], ce.per_job[k], strict=True))
            prefilter, pre_hits = pre_of.get(id(p), ([], 0))
            backend = scored_by or ("cache" if p.unique else models.reranker.scorer.name)
            scores = StageScores(kept, prefilter, backend, ce.cache_hits[k] + pre_hits, ce.query_truncated[k])
            spec = models.reranker.spec
            outcome = assemble(p, scores, model=spec.model_id, activation=spec.score_activation)
            outcomes.append(outcome)
            self._observe(p, outcome)
            if p.use_prefilter:
                self._offer_sample(p, kept, prefilter)
        assembled = time.perf_counter() - started
        metrics.PHASE_SECONDS.labels("assemble", "reranker", self.name).observe(assembled)
        timings = ce.timings + PhaseTimes(assemble=assembled) + (pre.timings if pre else PhaseTimes())
        return [replace(o, timings=timings) for o in outcomes]

    def _observe(self, plan: RequestPlan, outcome: RerankOutcome) -> None:
        metrics.DOCUMENTS_PER_REQUEST.labels(self.name).observe(len(plan.query.documents))
        metrics.TOKENS_PER_REQUEST.labels(self.name).observe(outcome.prompt_tokens)
        if outcome.truncated_documents:
            metrics.TRUNCATED_DOCUMENTS.labels(self.name).inc(outcome.truncated_documents)

    def _offer_sample(
        self, plan: RequestPlan, kept: dict[int, CachedScore], prefilter: list[CachedScore]
    ) -> None:
        """Hand a cascaded request to the fidelity sampler, with a scorer of its cut documents that gives way
        to foreground work (a few pairs at a time, sharing the pair cache with the foreground)."""

        async def score_cut(indices: Sequence[int]) -> list[float] | None:
            logits: list[float] = []
            step = 4  # foreground work waits at most this long for the lane
            for start in range(0, len(indices), step):
                if self._active:
                    return None
                scored = await self._stages["reranker"].score([_job(plan, indices[start : start + step])])
                logits.extend(sc.logit for sc in scored.per_job[0])
            return logits

        logits = {u: sc.logit for u, sc in kept.items()}
        self.cascade.offer(logits, [sc.logit for sc in prefilter], len(plan.unique), plan.keep, score_cut)

    def status(self) -> dict[str, Any]:
        """What /health says of this model without touching it: its state, and once loaded where it runs."""
        models = self.slot.models
        out: dict[str, Any] = {"state": self.slot.state}
        if models is not None:
            out["backend"] = models.reranker.scorer.name
            out["device"] = models.device.where
            out["variant"] = models.reranker.variant
        elif self.slot.error is not None:
            out["error"] = self.slot.error
        return out

    def info(self) -> dict[str, Any]:
        models, c = self.slot.models, self.config
        return {
            "name": self.name,
            **self.status(),
            "loaded": models is not None,
            "models": {st.spec.role: st.describe() for st in models.stages()} if models else {},
            "backend": models.reranker.scorer.name if models else None,
            "max_input_length": models.reranker.max_length if models else None,
            "device": models.device_report if models else {},
            "pipeline": {
                "keep": self.cascade.adaptive_keep.keep if c.cascade.enabled else 0,
                "cascade": self.cascade.summary(),
                "max_chunks_per_doc": c.limits.max_chunks_per_doc,
                "chunk_overlap_tokens": c.limits.chunk_overlap_tokens,
                "max_batch_size": c.max_batch_size,
                "cache_size": self.cache.max_entries,
                "cache_ttl_s": self.cache.ttl_s,
            },
        }


def _job(plan: RequestPlan, unique: Sequence[int] | range, *, pre: bool = False) -> PairJob:
    """A stage's job for these unique documents of a plan, with the plan's pair options for that stage (the
    same for the foreground and the fidelity sampler, so both share the pair cache)."""
    pairs = plan.prefilter_pairs if pre else plan.reranker_pairs
    assert pairs is not None
    return PairJob(
        plan.query.query, [plan.unique[u] for u in unique], [plan.origin[u] for u in unique], pairs
    )


def _stage_scorers(
    models: LoadedModels, cache: PairScoreCache, pool: Executor, config: PipelineConfig
) -> dict[str, StageScorer]:
    stages = {"reranker": models.reranker, "prefilter": models.prefilter}
    return {
        role: StageScorer(
            stage, cache, pool, role=role, max_batch_size=config.max_batch_size, model=config.model
        )
        for role, stage in stages.items()
        if stage is not None
    }
