"""The native API's `POST /rerank`. The same path takes text-embeddings-inference's body (`texts` instead of
`documents`): this route tells the two shapes apart and answers each in its own format, TEI's with the wire
parts of gateway/api/dialects/tei.py. Cohere v1 / Jina `POST /v1/rerank` lives with the other dialects in
gateway/api/dialects."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from gateway.api.auth import require_api_key
from gateway.api.deps import Inference, InferenceDep
from gateway.api.dialects import tei
from gateway.api.dialects.common import json_body, openapi_body
from gateway.api.errors import NATIVE, body_responses, merge_responses
from gateway.api.schemas import RerankRequest, RerankResponse, native_aliases
from gateway.errors import RerankError

# The native statuses and TEI's (an empty `texts` is TEI's 400), both on this one path.
RESPONSES = merge_responses(NATIVE.responses(), tei.STYLE.responses(), body_responses())

router = APIRouter(dependencies=[Depends(require_api_key)])


def is_tei_body(body: Any) -> bool:
    """TEI's body names its documents `texts`; the native shape names them `documents`."""
    return isinstance(body, dict) and "texts" in body and "documents" not in body


@router.post(
    "/rerank",
    response_model=RerankResponse | tei.TEIRerankResponse,
    response_model_exclude_unset=True,  # TEI's `text` only when asked for; the native fields are all set
    responses=RESPONSES,
    tags=["rerank"],
    summary="Rerank (native API; TEI's API when the body has `texts`)",
    openapi_extra=openapi_body(RerankRequest, tei.TEIRerankRequest),
)
async def rerank(
    request: Request, response: Response, inference: InferenceDep
) -> RerankResponse | tei.TEIRerankResponse | JSONResponse:
    """Rank `documents` by relevance to `query`; `top_k` keeps the best ones. A body with `texts`
    instead is text-embeddings-inference's and gets TEI's bare-array answer."""
    raw = await json_body(request)
    if is_tei_body(raw):
        try:
            return await rerank_tei(raw, response, inference)
        except RerankError as exc:
            return tei.STYLE.respond(exc)
    try:
        body = RerankRequest.model_validate(native_aliases(raw))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    [outcome] = await inference.run([body.to_query()], model=body.model)
    return RerankResponse.render(body, outcome)


async def rerank_tei(raw: Any, response: Response, inference: Inference) -> tei.TEIRerankResponse:
    """TEI's answer: the bare array, and usage in TEI's `x-compute-*` headers."""
    req = tei.parse(raw)
    [outcome] = await inference.run([tei.to_query(req)], model=req.model)
    response.headers.update(tei.usage_headers(req, outcome))
    return tei.render(req, outcome)
