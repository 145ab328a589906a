"""A pair's score is a function of the pair: alone, among 100 others and from the cache (issue 10, item 4).

Dynamic int8 quantization scales activations per batch tensor, so a packed int8 batch makes a pair's score
depend on its neighbours and on padding; the CPU int8 path therefore runs every pair in a batch of its own
(RERANKER_INT8_ROW_BATCHES). fp32 keeps packed batches: padding is masked out, and what remains (kernel
blocking) stays far below the bound. Both are checked with the real stand-in.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.app import build_reranker
from gateway.config import Settings
from gateway.domain import RerankQuery

pytestmark = [pytest.mark.slow, pytest.mark.real_models]

BOUND = 1e-4
QUERY = "How does the immune system respond to a viral infection?"
SENTENCES = [
    "T cells recognise infected cells and release cytokines.",
    "Antibodies produced by B cells neutralise the virus particles.",
    "The weather in the mountains changed quickly that afternoon.",
    "Interferons signal neighbouring cells to raise their antiviral defences.",
    "The stock exchange closed slightly higher on Friday.",
    "Fever is one of the body's ways to slow down pathogen replication.",
    "Memory cells allow a faster response on a second exposure.",
    "The recipe calls for two cups of flour and a pinch of salt.",
]


def documents(n: int = 100, seed: int = 3) -> tuple[str, ...]:
    """Documents of very different lengths (3 to 60 sentences), so batches pad and rows differ."""
    rng = random.Random(seed)
    return tuple(
        " ".join(rng.choice(SENTENCES) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 60])))
        + f" ({i})"
        for i in range(n)
    )


def scores(
    repo, precision: str, *, one_row: bool
) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """relevance_score of every document alone, among all 100, and from the cache after other neighbours."""
    docs = documents()

    def settings(cache_size: int) -> Settings:
        return Settings(
            model_repository=repo,
            cpu_precision=precision,
            prefilter_name="",
            threads=2,
            cache_size=cache_size,
            int8_row_batches=one_row,
            cascade_sample_rate=0.0,
        )

    async def go():
        alone_rr, among_rr = build_reranker(settings(0)), build_reranker(settings(1000))
        try:
            alone = {}
            for i, doc in enumerate(docs):
                [res] = (await alone_rr.rerank(RerankQuery(QUERY, (doc,)))).results
                alone[i] = res.relevance_score
            out = await among_rr.rerank(RerankQuery(QUERY, docs))
            among = {r.index: r.relevance_score for r in out.results}
            # Half of them again, now beside new documents: those come from the cache.
            fresh = documents(50, seed=11)
            mixed = docs[::2] + fresh
            again = await among_rr.rerank(RerankQuery(QUERY, mixed))
            assert again.cache_hits == 50
            cached = {2 * r.index: r.relevance_score for r in again.results if r.index < 50}
        finally:
            await alone_rr.close()
            await among_rr.close()
        return alone, among, cached

    return asyncio.run(go())


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_a_pair_scores_the_same_alone_among_100_and_from_the_cache(real_model_repository, precision):
    alone, among, cached = scores(real_model_repository, precision, one_row=True)
    worst_among = max(abs(alone[i] - among[i]) for i in alone)
    worst_cached = max(abs(alone[i] - cached[i]) for i in cached)
    assert worst_among <= BOUND, worst_among
    assert worst_cached <= BOUND, worst_cached
    assert len({round(v, 3) for v in alone.values()}) > 5  # the documents really differ in score


def test_packed_int8_batches_would_break_the_bound(real_model_repository):
    """Why the one-row batches exist: packed int8 batches move scores by more than the bound."""
    alone, among, _ = scores(real_model_repository, "int8", one_row=False)
    assert max(abs(alone[i] - among[i]) for i in alone) > BOUND
