"""Typed export errors: each names the problem so the CLI can print it without a traceback."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: the export could not produce a valid model repository."""


class SourceError(ExportError):
    """The model source (hub id or local folder) is missing, unreadable or not a 1-logit cross-encoder."""


class ParityError(ExportError):
    """An exported variant does not score like the PyTorch model within the gate's bounds."""
