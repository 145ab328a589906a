"""API keys on the dialect routes: 401 in each dialect's own error body, 200 with either header."""

from __future__ import annotations

import pytest
from dialect_fakes import DOCS, QUERY, FakeExecutor, dialect_app
from fastapi.testclient import TestClient


@pytest.fixture
def keyed() -> TestClient:
    return TestClient(dialect_app(FakeExecutor(), api_keys=["k1", "k2"]))


CASES = [
    ("/v2/rerank", {"query": QUERY, "documents": DOCS}, lambda b: set(b) == {"message"}),
    # Jina's path: `detail` beside `message` (Jina's clients raise `detail`)
    (
        "/v1/rerank",
        {"query": QUERY, "documents": DOCS},
        lambda b: b == {"message": b["detail"], "detail": b["detail"]},
    ),
    ("/v1/reranking", {"query": QUERY, "documents": DOCS}, lambda b: set(b) == {"message", "detail"}),
    (
        "/v1/retrieval/nvidia/llama-3.2-nv-rerankqa-1b-v2/reranking",
        {"query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS]},
        lambda b: b["status"] == 401,
    ),
    (
        "/reranking",
        {"query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS]},
        lambda b: b["status"] == 401,
    ),
    (
        "/v1/ranking",
        {"query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS]},
        lambda b: b["status"] == 401,
    ),
    ("/score", {"text_1": QUERY, "text_2": DOCS}, lambda b: b["error"]["code"] == 401),
    ("/v1/rerank/batch", [{"query": QUERY, "documents": DOCS}], lambda b: b["error_type"] == "unauthorized"),
]


@pytest.mark.parametrize(("path", "body", "shaped"), CASES, ids=[c[0] for c in CASES])
def test_keys_required_on_every_dialect(keyed, path, body, shaped):
    r = keyed.post(path, json=body)
    assert r.status_code == 401 and shaped(r.json())
    assert r.headers["www-authenticate"] == "Bearer"
    assert keyed.post(path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert keyed.post(path, json=body, headers={"Authorization": "Bearer k2"}).status_code == 200
    assert keyed.post(path, json=body, headers={"X-API-Key": "k1"}).status_code == 200


def test_models_list_needs_a_key_too(keyed):
    assert keyed.get("/v1/models").status_code == 401
    assert keyed.get("/v1/models", headers={"X-API-Key": "k1"}).status_code == 200
