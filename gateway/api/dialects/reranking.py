"""The `.../reranking` paths: llama.cpp's `/v1/reranking` and `/reranking` (Jina's body), and `{base}/reranking`
as RAGFlow's NVIDIA provider builds it from its base URL (NIM's body).

The body decides: NIM's (`query: {text}` or `passages`) gets NIM's answer and problem-details errors,
anything else Jina's, as `/v1/rerank` answers it (`message` and `detail`). The API key is checked here, so a
401 comes in the same body as every other error of the request.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from gateway.api.auth import check_api_key
from gateway.api.deps import ApiKeysDep, Inference, InferenceDep
from gateway.api.dialects import cohere, nim
from gateway.api.dialects.common import json_body
from gateway.api.errors import (
    ErrorStyle,
    body_responses,
    merge_responses,
    validation_failed,
    validation_message,
)
from gateway.errors import RerankError, ValidationFailed

M = TypeVar("M", bound=BaseModel)

Answer = cohere.CohereRerankResponse | nim.NIMRankingResponse

router = APIRouter(tags=["reranking"])
ROUTE: dict[str, Any] = {
    "response_model": Answer,
    "response_model_exclude_unset": True,
    "responses": merge_responses(cohere.V1_STYLE.responses(), nim.STYLE.responses(), body_responses()),
}


def is_nim_body(body: Any) -> bool:
    return isinstance(body, dict) and ("passages" in body or isinstance(body.get("query"), dict))


def _parse(model: type[M], body: Any) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(validation_message(exc.errors())) from None


async def answer(request: Request, inference: Inference, keys: tuple[str, ...]) -> Answer | JSONResponse:
    """NIM's body gets NIM's answer, anything else Jina's; errors (the API key's too) in the same dialect."""
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
            req = _parse(nim.NIMRankingRequest, body)
            [outcome] = await inference.run([nim.to_query(req)], model=req.model)
            return nim.render(outcome)
        jina = _parse(cohere.CohereRerankRequest, body)
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
