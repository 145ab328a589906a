"""The last client shapes (Mixedbread's body, vLLM's content-part documents, `GET /models`), the
`calibrated: false` option on every dialect that carries a score, and the calibration `/v1/models` shows."""

from __future__ import annotations

import pytest
from dialect_fakes import DOCS, QUERY, FakeExecutor, FakePipeline, dialect_app, served
from fastapi.testclient import TestClient

from gateway.api.dialects.cohere import CohereRerankResponse
from gateway.api.dialects.mixedbread import MixedbreadRerankResponse
from gateway.api.dialects.vllm import ModelList
from gateway.repository import CalibrationSummary, HeldOutFigures

MIXEDBREAD = {"model": "m", "query": QUERY, "input": DOCS, "top_k": 2, "return_input": True}
TEXT_PARTS = {"content": [{"type": "text", "text": d} for d in DOCS]}


@pytest.mark.parametrize("path", ["/v1/reranking", "/v1/rerank", "/reranking"])
def test_mixedbread_body_gets_mixedbreads_answer(client, executor, path):
    r = client.post(path, json=MIXEDBREAD)
    assert r.status_code == 200, r.text
    body = MixedbreadRerankResponse.model_validate(r.json())
    assert body.object == "list" and body.top_k == 2 and body.return_input is True
    assert [d.index for d in body.data] == [1, 0] and body.data[0].score > body.data[1].score
    assert body.data[0].input == DOCS[1] and all(d.object == "rank_result" for d in body.data)
    assert body.usage.prompt_tokens == body.usage.total_tokens > 0 and body.model == "overlap-model"
    [[query]] = executor.calls
    assert query.documents == tuple(DOCS) and query.top_n == 2 and query.calibrated is True


def test_mixedbread_objects_rank_fields_and_defaults(client, executor):
    docs = [{"title": "cats", "body": d} for d in DOCS]
    r = client.post("/v1/reranking", json={"query": QUERY, "input": docs, "rank_fields": ["body"]})
    assert r.status_code == 200, r.text
    raw = r.json()
    assert "input" not in raw["data"][0]  # only with return_input
    assert raw["top_k"] == 3 and raw["return_input"] is False and len(raw["data"]) == 3
    assert executor.calls[0][0].documents == tuple(f"body: {d}" for d in DOCS)


def test_mixedbread_errors_in_the_routes_body(client):
    r = client.post("/v1/rerank", json={"query": QUERY, "input": []})
    assert r.status_code == 400 and "input must not be empty" in r.json()["message"]
    r = client.post("/v1/reranking", json={"input": DOCS})
    assert r.status_code == 400 and "query" in r.json()["detail"]


def test_cohere_and_jina_bodies_still_answer_as_before(client):
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 1})
    assert r.status_code == 200, r.text
    assert CohereRerankResponse.model_validate(r.json()).results[0].index == 1
    r = client.post("/v1/rerank", json={"documents": DOCS})
    assert r.status_code == 400 and "query" in r.json()["message"] and "detail" in r.json()


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/v1/reranking"])
def test_vllm_text_content_parts_are_documents(client, executor, path):
    r = client.post(
        path, json={"model": "m", "query": QUERY, "documents": TEXT_PARTS, "return_documents": True}
    )
    assert r.status_code == 200, r.text
    body = CohereRerankResponse.model_validate(r.json())
    assert body.results[0].index == 1 and body.results[0].document == {"text": DOCS[1]}
    assert executor.calls[0][0].documents == tuple(DOCS)


def test_vllm_content_parts_on_score(client, executor):
    r = client.post("/score", json={"text_1": QUERY, "text_2": TEXT_PARTS})
    assert r.status_code == 200, r.text
    assert [d["index"] for d in r.json()["data"]] == [0, 1, 2]
    assert executor.calls[0][0].documents == tuple(DOCS)


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


@pytest.mark.parametrize(
    ("path", "body", "read"),
    [
        (
            "/v1/rerank",
            {"query": QUERY, "documents": {"content": [TEXT_PARTS["content"][0], IMAGE]}},
            "message",
        ),
        ("/v2/rerank", {"query": QUERY, "documents": {"content": [IMAGE]}}, "message"),
        ("/score", {"text_1": QUERY, "text_2": {"content": [IMAGE]}}, "error"),
    ],
)
def test_an_image_part_is_a_400_naming_the_text_only_model(client, executor, path, body, read):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    message = r.json()[read]["message"] if read == "error" else r.json()[read]
    assert "'image_url'" in message and "'overlap-model' is text-only" in message
    assert not executor.calls  # refused before any work


def test_models_on_both_paths(client):
    for path in ("/v1/models", "/models"):
        r = client.get(path)
        assert r.status_code == 200, r.text
        [card] = ModelList.model_validate(r.json()).data
        assert card.id == "overlap-model" and card.score_calibration is None
        assert "score_calibration" not in r.json()["data"][0]  # uncalibrated: not listed


def test_models_show_each_models_calibration(executor):
    summary = CalibrationSummary(
        method="platt",
        precision="int8",
        data=("scifact", "nfcorpus"),
        queries_fitted=100,
        queries_held_out=100,
        pairs_held_out=9900,
        held_out=HeldOutFigures(9900, ece_before=0.2, ece_after=0.01, brier_before=0.1, brier_after=0.03),
    )
    models = [
        served(FakePipeline("calibrated"), score_calibration=summary),
        served(FakePipeline("plain")),
    ]
    client = TestClient(dialect_app(executor, models))
    cards = {c.id: c for c in ModelList.model_validate(client.get("/models").json()).data}
    card = cards["calibrated"].score_calibration
    assert card is not None and cards["plain"].score_calibration is None
    assert card.data == ["scifact", "nfcorpus"] and card.precision == "int8"
    assert (card.queries_fitted, card.queries_held_out) == (100, 100)
    assert card.held_out is not None and (card.held_out.ece, card.held_out.ece_uncalibrated) == (0.01, 0.2)
    assert card.held_out.brier == 0.03 and card.held_out.pairs == 9900


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rerank", {"query": QUERY, "documents": DOCS}),
        ("/rerank", {"query": QUERY, "texts": DOCS}),  # TEI's body
        ("/v1/rerank", {"query": QUERY, "documents": DOCS}),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS}),
        ("/v1/reranking", {"query": QUERY, "documents": DOCS}),
        ("/v1/reranking", {"query": QUERY, "input": DOCS}),  # Mixedbread's
        ("/score", {"text_1": QUERY, "text_2": DOCS}),
        ("/v1/rerank/batch", {"queries": [{"query": QUERY, "documents": DOCS}]}),
    ],
)
def test_calibrated_false_reaches_the_pipeline_on_every_dialect(path, body):
    for flag in (None, False):
        executor = FakeExecutor()
        client = TestClient(dialect_app(executor))
        sent = body if flag is None else {**body, "calibrated": flag}
        r = client.post(path, json=sent)
        assert r.status_code == 200, r.text
        assert [q.calibrated for q in executor.calls[0]] == [flag is None]
