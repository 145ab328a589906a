"""NVIDIA NIM text reranking: `POST /v1/ranking`.

Body `{model, query: {text}, passages: [{text}], truncate: "NONE" | "END"}` (NIM's default is NONE: an
over-long pair is an error) -> `{rankings: [{index, logit}], usage: {prompt_tokens, total_tokens}}`,
sorted by logit. Errors are problem details `{type, status, title, detail}`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from gateway.api.deps import InferenceDep
from gateway.api.dialects.common import apply_aliases, dialect_route_class
from gateway.api.errors import ErrorStyle, body_responses, merge_responses
from gateway.api.schemas import Usage, max_chunks_of, require_documents, top_n_of
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import RerankError


class NIMText(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str


class NIMRankingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: NIMText
    passages: list[NIMText]
    truncate: Literal["NONE", "END"] = "NONE"
    # Neighbours' fields, accepted leniently.
    top_n: int | None = None
    max_chunks_per_doc: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        data = apply_aliases(data, {"passages": ("documents", "texts"), "top_n": ("top_k",)})
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("query"), str):  # a bare string query
                data["query"] = {"text": data["query"]}
            if isinstance(data.get("passages"), list):
                data["passages"] = [{"text": p} if isinstance(p, str) else p for p in data["passages"]]
        return data

    @field_validator("truncate", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class NIMRanking(BaseModel):
    index: int
    logit: float


class NIMRankingResponse(BaseModel):
    rankings: list[NIMRanking]
    usage: Usage


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, NIM's error body."""

    type: str
    status: int
    title: str
    detail: str


def render_error(status: int, exc: RerankError) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"type": "about:blank", "status": status, "title": title, "detail": exc.message}


STYLE = ErrorStyle("nim", render_error, ProblemDetails)
NIMRoute = dialect_route_class(STYLE)


def to_query(req: NIMRankingRequest) -> RerankQuery:
    require_documents(req.passages, "passages must not be empty")
    return RerankQuery(
        query=req.query.text,
        documents=tuple(p.text for p in req.passages),
        top_n=top_n_of(req.top_n),
        max_chunks_per_doc=max_chunks_of(req.max_chunks_per_doc),
        truncate=req.truncate == "END",
    )


def render(outcome: RerankOutcome) -> NIMRankingResponse:
    return NIMRankingResponse(
        rankings=[NIMRanking(index=s.index, logit=s.logit) for s in outcome.results],
        usage=Usage.of(outcome.prompt_tokens),
    )


router = APIRouter(route_class=NIMRoute, tags=["nvidia-nim"])


ROUTE: dict[str, Any] = {
    "response_model": NIMRankingResponse,
    "responses": merge_responses(STYLE.responses(), body_responses()),
}


@router.post("/v1/ranking", summary="NVIDIA NIM ranking", **ROUTE)
async def ranking(body: NIMRankingRequest, inference: InferenceDep) -> NIMRankingResponse:
    [outcome] = await inference.run([to_query(body)], model=body.model)
    return render(outcome)


@router.post("/v1/retrieval/{model:path}/reranking", summary="NVIDIA hosted-API ranking path", **ROUTE)
async def hosted_ranking(model: str, body: NIMRankingRequest, inference: InferenceDep) -> NIMRankingResponse:
    """The path NVIDIA's hosted API serves each model on (litellm's `nvidia_nim/<model>` posts here; model
    names contain slashes). The body's `model` picks the served model, else the path's (with one model
    served, whatever they name)."""
    [outcome] = await inference.run([to_query(body)], model=body.model or model)
    return render(outcome)
