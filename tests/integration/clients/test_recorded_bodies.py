"""NVIDIA NIM, vLLM and the multi-query batch, with request bodies as their clients send them."""

from __future__ import annotations

import httpx
import pytest
from conftest import PASSAGES, QUERY, RELEVANT, SERVED_ALIASES

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]

OTHER_QUERY = "Which animal lives in the bamboo forests of China?"
OTHER_RELEVANT = 0


def post(url: str, path: str, body: object, key: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_nim_ranking_as_langchain_nvidia_sends_it(gateway_url, api_key):
    # langchain-nvidia-ai-endpoints NVIDIARerank: {"model", "query": {"text"}, "passages": [{"text"}], "truncate"}
    body = {
        "model": "nvidia/nv-rerankqa-mistral-4b-v3",
        "query": {"text": QUERY},
        "passages": [{"text": p} for p in PASSAGES],
        "truncate": "END",
    }
    r = post(gateway_url, "/v1/ranking", body, api_key)
    assert r.status_code == 200, r.text
    rankings = r.json()["rankings"]
    assert rankings[0]["index"] == RELEVANT and len(rankings) == len(PASSAGES)
    logits = [x["logit"] for x in rankings]
    assert logits == sorted(logits, reverse=True)
    assert r.json()["usage"]["prompt_tokens"] > 0
    # NIM's problem-details error for a bad truncate value
    r = post(gateway_url, "/v1/ranking", {**body, "truncate": "START"}, api_key)
    assert r.status_code == 422 and r.json()["status"] == 422 and "truncate" in r.json()["detail"]


def test_vllm_score_one_to_n_and_n_to_n(gateway_url, api_key):
    # vLLM's examples/online_serving/openai_cross_encoder_score.py
    r = post(
        gateway_url,
        "/score",
        {"model": "BAAI/bge-reranker-v2-m3", "text_1": QUERY, "text_2": PASSAGES},
        api_key,
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(len(PASSAGES)))
    scores = [d["score"] for d in data]
    assert max(range(len(scores)), key=scores.__getitem__) == RELEVANT
    assert r.json()["usage"]["prompt_tokens"] > 0
    # N:N: pairwise, two different queries scored in one call
    body = {
        "model": "m",
        "text_1": [QUERY, OTHER_QUERY],
        "text_2": [PASSAGES[RELEVANT], PASSAGES[OTHER_RELEVANT]],
    }
    r = post(gateway_url, "/v1/score", body, api_key)
    assert r.status_code == 200, r.text
    pair_scores = [d["score"] for d in r.json()["data"]]
    swapped = {**body, "text_2": [PASSAGES[OTHER_RELEVANT], PASSAGES[RELEVANT]]}
    crossed = [d["score"] for d in post(gateway_url, "/v1/score", swapped, api_key).json()["data"]]
    assert pair_scores[0] > crossed[0] and pair_scores[1] > crossed[1]
    # vLLM's error envelope
    r = post(gateway_url, "/score", {"text_1": [QUERY, QUERY], "text_2": PASSAGES}, api_key)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"


def test_vllm_rerank_bodies_on_cohere_paths(gateway_url, api_key):
    # vLLM's /v1/rerank and /v2/rerank take Cohere's body; top_n 0 means every document there
    for path in ("/v1/rerank", "/v2/rerank"):
        body = {"model": "BAAI/bge-reranker-base", "query": QUERY, "documents": PASSAGES, "top_n": 0}
        r = post(gateway_url, path, body, api_key)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["results"][0]["index"] == RELEVANT and len(out["results"]) == len(PASSAGES)
        assert out["usage"]["total_tokens"] > 0 and out["id"] and out["model"]
    # vLLM's /rerank is the seed route here: same results/usage/model fields, and top_n is honoured
    body = {"model": "BAAI/bge-reranker-base", "query": QUERY, "documents": PASSAGES, "top_n": 2}
    r = post(gateway_url, "/rerank", body, api_key)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["results"][0]["index"] == RELEVANT and len(out["results"]) == 2
    assert out["results"][0]["relevance_score"] > out["results"][1]["relevance_score"]
    assert out["usage"]["total_tokens"] > 0 and out["model"]


def test_vllm_models_list(gateway_url, api_key):
    r = httpx.get(f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    card, *aliases = r.json()["data"]  # the served model first, then RERANKER_SERVED_MODEL_NAMES
    assert [a["id"] for a in aliases] == list(SERVED_ALIASES) and {a["root"] for a in aliases} == {card["id"]}
    info = httpx.get(f"{gateway_url}/info", headers={"Authorization": f"Bearer {api_key}"}, timeout=30).json()
    assert card["id"] == info["models"]["reranker"]["model_id"]
    assert card["max_model_len"] == info["models"]["reranker"]["max_length"]


def test_multi_query_batch(gateway_url, api_key):
    body = [
        {"query": QUERY, "documents": PASSAGES, "top_n": 1},
        {"query": OTHER_QUERY, "documents": PASSAGES, "top_n": 2},
    ]
    r = post(gateway_url, "/v1/rerank/batch", body, api_key)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [b["index"] for b in out["results"]] == [0, 1]
    assert [x["index"] for x in out["results"][0]["results"]] == [RELEVANT]
    assert (
        out["results"][1]["results"][0]["index"] == OTHER_RELEVANT and len(out["results"][1]["results"]) == 2
    )
    assert out["usage"]["prompt_tokens"] > 0
