"""Triton endpoint addresses as the settings and the Triton clients read them (no imports: both use it)."""

from __future__ import annotations

_SCHEMES = ("grpc://", "http://", "https://")


def strip_scheme(url: str) -> str:
    """`grpc://host:8001/` -> `host:8001`: Triton's clients take host:port."""
    for scheme in _SCHEMES:
        url = url.removeprefix(scheme)
    return url.rstrip("/")
