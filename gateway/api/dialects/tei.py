"""Hugging Face text-embeddings-inference's wire format: `POST /rerank` when the body has `texts` (the native
route, gateway/api/routes_native.py, tells the two shapes apart and answers this one with these parts).

TEI answers a bare array `[{index, score, text?}]`, one item per text, sorted by score (LlamaIndex's TEI
postprocessor asserts one score per node; Haystack's TEI ranker reads `index`/`score`). `raw_scores`
gives the logit instead of the relevance score (calibrated where the model is; `calibrated: false`, not
TEI's, gives the plain sigmoid). Usage goes where TEI puts it: `x-compute-tokens` and
`x-compute-characters` headers. Errors are `{"error", "error_type"}` with TEI's type names and TEI's
statuses (gateway/api/errors.py OVERRIDES["tei"]).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, RootModel, ValidationError, field_validator, model_validator

from gateway.api.dialects.common import apply_aliases
from gateway.api.errors import ErrorBody, ErrorStyle, validation_message
from gateway.api.schemas import calibrated_field, max_chunks_of, require_documents, top_n_of
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import EmptyInput, RerankError, ValidationFailed

ALIASES = {
    "texts": ("documents", "passages"),
    "return_text": ("return_documents",),
    "top_n": ("top_k",),
}

# TEI's ErrorType names (router/src/lib.rs), by our error_type.
TEI_ERROR_TYPES = {
    "validation": "Validation",
    "limit_exceeded": "Validation",
    "overloaded": "Overloaded",
    "unhealthy": "Unhealthy",
    "backend": "Backend",
    "timeout": "Backend",
    "unauthorized": "Unauthorized",
    "model_not_found": "Validation",
}


class TEIRerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[str]
    truncate: bool | None = None
    truncation_direction: str = "right"
    raw_scores: bool = False
    return_text: bool = False
    # Not TEI's, accepted from neighbours' clients: a top_n cuts the array, chunks score long texts, a model
    # picks one of several served.
    top_n: int | None = None
    model: str | None = None
    max_chunks_per_doc: int | None = None
    calibrated: bool = calibrated_field()

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        return apply_aliases(data, ALIASES)

    @field_validator("truncation_direction")
    @classmethod
    def _direction(cls, value: str) -> str:
        lowered = value.lower()
        if lowered not in ("left", "right"):
            raise ValueError("must be 'left' or 'right'")
        return lowered


class TEIRank(BaseModel):
    """TEI's `Rank`: `text` only when `return_text` was asked for (set only then: rendered with
    exclude_unset)."""

    index: int
    text: str | None = None
    score: float


class TEIRerankResponse(RootModel[list[TEIRank]]):
    """TEI's bare array, one item per text, sorted by score."""


def to_query(req: TEIRerankRequest) -> RerankQuery:
    require_documents(req.texts, "`texts` cannot be empty")
    return RerankQuery(
        query=req.query,
        documents=tuple(req.texts),
        top_n=top_n_of(req.top_n),
        max_chunks_per_doc=max_chunks_of(req.max_chunks_per_doc),
        # TEI's default is the server's auto-truncate, which is on here.
        truncate=True if req.truncate is None else req.truncate,
        truncation_direction="left" if req.truncation_direction == "left" else "right",
        calibrated=req.calibrated,
    )


def parse(body: Any) -> TEIRerankRequest:
    """TEI's body, already decoded (the native route reads it to tell the shapes apart); a bad one is a
    ValidationFailed in TEI's format."""
    try:
        return TEIRerankRequest.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(validation_message(exc.errors())) from None


def render(req: TEIRerankRequest, outcome: RerankOutcome) -> TEIRerankResponse:
    # The outcome is sorted by relevance_score, which the logit orders the same way.
    return TEIRerankResponse(
        [
            TEIRank(
                index=scored.index,
                score=scored.logit if req.raw_scores else scored.relevance_score,
                **({"text": req.texts[scored.index]} if req.return_text else {}),
            )
            for scored in outcome.results
        ]
    )


def usage_headers(req: TEIRerankRequest, outcome: RerankOutcome) -> dict[str, str]:
    chars = len(req.query) * len(req.texts) + sum(len(t) for t in req.texts)
    return {
        "x-compute-type": outcome.backend,
        "x-compute-tokens": str(outcome.prompt_tokens),
        "x-compute-characters": str(chars),
    }


def render_error(status: int, exc: RerankError) -> dict[str, Any]:
    error_type = "Empty" if isinstance(exc, EmptyInput) else TEI_ERROR_TYPES.get(exc.error_type, "Backend")
    return {"error": exc.message, "error_type": error_type}


STYLE = ErrorStyle("tei", render_error, ErrorBody)
