"""Cohere rerank: v2 (`POST /v2/rerank`) and v1 / Jina / vLLM (`POST /v1/rerank`, which answers Mixedbread's
body, told apart by its `input` field, in Mixedbread's shape: gateway/api/dialects/mixedbread.py).

Field names are Cohere's (cohere SDK 5.x `RerankResponse`, `V2RerankResponse`, `ApiMeta`). The
responses also carry `model` and `usage` {prompt_tokens, total_tokens}, so Jina's and vLLM's clients,
which post the same body to the same paths, find what they read. Errors are Cohere's `{"message"}`
with 400 for a bad request (gateway/api/errors.py OVERRIDES["cohere"]).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.deps import Inference, InferenceDep
from gateway.api.dialects import mixedbread
from gateway.api.dialects.common import (
    apply_aliases,
    content_documents,
    dialect_route_class,
    document_text,
    json_body,
    new_id,
    openapi_body,
    parse_body,
    refuse_media,
    search_units,
    truncation_warnings,
)
from gateway.api.errors import ErrorStyle, body_responses, merge_responses
from gateway.api.schemas import (
    ChunkSpan,
    PipelineOptions,
    RankedItem,
    Usage,
    max_chunks_of,
    require_documents,
    top_n_of,
)
from gateway.domain import RerankOutcome, RerankQuery, ScoredDocument, Stage
from gateway.errors import RerankError

# Fields a neighbour dialect's client sends for the same thing.
ALIASES = {
    "documents": ("texts", "passages"),
    "top_n": ("top_k",),
    "return_documents": ("return_text",),
}

Document = str | dict[str, Any]


class CohereRerankRequest(PipelineOptions):
    """The body of `POST /v1/rerank` and `POST /v2/rerank` (a superset of both versions and Jina's),
    plus the gateway's per-request pipeline knobs (`keep`, `max_length`, `truncate`, ...)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: str
    documents: list[Document]
    top_n: int | None = None
    rank_fields: list[str] | None = None
    return_documents: bool | None = None
    max_tokens_per_doc: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        data = apply_aliases(data, ALIASES)
        if isinstance(data, dict) and isinstance(data.get("documents"), dict):
            data = {**data, "documents": content_documents(data["documents"])}  # vLLM's {"content": [...]}
        return data


class ApiVersion(BaseModel):
    version: Literal["1", "2"]


class BilledUnits(BaseModel):
    search_units: int


class MetaTokens(BaseModel):
    input_tokens: int
    output_tokens: int


class CohereMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: MetaTokens
    warnings: list[str] | None = Field(None, description="Truncated documents, ignored fields (if any).")


class CohereRerankResponse(BaseModel):
    """Cohere's `RerankResponse` / `V2RerankResponse`, plus `model`, `backend`, `stages` and `usage`."""

    id: str
    results: list[RankedItem]
    meta: CohereMeta
    model: str
    backend: str
    stages: list[Stage]
    usage: Usage


class CohereErrorBody(BaseModel):
    message: str


class JinaErrorBody(CohereErrorBody):
    detail: str = Field(..., description="The same message, where Jina's clients read it.")


def render_error(status: int, exc: RerankError) -> dict[str, Any]:
    return {"message": exc.message}


def render_v1_error(status: int, exc: RerankError) -> dict[str, Any]:
    """`/v1/rerank` is Jina's path too: LlamaIndex JinaRerank and Haystack JinaRanker raise `detail`."""
    return {"message": exc.message, "detail": exc.message}


STYLE = ErrorStyle("cohere", render_error, CohereErrorBody)
V1_STYLE = ErrorStyle("cohere", render_v1_error, JinaErrorBody)
CohereRoute = dialect_route_class(STYLE)


def to_query(req: CohereRerankRequest) -> RerankQuery:
    """The pipeline's query for one Cohere body (object documents ranked on `text` or `rank_fields`)."""
    texts = tuple(
        document_text(doc, req.rank_fields, where=f"documents[{i}]") for i, doc in enumerate(req.documents)
    )
    require_documents(texts, "documents must not be empty")
    return RerankQuery(
        query=req.query,
        documents=texts,
        top_n=top_n_of(req.top_n),
        keep=req.keep,
        ranked_input=req.ranked_input,
        max_length=req.max_length,
        max_chunks_per_doc=max_chunks_of(req.max_chunks_per_doc),
        overlap_tokens=req.overlap_tokens,
        truncate=req.truncate,
        truncation_direction=req.truncation_direction,
        instruction=req.instruction,
        calibrated=req.calibrated,
    )


def render(
    req: CohereRerankRequest,
    outcome: RerankOutcome,
    *,
    version: Literal["1", "2"],
    default_return_documents: bool,
) -> CohereRerankResponse:
    """Cohere's response, plus `model` and `usage` for Jina/vLLM clients and `chunk` for chunked hits.

    Optional fields (`meta.warnings`, a result's `document` and `chunk`) are set only where they apply: the
    routes answer with exclude_unset, so absent keys stay absent on the wire."""
    return_documents = default_return_documents if req.return_documents is None else req.return_documents
    results = [ranked_item(scored, req.documents, return_documents) for scored in outcome.results]
    warnings = truncation_warnings(outcome)
    if req.max_tokens_per_doc is not None:
        warnings.append(
            f"max_tokens_per_doc={req.max_tokens_per_doc} is not applied separately: documents are cut to "
            "the model's window beside the query"
        )
    meta = CohereMeta(
        api_version=ApiVersion(version=version),
        billed_units=BilledUnits(search_units=search_units(len(req.documents))),
        tokens=MetaTokens(input_tokens=outcome.prompt_tokens, output_tokens=0),
        **({"warnings": warnings} if warnings else {}),
    )
    return CohereRerankResponse(
        id=new_id(),
        results=results,
        meta=meta,
        model=outcome.model,
        backend=outcome.backend,
        stages=list(outcome.stages),
        usage=Usage.of(outcome.prompt_tokens),
    )


def ranked_item(scored: ScoredDocument, documents: list[Document], return_documents: bool) -> RankedItem:
    """One result: `document` only if asked for (a string comes back as `{"text"}`), `chunk` if chunked."""
    fields: dict[str, Any] = {"index": scored.index, "relevance_score": scored.relevance_score}
    if return_documents:
        original = documents[scored.index]
        fields["document"] = {"text": original} if isinstance(original, str) else original
    span = ChunkSpan.of(scored.chunk)
    if span is not None:
        fields["chunk"] = span
    return RankedItem(**fields)


async def rerank(
    inference: Inference,
    req: CohereRerankRequest,
    *,
    version: Literal["1", "2"],
    default_return_documents: bool,
) -> CohereRerankResponse:
    refuse_media(req.documents, where="documents", model=inference.model(req.model).description().id)
    [outcome] = await inference.run([to_query(req)], model=req.model)
    return render(req, outcome, version=version, default_return_documents=default_return_documents)


router = APIRouter(route_class=CohereRoute, tags=["cohere"])
v1_router = APIRouter(route_class=dialect_route_class(V1_STYLE), tags=["cohere"])
ROUTE: dict[str, Any] = {
    "response_model": CohereRerankResponse,
    "response_model_exclude_unset": True,
    "responses": merge_responses(STYLE.responses(), body_responses()),
}
V1_ROUTE: dict[str, Any] = {**ROUTE, "responses": merge_responses(V1_STYLE.responses(), body_responses())}


@router.post("/v2/rerank", summary="Cohere v2 rerank", **ROUTE)
async def rerank_v2(body: CohereRerankRequest, inference: InferenceDep) -> CohereRerankResponse:
    """Cohere v2: `{id, results: [{index, relevance_score}], meta}`; documents only if asked for."""
    return await rerank(inference, body, version="2", default_return_documents=False)


@v1_router.post(
    "/v1/rerank",
    summary="Cohere v1 / Jina / vLLM rerank (Mixedbread's body answered as Mixedbread)",
    **{
        **V1_ROUTE,
        "response_model": CohereRerankResponse | mixedbread.MixedbreadRerankResponse,
        "openapi_extra": openapi_body(CohereRerankRequest, mixedbread.MixedbreadRerankRequest),
    },
)
async def rerank_v1(
    request: Request, inference: InferenceDep
) -> CohereRerankResponse | mixedbread.MixedbreadRerankResponse:
    """Cohere v1 / Jina / vLLM: documents as strings or objects (or vLLM's `{"content": [text parts]}`),
    `rank_fields`, `return_documents` (default false, as Cohere's), `max_chunks_per_doc`. A body with `input`
    instead of `documents` is Mixedbread's and gets Mixedbread's answer."""
    body = await json_body(request)
    if mixedbread.is_mixedbread_body(body):
        return await mixedbread.rerank(inference, parse_body(mixedbread.MixedbreadRerankRequest, body))
    body = parse_body(CohereRerankRequest, body)
    return await rerank(inference, body, version="1", default_return_documents=False)
