"""A real `python -m gateway` (uvicorn on 127.0.0.1) serving a model calibrated at export beside one that is
not: calibrated scores on every dialect, raw logits, the `calibrated: false` option, `/v1/models`, `/models`
and `/info`, and the last client shapes (Mixedbread's body, vLLM's content-part documents) over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from calibration_data import calibrated_repository
from conftest import GatewayProcess, wait_ready

from gateway.api.dialects.cohere import CohereRerankResponse
from gateway.api.dialects.mixedbread import MixedbreadRerankResponse
from gateway.api.dialects.vllm import ModelList, ScoreResponse
from gateway.api.schemas import RerankResponse

pytestmark = [pytest.mark.slow]

QUERY = "berlin population people"
DOCS = [
    "trains leave the city at night",
    "berlin has a large population of people",
    "coffee and tea in winter",
    "people live in berlin and its population grows",
]


@pytest.fixture(scope="module")
def calibrated(tiny_model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("calibrated")
    return calibrated_repository(tiny_model_repository, work / "repo", work / "data")


@pytest.fixture(scope="module")
def server(calibrated: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("gateway") / "server.log"
    gateway = GatewayProcess(
        {
            "RERANKER_MODEL_REPOSITORY": str(calibrated),
            "RERANKER_MODELS": "reranker,prefilter",  # the calibrated model, and one that is not
            "RERANKER_PREFILTER_NAME": "",
            "RERANKER_DEVICE": "cpu",
            "RERANKER_CACHE_SIZE": "0",
        },
        log,
    )
    try:
        wait_ready(gateway.url, 120, gateway.proc)
        yield gateway
    finally:
        gateway.stop()


def _map(calibrated: Path) -> tuple[float, float]:
    fit = json.loads((calibrated / "reranker" / "manifest.json").read_text())["score_calibration"][
        "variants"
    ]["int8"]
    return fit["a"], fit["b"]


def _platt(logit: float, a: float, b: float) -> float:
    return float(1.0 / (1.0 + np.exp(-(a * logit + b))))


def test_native_scores_are_calibrated_and_logits_stay_raw(server, calibrated):
    a, b = _map(calibrated)
    body = {"model": "reranker", "query": QUERY, "documents": DOCS}
    cal = RerankResponse.model_validate(httpx.post(server.url + "/rerank", json=body, timeout=60).json())
    raw = RerankResponse.model_validate(
        httpx.post(server.url + "/rerank", json={**body, "calibrated": False}, timeout=60).json()
    )
    assert [r.index for r in cal.results] == [r.index for r in raw.results]  # the ranking is the map's
    assert [r.logit for r in cal.results] == [r.logit for r in raw.results]
    for r in cal.results:
        assert (
            r.relevance_score == pytest.approx(_platt(r.logit, a, b), abs=1e-6)
            and r.score == r.relevance_score
        )
    for r in raw.results:
        assert r.relevance_score == pytest.approx(_platt(r.logit, 1.0, 0.0), abs=1e-6)
    other = RerankResponse.model_validate(
        httpx.post(server.url + "/rerank", json={**body, "model": "prefilter"}, timeout=60).json()
    )
    for r in other.results:  # the uncalibrated model keeps its activation
        assert r.relevance_score == pytest.approx(_platt(r.logit, 1.0, 0.0), abs=1e-6)


def test_tei_raw_scores_stay_logits_and_scores_are_calibrated(server, calibrated):
    a, b = _map(calibrated)
    body = {"model": "reranker", "query": QUERY, "texts": DOCS}
    scores = httpx.post(server.url + "/rerank", json=body, timeout=60).json()
    logits = httpx.post(server.url + "/rerank", json={**body, "raw_scores": True}, timeout=60).json()
    by_index = {item["index"]: item["score"] for item in logits}
    assert [i["index"] for i in scores] == [i["index"] for i in logits]
    for item in scores:
        assert item["score"] == pytest.approx(_platt(by_index[item["index"]], a, b), abs=1e-6)


def test_models_and_info_show_each_models_calibration(server):
    for path in ("/v1/models", "/models"):
        r = httpx.get(server.url + path, timeout=30)
        assert r.status_code == 200, r.text
        cards = {c.id: c for c in ModelList.model_validate(r.json()).data}
        card = cards["tiny-reranker"].score_calibration
        assert card is not None and card.method == "platt" and card.precision == "int8"
        assert card.data == ["alpha", "beta"] and (card.queries_fitted, card.queries_held_out) == (7, 7)
        assert card.held_out is not None and 0 <= card.held_out.ece <= 1 and card.held_out.pairs == 140
        assert cards["tiny-prefilter"].score_calibration is None
    info = httpx.get(server.url + "/info", timeout=30).json()
    assert info["score_calibration"]["data"] == ["alpha", "beta"]
    assert info["served_models"]["reranker"]["score_calibration"] == info["score_calibration"]
    assert info["served_models"]["prefilter"]["score_calibration"] is None


@pytest.mark.parametrize("path", ["/v1/reranking", "/v1/rerank"])
def test_mixedbread_body(server, calibrated, path):
    a, b = _map(calibrated)
    body = {"model": "reranker", "query": QUERY, "input": DOCS, "top_k": 2, "return_input": True}
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = MixedbreadRerankResponse.model_validate(r.json())
    assert answer.object == "list" and answer.top_k == 2 and len(answer.data) == 2
    native = RerankResponse.model_validate(
        httpx.post(
            server.url + "/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCS}
        ).json()
    )
    assert [d.index for d in answer.data] == [r.index for r in native.results[:2]]
    assert [d.input for d in answer.data] == [DOCS[r.index] for r in native.results[:2]]
    assert answer.data[0].score == pytest.approx(_platt(native.results[0].logit, a, b), abs=1e-6)


def test_vllm_content_parts_and_an_image_part(server):
    parts = {"content": [{"type": "text", "text": d} for d in DOCS]}
    r = httpx.post(server.url + "/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": parts})
    assert r.status_code == 200, r.text
    plain = httpx.post(
        server.url + "/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCS}
    )
    assert (
        CohereRerankResponse.model_validate(r.json()).results
        == CohereRerankResponse.model_validate(plain.json()).results
    )
    r = httpx.post(server.url + "/score", json={"model": "reranker", "text_1": QUERY, "text_2": parts})
    assert r.status_code == 200, r.text
    assert len(ScoreResponse.model_validate(r.json()).data) == len(DOCS)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    r = httpx.post(
        server.url + "/v1/rerank",
        json={"model": "reranker", "query": QUERY, "documents": {"content": [parts["content"][0], image]}},
    )
    assert r.status_code == 400
    assert "documents[1]" in r.json()["message"] and "'tiny-reranker' is text-only" in r.json()["message"]
