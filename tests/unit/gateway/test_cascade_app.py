"""The cascade over HTTP: `ranked_input` on both routes, fidelity in /info and /metrics (tiny models)."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from gateway.api.schemas import RerankResponse
from gateway.app import create_app
from gateway.config import Settings

QUERY = "berlin population"
DOCS = [f"berlin population figure {i}" if i % 2 else f"trains in spain {i}" for i in range(8)]


@pytest.fixture(scope="module")
def client(tiny_model_repository):
    settings = Settings(
        model_repository=tiny_model_repository,
        threads=1,
        keep=3,
        cascade_rule="input",
        cascade_sample_rate=1.0,
        cascade_target_recall=0.0,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_unranked_input_without_keep_is_single_stage_by_default(client):
    body = RerankResponse.model_validate(
        client.post("/rerank", json={"query": QUERY, "documents": DOCS}).json()
    )
    assert body.stages == ["reranker"] and all(r.stage == "reranker" for r in body.results)


def test_ranked_input_keeps_the_callers_first_documents_on_both_routes(client):
    body = RerankResponse.model_validate(
        client.post("/rerank", json={"query": QUERY, "documents": DOCS, "ranked_input": True}).json()
    )
    assert body.stages == ["prefilter", "reranker"]
    assert sorted(r.index for r in body.results if r.stage == "reranker") == [0, 1, 2]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "ranked_input": True, "top_n": 8})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 8
    bad = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "ranked_input": "perhaps"})
    assert bad.status_code == 400 and "ranked_input" in bad.text


def test_fidelity_is_measured_in_the_background_and_shown_in_info_and_metrics(client):
    client.post("/rerank", json={"query": QUERY, "documents": DOCS, "ranked_input": True})
    deadline = time.monotonic() + 20
    fidelity = {}
    while time.monotonic() < deadline:
        fidelity = client.get("/info").json()["pipeline"]["cascade"]["fidelity"]
        if fidelity["samples"]["measured"]:
            break
        time.sleep(0.05)
    assert fidelity["samples"]["measured"] >= 1 and 0.0 <= fidelity["recall_at_10"] <= 1.0
    metrics = client.get("/metrics").text
    count = re.search(r"^reranker_cascade_recall_at_10_count\{model=\"reranker\"\} (\S+)$", metrics, re.M)
    assert count is not None and float(count.group(1)) >= 1
    assert 'reranker_cascade_rank_agreement_mean{model="reranker"}' in metrics
    assert 'reranker_cascade_keep{model="reranker"}' in metrics
