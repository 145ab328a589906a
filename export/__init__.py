"""`make export`: Hugging Face cross-encoders -> a validated Triton model repository.

Kept import-light (no torch here) so that `export.triton_repo` and friends load without the export extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build_repository"]


def build_repository(
    model: str,
    prefilter: str | None,
    output: Path,
    *,
    name: str = "reranker",
    prefilter_name: str = "prefilter",
    max_length: int | None = None,
    quiet: bool = False,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Export, validate and install the model (and prefilter) under output; returns the manifests by name.

    See export.build.build_repository for the options (opset, thresholds, revision).
    """
    from export.build import build_repository as build

    return build(
        model,
        prefilter,
        Path(output),
        name=name,
        prefilter_name=prefilter_name,
        max_length=max_length,
        quiet=quiet,
        **options,
    )
