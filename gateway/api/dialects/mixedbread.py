"""Mixedbread's reranking body, answered on `/v1/reranking` (Mixedbread's own path) and `/v1/rerank` when the
body has `input` instead of `documents` (the routes tell the shapes apart: gateway/api/dialects/reranking.py
and cohere.py).

Field names are Mixedbread's, from their Python SDK (github.com/mixedbread-ai/mixedbread-python,
src/mixedbread/types/client_rerank_params.py, rerank_response.py, shared/usage.py; the API reference at
mixedbread.com/api-reference): request `{model, query, input: [str | object], rank_fields, top_k,
return_input, rewrite_query}`, response `{usage: {prompt_tokens, total_tokens}, model, data: [{index, score,
input?, object: "rank_result"}], object: "list", top_k, return_input}`, `data` sorted by score. `score` is the
relevance score every dialect answers (calibrated where the model is). Errors come in the `/v1/rerank` body
(`{message, detail}`), as the routes answering it give them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import Inference
from gateway.api.dialects.common import document_text
from gateway.api.schemas import (
    SCORE_DESCRIPTION,
    Usage,
    calibrated_field,
    require_documents,
    top_n_of,
)
from gateway.domain import RerankOutcome, RerankQuery


class MixedbreadRerankRequest(BaseModel):
    """Mixedbread's `POST /v1/reranking` body; `rewrite_query` is accepted and not applied (no query model)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: str
    input: list[str | dict[str, Any]] = Field(..., description="Documents: strings or objects.")
    rank_fields: list[str] | None = Field(None, description="The fields of object documents to rank on.")
    top_k: int | None = Field(None, description="Documents to return (default and 0: all).")
    return_input: bool = Field(False, description="Echo each document in its result's `input`.")
    rewrite_query: bool | None = None
    calibrated: bool = calibrated_field()


class MixedbreadRank(BaseModel):
    """One ranked document (`input` only when `return_input` was asked for: rendered with exclude_unset)."""

    index: int
    score: float = Field(..., description=SCORE_DESCRIPTION)
    input: Any | None = None
    object: Literal["rank_result"]


class MixedbreadRerankResponse(BaseModel):
    usage: Usage
    model: str
    data: list[MixedbreadRank]
    object: Literal["list"]
    top_k: int
    return_input: bool


def is_mixedbread_body(body: Any) -> bool:
    """Mixedbread names its documents `input`; Cohere/Jina `documents`, NIM `passages`, TEI `texts`."""
    return isinstance(body, dict) and "input" in body and not {"documents", "passages", "texts"} & set(body)


def to_query(req: MixedbreadRerankRequest) -> RerankQuery:
    texts = tuple(document_text(doc, req.rank_fields, where=f"input[{i}]") for i, doc in enumerate(req.input))
    require_documents(texts, "input must not be empty")
    return RerankQuery(
        query=req.query,
        documents=texts,
        top_n=top_n_of(req.top_k, field="top_k"),
        calibrated=req.calibrated,
    )


def render(req: MixedbreadRerankRequest, outcome: RerankOutcome) -> MixedbreadRerankResponse:
    data = [
        MixedbreadRank(
            index=scored.index,
            score=scored.relevance_score,
            object="rank_result",
            **({"input": req.input[scored.index]} if req.return_input else {}),
        )
        for scored in outcome.results
    ]
    return MixedbreadRerankResponse(
        usage=Usage.of(outcome.prompt_tokens),
        model=outcome.model,
        data=data,
        object="list",
        top_k=top_n_of(req.top_k, field="top_k") or len(req.input),
        return_input=req.return_input,
    )


async def rerank(inference: Inference, req: MixedbreadRerankRequest) -> MixedbreadRerankResponse:
    [outcome] = await inference.run([to_query(req)], model=req.model)
    return render(req, outcome)
