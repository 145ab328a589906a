from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi.testclient import TestClient

from gateway.api.deps import bound_services
from gateway.api.dialects.cohere import CohereRerankResponse
from gateway.api.schemas import RerankResponse
from gateway.app import create_app
from gateway.config import Settings
from gateway.domain import RerankQuery
from gateway.pipeline import Reranker

QUERY = "berlin population"


DOCS = ["Berlin has a large population.", "New York has museums.", "Trains in Spain."]


@pytest.fixture(scope="module")
def settings(tiny_model_repository) -> Settings:
    return Settings(
        model_repository=tiny_model_repository,
        # pinned: on a CUDA machine the real probe would load fp16 on the GPU, not the int8 these tests assert
        device="cpu",
        threads=1,
        max_documents=5,
        max_document_chars=100,
        max_query_chars=50,
        max_body_bytes=4096,
        keep=2,
        cascade_unranked="prefilter",
        cascade_sample_rate=0.0,
    )


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_seed_route_ranks_and_parses_back(client):
    r = client.post(
        "/rerank", json={"query": QUERY, "documents": [*DOCS, {"text": "Berlin", "id": 7}], "top_k": 3}
    )
    assert r.status_code == 200, r.text
    body = RerankResponse.model_validate(r.json())
    assert len(body.results) == 3 and body.top_k_applied
    assert body.stages == ["prefilter", "reranker"] and body.backend == "onnx-cpu"
    assert body.model == "tiny-reranker"
    for res in body.results:
        assert res.score == res.relevance_score and 0 <= res.relevance_score <= 1
        if res.index == 3:
            assert res.document == {"text": "Berlin", "id": 7}


def test_cohere_route_shape(client):
    r = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": True}
    )
    assert r.status_code == 200, r.text
    body = CohereRerankResponse.model_validate(r.json())
    assert len(body.results) == 2 and body.results[0].document == {"text": DOCS[body.results[0].index]}
    assert body.model == "tiny-reranker" and body.meta.api_version.version == "1"
    scores = [res.relevance_score for res in body.results]
    assert scores == sorted(scores, reverse=True)
    assert (
        "document"
        not in client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"][0]
    )


def test_empty_document_list_is_an_empty_result(client):
    r = client.post("/rerank", json={"query": QUERY, "documents": []})
    assert r.status_code == 200 and r.json()["results"] == []


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"query": "", "documents": DOCS}, 422, "query"),
        ({"query": "   ", "documents": DOCS}, 422, "query must not be empty"),
        ({"documents": DOCS}, 422, "query"),
        ({"query": QUERY, "documents": "nope"}, 422, "documents"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, 422, "documents"),
        ({"query": QUERY, "documents": DOCS, "top_k": -1}, 422, "top_k"),
        ({"query": QUERY, "documents": ["d"] * 6}, 413, "max_documents is 5"),
        (
            {"query": QUERY, "documents": ["a", "x" * 101], "truncate": False},
            413,
            "document 1 has 101 characters; the limit max_document_chars is 100",
        ),
        ({"query": "q" * 51, "documents": DOCS, "truncate": False}, 413, "max_query_chars is 50"),
        ({"query": QUERY, "documents": ["x" * 90] * 5, "pad": "y" * 4000}, 413, "max_body_bytes (4096"),
    ],
)
def test_bad_input_matrix(client, body, status, needle):
    r = client.post("/rerank", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert r.json()["error_type"] in ("validation", "limit_exceeded")


def test_malformed_json_is_422(client):
    r = client.post("/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json" in r.json()["error"].lower()


def test_ops_routes(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["cuda_available"] is False
    assert health["models_loaded"] == ["reranker", "prefilter"]
    assert client.get("/ready").status_code == 200
    info = client.get("/info").json()
    assert info["limits"]["max_documents"] == 5 and info["models"]["reranker"]["variant"] == "int8"
    metrics = client.get("/metrics").text
    for name in (
        "reranker_requests_total",
        "reranker_request_duration_seconds_bucket",
        "reranker_process_rss_bytes",
        "reranker_process_threads",
        "reranker_cache_hit_ratio",
        "reranker_batch_size_bucket",
        "reranker_prefilter_drop_ratio_bucket",
    ):
        assert name in metrics
    assert client.get("/docs").status_code == 200
    assert "/v1/rerank" in client.get("/openapi.json").json()["paths"]


def test_request_id_round_trip(client):
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(client.get("/health").headers["x-request-id"]) == 32


def test_api_keys(tiny_model_repository):
    s = Settings(model_repository=tiny_model_repository, api_keys=["k1", "k2"], preload=False)
    with TestClient(create_app(s)) as c:
        body = {"query": QUERY, "documents": DOCS}
        missing = c.post("/rerank", json=body)
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]
        assert c.post("/rerank", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/rerank", json=body, headers={"Authorization": "Bearer k2"}).status_code == 200
        assert c.post("/v1/rerank", json=body, headers={"X-API-Key": "k1"}).status_code == 200
        assert c.get("/health").status_code == 200  # ops routes stay open


def test_preload_off_loads_on_first_request(tiny_model_repository):
    s = Settings(model_repository=tiny_model_repository, preload=False)
    with TestClient(create_app(s)) as c:
        assert c.get("/health").json()["models_loaded"] == []
        assert c.get("/ready").status_code == 503
        assert c.post("/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
        assert c.get("/ready").status_code == 200


def test_admission_queues_what_can_finish_in_time_and_refuses_the_rest(make_reranker):
    """max_in_flight 1: a second request waits for the slot (no 429) while the queued work can finish within
    the request timeout; when the model's measured speed says it cannot, 429 with Retry-After and a message
    saying why; work too large for the deadline even alone is refused at once (413); a request that runs past
    the timeout all the same (the runtime slowed down after its speed was measured) is a 504."""
    reranker, ce, _ = make_reranker(keep=0, max_in_flight=1, request_timeout_s=1.0)
    release = threading.Event()
    original = ce.score

    async def slow_score(batch):
        while not release.is_set():
            await asyncio.sleep(0.01)
        return await original(batch)

    ce.score = slow_score
    assert isinstance(reranker, Reranker)
    with TestClient(create_app(reranker.settings, reranker)) as c:
        admission = bound_services(c.app).admission
        results: dict[str, int] = {}

        def post(name: str, docs: list[str]) -> threading.Thread:
            def run() -> None:
                results[name] = c.post("/rerank", json={"query": QUERY, "documents": docs}).status_code

            thread = threading.Thread(target=run)
            thread.start()
            return thread

        def wait_in_flight(n: int) -> None:
            for _ in range(200):
                if admission.in_flight >= n:
                    return
                threading.Event().wait(0.01)
            raise AssertionError(f"never {n} in flight")

        first = post("first", DOCS)
        wait_in_flight(1)
        second = post("second", DOCS[:1])  # queued behind the first: nothing says it cannot finish
        wait_in_flight(2)
        release.set()
        first.join(5)
        second.join(5)
        assert results == {"first": 200, "second": 200}

        # The model's speed: DOCS take 0.6 s of the 0.8 s the 1 s deadline admits (ADMIT_WITHIN)
        tokens = reranker.plan([RerankQuery(QUERY, tuple(DOCS))])[0].work.reranker
        reranker.models.reranker.meter.reset_to(tokens / 0.6)
        release.clear()
        held = post("held", [f"{d} (not cached)" for d in DOCS])
        wait_in_flight(1)
        refused = c.post("/rerank", json={"query": QUERY, "documents": DOCS})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "would not finish within request_timeout_s (1.0s)" in refused.json()["error"]
        reranker.models.reranker.meter.reset_to(tokens / 2.0)  # now 2 s: more than the deadline even alone
        too_large = c.post("/rerank", json={"query": QUERY, "documents": DOCS})
        assert too_large.status_code == 413 and too_large.json()["limit"] == "request_timeout_s"
        held.join(5)
        assert results["held"] == 504  # admitted at 0.6 s, held past the deadline
        release.set()
        assert c.post("/rerank", json={"query": QUERY, "documents": DOCS[:1]}).status_code == 200


def test_over_long_inputs_are_cut_when_truncating(client):
    r = client.post("/rerank", json={"query": "q" * 60, "documents": ["a", "x" * 150]})
    assert r.status_code == 200, r.text
    assert "1 document(s) were cut to max_document_chars (100 characters)" in r.json()["warnings"]
    assert "the query was cut to max_query_chars (50 characters)" in r.json()["warnings"]


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"null",
        b'{"query": 5, "documents": ["a"]}',
        b'{"query": "q", "documents": [{"text": null}]}',
        b'{"query": "q", "documents": [1, 2]}',
        b'{"query": "q", "documents": ["a"], "keep": -1}',
        b'{"query": "q", "documents": ["a"], "max_chunks_per_doc": 0}',
        b'{"query": "q", "documents": ["a"], "top_k": "many"}',
        b'{"query": "q", "documents": ["a"], "truncation_direction": "middle"}',
    ],
)
def test_client_mistakes_are_4xx_never_500(client, raw):
    r = client.post("/rerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation"


def test_lone_surrogates_are_a_422_not_a_500(client):
    raw = b'{"query": "berlin \\ud800", "documents": ["Berlin population", "x"]}'
    r = client.post("/rerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "query" in r.json()["error"]
