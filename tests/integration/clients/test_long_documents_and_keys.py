"""Long documents (chunking vs truncation) through the cohere v1 client, and API keys on every dialect."""

from __future__ import annotations

import httpx
import pytest
from conftest import PASSAGES, QUERY, need_client

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]

FILLER = (
    "Tomatoes grow best in warm soil with plenty of sunlight, and gardeners water them early in the morning. "
)
ANSWER = (
    "Paris is the capital and most populous city of France. As the capital of France, Paris is the seat of "
    "the French government: the President lives in the Elysee Palace and Parliament meets in the city. "
    "Paris has been the capital of France for most of the last thousand years."
)
# About 600 tokens of gardening advice push the answer past the 512-token window.
LONG_DOCUMENT = FILLER * 28 + ANSWER
DOCUMENTS = [
    "The giant panda is a bear species endemic to China.",
    LONG_DOCUMENT,
    "Bananas are a good source of potassium and dietary fibre.",
]
LONG = 1


def test_chunking_finds_the_answer_past_the_window(gateway_url, api_key):
    cohere = need_client("cohere")
    co = cohere.Client(api_key=api_key, base_url=gateway_url, timeout=120)
    truncated = co.rerank(model="m", query=QUERY, documents=DOCUMENTS, max_chunks_per_doc=1)
    assert truncated.results[0].index != LONG
    assert truncated.meta.warnings and "1 document" in truncated.meta.warnings[0]
    assert "truncated" in truncated.meta.warnings[0]
    chunked = co.rerank(model="m", query=QUERY, documents=DOCUMENTS, max_chunks_per_doc=8)
    assert chunked.results[0].index == LONG
    best = chunked.results[0].dict()
    start, end = best["chunk"]["start"], best["chunk"]["end"]
    assert "Paris is the capital" in LONG_DOCUMENT[start:end] and start > 0
    assert not chunked.meta.warnings  # eight windows cover the whole document


ROUTES = [
    ("/v2/rerank", {"query": QUERY, "documents": PASSAGES}),
    ("/v1/rerank", {"query": QUERY, "documents": PASSAGES}),
    ("/rerank", {"query": QUERY, "texts": PASSAGES}),
    ("/rerank", {"query": QUERY, "documents": PASSAGES}),
    ("/v1/ranking", {"query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]}),
    ("/score", {"text_1": QUERY, "text_2": PASSAGES}),
    ("/v1/rerank/batch", [{"query": QUERY, "documents": PASSAGES}]),
]


@pytest.mark.parametrize(
    ("path", "body"),
    ROUTES,
    ids=[f"{p}-{sorted(b)[-1] if isinstance(b, dict) else 'list'}" for p, b in ROUTES],
)
def test_api_keys(gateway_url, api_key, path, body):
    url = f"{gateway_url}{path}"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    assert (
        httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=60).status_code == 401
    )
    assert (
        httpx.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=60).status_code
        == 200
    )
    assert httpx.post(url, json=body, headers={"X-API-Key": api_key}, timeout=60).status_code == 200


def test_cohere_client_without_a_valid_key_gets_unauthorized(gateway_url):
    cohere = need_client("cohere")
    co = cohere.ClientV2(api_key="not-a-key", base_url=gateway_url, timeout=30)
    with pytest.raises(cohere.errors.UnauthorizedError) as info:
        co.rerank(model="m", query=QUERY, documents=PASSAGES)
    assert "invalid API key" in info.value.body["message"]
