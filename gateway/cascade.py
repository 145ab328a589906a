"""The cascade's decisions: which documents survive the prefilter, how faithful that was, how many to keep.

- `select_survivors`: the survivors of one query from the prefilter's scores and, when the caller says its
  documents arrive ranked (retrievers send them best first), from that order too.
- `FidelitySampler`: on a sampled share of cascaded requests, the documents the prefilter cut are scored by
  the cross-encoder as well, in the background and only while no foreground request runs; the cascade's
  top 10 is compared with the single-stage top 10 (recall@10) and the two orders (Spearman rank agreement).
- `AdaptiveKeep`: moves the default keep towards the smallest one whose measured recall@10 meets a target.

Knows neither HTTP nor a runtime: the sampler gets an async `score` callable from the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway import metrics

log = logging.getLogger(__name__)

Rule = Literal["prefilter", "input", "union", "rrf"]
RULES: tuple[Rule, ...] = ("prefilter", "input", "union", "rrf")
RRF_K = 60  # the constant of Cormack et al. (2009); ranks start at 1


def select_survivors(prefilter: Sequence[float], keep: int, *, rule: Rule, ranked: bool) -> list[int]:
    """Indices (ascending) of the `keep` documents the cross-encoder rescores.

    `prefilter`: the prefilter's logit per document, in input order. Unranked input has no order worth
    using, so every rule then falls back to the prefilter's top `keep`.
    - prefilter: the prefilter's top `keep`;
    - input: the caller's first `keep` (the prefilter is not needed at all);
    - union: alternately the next best by input order and by prefilter score, until `keep` distinct;
    - rrf: reciprocal-rank fusion, 1/(60 + input rank) + 1/(60 + prefilter rank), top `keep`.
    Ties go to the earlier document, so the choice is a function of the scores alone.
    """
    n = len(prefilter)
    if keep >= n:
        return list(range(n))
    if keep <= 0:
        return []
    if not ranked:
        rule = "prefilter"
    if rule == "input":
        return list(range(keep))
    by_prefilter = sorted(range(n), key=lambda i: (-prefilter[i], i))
    if rule == "prefilter":
        return sorted(by_prefilter[:keep])
    if rule == "union":
        chosen: dict[int, None] = {}
        for a, b in zip(range(n), by_prefilter, strict=True):
            for i in (a, b):
                if len(chosen) < keep:
                    chosen.setdefault(i)
            if len(chosen) >= keep:
                break
        return sorted(chosen)
    if rule == "rrf":
        pre_rank = {i: r for r, i in enumerate(by_prefilter, start=1)}
        fused = sorted(range(n), key=lambda i: (-(1 / (RRF_K + i + 1) + 1 / (RRF_K + pre_rank[i])), i))
        return sorted(fused[:keep])
    raise ValueError(f"unknown selection rule {rule!r}")


def cascade_order(cross_encoder: Sequence[float] | Mapping[int, float], prefilter: Sequence[float],
                  survivors: Sequence[int]) -> list[int]:  # fmt: skip
    """The cascade's ranking of documents 0..len(prefilter)-1: the survivors by their cross-encoder logit,
    then the documents the prefilter cut by its score; ties go to the earlier document."""
    chosen = set(survivors)
    cut = (i for i in range(len(prefilter)) if i not in chosen)
    return sorted(survivors, key=lambda i: (-cross_encoder[i], i)) + sorted(
        cut, key=lambda i: (-prefilter[i], i)
    )


# --- fidelity ----------------------------------------------------------------------------------------
def recall_at(cascade_order: Sequence[int], single_order: Sequence[int], k: int = 10) -> float:
    """Share of the single-stage top k that the cascade's top k also holds."""
    k = min(k, len(single_order))
    if k == 0:
        return 1.0
    return len(set(cascade_order[:k]) & set(single_order[:k])) / k


def rank_agreement(cascade_order: Sequence[int], single_order: Sequence[int]) -> float:
    """Spearman's rho between the two full orders (1: identical, 0: unrelated)."""
    n = len(single_order)
    if n < 2:
        return 1.0
    pos_a = {d: r for r, d in enumerate(cascade_order)}
    d2 = sum((pos_a[d] - r) ** 2 for r, d in enumerate(single_order))
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


@dataclass(frozen=True)
class CascadeSample:
    """What one cascaded request looked like, enough to measure it against single stage later."""

    cascade_order: tuple[int, ...]  # unique-document indices as the response ranked them
    survivor_logits: dict[int, float]  # cross-encoder logit of every survivor
    cut: tuple[int, ...]  # unique-document indices the prefilter cut
    keep: int


@dataclass(frozen=True)
class Fidelity:
    recall_at_10: float
    rank_agreement: float
    keep: int


ScoreCut = Callable[[Sequence[int]], Awaitable[list[float] | None]]  # None: gave way to foreground work


class FidelitySampler:
    """Measures a sampled share of cascaded requests against single stage, off the critical path.

    Bounded: at most one sample in flight (others are skipped, not queued), a sample starts only when no
    foreground request is running (`busy()`), and `score` scores the cut documents a few at a time,
    giving up (the sample is dropped) as soon as foreground work arrives.
    """

    WINDOW = 50  # samples the running means cover

    def __init__(
        self,
        rate: float,
        *,
        busy: Callable[[], bool],
        on_result: Callable[[Fidelity], None] | None = None,
        rng: random.Random | None = None,
        model: str = "",
    ) -> None:
        self.rate = rate
        self.model = model  # the metrics' `model` label
        self._busy = busy
        self._on_result = on_result
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._recent: deque[Fidelity] = deque(maxlen=self.WINDOW)
        self.counts = {"measured": 0, "skipped_busy": 0, "skipped_in_flight": 0, "abandoned": 0}

    @property
    def in_flight(self) -> bool:
        return self._task is not None and not self._task.done()

    def offer(self, sample: CascadeSample, score: ScoreCut) -> bool:
        """Maybe start measuring `sample` in the background; True when a measurement started."""
        if self.rate <= 0 or not sample.cut or self._rng.random() >= self.rate:
            return False
        if self.in_flight:
            self._count("skipped_in_flight")
            return False
        if self._busy():
            self._count("skipped_busy")
            return False
        self._task = asyncio.get_running_loop().create_task(self._measure(sample, score))
        return True

    async def wait(self) -> None:
        """Until the sample in flight (if any) is done (tests, shutdown)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _measure(self, sample: CascadeSample, score: ScoreCut) -> None:
        try:
            cut_logits = await score(sample.cut)
        except asyncio.CancelledError:
            raise
        except Exception:  # a background measurement must never take the service down
            log.warning("cascade fidelity sample failed", exc_info=True)
            self._count("abandoned")
            return
        if cut_logits is None:
            self._count("abandoned")
            return
        logits = dict(sample.survivor_logits)
        logits.update(zip(sample.cut, cut_logits, strict=True))
        single = sorted(logits, key=lambda u: (-logits[u], u))
        result = Fidelity(
            recall_at_10=recall_at(sample.cascade_order, single, 10),
            rank_agreement=rank_agreement(sample.cascade_order, single),
            keep=sample.keep,
        )
        self._recent.append(result)
        self._count("measured")
        metrics.CASCADE_RECALL.labels(self.model).observe(result.recall_at_10)
        metrics.CASCADE_RANK_AGREEMENT.labels(self.model).observe(result.rank_agreement)
        recall, agreement = self.means()
        metrics.CASCADE_RECALL_MEAN.labels(self.model).set(recall if recall is not None else float("nan"))
        metrics.CASCADE_AGREEMENT_MEAN.labels(self.model).set(
            agreement if agreement is not None else float("nan")
        )
        if self._on_result is not None:
            self._on_result(result)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        metrics.CASCADE_SAMPLES.labels(outcome, self.model).inc()

    def summary(self) -> dict[str, Any]:
        recent = list(self._recent)
        return {
            "sample_rate": self.rate,
            "samples": dict(self.counts),
            "window": len(recent),
            "recall_at_10": _mean(f.recall_at_10 for f in recent),
            "rank_agreement": _mean(f.rank_agreement for f in recent),
        }

    def means(self) -> tuple[float | None, float | None]:
        s = self.summary()
        return s["recall_at_10"], s["rank_agreement"]


def _mean(values: Any) -> float | None:
    items = list(values)
    return round(sum(items) / len(items), 4) if items else None


# --- adaptive keep -----------------------------------------------------------------------------------
class AdaptiveKeep:
    """The default keep, moved by measured recall@10 (per-request `keep` is never touched).

    After every `window` measurements taken at the current keep, their mean decides: below `target`, keep
    grows by `grow` (x1.25, at least +1); above `target + margin` it shrinks by `shrink` (x0.9, at least -1);
    in between it holds (hysteresis). A keep that once fell short is never shrunk back to: shrinking stops
    just above the largest keep seen below target, so the controller settles instead of oscillating.
    `target` 0 turns adaptation off.
    """

    def __init__(
        self,
        start: int,
        *,
        target: float,
        low: int,
        high: int,
        margin: float = 0.03,
        window: int = 20,
        grow: float = 1.25,
        shrink: float = 0.9,
        model: str = "",
    ) -> None:
        self._keep_gauge = metrics.CASCADE_KEEP.labels(model)
        self.low, self.high = low, max(low, high)
        self.keep = min(max(start, self.low), self.high)
        self.target = target
        self.margin = margin
        self.window = window
        self.grow, self.shrink = grow, shrink
        self._samples: list[float] = []
        self._floor = self.low  # the smallest keep not known to fall short
        self.changes = 0
        self._keep_gauge.set(self.keep)

    @property
    def enabled(self) -> bool:
        return self.target > 0

    def start_at(self, keep: int) -> None:
        """A calibrated starting keep (the bounds widen to hold it, as for a configured one)."""
        self.low, self.high = min(self.low, keep), max(self.high, keep)
        self.keep = keep
        self._samples.clear()
        self._keep_gauge.set(self.keep)

    def observe(self, recall_at_10: float, keep: int) -> None:
        """One measurement; ignored unless it was taken at the current keep."""
        if not self.enabled or keep != self.keep:
            return
        self._samples.append(recall_at_10)
        if len(self._samples) < self.window:
            return
        mean = sum(self._samples) / len(self._samples)
        self._samples.clear()
        old = self.keep
        if mean < self.target:
            self._floor = max(self._floor, self.keep + 1)
            self.keep = min(self.high, max(self.keep + 1, math.ceil(self.keep * self.grow)))
        elif mean > self.target + self.margin:
            smaller = min(self.keep - 1, math.floor(self.keep * self.shrink))
            self.keep = min(self.high, max(self._floor, self.low, smaller))
        if self.keep != old:
            self.changes += 1
            log.info("cascade keep %d -> %d (recall@10 %.3f, target %.3f)", old, self.keep, mean, self.target)
        self._keep_gauge.set(self.keep)

    def summary(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "target_recall_at_10": self.target,
            "keep": self.keep,
            "bounds": [self.low, self.high],
            "changes": self.changes,
        }


# --- the cascade of one served model ----------------------------------------------------------------
@dataclass(frozen=True)
class CascadeConfig:
    """The cascade's settings (a slice of `Settings`); `enabled` is False without a prefilter."""

    enabled: bool = True
    keep: int = 70
    keep_configured: bool = False  # RERANKER_KEEP was set: it wins over a calibrated keep
    input_ranked: bool = False
    rule: Rule = "rrf"
    unranked: Literal["single-stage", "prefilter"] = "single-stage"
    sample_rate: float = 0.05
    target_recall: float = 0.85
    keep_min: int = 10
    keep_max: int = 100

    @classmethod
    def from_settings(cls, s: Any) -> CascadeConfig:
        return cls(
            enabled=bool(s.prefilter_name),
            keep=s.keep,
            keep_configured="keep" in s.model_fields_set,
            input_ranked=s.cascade_input_ranked,
            rule=s.cascade_rule,
            unranked=s.cascade_unranked,
            sample_rate=s.cascade_sample_rate,
            target_recall=s.cascade_target_recall,
            keep_min=s.cascade_keep_min,
            keep_max=s.cascade_keep_max,
        )


class Cascade:
    """Decides, per query, the keep and whether the input counts as ranked; chooses the survivors; hands
    cascaded requests to the fidelity sampler, whose measurements move the adaptive keep."""

    def __init__(self, config: CascadeConfig, *, busy: Callable[[], bool], model: str = "") -> None:
        self.config = config
        self.model = model  # the prefilter metrics' `model` label: the served model whose requests these are
        self.adaptive_keep = AdaptiveKeep(  # the configured keep is honoured even outside the bounds
            config.keep,
            target=config.target_recall,
            low=min(config.keep_min, config.keep),
            high=max(config.keep_max, config.keep),
            model=model,
        )
        self.sampler = FidelitySampler(
            config.sample_rate, busy=busy, on_result=self._on_fidelity, model=model
        )

    def calibrated(self, keep: int | None) -> None:
        """The manifest's calibrated keep, used unless RERANKER_KEEP was set."""
        if keep and not self.config.keep_configured:
            self.adaptive_keep.start_at(int(keep))

    def keep_for(self, keep: int | None, ranked_input: bool | None) -> tuple[int, bool]:
        """The keep a query runs with (0: single stage) and whether its input counts as ranked: the
        request's own choices, else the server's defaults (unranked input may be single stage)."""
        c = self.config
        ranked = c.input_ranked if ranked_input is None else ranked_input
        if keep is not None:
            return keep, ranked
        if not ranked and c.unranked == "single-stage":
            return 0, ranked
        return self.adaptive_keep.keep, ranked

    def survivors(self, prefilter: Sequence[float], keep: int, *, ranked: bool) -> list[int]:
        chosen = select_survivors(prefilter, keep, rule=self.config.rule, ranked=ranked)
        dropped = len(prefilter) - len(chosen)
        metrics.PREFILTER_DOCUMENTS.labels("kept", self.model).inc(len(chosen))
        metrics.PREFILTER_DOCUMENTS.labels("dropped", self.model).inc(dropped)
        metrics.PREFILTER_DROP_RATIO.labels(self.model).observe(dropped / len(prefilter))
        return chosen

    def offer(
        self, kept: Mapping[int, float], prefilter: Sequence[float], n_unique: int, keep: int, score: ScoreCut
    ) -> None:
        """A cascaded request for the sampler (which decides whether to measure it): its ranking as the
        response ordered it (rescored first, then the cut by prefilter score) and the cut documents."""
        cut = tuple(u for u in range(n_unique) if u not in kept)
        if not cut or self.sampler.rate <= 0:
            return
        order = cascade_order(kept, prefilter, list(kept))
        self.sampler.offer(CascadeSample(tuple(order), dict(kept), cut, keep), score)

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {
            "input_ranked_default": c.input_ranked,
            "rule": c.rule,
            "unranked": c.unranked,
            "adaptive_keep": self.adaptive_keep.summary(),
            "fidelity": self.sampler.summary(),
        }

    async def close(self) -> None:
        self.sampler.cancel()
        await self.sampler.wait()

    def _on_fidelity(self, result: Fidelity) -> None:
        self.adaptive_keep.observe(result.recall_at_10, result.keep)
