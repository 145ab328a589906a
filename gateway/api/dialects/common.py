"""What every dialect shares: running queries through admission control, lenient field aliases, the
served model's card, and a route class that renders errors in the dialect's own body (gateway/api/errors.py
decides the status).

A dialect is parsing and rendering only: wire body -> `RerankQuery` objects ->
`await app.state.admission.run(queries)` -> `RerankOutcome` objects -> wire body.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import metrics
from gateway.api.errors import ErrorStyle, validation_failed
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import ClientDisconnected, RerankError, Unauthorized, ValidationFailed
from gateway.repository import read_model_spec


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


DISCONNECT_POLL_S = 0.25  # how often a running request checks that its client is still there


async def run_queries(request: Request, queries: Sequence[RerankQuery]) -> list[RerankOutcome]:
    """All inference goes through admission control: limits, admission by queued work, the timeout.

    While the work runs, the client's connection is watched (as vLLM does): when the client has gone (its
    own timeout, a closed tab), the work is cancelled, which drops its queued batches, and counted in
    `reranker_cancelled_requests_total`."""
    admission = request.app.state.admission
    request.state.documents = sum(len(q.documents) for q in queries)  # for the access log
    work = asyncio.ensure_future(admission.run(list(queries)))
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                work.cancel()
                metrics.CANCELLED.labels("client_disconnected").inc()
                raise ClientDisconnected("the client closed the connection; the request's work was stopped")
    finally:
        if not work.done():
            work.cancel()  # this handler was cancelled itself (server shutdown)
    outcomes = list(work.result())
    request.state.outcomes = outcomes  # the timing headers are written from them
    return outcomes


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


@dataclass(frozen=True)
class ServedModel:
    """What `/v1/models` lists: the cross-encoder's id (the manifest's `model_id`) and window."""

    id: str
    max_model_len: int | None
    created: int


def served_model(request: Request) -> ServedModel:
    """The served cross-encoder: the loaded one, else the repository manifest's, else the configured name."""
    state = request.app.state
    cached = getattr(state, "served_model", None)
    if isinstance(cached, ServedModel):
        return cached
    settings = state.settings
    reranker = getattr(state, "reranker", None)
    models = getattr(reranker, "models", None)
    if models is not None:
        served = ServedModel(models.reranker.spec.model_id, models.reranker.max_length, int(time.time()))
    else:
        try:
            spec = read_model_spec(Path(settings.model_repository), settings.model_name)
        except RerankError:
            # Nothing loaded and no manifest: answer with the configured name, and do not remember it.
            return ServedModel(settings.model_name, None, int(time.time()))
        served = ServedModel(spec.model_id, spec.max_length, int(time.time()))
    state.served_model = served
    return served
