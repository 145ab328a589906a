"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`; off when RERANKER_API_KEYS is empty."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import Request

from gateway.api.deps import ApiKeysDep
from gateway.errors import Unauthorized


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


async def require_api_key(request: Request, keys: ApiKeysDep) -> None:
    """FastAPI dependency for every inference route. Keys are compared in constant time, never logged."""
    check_api_key(request, keys)


def check_api_key(request: Request, keys: Sequence[str]) -> None:
    """Unauthorized unless the request presents one of `keys` (none configured: every request passes)."""
    if not keys:
        return
    presented = _presented_key(request)
    if presented is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    candidate = presented.encode()
    matched = False
    for key in keys:  # no early exit: time does not depend on which key matched
        matched |= hmac.compare_digest(candidate, key.encode())
    if not matched:
        raise Unauthorized("invalid API key")
