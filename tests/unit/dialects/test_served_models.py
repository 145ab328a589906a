"""Several served models: the request's `model` picks the pipeline on every dialect, an unknown name is a 4xx
naming the served ones (in the dialect's body, with its status), one served model takes any name, and
`/v1/models` lists them all. Every answer parses back through the route's response model."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from dialect_fakes import DOCS, QUERY, FakeExecutor, FakePipeline, dialect_app, served
from fastapi.testclient import TestClient
from pydantic import BaseModel

from gateway.api.dialects.batch import BatchResponse
from gateway.api.dialects.cohere import CohereRerankResponse
from gateway.api.dialects.nim import NIMRankingResponse
from gateway.api.dialects.tei import TEIRerankResponse
from gateway.api.dialects.vllm import ModelList, ScoreResponse
from gateway.api.schemas import RerankResponse
from gateway.errors import UnknownModel
from gateway.registry import ModelDescription, ServedModel, ServedModels, describe_pipeline

ALPHA = FakePipeline("org/alpha-reranker")
BETA = FakePipeline("org/beta-reranker")
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def nim_body(**extra: Any) -> dict[str, Any]:
    return {"query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS], **extra}


# path -> (a body naming `model`, the response model, the status an unknown name gets, how its message reads)
ROUTES: dict[str, tuple[Any, Any, int, Any]] = {
    "/rerank": (
        lambda m: {"model": m, "query": QUERY, "documents": DOCS},
        RerankResponse,
        400,  # infinity's answer to its own body
        lambda b: b["error"],
    ),
    "/rerank#tei": (
        lambda m: {"model": m, "query": QUERY, "texts": DOCS},
        TEIRerankResponse,
        422,  # TEI's Validation
        lambda b: b["error"],
    ),
    "/v1/rerank": (
        lambda m: {"model": m, "query": QUERY, "documents": DOCS},
        CohereRerankResponse,
        404,
        lambda b: b["detail"],
    ),
    "/v2/rerank": (
        lambda m: {"model": m, "query": QUERY, "documents": DOCS},
        CohereRerankResponse,
        404,
        lambda b: b["message"],
    ),
    "/v1/reranking": (
        lambda m: {"model": m, "query": QUERY, "documents": DOCS},
        CohereRerankResponse,
        404,
        lambda b: b["message"],
    ),
    "/reranking": (lambda m: nim_body(model=m), NIMRankingResponse, 404, lambda b: b["detail"]),
    "/v1/ranking": (lambda m: nim_body(model=m), NIMRankingResponse, 404, lambda b: b["detail"]),
    "/score": (
        lambda m: {"model": m, "text_1": QUERY, "text_2": DOCS},
        ScoreResponse,
        404,
        lambda b: b["error"]["message"],
    ),
    "/v1/rerank/batch": (
        lambda m: {"model": m, "queries": [{"query": QUERY, "documents": DOCS}]},
        BatchResponse,
        404,
        lambda b: b["error"],
    ),
}


@pytest.fixture
def two() -> tuple[TestClient, FakeExecutor]:
    executor = FakeExecutor()
    models = [
        served(ALPHA, "alpha", family="bert-classifier", max_tokens_per_pair=512),
        served(
            BETA,
            "beta",
            "b2",
            family="qwen3-reranker",
            max_tokens_per_pair=8192,
            default_instruction=INSTRUCTION,
        ),
    ]
    return TestClient(dialect_app(executor, models)), executor


def post(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path.split("#")[0], json=body)


def parsed(model: Any, body: Any) -> Any:
    return model.model_validate(body) if isinstance(model, type) and issubclass(model, BaseModel) else body


@pytest.mark.parametrize("path", sorted(ROUTES))
@pytest.mark.parametrize(
    ("name", "pipeline"), [("beta", BETA), ("b2", BETA), (BETA.model_id, BETA), ("alpha", ALPHA)]
)
def test_the_model_field_picks_the_pipeline_on_every_dialect(two, path, name, pipeline):
    client, executor = two
    body, response_model, _, _ = ROUTES[path]
    r = post(client, path, body(name))
    assert r.status_code == 200, r.text
    assert executor.pipelines == [pipeline]
    answer = parsed(response_model, r.json())
    if hasattr(answer, "model"):
        assert answer.model == pipeline.model_id


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_no_model_or_an_empty_one_is_the_default(two, path):
    client, executor = two
    body, _, _, _ = ROUTES[path]
    for name in (None, ""):
        sent = {k: v for k, v in body(name).items() if v is not None}
        assert post(client, path, sent).status_code == 200
    assert executor.pipelines == [ALPHA, ALPHA]


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_an_unknown_model_is_refused_naming_the_served_ones(two, path):
    client, executor = two
    body, _, status, message = ROUTES[path]
    r = post(client, path, body("gpt-4"))
    assert r.status_code == status, r.text
    text = message(r.json())
    assert "'gpt-4'" in text and "org/alpha-reranker, alpha" in text and "org/beta-reranker, beta, b2" in text
    assert executor.calls == []  # refused before admission control


def test_the_hosted_nim_path_names_the_model_when_the_body_does_not(two):
    client, executor = two
    assert client.post("/v1/retrieval/org/beta-reranker/reranking", json=nim_body()).status_code == 200
    assert client.post("/v1/retrieval/x/alpha/reranking", json=nim_body(model="alpha")).status_code == 200
    assert executor.pipelines == [BETA, ALPHA]
    r = client.post("/v1/retrieval/nvidia/llama-3.2-nv-rerankqa-1b-v2/reranking", json=nim_body())
    assert r.status_code == 404 and r.json()["title"] == "Not Found"


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_one_served_model_takes_any_name(client, executor, path):
    body, response_model, _, _ = ROUTES[path]
    r = post(client, path, body("whatever-the-user-typed"))
    assert r.status_code == 200, r.text
    parsed(response_model, r.json())
    [pipeline] = executor.pipelines
    assert pipeline.model_id == "overlap-model"


def test_models_list_every_served_model_with_its_aliases_and_description(two):
    client, _ = two
    r = client.get("/v1/models")
    assert r.status_code == 200
    cards = ModelList.model_validate(r.json()).data
    assert [(c.id, c.root) for c in cards] == [
        ("org/alpha-reranker", "org/alpha-reranker"),
        ("alpha", "org/alpha-reranker"),
        ("org/beta-reranker", "org/beta-reranker"),
        ("beta", "org/beta-reranker"),
        ("b2", "org/beta-reranker"),
    ]
    beta = r.json()["data"][2]
    assert beta["family"] == "qwen3-reranker" and beta["max_model_len"] == 8192
    assert beta["default_instruction"] == INSTRUCTION
    assert "default_instruction" not in r.json()["data"][0]  # only where a model has one


def test_models_list_of_one_model_is_as_before(client):
    [card] = client.get("/v1/models").json()["data"]
    assert set(card) == {
        "id",
        "object",
        "created",
        "owned_by",
        "root",
        "parent",
        "permission",
        "max_model_len",
    }


# --- the registry itself --------------------------------------------------------------------------------
def test_registry_refuses_a_name_given_twice_and_an_empty_list():
    with pytest.raises(ValueError, match="'shared'"):
        ServedModels(
            [ServedModel("a", ALPHA, aliases=("shared",)), ServedModel("b", BETA, aliases=("shared",))]
        )
    with pytest.raises(ValueError, match="at least one"):
        ServedModels([])


def test_registry_resolves_names_aliases_and_ids():
    models = ServedModels([served(ALPHA, "a"), served(BETA, "b")])
    assert models.resolve(None) is models.default and models.default.pipeline is ALPHA
    assert models.resolve("b").pipeline is BETA and models.resolve("org/beta-reranker").pipeline is BETA
    with pytest.raises(UnknownModel) as failure:
        models.resolve("c")
    assert failure.value.name == "c"
    one = ServedModels([ServedModel("only", ALPHA)])
    assert one.resolve("anything").pipeline is ALPHA
    assert one.default.listed_names() == ["only"]  # described by its name when nothing else is known


def test_a_pipeline_is_described_from_what_it_loaded_else_its_manifest(tiny_model_repository):
    from gateway.repository import read_model_spec

    pipeline = FakePipeline("unused")
    missing = describe_pipeline(pipeline, None, "reranker")
    assert missing() == ModelDescription("reranker")  # no manifest at start-up: the folder's name
    spec = read_model_spec(tiny_model_repository, "reranker")  # what the composition root read once
    from_manifest = describe_pipeline(pipeline, spec, "reranker", family="bert-classifier")
    assert from_manifest() == ModelDescription("tiny-reranker", "bert-classifier", 512, None)
    stage = SimpleNamespace(spec=SimpleNamespace(model_id="loaded/model"), max_length=256)
    pipeline.models = SimpleNamespace(reranker=stage)
    assert describe_pipeline(pipeline, None, "reranker")() == ModelDescription("loaded/model", None, 256)
    assert from_manifest() == ModelDescription("loaded/model", "bert-classifier", 256, None)  # once loaded
    pipeline.models = None
    assert from_manifest().id == "loaded/model"  # what it loaded is remembered


def test_an_unknown_model_answer_lists_configured_names_as_well_as_ids():
    models = ServedModels(
        [
            ServedModel(
                "small", ALPHA, aliases=("fast",), describe=lambda: ModelDescription("org/alpha-reranker")
            ),
            ServedModel("big", BETA, describe=lambda: ModelDescription("org/beta-reranker")),
        ]
    )
    with pytest.raises(UnknownModel) as failure:
        models.resolve("medium")
    message = failure.value.message
    assert "served models: small, org/alpha-reranker, fast; big, org/beta-reranker" in message
    assert models.resolve("small").pipeline is ALPHA and models.resolve("org/beta-reranker").pipeline is BETA
