"""The `.../reranking` paths: llama.cpp's `/v1/reranking` and `/reranking` (Jina's body), Mixedbread's
`/v1/reranking` (its body: `input` instead of `documents`), and `{base}/reranking` as RAGFlow's NVIDIA provider
builds it from its base URL (NIM's body).

The body decides: NIM's (`query: {text}` or `passages`) gets NIM's answer and problem-details errors,
Mixedbread's (`input`) Mixedbread's answer, anything else Jina's, as `/v1/rerank` answers it (errors of all
but NIM's in `/v1/rerank`'s body: `message` and `detail`). The API key is checked here, so a
401 comes in the same body as every other error of the request.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway.api.auth import check_api_key
from gateway.api.deps import ApiKeysDep, Inference, InferenceDep
from gateway.api.dialects import cohere, mixedbread, nim
from gateway.api.dialects.common import json_body, openapi_body, parse_body
from gateway.api.errors import ErrorStyle, body_responses, merge_responses, validation_failed
from gateway.errors import RerankError

Answer = cohere.CohereRerankResponse | nim.NIMRankingResponse | mixedbread.MixedbreadRerankResponse

router = APIRouter(tags=["reranking"])
ROUTE: dict[str, Any] = {
    "response_model": Answer,
    "response_model_exclude_unset": True,
    "responses": merge_responses(cohere.V1_STYLE.responses(), nim.STYLE.responses(), body_responses()),
    "openapi_extra": openapi_body(
        cohere.CohereRerankRequest, nim.NIMRankingRequest, mixedbread.MixedbreadRerankRequest
    ),
}


def is_nim_body(body: Any) -> bool:
    return isinstance(body, dict) and ("passages" in body or isinstance(body.get("query"), dict))


async def answer(request: Request, inference: Inference, keys: tuple[str, ...]) -> Answer | JSONResponse:
    """NIM's body gets NIM's answer, Mixedbread's Mixedbread's, anything else Jina's; errors (the API key's
    too) in the same dialect."""
    style: ErrorStyle = cohere.V1_STYLE
    try:
        try:
            body = await json_body(request)
        except RequestValidationError as exc:
            raise validation_failed(exc) from None
        if is_nim_body(body):
            style = nim.STYLE
        check_api_key(request, keys)
        if style is nim.STYLE:
            req = parse_body(nim.NIMRankingRequest, body)
            [outcome] = await inference.run([nim.to_query(req)], model=req.model)
            return nim.render(outcome)
        if mixedbread.is_mixedbread_body(body):
            return await mixedbread.rerank(inference, parse_body(mixedbread.MixedbreadRerankRequest, body))
        jina = parse_body(cohere.CohereRerankRequest, body)
        return await cohere.rerank(inference, jina, version="1", default_return_documents=False)
    except RerankError as exc:
        return style.respond(exc)


@router.post("/reranking", summary="llama.cpp / Jina reranking (NIM's body answered as NIM)", **ROUTE)
async def reranking(request: Request, inference: InferenceDep, keys: ApiKeysDep) -> Answer | JSONResponse:
    return await answer(request, inference, keys)


@router.post("/v1/reranking", summary="llama.cpp / Jina reranking (NIM's body answered as NIM)", **ROUTE)
async def v1_reranking(request: Request, inference: InferenceDep, keys: ApiKeysDep) -> Answer | JSONResponse:
    return await answer(request, inference, keys)


@router.post("/{base:path}/reranking", summary="`{base}/reranking` (RAGFlow's NVIDIA provider)", **ROUTE)
async def any_reranking(
    request: Request, base: str, inference: InferenceDep, keys: ApiKeysDep
) -> Answer | JSONResponse:
    return await answer(request, inference, keys)
