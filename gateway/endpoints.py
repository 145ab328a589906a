"""Triton endpoint addresses as people write them (`grpc://triton:8001/`, `a:8001, b:8001`): one reader for
the settings and the Triton client. Imports nothing of the gateway."""

from __future__ import annotations

_SCHEMES = ("grpc://", "http://", "https://")


def strip_scheme(url: str) -> str:
    """`grpc://host:8001/` -> `host:8001`: Triton's clients take host:port."""
    for scheme in _SCHEMES:
        url = url.removeprefix(scheme)
    return url.rstrip("/")


def parse_endpoints(value: str) -> list[str]:
    """`a:8001, grpc://b:8001` -> ["a:8001", "b:8001"]; a missing or bad port raises ValueError."""
    endpoints = []
    for raw in value.split(","):
        entry = strip_scheme(raw.strip())
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Triton endpoint {raw.strip()!r} must be host:port (e.g. triton:8001)")
        if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
            raise ValueError(f"Triton endpoint {raw.strip()!r}: write an IPv6 address as [addr]:port")
        if entry not in endpoints:
            endpoints.append(entry)
    if not endpoints:
        raise ValueError("no Triton endpoint given (leave it unset to turn Triton off)")
    return endpoints
