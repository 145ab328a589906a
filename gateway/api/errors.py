"""How the HTTP layer answers a failure: the one place that knows status codes.

Modelled on text-embeddings-inference's single `ErrorType -> StatusCode` mapping: one table from the
domain's error types (gateway/errors.py) to a status, each dialect's differences as data (Cohere and vLLM
answer 400 where we answer 422/413; TEI answers an empty request 400 and a crossed limit 422), one
`Retry-After` rule, one validation-message format, and the OpenAPI `responses` of every route generated
from the same table, so the documentation cannot drift from what a route answers.

A dialect only decides what its error *body* looks like (`ErrorStyle.render`) and which model documents it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from gateway import errors

# Domain error type -> HTTP status (TEI: Validation 422, Empty 400, Overloaded 429, Backend 424,
# Unhealthy 503). The most specific class in an exception's MRO wins.
STATUS: dict[type[errors.RerankError], int] = {
    errors.ValidationFailed: 422,
    errors.EmptyInput: 422,
    errors.InputTooLong: 413,
    errors.LimitExceeded: 413,
    errors.Overloaded: 429,
    errors.ClientDisconnected: 499,
    errors.RequestTimedOut: 504,
    errors.Unauthorized: 401,
    errors.UnknownModel: 404,
    errors.NotReady: 503,
    errors.ModelRepositoryError: 503,
    errors.BackendFailed: 424,
}
INTERNAL = 500  # anything that is not a RerankError: logged with its traceback, answered generically
# Answered with the table's status on every route, whatever a dialect's overrides say: an over-long input
# with truncation off was a 400 on one route, a 413 and a 422 on others.
UNIFORM: frozenset[type[errors.RerankError]] = frozenset({errors.InputTooLong, errors.ClientDisconnected})

# What each status means to a client, for the OpenAPI descriptions.
DESCRIPTIONS: dict[type[errors.RerankError], str] = {
    errors.ValidationFailed: "Malformed or invalid request; the message names the field",
    errors.EmptyInput: "The request names no documents",
    errors.InputTooLong: "With truncation off, a query or document is over a length limit; the message "
    "names the document's index and the limit",
    errors.LimitExceeded: "A limit was exceeded (documents, pairs); the message names it",
    errors.Overloaded: "The queued work could not finish within the request timeout; retry after Retry-After "
    "seconds",
    errors.ClientDisconnected: "The client closed the connection; its work was stopped (nothing is sent)",
    errors.RequestTimedOut: "The request ran longer than the request timeout",
    errors.Unauthorized: "Missing or invalid API key",
    errors.UnknownModel: "Several models are served and `model` names none of them; the message lists them",
    errors.NotReady: "Models not loaded or no backend can score",
    errors.ModelRepositoryError: "The model repository is missing or does not match",
    errors.BackendFailed: "The scoring backend failed and no fallback could answer",
}

# The errors every inference route can raise: the pipeline's and admission control's, and the API key's.
INFERENCE_ERRORS: tuple[type[errors.RerankError], ...] = tuple(STATUS)
# The request-body limit is enforced by the middleware, before any dialect sees the request: it always
# answers 413 in the gateway's own body.
BODY_TOO_LARGE = 413
BODY_TOO_LARGE_DESCRIPTION = "The request body is larger than max_body_bytes"

# Per dialect: the statuses its original server uses where they differ from ours.
# An unknown `model` is 404 by default: vLLM answers NotFoundError "The model `x` does not exist", Cohere's API
# 404 "model 'x' not found", NIM's OpenAI-style containers 404. infinity, whose `/rerank` body is the native
# one, answers 400 listing its loaded models. TEI serves one model and has no `model` field; a name that picks
# nothing is a Validation error there (422). (Jina's API answers 422 on the path it shares with Cohere v1,
# which keeps Cohere's 404.)
OVERRIDES: dict[str, dict[type[errors.RerankError], int]] = {
    "native": {errors.UnknownModel: 400},
    "batch": {},
    "nim": {},
    # Cohere's SDK raises BadRequestError (400) for anything malformed or out of range; Jina and vLLM too.
    "cohere": {errors.ValidationFailed: 400, errors.LimitExceeded: 400},
    "vllm": {errors.ValidationFailed: 400, errors.LimitExceeded: 400},
    # TEI (router/src/http/server.rs): Empty is 400, a crossed limit is a Validation error (422).
    "tei": {errors.EmptyInput: 400, errors.LimitExceeded: 422, errors.UnknownModel: 422},
}


def status_of(exc: errors.RerankError | type[errors.RerankError], dialect: str = "native") -> int:
    """The status `dialect` answers `exc` with: its override for the nearest class, else the table's."""
    cls = exc if isinstance(exc, type) else type(exc)
    for base in cls.__mro__:
        if base in UNIFORM:
            return STATUS[base]
    overrides = OVERRIDES[dialect]
    for table in (overrides, STATUS):
        for base in cls.__mro__:
            if base in table:
                return table[base]
    return INTERNAL


def retry_after(seconds: float) -> str:
    """`Retry-After` in whole seconds: rounded up (never sooner than the estimate), at least 1."""
    return str(max(1, math.ceil(seconds)))


def error_headers(exc: errors.RerankError) -> dict[str, str]:
    if isinstance(exc, errors.Overloaded):
        return {"Retry-After": retry_after(exc.retry_after)}
    if isinstance(exc, errors.Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def validation_message(problems: Sequence[Mapping[str, Any]], *, limit: int = 5) -> str:
    """One format for every pydantic problem: `invalid request: field.path: message; ...`."""
    parts = []
    for err in list(problems)[:limit]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + ("; ".join(parts) or "body: invalid")


def validation_failed(exc: RequestValidationError) -> errors.ValidationFailed:
    return errors.ValidationFailed(validation_message(exc.errors()))


class ErrorBody(BaseModel):
    """The native API's error body (TEI's and the batch route's have the same two fields)."""

    model_config = ConfigDict(extra="allow")  # a LimitExceeded adds `limit` and `value`

    error: str
    error_type: str


def native_error(status: int, exc: errors.RerankError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": exc.message, "error_type": exc.error_type}
    if isinstance(exc, errors.LimitExceeded | errors.InputTooLong):
        body.update(limit=exc.limit, value=exc.value)
    return body


ErrorRenderer = Callable[[int, errors.RerankError], Any]
"""Builds a dialect's error body from the status and the domain error."""


@dataclass(frozen=True)
class ErrorStyle:
    """One dialect's errors: its status overrides (OVERRIDES[dialect]), body and body model."""

    dialect: str
    render: ErrorRenderer
    body: type[BaseModel]
    extra_statuses: Mapping[int, str] = field(default_factory=dict)

    def status(self, exc: errors.RerankError) -> int:
        return status_of(exc, self.dialect)

    def respond(self, exc: errors.RerankError) -> JSONResponse:
        status = self.status(exc)
        return JSONResponse(self.render(status, exc), status, headers=error_headers(exc))

    def responses(
        self, raises: Iterable[type[errors.RerankError]] = INFERENCE_ERRORS, *, internal: bool = True
    ) -> dict[int | str, dict[str, Any]]:
        """OpenAPI `responses` for a route that can raise `raises`: one entry per status they map to."""
        described: dict[int, list[str]] = {}
        for cls in raises:
            described.setdefault(status_of(cls, self.dialect), []).append(DESCRIPTIONS[cls])
        for status, text in self.extra_statuses.items():
            described.setdefault(status, []).append(text)
        if internal:
            described.setdefault(INTERNAL, []).append("Unexpected server error (logged; no details sent)")
        return {
            status: {"model": self.body, "description": "; ".join(dict.fromkeys(texts))}
            for status, texts in sorted(described.items())
        }


def merge_responses(*tables: Mapping[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """Responses of a route that speaks several dialects (the native `/rerank` also answers TEI's body)."""
    out: dict[int | str, dict[str, Any]] = {}
    for table in tables:
        for status, entry in table.items():
            if status not in out:
                out[status] = dict(entry)
            elif entry["description"] not in out[status]["description"]:
                out[status]["description"] += "; " + entry["description"]
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


def body_responses() -> dict[int | str, dict[str, Any]]:
    """The middleware's 413 for a route that takes a body: answered before any dialect sees the request,
    so always in the native body."""
    return {BODY_TOO_LARGE: {"model": ErrorBody, "description": BODY_TOO_LARGE_DESCRIPTION}}


def drop_default_422(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents its own 422 (HTTPValidationError) on every route with a body. No route sends that
    body (validation errors are rendered by the dialect), and a dialect that answers 400 never sends a 422:
    keep only the 422s the table declared."""
    default = "#/components/schemas/HTTPValidationError"
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == default:
                del responses["422"]
    if default not in str(schema.get("paths")):
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema


NATIVE = ErrorStyle("native", native_error, ErrorBody)
