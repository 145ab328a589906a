"""The native API's `POST /rerank` (TEI's body, with `texts`, on the same path goes to the TEI dialect):
parse, run, render. Cohere v1 / Jina `POST /v1/rerank` lives with the other dialects in gateway/api/dialects."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from gateway.api.auth import require_api_key
from gateway.api.dialects import tei
from gateway.api.dialects.common import run_queries
from gateway.api.errors import NATIVE, body_responses, merge_responses
from gateway.api.schemas import RerankRequest, RerankResponse, native_aliases

# The native statuses and TEI's (an empty `texts` is TEI's 400), both on this one path.
RESPONSES = merge_responses(NATIVE.responses(), tei.STYLE.responses(), body_responses())

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post(
    "/rerank",
    response_model=RerankResponse | tei.TEIRerankResponse,
    responses=RESPONSES,
    tags=["rerank"],
    summary="Rerank (native API; TEI's API when the body has `texts`)",
    openapi_extra=tei.openapi_body(RerankRequest),
)
async def rerank(request: Request) -> RerankResponse | Response:
    """Rank `documents` by relevance to `query`; `top_k` keeps the best ones. A body with `texts`
    instead is text-embeddings-inference's and gets TEI's bare-array answer."""
    raw = await tei.json_body(request)
    if tei.is_tei_body(raw):
        return await tei.rerank_tei(request, raw)
    try:
        body = RerankRequest.model_validate(native_aliases(raw))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    [outcome] = await run_queries(request, [body.to_query()])
    return RerankResponse.render(body, outcome)
