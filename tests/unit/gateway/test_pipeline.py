from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.assembly import sigmoid
from gateway.domain import RerankQuery
from gateway.errors import InputTooLong, ValidationFailed

QUERY = "berlin population"
RELEVANT = "Berlin has a large population of people."


def docs(n: int) -> tuple[str, ...]:
    filler = [f"document number {i} about the weather and football" for i in range(n)]
    return tuple(filler)


def run(coro):
    return asyncio.run(coro)


def test_single_stage_when_documents_fit_in_keep(make_reranker):
    reranker, ce, pf = make_reranker(keep=10)
    documents = ("about trains", RELEVANT, "something else")
    out = run(reranker.rerank(RerankQuery(QUERY, documents)))
    assert out.stages == ("reranker",) and pf.rows == 0 and ce.rows == 3
    assert out.results[0].index == 1
    assert [r.stage for r in out.results] == ["reranker"] * 3
    assert out.backend == "fake-ce" and out.model == "tiny-reranker"
    scores = [r.relevance_score for r in out.results]
    assert scores == sorted(scores, reverse=True)


def test_two_stages_rescore_keep_and_rank_cut_documents_after(make_reranker):
    reranker, ce, pf = make_reranker(keep=3)
    documents = (*docs(6), RELEVANT, "berlin berlin population population")
    out = run(reranker.rerank(RerankQuery(QUERY, documents)))
    assert out.stages == ("prefilter", "reranker")
    assert pf.rows == 8 and ce.rows == 3
    stages = [r.stage for r in out.results]
    assert stages == ["reranker"] * 3 + ["prefilter"] * 5
    assert {out.results[0].index, out.results[1].index} == {6, 7}
    assert sorted(r.index for r in out.results) == list(range(8))  # the full order is returned
    cut = [r.logit for r in out.results[3:]]
    assert cut == sorted(cut, reverse=True)


def test_keep_zero_per_request_is_single_stage(make_reranker):
    reranker, ce, pf = make_reranker(keep=2)
    out = run(reranker.rerank(RerankQuery(QUERY, docs(5), keep=0)))
    assert out.stages == ("reranker",) and pf.rows == 0 and ce.rows == 5


def test_no_prefilter_loaded_is_single_stage(make_reranker):
    reranker, ce, _ = make_reranker(prefilter=False, keep=2)
    out = run(reranker.rerank(RerankQuery(QUERY, docs(5))))
    assert out.stages == ("reranker",) and ce.rows == 5


def test_duplicates_are_scored_once_and_share_the_score(make_reranker):
    reranker, ce, _ = make_reranker(keep=0)
    out = run(reranker.rerank(RerankQuery(QUERY, (RELEVANT, "other", RELEVANT, RELEVANT))))
    assert ce.rows == 2
    by_index = {r.index: r.logit for r in out.results}
    assert by_index[0] == by_index[2] == by_index[3]
    assert [r.index for r in out.results][:3] == [0, 2, 3]


def test_repeated_request_hits_the_cache(make_reranker):
    reranker, ce, pf = make_reranker(keep=2)
    q = RerankQuery(QUERY, (*docs(4), RELEVANT))
    first = run(reranker.rerank(q))
    rows = (ce.rows, pf.rows)
    second = run(reranker.rerank(q))
    assert (ce.rows, pf.rows) == rows
    assert second.cache_hits == 5 + 2 and first.cache_hits == 0
    assert second.backend == "cache"
    assert [r.index for r in second.results] == [r.index for r in first.results]
    other = run(reranker.rerank(RerankQuery(QUERY, (*docs(4), RELEVANT), max_length=32)))
    assert other.cache_hits == 5  # prefilter pairs reused, cross-encoder pairs keyed by max_length


def test_top_n_and_empty_documents(make_reranker):
    reranker, *_ = make_reranker(keep=0)
    out = run(reranker.rerank(RerankQuery(QUERY, (*docs(4), RELEVANT), top_n=2)))
    assert len(out.results) == 2 and out.top_n_applied and out.results[0].index == 4
    assert not run(reranker.rerank(RerankQuery(QUERY, docs(2), top_n=5))).top_n_applied
    empty = run(reranker.rerank(RerankQuery(QUERY, ())))
    assert empty.results == () and empty.stages == ()


@pytest.mark.parametrize(
    "query",
    [RerankQuery("  ", ("a",)), RerankQuery("q", ("a",), top_n=0), RerankQuery("q", ("a",), keep=-1)],
)
def test_invalid_queries(make_reranker, query):
    reranker, *_ = make_reranker()
    with pytest.raises(ValidationFailed):
        run(reranker.rerank(query))


def test_chunking_scores_the_best_window_and_reports_it(make_reranker):
    reranker, *_ = make_reranker(keep=0)
    filler = "weather football " * 60
    doc = filler + "berlin population is large. " + filler
    out = run(reranker.rerank(RerankQuery(QUERY, (doc,), max_chunks_per_doc=8, max_length=48)))
    [r] = out.results
    assert r.chunk is not None
    start, end = r.chunk
    assert "berlin population" in doc[start:end]
    flat = run(reranker.rerank(RerankQuery(QUERY, (doc,), max_length=48)))
    assert flat.results[0].chunk is None and flat.truncated_documents == 1
    assert r.logit > flat.results[0].logit


def test_rerank_many_scores_queries_together(make_reranker):
    reranker, ce, _ = make_reranker(keep=0, token_budget=100_000)
    outs = run(reranker.rerank_many([RerankQuery(QUERY, docs(3)), RerankQuery("weather", docs(3))]))
    assert len(outs) == 2 and len(ce.batches) == 1 and ce.rows == 6


def test_batches_follow_the_token_budget(make_reranker):
    reranker, ce, _ = make_reranker(keep=0, token_budget=64)
    documents = tuple("word " * n for n in (2, 40, 3, 38, 5))
    run(reranker.rerank(RerankQuery(QUERY, documents)))
    for batch in ce.batches:
        assert batch.size == 1 or batch.size * batch.seq_len <= 64


def test_sigmoid_is_float32_and_saturates():
    out = sigmoid(np.array([0.0, 100.0, -100.0, 2.599316], dtype=np.float32))
    assert out.dtype == np.float32
    assert out[0] == np.float32(0.5) and out[1] == 1.0 and out[2] >= 0.0
    assert abs(float(out[3]) - 1 / (1 + np.exp(-2.599316))) < 1e-6


def test_info_and_ready(make_reranker):
    reranker, *_ = make_reranker()
    assert not run(reranker.ready()) and not reranker.info()["loaded"]

    async def go():
        await reranker.load()
        return await reranker.ready()

    assert run(go())
    assert reranker.info()["models"]["prefilter"]["max_length"] == 128


def test_over_long_inputs_are_cut_to_the_character_limits_when_truncating(make_reranker):
    reranker, ce, _ = make_reranker(keep=0, max_document_chars=300, max_query_chars=40)
    long_doc = "berlin population is large. " + "weather football " * 100
    out = run(reranker.rerank(RerankQuery(QUERY + " in germany" * 10, (long_doc, "about trains"))))
    assert out.results[0].index == 0 and ce.rows == 2
    assert "the query was cut to max_query_chars (40 characters)" in out.warnings
    assert "1 document(s) were cut to max_document_chars (300 characters)" in out.warnings


def test_left_truncation_keeps_the_end_and_reports_chunks_in_the_document_as_sent(make_reranker):
    reranker, *_ = make_reranker(keep=0, max_document_chars=600)
    doc = "weather football " * 100 + "berlin population is large."
    out = run(
        reranker.rerank(
            RerankQuery(QUERY, (doc,), truncation_direction="left", max_chunks_per_doc=4, max_length=48)
        )
    )
    [r] = out.results
    assert r.chunk is not None and r.chunk[0] >= len(doc) - 600
    assert "berlin population" in doc[r.chunk[0] : r.chunk[1]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (RerankQuery(QUERY, ("short", "x" * 301), truncate=False), "document 1 has 301 characters"),
        (RerankQuery("q" * 41, ("short",), truncate=False), "the query has 41 characters"),
    ],
)
def test_over_long_inputs_without_truncation_name_the_input_and_the_limit(make_reranker, query, message):
    reranker, ce, _ = make_reranker(keep=0, max_document_chars=300, max_query_chars=40)
    with pytest.raises(InputTooLong, match=message) as info:
        run(reranker.rerank(query))
    assert info.value.limit in ("max_document_chars", "max_query_chars") and ce.rows == 0


def test_token_overflow_without_truncation_names_the_request_index(make_reranker):
    reranker, *_ = make_reranker(keep=0)
    documents = ("short", "short", "weather football " * 100)  # the duplicate is scored once
    with pytest.raises(ValidationFailed, match="document 2 needs more than"):
        run(reranker.rerank(RerankQuery(QUERY, documents, truncate=False, max_length=48)))


def test_max_chunks_above_the_maximum_is_clamped_with_a_warning(make_reranker):
    reranker, *_ = make_reranker(keep=0)
    out = run(reranker.rerank(RerankQuery(QUERY, ("a", RELEVANT), max_chunks_per_doc=1024)))
    assert out.results[0].index == 1
    assert "max_chunks_per_doc 1024 is above the server's maximum 64; 64 were used" in out.warnings


def test_overlap_tokens_per_request_change_the_windows(make_reranker):
    reranker, ce, _ = make_reranker(keep=0, cache_size=0)
    doc = "weather football " * 60
    run(reranker.rerank(RerankQuery(QUERY, (doc,), max_chunks_per_doc=8, max_length=48, overlap_tokens=0)))
    without = ce.rows
    run(reranker.rerank(RerankQuery(QUERY, (doc,), max_chunks_per_doc=8, max_length=48, overlap_tokens=16)))
    assert ce.rows - without > without  # more overlap, more windows for the same document
    with pytest.raises(ValidationFailed, match="overlap_tokens"):
        run(reranker.rerank(RerankQuery(QUERY, (doc,), overlap_tokens=-1)))
