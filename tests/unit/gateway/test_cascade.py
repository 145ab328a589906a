"""Selection rules, the fidelity sampler (with a fake Scorer) and adaptive keep on a synthetic stream."""

from __future__ import annotations

import asyncio
import itertools
import random

import numpy as np
import pytest

from gateway.backends.base import BatchScores, EncodedBatch, Scorer
from gateway.cascade import (
    AdaptiveKeep,
    CascadeSample,
    FidelitySampler,
    rank_agreement,
    recall_at,
    select_survivors,
)
from gateway.domain import RerankQuery

# Prefilter logits of 8 documents in input order: it likes 7, 6, 5 best; the input puts 0, 1, 2 first.
PRE = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


# --- selection rules ---------------------------------------------------------------------------------
def test_prefilter_rule_takes_the_prefilter_top_k():
    assert select_survivors(PRE, 3, rule="prefilter", ranked=True) == [5, 6, 7]


def test_input_rule_takes_the_callers_first_k():
    assert select_survivors(PRE, 3, rule="input", ranked=True) == [0, 1, 2]


def test_union_alternates_input_and_prefilter_until_k():
    assert select_survivors(PRE, 4, rule="union", ranked=True) == [0, 1, 6, 7]
    assert select_survivors(PRE, 3, rule="union", ranked=True) == [0, 1, 7]
    # Where both orders agree, the union does not waste a slot on a duplicate.
    agree = [0.9, 0.8, 0.1, 0.2, 0.0]
    assert select_survivors(agree, 3, rule="union", ranked=True) == [0, 1, 2]
    assert select_survivors(agree, 4, rule="union", ranked=True) == [0, 1, 2, 3]


def test_rrf_prefers_documents_both_orders_like():
    # Document 3 is 4th by input and 2nd by prefilter; 0 is 1st by input and last by prefilter.
    pre = [0.0, 0.5, 0.4, 0.9, 1.0, 0.3]
    fused = select_survivors(pre, 2, rule="rrf", ranked=True)
    assert fused == [3, 4] or fused == [1, 4]
    assert 3 in select_survivors(pre, 3, rule="rrf", ranked=True)
    assert 0 not in select_survivors(pre, 2, rule="rrf", ranked=True)


@pytest.mark.parametrize("rule", ["input", "union", "rrf", "prefilter"])
def test_unranked_input_always_uses_the_prefilter(rule):
    assert select_survivors(PRE, 3, rule=rule, ranked=False) == [5, 6, 7]


@pytest.mark.parametrize("rule", ["input", "union", "rrf", "prefilter"])
def test_edge_keeps_and_ties(rule):
    assert select_survivors(PRE, 8, rule=rule, ranked=True) == list(range(8))
    assert select_survivors(PRE, 20, rule=rule, ranked=True) == list(range(8))
    assert select_survivors(PRE, 0, rule=rule, ranked=True) == []
    flat = [1.0] * 6  # ties go to the earlier document: a function of the scores alone
    assert select_survivors(flat, 2, rule=rule, ranked=False) == [0, 1]


def test_recall_and_rank_agreement():
    single = list(range(20))
    assert recall_at(single, single) == 1.0 and rank_agreement(single, single) == pytest.approx(1.0)
    swapped = [*range(5), *range(10, 15), *range(5, 10), *range(15, 20)]
    assert recall_at(swapped, single) == 0.5
    assert rank_agreement(list(reversed(single)), single) == pytest.approx(-1.0)
    assert recall_at([2, 1, 0], [0, 1, 2]) == 1.0  # fewer than 10 documents: all of them


# --- fidelity sampler --------------------------------------------------------------------------------
class FakeCrossEncoder:
    """A Scorer (gateway/backends/base.py) whose logit is a fixed number per document id (first token)."""

    name = "fake-ce"
    input_names = ("input_ids",)
    max_batch_size = None

    def __init__(self, logits: dict[int, float], *, delay: float = 0.0) -> None:
        self.table = logits
        self.delay = delay
        self.rows = 0

    async def score(self, batch: EncodedBatch) -> BatchScores:
        await asyncio.sleep(self.delay)
        self.rows += batch.size
        ids = batch.inputs["input_ids"]
        return BatchScores(np.array([self.table[int(row[0])] for row in ids], dtype=np.float32), self.name)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _batch(doc: int) -> EncodedBatch:
    return EncodedBatch({"input_ids": np.array([[doc, 1, 2]], dtype=np.int64)})


def _score_cut_with(scorer: Scorer, *, busy: list[bool] | None = None):
    async def score_cut(indices):
        out = []
        for u in indices:
            if busy and busy[0]:
                return None
            out.append(float((await scorer.score(_batch(u))).logits[0]))
        return out

    return score_cut


def _sample(ce: dict[int, float], keep: int) -> CascadeSample:
    """The cascade kept documents 0..keep-1 and ranked them by the cross-encoder; the rest follow."""
    kept = {u: ce[u] for u in range(keep)}
    order = sorted(kept, key=lambda u: -kept[u]) + list(range(keep, len(ce)))
    return CascadeSample(tuple(order), kept, tuple(range(keep, len(ce))), keep)


def test_sampler_measures_recall_against_single_stage_with_a_fake_scorer():
    # 20 documents; single stage ranks 19, 18, ..., 0. The cascade kept 0..14, so it holds 5 of the top 10.
    ce = {u: float(u) for u in range(20)}
    scorer = FakeCrossEncoder(ce)
    assert isinstance(scorer, Scorer)
    seen = []

    async def go():
        sampler = FidelitySampler(1.0, busy=lambda: False, on_result=seen.append)
        assert sampler.offer(_sample(ce, 15), _score_cut_with(scorer))
        await sampler.wait()
        return sampler.summary()

    summary = asyncio.run(go())
    assert scorer.rows == 5  # only the cut documents were scored
    assert seen[0].recall_at_10 == pytest.approx(0.5) and seen[0].keep == 15
    assert summary["samples"]["measured"] == 1 and summary["recall_at_10"] == pytest.approx(0.5)
    assert -1.0 < summary["rank_agreement"] < 1.0


def test_sampler_is_bounded_yields_to_foreground_and_samples_a_share():
    ce = {u: float(u) for u in range(20)}

    async def go():
        scorer = FakeCrossEncoder(ce, delay=0.01)
        busy = [False]
        sampler = FidelitySampler(1.0, busy=lambda: busy[0])
        assert sampler.offer(_sample(ce, 10), _score_cut_with(scorer, busy=busy))
        # One in flight: a second offer is skipped, not queued.
        assert not sampler.offer(_sample(ce, 10), _score_cut_with(scorer))
        await asyncio.sleep(0.025)
        busy[0] = True  # a foreground request arrives: the sample gives way and is dropped
        await sampler.wait()
        # While busy, no sample starts at all.
        assert not sampler.offer(_sample(ce, 10), _score_cut_with(scorer))
        counts = dict(sampler.counts)
        rows_when_abandoned = scorer.rows

        # rate 0.25 with a seeded RNG: about a quarter of the offers are measured.
        quarter = FidelitySampler(0.25, busy=lambda: False, rng=random.Random(1))
        started = 0
        for _ in range(400):
            started += quarter.offer(_sample(ce, 10), _score_cut_with(FakeCrossEncoder(ce)))
            await quarter.wait()
        return counts, rows_when_abandoned, started, quarter.counts

    counts, rows, started, quarter = asyncio.run(go())
    assert counts == {"measured": 0, "skipped_busy": 1, "skipped_in_flight": 1, "abandoned": 1}
    assert 1 <= rows < 10
    assert 70 <= started <= 130 and quarter["measured"] == started


def test_sampler_in_the_pipeline_scores_cut_documents_after_the_response(make_reranker):
    reranker, ce, _pf = make_reranker(keep=3, cascade_sample_rate=1.0, cascade_target_recall=0.0)
    docs = tuple(f"berlin population {i}" if i % 3 == 0 else f"trains in spain number {i}" for i in range(12))

    async def go():
        out = await reranker.rerank(RerankQuery("berlin population", docs))
        rows_in_request = ce.rows
        await reranker.cascade.sampler.wait()
        return out, rows_in_request, ce.rows, reranker.info()

    out, rows_in_request, rows_after, info = asyncio.run(go())
    assert out.stages == ("prefilter", "reranker") and rows_in_request == 3
    assert rows_after == 12  # the 9 cut documents, scored in the background
    fidelity = info["pipeline"]["cascade"]["fidelity"]
    assert fidelity["samples"]["measured"] == 1 and 0.0 <= fidelity["recall_at_10"] <= 1.0


# --- adaptive keep -----------------------------------------------------------------------------------
def _synthetic_recall(keep: int, rng: random.Random) -> float:
    """recall@10 of a cascade keeping `keep` of 100: rises with keep, noisy per request (0.1 steps)."""
    p = min(1.0, 0.35 + 0.65 * (1 - np.exp(-keep / 22)))
    return sum(rng.random() < p for _ in range(10)) / 10


def test_adaptive_keep_converges_near_the_smallest_keep_meeting_the_target():
    rng = random.Random(7)
    target = 0.9
    # The smallest keep whose expected recall meets the target.
    needed = next(k for k in range(1, 101) if 0.35 + 0.65 * (1 - np.exp(-k / 22)) >= target)
    for start in (10, 100):
        ctl = AdaptiveKeep(start, target=target, low=10, high=100, window=40)
        history = []
        for _ in range(6000):
            ctl.observe(_synthetic_recall(ctl.keep, rng), ctl.keep)
            history.append(ctl.keep)
        tail = history[-3000:]
        # Converged: never again below the keep the target needs (quality safe), on average close above it
        # (cost close to the least), and brief excursions only (noise below target grows keep for a while).
        assert min(tail) >= needed * 0.95, (start, needed, min(tail))
        assert sum(tail) / len(tail) <= needed * 1.3, (start, needed, sum(tail) / len(tail))
        changes = sum(1 for a, b in itertools.pairwise(tail) if a != b)
        assert changes <= 8, (start, changes)


def test_adaptive_keep_stays_within_bounds_ignores_stale_samples_and_can_be_off():
    ctl = AdaptiveKeep(50, target=0.99, low=10, high=60, window=5)
    for _ in range(100):
        ctl.observe(0.0, ctl.keep)
    assert ctl.keep == 60
    ctl.observe(1.0, 30)  # taken at another keep: ignored
    ctl = AdaptiveKeep(50, target=0.5, low=20, high=100, window=5)
    for _ in range(200):
        ctl.observe(1.0, ctl.keep)
    assert ctl.keep == 20
    off = AdaptiveKeep(50, target=0.0, low=10, high=100, window=1)
    for _ in range(10):
        off.observe(0.0, off.keep)
    assert off.keep == 50 and not off.enabled


def test_adaptive_keep_drives_the_pipelines_default_but_not_a_per_request_keep(make_reranker):
    reranker, _ce, _ = make_reranker(keep=3, cascade_keep_min=2, cascade_target_recall=0.9)
    reranker.cascade.adaptive_keep.window = 1
    reranker.cascade.adaptive_keep.observe(0.0, 3)  # measured far below target: grow
    docs = tuple(f"doc {i}" for i in range(20))

    async def go():
        default = await reranker.rerank(RerankQuery("berlin", docs))
        fixed = await reranker.rerank(RerankQuery("berlin", docs, keep=3))
        return default, fixed

    default, fixed = asyncio.run(go())
    assert reranker.cascade.adaptive_keep.keep == 4
    assert [r.stage for r in default.results].count("reranker") == 4
    assert [r.stage for r in fixed.results].count("reranker") == 3
