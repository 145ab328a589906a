"""Typed errors raised below the HTTP layer. Only `gateway/api` maps them to status codes."""

from __future__ import annotations


class RerankError(Exception):
    """Base class: `error_type` is the stable machine-readable name a client sees."""

    error_type = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(RerankError):
    """The request is well-formed JSON but asks for something invalid (empty query, bad top_n...)."""

    error_type = "validation"


class EmptyInput(ValidationFailed):
    """The request names no documents. A validation error on the wire (TEI's body calls it "Empty", and
    answers it 400: gateway/api/errors.py OVERRIDES)."""


class InputTooLong(ValidationFailed):
    """A query or document longer than a limit while the request turned truncation off; the message names
    the input (the document's index in the request) and the limit. One status on every route."""

    def __init__(self, message: str, *, limit: str, value: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value


class UnknownModel(RerankError):
    """The request names a model this service does not serve (only asked when several are served); the
    message lists the served names. 404 by default, as vLLM answers (gateway/api/errors.py)."""

    error_type = "model_not_found"

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class LimitExceeded(RerankError):
    """A configured limit was crossed; the message names the limit and its value."""

    error_type = "limit_exceeded"

    def __init__(self, message: str, *, limit: str, value: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value


class Overloaded(RerankError):
    """More in-flight work than the server admits; the client should retry after `retry_after` s."""

    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientDisconnected(RerankError):
    """The client closed the connection before its answer was ready; its work was stopped."""

    error_type = "client_closed"


class RequestTimedOut(RerankError):
    error_type = "timeout"


class Unauthorized(RerankError):
    error_type = "unauthorized"


class NotReady(RerankError):
    """Models are not loaded (yet) or no backend can score."""

    error_type = "unhealthy"


class BackendFailed(RerankError):
    """A scoring backend failed and no fallback could answer.

    `reason` is short and machine-readable (unavailable, timeout, error, mismatch, cuda_oom...): it labels
    the fallback metric and the log line; the client only sees the message.
    """

    error_type = "backend"

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class ModelRepositoryError(RerankError):
    """The model repository is missing, incomplete or does not match what the gateway expects."""

    error_type = "model_repository"
