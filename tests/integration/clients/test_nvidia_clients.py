"""NVIDIA NIM's ranking shape through LangChain's NVIDIARerank, LlamaIndex's NVIDIARerank and Haystack's
NvidiaRanker, each given a self-hosted base URL (they list /v1/models, then post to /v1/ranking)."""

from __future__ import annotations

import pytest
from conftest import PASSAGES, QUERY, RELEVANT, SERVED_ALIASES, need_client

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]

NIM_MODEL = SERVED_ALIASES[0]  # "nvidia/nv-rerankqa-mistral-4b-v3": a served alias of the exported model


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    monkeypatch.setenv("NVIDIA_USAGE_TELEMETRY_ENABLED", "false")
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")


def test_langchain_nvidia_rerank(gateway_url, api_key):
    module = need_client("langchain_nvidia_ai_endpoints")
    from langchain_core.documents import Document

    docs = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(PASSAGES)]
    reranker = module.NVIDIARerank(
        base_url=f"{gateway_url}/v1",
        api_key=api_key,
        model=NIM_MODEL,
        top_n=3,
        truncate="END",
        usage_telemetry_enabled=False,
    )
    out = reranker.compress_documents(docs, QUERY)
    assert out[0].metadata["n"] == RELEVANT and len(out) == 3
    scores = [d.metadata["relevance_score"] for d in out]
    assert scores == sorted(scores, reverse=True)
    # without a model it takes the first one /v1/models lists (the exported model's own id)
    default = module.NVIDIARerank(
        base_url=gateway_url, api_key=api_key, top_n=1, usage_telemetry_enabled=False
    )
    assert default.model and default.model not in SERVED_ALIASES
    assert default.compress_documents(docs, QUERY)[0].metadata["n"] == RELEVANT


def test_llamaindex_nvidia_rerank(gateway_url, api_key):
    module = need_client("llama_index.postprocessor.nvidia_rerank")
    from llama_index.core.schema import NodeWithScore, TextNode

    # It refuses a model name that neither its own table of NVIDIA models nor /v1/models lists: a served
    # alias (not an NVIDIA name) must be listed there.
    reranker = module.NVIDIARerank(
        model=SERVED_ALIASES[1], base_url=f"{gateway_url}/v1", api_key=api_key, top_n=2
    )
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5) for i, t in enumerate(PASSAGES)]
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert out[0].node.id_ == f"n{RELEVANT}" and len(out) == 2
    assert out[0].score > out[1].score
    with pytest.raises(ValueError, match="No locally hosted"):
        module.NVIDIARerank(model="not/served", base_url=f"{gateway_url}/v1", api_key=api_key)


def test_haystack_nvidia_ranker(gateway_url, api_key):
    module = need_client("haystack_integrations.components.rankers.nvidia")
    from haystack import Document
    from haystack.utils import Secret

    ranker = module.NvidiaRanker(
        model=NIM_MODEL,
        api_url=f"{gateway_url}/v1",
        api_key=Secret.from_token(api_key),
        top_k=3,
        truncate="END",
    )
    ranker.warm_up()
    docs = [Document(content=text, meta={"n": i}) for i, text in enumerate(PASSAGES)]
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert out[0].meta["n"] == RELEVANT and len(out) == 3
    assert out[0].score > out[1].score > out[2].score
