"""Wire models shared by every dialect (usage, ranked items, chunk spans, pipeline options), the rules
that check a request's fields (one place, one message per rule), and the native API's own models
(`POST /rerank`). Each dialect's request and response models live beside it in gateway/api/dialects.

Requests convert themselves into the pipeline's `RerankQuery`; responses are rendered from its
`RerankOutcome`. Nothing here scores anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.domain import MAX_CHUNKS_PER_DOC, MIN_MAX_LENGTH, RerankOutcome, RerankQuery
from gateway.errors import EmptyInput, ValidationFailed
from gateway.repository import CalibrationSummary

MAX_BATCH_QUERIES = 64  # queries in one `/v1/rerank/batch` call

# What every dialect's score field says, and the one request option that changes it (`calibrated`).
SCORE_DESCRIPTION = (
    "The model's relevance score, float32: for a model calibrated at export (`/v1/models` shows "
    "`score_calibration`) the calibrated P(relevant), the same scale across models; otherwise the manifest's "
    "score activation of the logit (sigmoid: in [0, 1]; identity for a head the manifest says so)."
)
CALIBRATED_DESCRIPTION = (
    "false: the score is the plain score activation of the logit (sigmoid) even for a calibrated model; "
    "default true: the calibrated probability where the model has one. The ranking is the same either way."
)


def calibrated_field() -> Any:
    """The request option `calibrated` (one definition for every dialect that carries a score)."""
    return Field(True, description=CALIBRATED_DESCRIPTION)


# --- validation rules, shared by every dialect ------------------------------------------------------
def top_n_of(top_n: int | None, *, field: str = "top_n") -> int | None:
    """None or 0 mean every document (vLLM's convention for 0); negative is an error."""
    if top_n is None or top_n == 0:
        return None
    if top_n < 0:
        raise ValidationFailed(f"{field} must be >= 0, got {top_n}")
    return top_n


def max_chunks_of(value: int | None, *, field: str = "max_chunks_per_doc") -> int | None:
    """At least 1; above MAX_CHUNKS_PER_DOC the pipeline uses its maximum and says so in a warning
    (RAGFlow's SiliconFlow provider sends 1024)."""
    if value is not None and value < 1:
        raise ValidationFailed(f"{field} must be at least 1, got {value}")
    return value


def require_documents(documents: Sequence[object], message: str) -> None:
    """A dialect whose original server refuses an empty document list (the native API answers [] instead);
    the status is the dialect's (gateway/api/errors.py OVERRIDES)."""
    if not documents:
        raise EmptyInput(message)


# --- shared response parts ----------------------------------------------------------------------------
class Usage(BaseModel):
    """OpenAI-style usage: tokens of every (query, document window) pair built; nothing is generated."""

    prompt_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, tokens: int) -> Usage:
        return cls(prompt_tokens=tokens, total_tokens=tokens)


class ChunkSpan(BaseModel):
    """Character span of the best-scoring window of a chunked document."""

    start: int
    end: int

    @classmethod
    def of(cls, chunk: tuple[int, int] | None) -> ChunkSpan | None:
        return None if chunk is None else cls(start=chunk[0], end=chunk[1])


class RankedItem(BaseModel):
    """One result of a Cohere/Jina-style ranking (also each item of a batch result).

    `document` and `chunk` are present only when asked for / when chunked (rendered with exclude_unset).
    """

    index: int = Field(..., description="Position in the request's `documents`.")
    relevance_score: float = Field(..., description=SCORE_DESCRIPTION)
    document: dict[str, Any] | None = Field(None, description="The document as sent (if asked for).")
    chunk: ChunkSpan | None = Field(None, description="Character span of the best window, if chunked.")


class HeldOutCard(BaseModel):
    """The calibration's figures on the held-out half of the queries (ECE over equal-mass bins, Brier), with
    the plain sigmoid (`_uncalibrated`) and with the map."""

    pairs: int
    ece: float
    brier: float
    ece_uncalibrated: float
    brier_uncalibrated: float


class CalibrationCard(BaseModel):
    """How a served model's scores were calibrated: `precision` is the map applied (the int8 file's logits
    or fp32's), `data` the folders it was fitted on, `queries` how many fitted and held out."""

    method: str
    precision: str | None
    data: list[str]
    queries_fitted: int
    queries_held_out: int
    held_out: HeldOutCard | None

    @classmethod
    def of(cls, summary: CalibrationSummary) -> CalibrationCard:
        held = summary.held_out
        return cls(
            method=summary.method,
            precision=summary.precision,
            data=list(summary.data),
            queries_fitted=summary.queries_fitted,
            queries_held_out=summary.queries_held_out,
            held_out=None
            if held is None
            else HeldOutCard(
                pairs=held.pairs,
                ece=held.ece_after,
                brier=held.brier_after,
                ece_uncalibrated=held.ece_before,
                brier_uncalibrated=held.brier_before,
            ),
        )


class DocumentObject(BaseModel):
    """A document given as an object: `text` is scored, every other field is kept and echoed back."""

    model_config = ConfigDict(extra="allow")
    text: str


Document = str | DocumentObject


def _texts(documents: list[Document]) -> tuple[str, ...]:
    return tuple(d if isinstance(d, str) else d.text for d in documents)


class PipelineOptions(BaseModel):
    """Per-request pipeline knobs shared by both routes (all optional; server defaults otherwise)."""

    keep: int | None = Field(
        None, ge=0, description="Prefilter survivors the cross-encoder rescores; 0: cross-encoder only."
    )
    ranked_input: bool | None = Field(
        None,
        description="true: the documents arrive best first (a retriever's order), which then helps choose "
        "the prefilter's survivors; false: their order means nothing (default: RERANKER_CASCADE_INPUT_RANKED).",
    )
    max_chunks_per_doc: int | None = Field(
        None,
        ge=1,
        description=f"Split long documents into up to this many windows; the best wins (more than "
        f"{MAX_CHUNKS_PER_DOC}: {MAX_CHUNKS_PER_DOC}, with a warning).",
    )
    overlap_tokens: int | None = Field(
        None, ge=0, description="Tokens consecutive windows share (default: the server's)."
    )
    max_length: int | None = Field(
        None, ge=MIN_MAX_LENGTH, description="Pair length in tokens (at most the model's)."
    )
    truncate: bool = Field(
        True,
        description="false: an over-long query or document is a 413 naming it instead of being truncated.",
    )
    truncation_direction: Literal["right", "left"] = "right"
    instruction: str | None = Field(
        None,
        description="The task instruction of a decoder reranker (Qwen3-Reranker, mxbai-rerank-v2); default: "
        "the model's (`/v1/models` lists it). Ignored, with a warning, by a model without a prompt template.",
    )
    calibrated: bool = calibrated_field()


# --- native API: POST /rerank ----------------------------------------------------------------------
class RerankRequest(PipelineOptions):
    model: str | None = Field(
        None, description="The served model to rank with (default: the first; with one served, any name)."
    )
    query: str = Field(..., min_length=1, description="The search query.")
    documents: list[Document] = Field(..., description="Candidates: strings or objects with `text`.")
    top_k: int | None = Field(None, ge=0, description="Return only the best top_k (default and 0: all).")
    return_documents: bool | None = Field(
        None,
        description="Echo each document in `document` ({text} for a string; an object as sent, which is "
        "always echoed).",
    )

    def to_query(self) -> RerankQuery:
        return RerankQuery(
            query=self.query,
            documents=_texts(self.documents),
            top_n=top_n_of(self.top_k, field="top_k"),
            keep=self.keep,
            ranked_input=self.ranked_input,
            max_length=self.max_length,
            max_chunks_per_doc=max_chunks_of(self.max_chunks_per_doc),
            overlap_tokens=self.overlap_tokens,
            truncate=self.truncate,
            truncation_direction=self.truncation_direction,
            instruction=self.instruction,
            calibrated=self.calibrated,
        )


class RerankResult(BaseModel):
    index: int = Field(..., description="Position in the request's `documents`.")
    score: float = Field(..., description="Same as relevance_score (kept for older clients).")
    relevance_score: float = Field(..., description=SCORE_DESCRIPTION)
    logit: float = Field(..., description="The raw model output.")
    text: str
    stage: Literal["prefilter", "reranker"] = Field(..., description="The last stage that scored it.")
    chunk: tuple[int, int] | None = Field(None, description="Character span of the best window, if chunked.")
    document: dict[str, Any] | None = Field(None, description="The document object as sent (object input).")


class Ranking(BaseModel):
    """The first version's `rankings` item."""

    index: int
    score: float


class RerankResponse(BaseModel):
    results: list[RerankResult]
    rankings: list[Ranking] = Field(
        default_factory=list, description="The first version's shape: [{index, score}], in ranking order."
    )
    model: str
    backend: str = Field(
        ..., description="Who scored the cross-encoder stage: onnx-cpu, onnx-cuda, triton-grpc..."
    )
    stages: list[Literal["prefilter", "reranker"]] = Field(..., description="The stages that ran, in order.")
    top_k_applied: bool
    truncated_documents: int = 0
    cache_hits: int = 0
    usage: Usage
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def render(cls, request: RerankRequest, outcome: RerankOutcome) -> RerankResponse:
        docs = request.documents
        return cls(
            results=[
                RerankResult(
                    index=r.index,
                    score=r.relevance_score,
                    relevance_score=r.relevance_score,
                    logit=r.logit,
                    text=d if isinstance(d, str) else d.text,
                    stage=r.stage,
                    chunk=r.chunk,
                    document=_echo(d, request.return_documents),
                )
                for r in outcome.results
                for d in (docs[r.index],)
            ],
            rankings=[Ranking(index=r.index, score=r.relevance_score) for r in outcome.results],
            model=outcome.model,
            backend=outcome.backend,
            stages=list(outcome.stages),
            top_k_applied=outcome.top_n_applied,
            truncated_documents=outcome.truncated_documents,
            cache_hits=outcome.cache_hits,
            usage=Usage.of(outcome.prompt_tokens),
            warnings=list(outcome.warnings),
        )


def _echo(document: Document, return_documents: bool | None) -> dict[str, Any] | None:
    """An object document always comes back as sent; a string one as `{text}` when asked for (litellm's
    hosted_vllm and together_ai providers read `document.text`, as vLLM answers it)."""
    if not isinstance(document, str):
        return document.model_dump()
    return {"text": document} if return_documents else None


def native_aliases(body: Any) -> Any:
    """The native shape under a neighbour's name: vLLM's `/rerank` sends `top_n` (0: every document), TEI's
    clients `return_text`."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    if "return_text" in out and out.get("return_documents") is None:
        out["return_documents"] = out.pop("return_text")
    if "top_n" not in out or out.get("top_k") is not None:
        return out
    top_n = out.pop("top_n")
    if top_n:
        out["top_k"] = top_n
    return out
