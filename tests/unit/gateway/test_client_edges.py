"""The edges real clients hit (issue 12), on the real app over the tiny model: the NIM hosted, llama.cpp and
RAGFlow paths, truncation instead of refusal (and one status when truncation is off), the native route's
texts, Jina's `detail`, chunk clamping, served aliases, trailing slashes, bodies without a JSON content
type, top_k 0, the pair cap, the seeds' shapes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import Settings

QUERY = "berlin population"
DOCS = ["Trains in Spain.", "Berlin has a large population.", "New York has museums."]
NIM_BODY = {
    "model": "m",
    "query": {"text": QUERY},
    "passages": [{"text": d} for d in DOCS],
    "truncate": "END",
}
ALIASES = ["BAAI/bge-reranker-v2-m3", "nvidia/nv-rerankqa-mistral-4b-v3"]


@pytest.fixture(scope="module")
def client(tiny_model_repository):
    settings = Settings(
        model_repository=tiny_model_repository,
        threads=1,
        keep=0,
        max_document_chars=200,
        max_query_chars=60,
        max_pairs=8,
        served_model_names=ALIASES,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def best(r) -> int:
    body = r.json()
    items = body.get("rankings") or body.get("results") or body
    return items[0]["index"]


@pytest.fixture(scope="module")
def relevant(client) -> int:
    """The document the tiny random model ranks first (every route must agree with it)."""
    return best(client.post("/rerank", json={"query": QUERY, "documents": DOCS}))


@pytest.mark.parametrize(
    "path",
    [
        "/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking",  # litellm nvidia_nim/<model>
        "/v1/retrieval/nvidia/reranking",  # RAGFlow: {base}/reranking
        "/reranking",
        "/v1/reranking",
        "/some/proxy/prefix/reranking",
    ],
)
def test_nim_body_on_the_reranking_paths(client, relevant, path):
    r = client.post(path, json=NIM_BODY)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"rankings", "usage"} and best(r) == relevant


@pytest.mark.parametrize("path", ["/reranking", "/v1/reranking", "/api/reranking"])
def test_jina_body_on_the_llama_cpp_paths(client, relevant, path):
    body = {"model": "m", "query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": True}
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and results[0]["index"] == relevant
    assert results[0]["document"] == {"text": DOCS[relevant]}
    bad = client.post(path, json={"query": QUERY})
    assert bad.status_code == 400 and bad.json()["detail"] == bad.json()["message"]
    assert "documents" in bad.json()["detail"]


LONG = "berlin " * 100  # 700 characters, over max_document_chars (200)
ROUTES_TRUNCATING = [
    ("/rerank", {"query": QUERY, "documents": [*DOCS, LONG]}),
    ("/rerank", {"query": QUERY, "texts": [*DOCS, LONG], "truncate": True}),
    ("/v1/rerank", {"query": QUERY, "documents": [*DOCS, LONG]}),
    ("/v2/rerank", {"query": QUERY, "documents": [*DOCS, LONG]}),
    ("/v1/ranking", {**NIM_BODY, "passages": [*NIM_BODY["passages"], {"text": LONG}]}),
    ("/score", {"text_1": QUERY, "text_2": [*DOCS, LONG], "truncate_prompt_tokens": -1}),
    ("/v1/rerank/batch", [{"query": QUERY, "documents": [*DOCS, LONG]}]),
]


@pytest.mark.parametrize(
    ("path", "body"), ROUTES_TRUNCATING, ids=[f"{p}-{i}" for i, (p, _) in enumerate(ROUTES_TRUNCATING)]
)
def test_long_documents_are_truncated_on_every_route(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text


ROUTES_STRICT = [
    ("/rerank", {"query": QUERY, "documents": [*DOCS, LONG], "truncate": False}),
    ("/rerank", {"query": QUERY, "texts": [*DOCS, LONG], "truncate": False}),
    ("/v1/rerank", {"query": QUERY, "documents": [*DOCS, LONG], "truncate": False}),
    ("/v2/rerank", {"query": QUERY, "documents": [*DOCS, LONG], "truncate": False}),
    ("/v1/ranking", {**NIM_BODY, "passages": [*NIM_BODY["passages"], {"text": LONG}], "truncate": "NONE"}),
    ("/score", {"text_1": QUERY, "text_2": [*DOCS, LONG]}),
]


@pytest.mark.parametrize(
    ("path", "body"), ROUTES_STRICT, ids=[f"{p}-{i}" for i, (p, _) in enumerate(ROUTES_STRICT)]
)
def test_truncation_off_is_one_status_naming_the_document_and_the_limit(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 413, r.text
    assert "document 3 has 700 characters; the limit max_document_chars is 200" in r.text


def test_truncation_is_reported(client):
    r = client.post("/v1/rerank", json={"query": "q " * 40, "documents": [*DOCS, LONG]})
    warnings = r.json()["meta"]["warnings"]
    assert "1 document(s) were cut to max_document_chars (200 characters)" in warnings
    assert "the query was cut to max_query_chars (60 characters)" in warnings


def test_native_route_returns_the_text_and_the_seed_shapes(client, relevant):
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": True, "top_k": 0})
    body = r.json()
    assert r.status_code == 200 and len(body["results"]) == 3 and body["top_k_applied"] is False
    assert body["results"][0]["document"] == {"text": DOCS[relevant]}
    assert [x["index"] for x in body["rankings"]] == [x["index"] for x in body["results"]]
    assert body["rankings"][0]["score"] == body["results"][0]["relevance_score"]
    plain = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 1}).json()
    assert plain["results"][0]["document"] is None and plain["top_k_applied"] is True


def test_max_chunks_is_clamped_and_overlap_tokens_accepted(client):
    body = {"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 1024, "overlap_tokens": 80}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    assert any(
        "max_chunks_per_doc 1024 is above the server's maximum 64" in w for w in r.json()["meta"]["warnings"]
    )


def test_served_aliases_are_listed(client):
    ids = [card["id"] for card in client.get("/v1/models").json()["data"]]
    assert ids[1:] == ALIASES and ids[0] not in ALIASES


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rerank/", {"query": QUERY, "documents": DOCS}),
        ("/v1/rerank/", {"query": QUERY, "documents": DOCS}),
        ("/v2/rerank/", {"query": QUERY, "documents": DOCS}),
        ("/v1/ranking/", NIM_BODY),
        ("/v1/score/", {"text_1": QUERY, "text_2": DOCS}),
    ],
)
def test_trailing_slash_and_no_json_content_type(client, path, body):
    import json

    r = client.post(path, json=body, follow_redirects=False)
    assert r.status_code == 200, r.text
    for content_type in (None, "application/x-www-form-urlencoded", "text/plain"):
        headers = {"content-type": content_type} if content_type else {}
        raw = client.post(path.rstrip("/"), content=json.dumps(body).encode(), headers=headers)
        assert raw.status_code == 200, (content_type, raw.text)


def test_pairs_per_request_are_capped(client):
    r = client.post("/v1/score", json={"text_1": [QUERY] * 9, "text_2": ["d"] * 9})
    assert r.status_code == 400 and "the limit max_pairs is 8" in r.text
    batch = [{"query": QUERY, "documents": DOCS}] * 3
    r = client.post("/v1/rerank/batch", json=batch)
    assert r.status_code == 413 and "9 (query, document) pairs" in r.json()["error"]


def test_json_metrics_and_gpu_model_loaded(client):
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    m = client.get("/metrics", headers={"Accept": "application/json"}).json()
    assert m["rss_bytes"] > 0 and m["num_threads"] >= 1 and "cpu_percent" in m
    assert 'reranker_in_flight_requests{model="reranker"}' in m["metrics"]
    assert client.get("/health").json()["gpu_model_loaded"] is False
