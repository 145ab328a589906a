"""Multi-query batch: one call, several queries scored together."""

from __future__ import annotations

from dialect_fakes import DOCS, QUERY


def test_bare_list_is_one_executor_call(client, executor):
    items = [
        {"query": QUERY, "documents": DOCS, "top_n": 1},
        {"query": "yellow bananas", "texts": DOCS},
    ]
    r = client.post("/v1/rerank/batch", json=items)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [b["index"] for b in body["results"]] == [0, 1]
    assert [x["index"] for x in body["results"][0]["results"]] == [1]
    assert body["results"][1]["results"][0]["index"] == 2
    assert len(body["results"][1]["results"]) == 3
    [call] = executor.calls
    assert [q.query for q in call] == [QUERY, "yellow bananas"]
    assert body["usage"]["prompt_tokens"] > 0 and body["meta"]["billed_units"]["search_units"] == 2


def test_object_form_with_shared_defaults(client, executor):
    body = {
        "queries": [{"query": QUERY, "documents": DOCS}, {"query": "cat mat", "documents": DOCS, "top_n": 2}],
        "top_n": 1,
        "return_documents": True,
    }
    r = client.post("/rerank/batch", json=body)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["results"] == [
        {
            "index": 1,
            "relevance_score": res[0]["results"][0]["relevance_score"],
            "document": {"text": DOCS[1]},
        }
    ]
    assert len(res[1]["results"]) == 2 and res[1]["results"][0]["index"] == 0


def test_batch_errors_use_the_gateway_body(client):
    r = client.post("/v1/rerank/batch", json={"queries": []})
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    r = client.post("/v1/rerank/batch", json=[{"query": "q", "documents": DOCS, "top_n": -2}])
    assert r.status_code == 422 and "queries[0].top_n" in r.json()["error"]
