"""AnswerDotAI's `rerankers` API rankers with a custom `url`: TEI (`texts`, bare array), Cohere and Jina
(`documents`, `results[].relevance_score`). Each posts `top_n` = every document and asks for the texts."""

from __future__ import annotations

import pytest
from conftest import PASSAGES, QUERY, RELEVANT, need_client

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]


@pytest.mark.parametrize(
    ("provider", "path"),
    [("text-embeddings-inference", "/rerank"), ("cohere", "/v1/rerank"), ("jina", "/v1/rerank")],
    ids=["tei", "cohere", "jina"],
)
def test_rerankers_api_ranker(gateway_url, api_key, provider, path):
    rerankers = need_client("rerankers")
    ranker = rerankers.Reranker(provider, api_key=api_key, url=f"{gateway_url}{path}", verbose=0)
    assert type(ranker).__name__ == "APIRanker"
    results = ranker.rank(query=QUERY, docs=PASSAGES, doc_ids=list(range(len(PASSAGES))))
    ranked = [r.document.doc_id for r in results.results]
    assert ranked[0] == RELEVANT and sorted(ranked) == list(range(len(PASSAGES)))
    assert results.top_k(1)[0].text == PASSAGES[RELEVANT]
    scores = [r.score for r in results.results]
    assert scores == sorted(scores, reverse=True)
