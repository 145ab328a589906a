"""The build step's view of the family table (`gateway.families`): detection with the exporter's SourceError.

The table itself (families, model types, prompt templates, gate bounds) lives in gateway/families.py, shared with
the gateway, which reads the same definitions back from manifest.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.errors import SourceError
from gateway import families
from gateway.families import ST_LAYOUT_VERSION, TEMPLATES, Family, PromptTemplate, template_names

__all__ = ["ST_LAYOUT_VERSION", "TEMPLATES", "Family", "PromptTemplate", "detect_family", "template_names"]


def detect_family(
    folder: Path,
    config: dict[str, Any],
    spec: str,
    *,
    template: str | None = None,
    hints: tuple[str, ...] = (),
) -> Family:
    """`gateway.families.detect_family`, its refusals raised as SourceError (the CLI prints them)."""
    try:
        return families.detect_family(folder, config, spec, template=template, hints=hints)
    except families.UnsupportedSource as exc:
        raise SourceError(str(exc)) from exc
