"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`; off when RERANKER_API_KEYS is empty."""

from __future__ import annotations

import hmac

from fastapi import Request

from gateway.errors import Unauthorized


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


async def require_api_key(request: Request) -> None:
    """FastAPI dependency for every inference route. Keys are compared in constant time, never logged."""
    keys: list[str] = request.app.state.settings.api_keys
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
