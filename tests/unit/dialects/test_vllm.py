"""vLLM /score, /v1/score, /v1/models."""

from __future__ import annotations

from dialect_fakes import DOCS, QUERY


def test_one_to_n_keeps_pair_order(client, executor):
    r = client.post("/score", json={"model": "m", "text_1": QUERY, "text_2": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["id"].startswith("score-")
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    scores = [d["score"] for d in body["data"]]
    assert max(range(3), key=scores.__getitem__) == 1
    assert all(d["object"] == "score" for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    [[q]] = executor.calls
    assert q.keep == 0 and q.truncate is False


def test_n_to_n_groups_queries_into_one_executor_call(client, executor):
    body = {
        "text_1": ["capital of france", "yellow fruit", "capital of france"],
        "text_2": ["paris is the capital of france", "bananas are yellow", "bananas are yellow"],
        "use_activation": False,
        "truncate_prompt_tokens": 128,
    }
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["score"] for d in data] == [2.0, 0.0, -1.0]  # logits, pair order
    [call] = executor.calls
    assert [q.query for q in call] == ["capital of france", "yellow fruit"]
    assert call[0].documents == ("paris is the capital of france", "bananas are yellow")
    assert call[0].max_length == 128 and call[0].truncate is True


def test_newer_field_names(client):
    r = client.post("/score", json={"queries": QUERY, "documents": DOCS})
    assert r.status_code == 200 and len(r.json()["data"]) == 3


def test_vllm_error_envelope(client):
    r = client.post("/score", json={"text_1": ["a", "b"], "text_2": ["a", "b", "c"]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and "1:N" in err["message"]
    r = client.post("/score", json={"text_1": "a"})
    assert r.status_code == 400 and "text_2" in r.json()["error"]["message"]


def test_models_list(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["object"] == "model" and card["id"]
