"""The seed's `POST /rerank` and the Cohere v1 / Jina `POST /v1/rerank`: parse, run, render."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from gateway.api.auth import require_api_key
from gateway.api.executor import RerankExecutor
from gateway.api.schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    ErrorBody,
    RerankRequest,
    RerankResponse,
)

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "Missing or invalid API key",
        413: "A limit was exceeded (body size, documents, characters); the message names it",
        422: "Malformed or invalid request; the message names the field",
        429: "Too many requests in flight; retry after Retry-After seconds",
        503: "Models not loaded or no backend can score",
        504: "The request ran longer than the request timeout",
    }.items()
}

router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


def executor_of(request: Request) -> RerankExecutor:
    executor: RerankExecutor = request.app.state.executor
    return executor


@router.post("/rerank", response_model=RerankResponse, tags=["rerank"], summary="Rerank (seed API)")
async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
    """Rank `documents` by relevance to `query`; `top_k` keeps the best ones."""
    request.state.documents = len(body.documents)
    [outcome] = await executor_of(request).run([body.to_query()])
    return RerankResponse.render(body, outcome)


@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    tags=["rerank"],
    summary="Rerank (Cohere v1 / Jina)",
)
async def rerank_v1(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
    """Cohere v1 / Jina rerank: `top_n`, `return_documents`; results sorted by `relevance_score`."""
    request.state.documents = len(body.documents)
    [outcome] = await executor_of(request).run([body.to_query()])
    return CohereRerankResponse.render(body, outcome)
