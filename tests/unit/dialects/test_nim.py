"""NVIDIA NIM /v1/ranking."""

from __future__ import annotations

from dialect_fakes import DOCS, QUERY

# As langchain-nvidia-ai-endpoints' NVIDIARerank posts it.
NIM_BODY = {
    "model": "nvidia/nv-rerankqa-mistral-4b-v3",
    "query": {"text": QUERY},
    "passages": [{"text": d} for d in DOCS],
    "truncate": "END",
}


def test_rankings_sorted_by_logit_with_usage(client, executor):
    r = client.post("/v1/ranking", json=NIM_BODY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rankings"][0]["index"] == 1
    logits = [x["logit"] for x in body["rankings"]]
    assert logits == sorted(logits, reverse=True) and logits[0] == 4.0
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert executor.calls[0][0].truncate is True


def test_truncate_defaults_to_none_like_nim(client, executor):
    body = {k: v for k, v in NIM_BODY.items() if k != "truncate"}
    client.post("/v1/ranking", json=body)
    assert executor.calls[0][0].truncate is False


def test_errors_are_problem_details(client):
    r = client.post("/v1/ranking", json={**NIM_BODY, "truncate": "MIDDLE"})
    assert r.status_code == 422
    body = r.json()
    assert body["status"] == 422 and body["title"] == "Unprocessable Entity" and "truncate" in body["detail"]
