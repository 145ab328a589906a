"""The pipeline's own types: what every API dialect converts to and from, and what a scorer is handed.

Nothing here knows HTTP, FastAPI, ONNX Runtime or Triton. A dialect parses its wire body into
`RerankQuery` objects, the pipeline answers with `RerankOutcome` objects, and the dialect renders them.
Between pipeline and runtimes travel `EncodedBatch` (model inputs) and `BatchScores` (logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from gateway.errors import ValidationFailed

Stage = Literal["prefilter", "reranker"]

# Limits of a query, one constant each (the settings, the wire models and the checks below use them).
MAX_CHUNKS_PER_DOC = 64  # windows one document may be split into (more is clamped, with a warning)
MIN_MAX_LENGTH = 8  # the shortest pair length a request may ask for


@dataclass(frozen=True)
class RerankQuery:
    """One query against its candidate documents.

    `keep`: how many prefilter survivors the cross-encoder rescores (None: the server default,
    0: no prefilter, single stage). `max_chunks_per_doc`: a document longer than the model's window
    is split into up to this many overlapping windows and scored by its best one (None: the server
    default; 1: plain truncation; above `MAX_CHUNKS_PER_DOC` it is clamped with a warning).
    `ranked_input`: the documents arrive best first, so their order may choose survivors (None: the server
    default). `truncate=False` turns an over-long input into an error naming it; with truncation on, a query
    or document over the character limits is cut to them (reported in the outcome's warnings).
    """

    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    keep: int | None = None
    ranked_input: bool | None = None
    max_length: int | None = None
    max_chunks_per_doc: int | None = None
    overlap_tokens: int | None = None  # between consecutive windows (None: the server default)
    truncate: bool = True
    truncation_direction: Literal["right", "left"] = "right"
    instruction: str | None = None  # a decoder reranker's task instruction (None: the model's default)
    calibrated: bool = True  # False: relevance_score is the plain activation even for a calibrated model


def validate_query(q: RerankQuery) -> None:
    """The rules every query obeys, whichever dialect it came from (raises ValidationFailed)."""
    if not q.query.strip():
        raise ValidationFailed("query must not be empty")
    if q.top_n is not None and q.top_n < 1:
        raise ValidationFailed(f"top_n must be at least 1 (got {q.top_n})")
    if q.keep is not None and q.keep < 0:
        raise ValidationFailed(f"keep must be 0 (single stage) or more (got {q.keep})")
    if q.max_chunks_per_doc is not None and q.max_chunks_per_doc < 1:
        raise ValidationFailed(f"max_chunks_per_doc must be at least 1 (got {q.max_chunks_per_doc})")
    if q.overlap_tokens is not None and q.overlap_tokens < 0:
        raise ValidationFailed(f"overlap_tokens must be 0 or more (got {q.overlap_tokens})")
    if q.max_length is not None and q.max_length < MIN_MAX_LENGTH:
        raise ValidationFailed(f"max_length must be at least {MIN_MAX_LENGTH} (got {q.max_length})")
    if q.truncation_direction not in ("right", "left"):
        raise ValidationFailed(
            f"truncation_direction must be 'right' or 'left' (got {q.truncation_direction!r})"
        )


@dataclass(frozen=True)
class ScoredDocument:
    """A document's place in the ranking. `index` points into the request's document list."""

    index: int
    logit: float
    relevance_score: float  # the score activation of the logit (or the calibrated map), in float32
    stage: Stage  # the last stage that scored it ("prefilter" for documents the prefilter cut)
    chunk: tuple[int, int] | None = None  # character offsets of the winning window, when chunked


@dataclass(frozen=True)
class RerankOutcome:
    """The ranking of one query: sorted by score, descending, `top_n` already applied."""

    results: tuple[ScoredDocument, ...]
    model: str
    backend: str  # who scored the cross-encoder stage: "onnx-cpu", "onnx-cuda", "triton-grpc", ... (several
    # joined by "+" for display: "onnx-cuda+onnx-cpu"; "cache" when every score came from the cache)
    stages: tuple[Stage, ...]
    top_n_applied: bool
    prompt_tokens: int  # tokens of every (query, document window) pair that was built
    truncated_documents: int = 0
    cache_hits: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)
    timings: PhaseTimes = field(default_factory=lambda: PhaseTimes())


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds a request spent per phase (summed over both stages; batches scored concurrently overlap, so
    `inference` is wall time of the scoring calls, not a sum over batches).

    tokenize: tokenizing and assembling batches; lane_wait: queued for an inference lane; inference: the
    runtime's call; assemble: sigmoid, sort and top_n.
    """

    tokenize: float = 0.0
    lane_wait: float = 0.0
    inference: float = 0.0
    assemble: float = 0.0

    def __add__(self, other: PhaseTimes) -> PhaseTimes:
        return PhaseTimes(
            self.tokenize + other.tokenize,
            self.lane_wait + other.lane_wait,
            self.inference + other.inference,
            self.assemble + other.assemble,
        )


@dataclass(frozen=True)
class EncodedBatch:
    """Model inputs for one batch: int64 arrays [batch, seq], keyed by the model's declared input names.

    `shared_prefix`: how many leading tokens every row has in common (a decoder's prompt head: template prefix
    and query part), so that a scorer may compute them once; 0 when the rows share none.
    """

    inputs: dict[str, np.ndarray]
    shared_prefix: int = 0

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def seq_len(self) -> int:
        return int(next(iter(self.inputs.values())).shape[1])


@dataclass(frozen=True)
class BatchScores:
    """One float32 logit per row, and the name of the backend that really produced them.

    `queued_s`: seconds the batch waited for an inference lane before running (0 when the runtime has no
    lane of its own, or does not say).
    """

    logits: np.ndarray
    backend: str
    queued_s: float = 0.0
    also: tuple[str, ...] = ()  # other backends that scored part of this batch (a fallback split it)

    @property
    def backends(self) -> tuple[str, ...]:
        return (self.backend, *(b for b in self.also if b != self.backend))
