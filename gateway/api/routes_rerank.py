"""The seed's `POST /rerank` (TEI's body, with `texts`, on the same path goes to the TEI dialect): parse,
run, render. Cohere v1 / Jina `POST /v1/rerank` lives with the other dialects in gateway/api/dialects."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from gateway.api.auth import require_api_key
from gateway.api.dialects import tei
from gateway.api.dialects.common import seed_aliases
from gateway.api.executor import RerankExecutor
from gateway.api.schemas import ErrorBody, RerankRequest, RerankResponse

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


@router.post(
    "/rerank",
    response_model=RerankResponse,
    tags=["rerank"],
    summary="Rerank (seed API; TEI's API when the body has `texts`)",
    openapi_extra=tei.openapi_body(RerankRequest),
)
async def rerank(request: Request) -> RerankResponse | Response:
    """Rank `documents` by relevance to `query`; `top_k` keeps the best ones. A body with `texts`
    instead is text-embeddings-inference's and gets TEI's bare-array answer."""
    raw = await tei.json_body(request)
    if tei.is_tei_body(raw):
        return await tei.rerank_tei(request, raw)
    try:
        body = RerankRequest.model_validate(seed_aliases(raw))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    request.state.documents = len(body.documents)
    [outcome] = await executor_of(request).run([body.to_query()])
    return RerankResponse.render(body, outcome)
