"""The pipeline's own request and result types: what every API dialect converts to and from.

Nothing here knows HTTP, FastAPI, ONNX Runtime or Triton. A dialect parses its wire body into
`RerankQuery` objects, the pipeline answers with `RerankOutcome` objects, and the dialect renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Stage = Literal["prefilter", "reranker"]


@dataclass(frozen=True)
class RerankQuery:
    """One query against its candidate documents.

    `keep`: how many prefilter survivors the cross-encoder rescores (None: the server default,
    0: no prefilter, single stage). `max_chunks_per_doc`: a document longer than the model's window
    is split into up to this many overlapping windows and scored by its best one (None: the server
    default; 1: plain truncation). `ranked_input`: the documents arrive best first, so their order may
    choose survivors (None: the server default). `truncate=False` turns an over-long pair into a validation error.
    """

    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    keep: int | None = None
    ranked_input: bool | None = None
    max_length: int | None = None
    max_chunks_per_doc: int | None = None
    truncate: bool = True
    truncation_direction: Literal["right", "left"] = "right"


@dataclass(frozen=True)
class ScoredDocument:
    """A document's place in the ranking. `index` points into the request's document list."""

    index: int
    logit: float
    relevance_score: float  # sigmoid(logit), computed in float32
    stage: Stage  # the last stage that scored it ("prefilter" for documents the prefilter cut)
    chunk: tuple[int, int] | None = None  # character offsets of the winning window, when chunked


@dataclass(frozen=True)
class RerankOutcome:
    """The ranking of one query: sorted by score, descending, `top_n` already applied."""

    results: tuple[ScoredDocument, ...]
    model: str
    backend: str  # who scored the cross-encoder stage: "onnx-cpu", "onnx-cuda", "triton-grpc", ...
    stages: tuple[Stage, ...]
    top_n_applied: bool
    prompt_tokens: int  # tokens of every (query, document window) pair that was built
    truncated_documents: int = 0
    cache_hits: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)
