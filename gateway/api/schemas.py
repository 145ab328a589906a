"""Wire models of the seed API (`POST /rerank`); the other dialects live in gateway/api/dialects.

Requests convert themselves into the pipeline's `RerankQuery`; responses are rendered from its
`RerankOutcome`. Nothing here scores anything.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.domain import RerankOutcome, RerankQuery


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
        None, ge=1, le=64, description="Split long documents into up to this many windows; the best wins."
    )
    max_length: int | None = Field(None, ge=8, description="Pair length in tokens (at most the model's).")
    truncate: bool = Field(True, description="false: an over-long pair is a 422 instead of being truncated.")
    truncation_direction: Literal["right", "left"] = "right"


# --- seed API: POST /rerank ------------------------------------------------------------------------
class RerankRequest(PipelineOptions):
    query: str = Field(..., min_length=1, description="The search query.")
    documents: list[Document] = Field(..., description="Candidates: strings or objects with `text`.")
    top_k: int | None = Field(None, ge=1, description="Return only the best top_k (default: all).")

    def to_query(self) -> RerankQuery:
        return RerankQuery(
            query=self.query,
            documents=_texts(self.documents),
            top_n=self.top_k,
            keep=self.keep,
            ranked_input=self.ranked_input,
            max_length=self.max_length,
            max_chunks_per_doc=self.max_chunks_per_doc,
            truncate=self.truncate,
            truncation_direction=self.truncation_direction,
        )


class RerankResult(BaseModel):
    index: int = Field(..., description="Position in the request's `documents`.")
    score: float = Field(..., description="Same as relevance_score (kept for the seed's clients).")
    relevance_score: float = Field(..., description="sigmoid(logit), float32, in [0, 1].")
    logit: float = Field(..., description="The raw model output.")
    text: str
    stage: Literal["prefilter", "reranker"] = Field(..., description="The last stage that scored it.")
    chunk: tuple[int, int] | None = Field(None, description="Character span of the best window, if chunked.")
    document: dict[str, Any] | None = Field(None, description="The document object as sent (object input).")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    results: list[RerankResult]
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
                    document=None if isinstance(d, str) else d.model_dump(),
                )
                for r in outcome.results
                for d in (docs[r.index],)
            ],
            model=outcome.model,
            backend=outcome.backend,
            stages=list(outcome.stages),
            top_k_applied=outcome.top_n_applied,
            truncated_documents=outcome.truncated_documents,
            cache_hits=outcome.cache_hits,
            usage=Usage(prompt_tokens=outcome.prompt_tokens, total_tokens=outcome.prompt_tokens),
            warnings=list(outcome.warnings),
        )


class ErrorBody(BaseModel):
    error: str
    error_type: str
