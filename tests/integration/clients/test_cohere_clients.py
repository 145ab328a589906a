"""The cohere SDK (v1 and v2 clients), LangChain's CohereRerank and LlamaIndex's Cohere postprocessor,
pointed at the gateway with `base_url`."""

from __future__ import annotations

import pytest
from conftest import PASSAGES, QUERY, RELEVANT, need_client

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]

MODEL = "rerank-english-v3.0"  # what the clients send by default; the served model answers


def test_cohere_v2_client(gateway_url, api_key):
    cohere = need_client("cohere")
    co = cohere.ClientV2(api_key=api_key, base_url=gateway_url, timeout=60)
    res = co.rerank(model=MODEL, query=QUERY, documents=PASSAGES, top_n=2)
    assert res.results[0].index == RELEVANT
    assert len(res.results) == 2
    assert res.results[0].relevance_score > res.results[1].relevance_score
    assert res.meta.api_version.version == "2"
    assert res.meta.billed_units.search_units == 1
    assert res.meta.tokens.input_tokens > len(PASSAGES) * 5  # real token counts, every pair


def test_cohere_v1_client_object_documents(gateway_url, api_key):
    cohere = need_client("cohere")
    co = cohere.Client(api_key=api_key, base_url=gateway_url, timeout=60)
    docs = [{"title": f"passage {i}", "text": text} for i, text in enumerate(PASSAGES)]
    res = co.rerank(model=MODEL, query=QUERY, documents=docs, top_n=3, return_documents=True)
    assert res.results[0].index == RELEVANT
    assert res.results[0].document.text == PASSAGES[RELEVANT]
    assert len(res.results) == 3
    # rank_fields: rank on the title and text together (Cohere v1 semantics), documents echoed as sent
    res = co.rerank(
        model=MODEL, query=QUERY, documents=docs, rank_fields=["title", "text"], return_documents=True
    )
    assert res.results[0].index == RELEVANT
    assert res.results[0].document.dict()["title"] == f"passage {RELEVANT}"
    assert len(res.results) == len(PASSAGES)


def test_langchain_cohere_rerank(gateway_url, api_key):
    lc_cohere = need_client("langchain_cohere")
    from langchain_core.documents import Document

    reranker = lc_cohere.CohereRerank(cohere_api_key=api_key, base_url=gateway_url, model=MODEL, top_n=2)
    docs = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(PASSAGES)]
    out = reranker.compress_documents(docs, QUERY)
    assert out[0].metadata["n"] == RELEVANT
    assert len(out) == 2
    assert out[0].metadata["relevance_score"] > out[1].metadata["relevance_score"]


def test_llamaindex_cohere_rerank(gateway_url, api_key):
    module = need_client("llama_index.postprocessor.cohere_rerank")
    from llama_index.core.schema import NodeWithScore, TextNode

    reranker = module.CohereRerank(api_key=api_key, base_url=gateway_url, model=MODEL, top_n=2, max_retries=1)
    nodes = [
        NodeWithScore(node=TextNode(text=text, id_=f"n{i}"), score=0.5) for i, text in enumerate(PASSAGES)
    ]
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert out[0].node.id_ == f"n{RELEVANT}"
    assert len(out) == 2 and out[0].score > out[1].score
