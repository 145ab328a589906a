"""litellm's rerank providers pointed at the gateway with `api_base`: each sends its own path and body
(read from litellm's transformation modules), and each must get the relevant passage ranked first."""

from __future__ import annotations

import os

import pytest
from conftest import PASSAGES, QUERY, RELEVANT, need_client

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]


@pytest.fixture(scope="module")
def litellm():
    # litellm fetches a model cost map from the internet at import unless told to use its bundled copy.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    module = need_client("litellm")
    module.telemetry = False
    return module


def ranked(response) -> list[int]:
    return [r["index"] for r in response.results]


@pytest.mark.parametrize(
    ("model", "base", "path"),
    [
        ("cohere/rerank-english-v3.0", "", "/v1/rerank"),  # {base}/v1/rerank, Cohere v1 body
        ("jina_ai/jina-reranker-v2-base-multilingual", "", "/v1/rerank"),  # the base's host, /v1/rerank
        ("hosted_vllm/BAAI/bge-reranker-base", "", "/rerank"),  # {base}/rerank, Cohere body
        ("infinity/BAAI/bge-reranker-base", "", "/rerank"),  # {base}/rerank, Cohere body
        ("huggingface/BAAI/bge-reranker-base", "", "/rerank"),  # {base}/rerank, TEI body (texts)
        # {base}/v1/retrieval/{model}/reranking: the hosted NIM path, model names with slashes
        ("nvidia_nim/nvidia/llama-3_2-nv-rerankqa-1b-v2", "", "/v1/retrieval/.../reranking"),
    ],
    ids=["cohere", "jina_ai", "hosted_vllm", "infinity", "huggingface", "nvidia_nim"],
)
def test_litellm_rerank_providers(litellm, gateway_url, api_key, model, base, path):
    response = litellm.rerank(
        model=model,
        query=QUERY,
        documents=PASSAGES,
        top_n=3,
        api_base=gateway_url + base,
        api_key=api_key,
        # infinity parses `document` as a string (Infinity's own shape), the others as {"text"}
        return_documents=not model.startswith("infinity/"),
        timeout=60,
    )
    order = ranked(response)
    assert order[0] == RELEVANT, (path, order)
    assert len(order) == 3
    scores = [r["relevance_score"] for r in response.results]
    assert scores == sorted(scores, reverse=True)


def test_litellm_hosted_vllm_returns_the_document_text(litellm, gateway_url, api_key):
    # vLLM's /rerank answers `document: {"text"}` for string documents; hosted_vllm reads it there.
    response = litellm.rerank(
        model="hosted_vllm/BAAI/bge-reranker-base",
        query=QUERY,
        documents=PASSAGES,
        top_n=1,
        return_documents=True,
        api_base=gateway_url,
        api_key=api_key,
        timeout=60,
    )
    [best] = response.results
    assert best["index"] == RELEVANT
    assert best["document"]["text"] == PASSAGES[RELEVANT]


def test_litellm_nvidia_nim_default_path_with_truncate(litellm, gateway_url, api_key):
    # The default api_base shape is the host root (it adds /v1/retrieval/<model>/reranking); a base ending
    # in /v1 gets the same path. `truncate` passes through as NIM's END.
    response = litellm.rerank(
        model="nvidia_nim/nvidia/nv-rerankqa-mistral-4b-v3",
        query=QUERY,
        documents=PASSAGES,
        api_base=f"{gateway_url}/v1",
        api_key=api_key,
        truncate="END",
        timeout=60,
    )
    order = ranked(response)
    assert order[0] == RELEVANT and sorted(order) == list(range(len(PASSAGES)))
