"""The one error table: every domain error's status per dialect, Retry-After, the validation message,
and OpenAPI documenting every status each route answers (drawn from the table, checked against the wire)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from dialect_fakes import DOCS, QUERY, FakeExecutor
from fastapi.testclient import TestClient

from gateway import errors
from gateway.api.deps import bind, bound_services
from gateway.api.errors import OVERRIDES, STATUS, retry_after, status_of, validation_message
from gateway.app import create_app
from gateway.backends.triton import TritonFailed
from gateway.config import Settings
from gateway.pipeline import PipelineConfig, Reranker

# What each dialect answers, error type by error type (TEI: router/src/http/server.rs; Cohere/vLLM: 400 for
# anything malformed or out of range).
EXPECTED = {
    "native": {"validation": 422, "empty": 422, "limit": 413},
    "batch": {"validation": 422, "empty": 422, "limit": 413},
    "nim": {"validation": 422, "empty": 422, "limit": 413},
    "tei": {"validation": 422, "empty": 400, "limit": 422},
    "cohere": {"validation": 400, "empty": 400, "limit": 400},
    "vllm": {"validation": 400, "empty": 400, "limit": 400},
}
SAME_EVERYWHERE = {
    errors.Overloaded: 429,
    errors.RequestTimedOut: 504,
    errors.Unauthorized: 401,
    errors.NotReady: 503,
    errors.ModelRepositoryError: 503,
    errors.BackendFailed: 424,
    TritonFailed: 424,
}


@pytest.mark.parametrize("dialect", sorted(EXPECTED))
def test_every_error_type_has_its_status_in_every_dialect(dialect):
    assert set(OVERRIDES) == set(EXPECTED)
    want = EXPECTED[dialect]
    assert status_of(errors.ValidationFailed("x"), dialect) == want["validation"]
    assert status_of(errors.EmptyInput("x"), dialect) == want["empty"]
    assert status_of(errors.LimitExceeded("x", limit="max_documents", value=1), dialect) == want["limit"]
    for cls, status in SAME_EVERYWHERE.items():
        assert status_of(cls, dialect) == status, cls
    assert status_of(errors.RerankError("x"), dialect) == 500  # the base class is not in the table
    # Every concrete domain error type is in the table (a new one must be given a status).
    concrete = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.RerankError)}
    assert concrete - {errors.RerankError} <= set(STATUS)


def test_backend_failure_carries_a_reason():
    assert errors.BackendFailed("down").reason == "error"
    failed = TritonFailed("triton-grpc: unreachable", reason="unavailable")
    assert isinstance(failed, errors.BackendFailed) and failed.reason == "unavailable"


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (2.5, "3")])
def test_retry_after_rounds_up_and_is_at_least_one(seconds, header):
    assert retry_after(seconds) == header


def test_validation_message_names_every_field_in_one_format():
    problems = [
        {"loc": ("body", "query"), "msg": "Field required"},
        {"loc": ("body", "documents", 2), "msg": "Input should be a valid string"},
        {"loc": (), "msg": "broken"},
    ]
    assert validation_message(problems) == (
        "invalid request: query: Field required; documents.2: Input should be a valid string; body: broken"
    )


# --- OpenAPI and the wire agree --------------------------------------------------------------------------
ROUTES = {  # path -> (dialect(s) whose table it answers by, a valid body)
    "/rerank": (("native", "tei"), {"query": QUERY, "documents": DOCS}),
    "/v1/rerank": (("cohere",), {"query": QUERY, "documents": DOCS}),
    "/v2/rerank": (("cohere",), {"query": QUERY, "documents": DOCS}),
    "/v1/ranking": (("nim",), {"query": QUERY, "passages": DOCS}),
    "/score": (("vllm",), {"text_1": QUERY, "text_2": DOCS}),
    "/v1/score": (("vllm",), {"text_1": QUERY, "text_2": DOCS}),
    "/v1/rerank/batch": (("batch",), [{"query": QUERY, "documents": DOCS}]),
}
ERRORS = [
    errors.ValidationFailed("bad"),
    errors.EmptyInput("none"),
    errors.LimitExceeded("too many", limit="max_documents", value=2),
    errors.Overloaded("busy", retry_after=0.3),
    errors.RequestTimedOut("slow"),
    errors.NotReady("not loaded"),
    errors.ModelRepositoryError("no manifest"),
    errors.UnknownModel("the model 'x' is not served here; served models: a", name="x"),
    errors.BackendFailed("triton and the fallback failed", reason="unavailable"),
]


@pytest.fixture(scope="module")
def app_and_executor():
    settings = Settings(model_repository="does-not-exist", preload=False, api_keys=["k"], max_body_bytes=4096)
    app = create_app(
        settings,
        Reranker(
            PipelineConfig.from_settings(settings), loader=lambda: (_ for _ in ()).throw(AssertionError)
        ),
    )
    executor = FakeExecutor()
    bind(app, replace(bound_services(app), admission=executor))  # the routes' only way to the pipeline
    return app, executor


def documented(app, path: str, method: str = "post") -> set[int]:
    return {int(code) for code in app.openapi()["paths"][path][method]["responses"]}


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_openapi_lists_every_status_of_the_table_for_each_route(app_and_executor, path):
    app, _ = app_and_executor
    dialects, _ = ROUTES[path]
    want = {200, 413, 500} | {status_of(cls, d) for cls in STATUS for d in dialects}
    assert 424 in want
    assert documented(app, path) == want
    operation = app.openapi()["paths"][path]["post"]
    assert "$ref" in str(operation["responses"]["200"]["content"]["application/json"]["schema"])


def test_openapi_for_ops_routes(app_and_executor):
    app, _ = app_and_executor
    assert documented(app, "/ready", "get") == {200, 503}
    assert documented(app, "/v1/models", "get") == {200, 401, 500}
    assert app.openapi()["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_every_status_a_route_answers_is_documented(app_and_executor, path):
    app, executor = app_and_executor
    _, body = ROUTES[path]
    listed = documented(app, path)
    with TestClient(app) as client:
        key = {"Authorization": "Bearer k"}
        executor.error = None
        assert client.post(path, json=body, headers=key).status_code == 200
        unauthorized = client.post(path, json=body)
        assert unauthorized.status_code == 401 and unauthorized.headers["www-authenticate"] == "Bearer"
        seen = {200, 401}
        for exc in ERRORS:
            executor.error = exc
            r = client.post(path, json=body, headers=key)
            assert r.status_code in listed, (exc, r.status_code, listed)
            if isinstance(exc, errors.Overloaded):
                assert r.headers["retry-after"] == "1"
            seen.add(r.status_code)
        executor.error = None
        too_big = client.post(path, content=b"[" + b" " * 5000 + b"]", headers=key)
        assert too_big.status_code == 413
        seen.add(413)
    assert 424 in seen and seen <= listed
