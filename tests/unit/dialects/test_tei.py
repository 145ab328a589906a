"""TEI on /rerank with `texts`: a bare array, one item per text, TEI's errors and usage headers."""

from __future__ import annotations

from dialect_fakes import DOCS, QUERY

from gateway.errors import LimitExceeded


def test_bare_array_one_item_per_text_sorted(client, executor):
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert r.status_code == 200, r.text
    items = r.json()
    assert isinstance(items, list) and len(items) == len(DOCS)
    assert items[0]["index"] == 1
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert all(set(i) == {"index", "score"} for i in items)
    assert int(r.headers["x-compute-tokens"]) > 0
    [[q]] = executor.calls
    assert q.truncate is True and q.truncation_direction == "right" and q.top_n is None


def test_raw_scores_return_text_and_haystack_direction(client, executor):
    body = {
        "query": QUERY,
        "texts": DOCS,
        "raw_scores": True,
        "return_text": True,
        "truncate": True,
        "truncation_direction": "Left",
    }
    items = client.post("/rerank", json=body).json()
    assert items[0] == {"index": 1, "text": DOCS[1], "score": 4.0}
    assert executor.calls[0][0].truncation_direction == "left"
    client.post("/rerank", json={"query": QUERY, "texts": DOCS, "truncate": False})
    assert executor.calls[1][0].truncate is False


def test_tei_errors(client, executor):
    r = client.post("/rerank", json={"query": QUERY, "texts": []})
    assert r.status_code == 400 and r.json() == {"error": "`texts` cannot be empty", "error_type": "Empty"}
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "truncation_direction": "up"})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    executor.error = LimitExceeded("at most 2 documents per request", limit="max_documents", value=2)
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert r.status_code == 422
    assert r.json() == {"error": "at most 2 documents per request", "error_type": "Validation"}


def test_seed_aliases_for_vllm_rerank_bodies():
    from gateway.api.schemas import native_aliases as seed_aliases

    assert seed_aliases({"query": "q", "documents": [], "top_n": 3}) == {
        "query": "q",
        "documents": [],
        "top_k": 3,
    }
    assert seed_aliases({"query": "q", "top_n": 0}) == {"query": "q"}  # vLLM: 0 is every document
    assert seed_aliases({"top_k": 1, "top_n": 3}) == {"top_k": 1, "top_n": 3}
