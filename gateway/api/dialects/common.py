"""What every dialect shares: lenient field aliases, document texts, a body read by hand (to dispatch on its
shape), and a route class that renders errors in the dialect's own body (gateway/api/errors.py decides the
status).

A dialect is parsing and rendering only: wire body -> `RerankQuery` objects ->
`await inference.run(queries, model=body.model)` (gateway/api/deps.py: the named model, through admission
control) -> `RerankOutcome` objects -> its typed response model.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api.errors import ErrorStyle, validation_failed, validation_message
from gateway.domain import RerankOutcome
from gateway.errors import RerankError, Unauthorized, ValidationFailed


def dialect_route_class(style: ErrorStyle) -> type[APIRoute]:
    """An APIRoute whose handler answers errors in `style`'s body and with its status overrides.

    Catches what FastAPI raises while parsing the body (RequestValidationError), typed gateway errors
    (admission control's LimitExceeded, Overloaded, ...), and HTTPExceptions from dependencies. Anything
    else propagates to the app's catch-all handler, which logs it and answers a generic 500.
    """

    class DialectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return style.respond(validation_failed(exc))
                except RerankError as exc:
                    return style.respond(exc)
                except StarletteHTTPException as exc:
                    failure = (
                        Unauthorized(str(exc.detail))
                        if exc.status_code == 401
                        else RerankError(str(exc.detail))
                    )
                    body = style.render(exc.status_code, failure)
                    return JSONResponse(body, exc.status_code, headers=dict(exc.headers or {}))

            return handle

    return DialectRoute


def apply_aliases(data: Any, aliases: Mapping[str, Iterable[str]]) -> Any:
    """Copy a neighbour dialect's field name onto ours when ours is absent (`top_k` -> `top_n`).

    Returns a new dict; the caller's body is left as it was.
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for canonical, names in aliases.items():
        if out.get(canonical) is not None:
            continue
        for name in names:
            if out.get(name) is not None:
                out[canonical] = out[name]
                break
    return out


def document_text(document: Any, rank_fields: Sequence[str] | None, *, where: str) -> str:
    """The text a document is ranked on: a string as is; an object's `text`, or its `rank_fields`.

    With `rank_fields` the fields are joined as `key: value` lines in the order given (Cohere v1).
    """
    if isinstance(document, str):
        return document
    if not isinstance(document, dict):
        raise ValidationFailed(f"{where}: a document must be a string or an object")
    if rank_fields:
        lines = [f"{key}: {_scalar(document[key])}" for key in rank_fields if key in document]
        if not lines:
            raise ValidationFailed(f"{where}: none of rank_fields {list(rank_fields)} is in the document")
        return "\n".join(lines)
    text = document.get("text")
    if not isinstance(text, str):
        raise ValidationFailed(
            f"{where}: an object document needs a string `text` field (or use rank_fields)"
        )
    return text


# vLLM's multimodal documents (vllm/entrypoints/pooling/score/protocol.py `RerankRequest.documents:
# list[str] | ScoreMultiModalParam`, `ScoreMultiModalParam = {"content": [ScoreContentPartParam, ...]}`,
# each part one document; a text part is `{"type": "text", "text": ...}`).
TEXT_PART = "text"


def content_documents(value: Any) -> Any:
    """`{"content": [part, ...]}` as the list of its parts, each a text part's text; other parts (images,
    video, audio) are kept as they are, for `refuse_media` to name. Anything else is returned unchanged."""
    if not isinstance(value, dict) or set(value) != {"content"} or not isinstance(value["content"], list):
        return value
    return [
        part["text"]
        if isinstance(part, dict) and part.get("type") == TEXT_PART and isinstance(part.get("text"), str)
        else part
        for part in value["content"]
    ]


def refuse_media(documents: Sequence[Any], *, where: str, model: str) -> None:
    """A content part that is not text (`image_url`, `image_embeds`, `video_url`, ...) is a 400 naming the
    text-only model that was asked to score it."""
    for i, doc in enumerate(documents):
        if isinstance(doc, dict) and isinstance(doc.get("type"), str) and doc["type"] != TEXT_PART:
            raise ValidationFailed(
                f"{where}[{i}] is an {doc['type']!r} part, but the model {model!r} is text-only: "
                'send text parts ({"type": "text", "text": ...}) or strings'
            )


def openapi_body(*models: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body a route reads itself (to dispatch on its shape) as any of
    `models` (inlined, self-contained)."""
    schemas = [_inline(m.model_json_schema()) for m in models]
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": schemas}}}}
    }


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def new_id(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4()}"


def truncation_warnings(outcome: RerankOutcome) -> list[str]:
    """`meta.warnings`: the pipeline's own warnings, plus a count of truncated documents if it gave none."""
    warnings = list(outcome.warnings)
    n = outcome.truncated_documents
    if n and not any("truncat" in w.lower() for w in warnings):
        noun = "document was" if n == 1 else "documents were"
        warnings.append(
            f"{n} {noun} longer than the model's window and truncated; "
            "raise max_chunks_per_doc to score every part"
        )
    return warnings


def search_units(documents: int) -> int:
    """Cohere's billing unit: one query against up to 100 documents."""
    return max(1, math.ceil(documents / 100))


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: Any) -> M:
    """A body a route read itself (to dispatch on its shape) as `model`; a bad one is a ValidationFailed in
    the one validation-message format."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(validation_message(exc.errors())) from None


async def json_body(request: Request) -> Any:
    """The decoded body of a route that reads it itself (to dispatch on its shape)."""
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except ValueError as exc:
        error = {"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {exc}", "input": None}
        raise RequestValidationError([error]) from None
