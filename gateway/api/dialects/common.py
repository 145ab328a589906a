"""What every dialect shares: running queries through the executor, lenient field aliases, and a route
class that renders errors in the dialect's own body and status conventions.

A dialect is parsing and rendering only: wire body -> `RerankQuery` objects ->
`await app.state.executor.run(queries)` -> `RerankOutcome` objects -> wire body.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import (
    Overloaded,
    RerankError,
    Unauthorized,
    ValidationFailed,
)
from gateway.repository import read_model_spec

log = logging.getLogger(__name__)


class ErrorRenderer(Protocol):
    """Builds a dialect's error body from the gateway's status, error type and message."""

    def __call__(self, status: int, error_type: str, message: str) -> Any: ...


def gateway_status(exc: RerankError) -> int:
    """Status code the gateway's one error table (gateway/api/app.py) gives `exc`."""
    from gateway.api.app import status_of  # at call time: app.py imports this package

    return status_of(exc)


def error_headers(exc: RerankError) -> dict[str, str]:
    if isinstance(exc, Overloaded):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def describe_validation(exc: RequestValidationError) -> str:
    """One line per pydantic error, located by field path (without the leading `body`)."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request body"


def dialect_route_class(
    render: ErrorRenderer, *, status_overrides: Mapping[str, int] | None = None
) -> type[APIRoute]:
    """An APIRoute whose handler answers errors with `render(status, error_type, message)`.

    Catches what FastAPI raises while parsing the body (RequestValidationError), typed gateway errors
    (the executor's LimitExceeded, Overloaded, ...), and HTTPExceptions from dependencies (API keys).
    `status_overrides` maps an error_type to the status code the original server uses for it
    (Cohere and vLLM answer 400 where TEI answers 422). Anything else propagates to the app's
    catch-all handler, which logs it and answers a generic 500.
    """
    overrides = dict(status_overrides or {})

    def respond(exc: RerankError) -> JSONResponse:
        status = overrides.get(exc.error_type) or gateway_status(exc)
        return JSONResponse(render(status, exc.error_type, exc.message), status, headers=error_headers(exc))

    class DialectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return respond(ValidationFailed(describe_validation(exc)))
                except RerankError as exc:
                    return respond(exc)
                except StarletteHTTPException as exc:
                    error_type = "unauthorized" if exc.status_code == 401 else "http"
                    body = render(exc.status_code, error_type, str(exc.detail))
                    return JSONResponse(body, exc.status_code, headers=dict(exc.headers or {}))

            return handle

    return DialectRoute


async def run_queries(request: Request, queries: Sequence[RerankQuery]) -> list[RerankOutcome]:
    """All inference goes through the executor: limits, admission control and the timeout live there."""
    executor = request.app.state.executor
    request.state.documents = sum(len(q.documents) for q in queries)  # for the access log
    outcomes = await executor.run(list(queries))
    return list(outcomes)


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


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def check_top_n(top_n: int | None, *, field: str = "top_n") -> int | None:
    """None or 0 mean every document (vLLM's convention for 0); negative is an error."""
    if top_n is None or top_n == 0:
        return None
    if top_n < 0:
        raise ValidationFailed(f"{field} must be >= 0, got {top_n}")
    return top_n


def check_max_chunks(value: int | None, *, field: str = "max_chunks_per_doc") -> int | None:
    if value is not None and value < 1:
        raise ValidationFailed(f"{field} must be >= 1, got {value}")
    return value


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


def chunk_span(chunk: tuple[int, int] | None) -> dict[str, int] | None:
    if chunk is None:
        return None
    return {"start": chunk[0], "end": chunk[1]}


@dataclass(frozen=True)
class ServedModel:
    """What `/v1/models` lists: the cross-encoder's id (the manifest's `model_id`) and window."""

    id: str
    max_model_len: int | None
    created: int


def served_model(request: Request) -> ServedModel:
    """The served cross-encoder, from the pipeline's `info()`, else from the repository manifest."""
    state = request.app.state
    cached = getattr(state, "dialects_served_model", None)
    if isinstance(cached, ServedModel):
        return cached
    model_id: str | None = None
    max_len: int | None = None
    reranker = getattr(state, "reranker", None)
    info = _call_info(reranker)
    stage = _find_stage(info)
    if stage is not None:
        model_id = str(stage["model_id"])
        max_len = _int_or_none(stage.get("max_length"))
    settings = getattr(state, "settings", None) or getattr(state, "dialects_settings", None)
    if model_id is None and settings is not None:
        try:
            spec = read_model_spec(Path(settings.model_repository), settings.model_name)
        except RerankError:
            spec = None
        if spec is not None:
            model_id, max_len = spec.model_id, spec.max_length
    if model_id is None:
        # Nothing loaded and no manifest: answer with the configured name, and do not remember it.
        return ServedModel(getattr(settings, "model_name", "reranker"), None, int(time.time()))
    served = ServedModel(model_id, max_len, int(time.time()))
    state.dialects_served_model = served
    return served


def _call_info(reranker: Any) -> Any:
    info = getattr(reranker, "info", None)
    if not callable(info):
        return None
    try:
        return info()
    except RerankError:
        return None


def _find_stage(info: Any) -> dict[str, Any] | None:
    """The cross-encoder's description in `info()`: the first mapping with a `model_id` whose role is
    not the prefilter's."""
    if isinstance(info, dict):
        if "model_id" in info and info.get("role") != "prefilter":
            return info
        preferred = [info[k] for k in ("reranker", "models", "stages") if k in info]
        for value in [*preferred, *info.values()]:
            found = _find_stage(value)
            if found is not None:
                return found
    elif isinstance(info, list | tuple):
        for value in info:
            found = _find_stage(value)
            if found is not None:
                return found
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def seed_aliases(body: Any) -> Any:
    """The seed shape under a neighbour's name: vLLM's `/rerank` sends `top_n` (0: every document)."""
    if not isinstance(body, dict) or "top_n" not in body or body.get("top_k") is not None:
        return body
    out = {k: v for k, v in body.items() if k != "top_n"}
    if body["top_n"]:
        out["top_k"] = body["top_n"]
    return out
