"""text-embeddings-inference's `/rerank` through LlamaIndex's TEI postprocessor and Haystack's
HuggingFaceTEIRanker, plus TEI's own options in a raw body."""

from __future__ import annotations

import httpx
import pytest
from conftest import PASSAGES, QUERY, RELEVANT, need_client

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]


def test_llamaindex_tei_rerank(gateway_url, api_key):
    module = need_client("llama_index.postprocessor.tei_rerank")
    from llama_index.core.schema import NodeWithScore, TextNode

    # The postprocessor sends `auth_token` as the whole Authorization header.
    reranker = module.TextEmbeddingInference(base_url=gateway_url, top_n=2, auth_token=f"Bearer {api_key}")
    nodes = [
        NodeWithScore(node=TextNode(text=text, id_=f"n{i}"), score=0.5) for i, text in enumerate(PASSAGES)
    ]
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)  # asserts one score per node inside
    assert out[0].node.id_ == f"n{RELEVANT}"
    assert len(out) == 2 and out[0].score > out[1].score


# haystack-ai 2.x announces the ranker's move to huggingface-api-haystack (which needs huggingface-hub>=1).
@pytest.mark.filterwarnings("ignore:.*HuggingFaceTEIRanker.*:FutureWarning")
def test_haystack_tei_ranker(gateway_url, api_key, monkeypatch):
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    rankers = need_client("haystack.components.rankers")
    from haystack import Document
    from haystack.utils import Secret

    ranker = rankers.HuggingFaceTEIRanker(url=gateway_url, top_k=2, token=Secret.from_token(api_key))
    docs = [Document(content=text, meta={"n": i}) for i, text in enumerate(PASSAGES)]
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert out[0].meta["n"] == RELEVANT and len(out) == 2
    assert out[0].score > out[1].score
    # with a truncation direction the ranker also sends truncate=true and "Right"
    out = ranker.run(
        query=QUERY, documents=docs, truncation_direction=rankers.hugging_face_tei.TruncationDirection.RIGHT
    )
    assert out["documents"][0].meta["n"] == RELEVANT


def test_tei_raw_body_options(gateway_url, api_key):
    body = {
        "query": QUERY,
        "texts": PASSAGES,
        "raw_scores": True,
        "return_text": True,
        "truncate": True,
        "truncation_direction": "right",
    }
    r = httpx.post(
        f"{gateway_url}/rerank", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    )
    assert r.status_code == 200, r.text
    items = r.json()
    assert isinstance(items, list) and sorted(i["index"] for i in items) == list(range(len(PASSAGES)))
    assert items[0]["index"] == RELEVANT and items[0]["text"] == PASSAGES[RELEVANT]
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0 < scores[0]  # logits, not sigmoids
    assert int(r.headers["x-compute-tokens"]) > 0
    # empty texts: TEI's 400 {"error", "error_type": "Empty"}
    r = httpx.post(
        f"{gateway_url}/rerank",
        json={"query": QUERY, "texts": []},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error_type"] == "Empty"


def test_seed_shape_still_served_on_rerank(gateway_url, api_key):
    r = httpx.post(
        f"{gateway_url}/rerank",
        json={"query": QUERY, "documents": PASSAGES, "top_k": 2},
        headers={"X-API-Key": api_key},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["index"] == RELEVANT and len(body["results"]) == 2
