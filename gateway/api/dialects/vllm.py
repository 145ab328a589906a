"""vLLM's pooling API: `POST /score`, `POST /v1/score`, and `GET /v1/models` (also `GET /models`, as vLLM).

Score pairs `text_1` x `text_2` (also `queries`/`documents`, `queries`/`items`, `data_1`/`data_2`, as newer
vLLM accepts): 1:N (one query, many documents) or N:N (pairwise). Pairs are grouped by query, and the
groups are scored together in one call. The answer keeps pair order:
`{id, object: "list", created, model, data: [{index, object: "score", score}], usage}`.
`text_2` may be vLLM's multimodal form `{"content": [{"type": "text", "text": ...}, ...]}` when every part is
text (another part is a 400 naming the text-only model). vLLM's `/rerank`, `/v1/rerank` and `/v2/rerank`
bodies are Cohere's and are answered by those routes.
Errors are vLLM's `{"error": {message, type, param, code}}`, 400 for a bad request
(gateway/api/errors.py OVERRIDES["vllm"]).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.deps import InferenceDep, ModelsDep
from gateway.api.dialects.common import content_documents, dialect_route_class, new_id, refuse_media
from gateway.api.errors import ErrorStyle, body_responses, merge_responses
from gateway.api.schemas import CalibrationCard, Usage, calibrated_field, require_documents
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import RerankError, Unauthorized, ValidationFailed
from gateway.registry import ServedModel

# vLLM's error `type` names by HTTP status (vllm/entrypoints/openai/engine/protocol.py ErrorInfo).
_VLLM_TYPES = {
    400: "BadRequestError",
    401: "Unauthorized",
    404: "NotFoundError",
    413: "BadRequestError",
    422: "BadRequestError",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

# The pair-naming variants vLLM accepts, in its order of preference.
_PAIR_NAMES = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    text_1: str | list[str]
    text_2: str | list[str | dict[str, Any]]  # parts of vLLM's {"content": [...]} other than text are refused
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    use_activation: bool | None = None
    activation: bool | None = None  # deprecated names of use_activation
    softmax: bool | None = None
    calibrated: bool = calibrated_field()

    @model_validator(mode="before")
    @classmethod
    def _pair_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "text_1" not in data or "text_2" not in data:
            for first, second in _PAIR_NAMES:
                if first in data and second in data:
                    data = {**data, "text_1": data[first], "text_2": data[second]}
                    break
        if isinstance(data.get("text_2"), dict):
            data = {**data, "text_2": content_documents(data["text_2"])}  # vLLM's {"content": [parts]}
        return data

    @property
    def activated(self) -> bool:
        for flag in (self.use_activation, self.activation, self.softmax):
            if flag is not None:
                return flag
        return True


class ScoreData(BaseModel):
    index: int
    object: Literal["score"]
    score: float


class ScoreUsage(Usage):
    completion_tokens: int = 0


class ScoreResponse(BaseModel):
    """vLLM's `ScoreResponse`: one score per pair, in pair order."""

    id: str
    object: Literal["list"]
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


class ModelCard(BaseModel):
    """OpenAI's model card as vLLM lists it (`root`: the model an alias names); `max_model_len` (the tokens
    of one query-document pair), `family` and `default_instruction` only when known."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    permission: list[Any]
    max_model_len: int | None = None
    family: str | None = None
    default_instruction: str | None = None
    score_calibration: CalibrationCard | None = Field(
        None, description="Only for a model calibrated at export: its scores are P(relevant)."
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class VLLMErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: int


class VLLMErrorBody(BaseModel):
    error: VLLMErrorInfo


def render_error(status: int, exc: RerankError) -> dict[str, Any]:
    return {
        "error": {
            "message": exc.message,
            "type": _VLLM_TYPES.get(status, "InternalServerError"),
            "param": None,
            "code": status,
        }
    }


STYLE = ErrorStyle("vllm", render_error, VLLMErrorBody)
VLLMRoute = dialect_route_class(STYLE)


def pairs(req: ScoreRequest) -> list[tuple[str, str]]:
    """(query, document) per pair, in response order: 1:1, 1:N or N:N as vLLM defines them."""
    firsts = [req.text_1] if isinstance(req.text_1, str) else list(req.text_1)
    seconds = [req.text_2] if isinstance(req.text_2, str) else [str(d) for d in req.text_2]  # media refused
    require_documents(firsts and seconds, "text_1 and text_2 must not be empty")
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    elif len(firsts) != len(seconds):
        raise ValidationFailed(
            f"Input lengths must be either 1:1, 1:N or N:N (got {len(firsts)} and {len(seconds)})"
        )
    return list(zip(firsts, seconds, strict=True))


def to_queries(req: ScoreRequest) -> tuple[list[RerankQuery], list[list[int]]]:
    """One query per distinct text_1, and per query the pair index of each of its documents."""
    groups: dict[str, list[int]] = {}
    all_pairs = pairs(req)
    for i, (query, _) in enumerate(all_pairs):
        groups.setdefault(query, []).append(i)
    # vLLM truncates the whole prompt to `truncate_prompt_tokens` (-1: the model's length); without it an
    # over-long pair is an error.
    limit = req.truncate_prompt_tokens
    queries = [
        RerankQuery(
            query=query,
            documents=tuple(all_pairs[i][1] for i in members),
            keep=0,  # every pair gets the cross-encoder's score, no prefilter cut
            max_length=limit if limit is not None and limit > 0 else None,
            truncate=limit is not None,
            calibrated=req.calibrated,
        )
        for query, members in groups.items()
    ]
    return queries, list(groups.values())


def render(
    req: ScoreRequest, outcomes: list[RerankOutcome], members: list[list[int]], *, model: str
) -> ScoreResponse:
    scores: dict[int, float] = {}
    for outcome, pair_indexes in zip(outcomes, members, strict=True):
        for scored in outcome.results:
            scores[pair_indexes[scored.index]] = scored.relevance_score if req.activated else scored.logit
    tokens = sum(o.prompt_tokens for o in outcomes)
    return ScoreResponse(
        id=new_id("score-"),
        object="list",
        created=int(time.time()),
        model=outcomes[0].model if outcomes else model,
        data=[ScoreData(index=i, object="score", score=scores[i]) for i in range(len(scores))],
        usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens, completion_tokens=0),
    )


router = APIRouter(route_class=VLLMRoute, tags=["vllm"])
SCORE_RESPONSES = merge_responses(STYLE.responses(), body_responses())


@router.post("/score", summary="vLLM score", response_model=ScoreResponse, responses=SCORE_RESPONSES)
@router.post(
    "/v1/score", summary="vLLM score (v1 path)", response_model=ScoreResponse, responses=SCORE_RESPONSES
)
async def score(body: ScoreRequest, inference: InferenceDep) -> ScoreResponse:
    model = inference.model(body.model).description().id
    if not isinstance(body.text_2, str):
        refuse_media(body.text_2, where="text_2", model=model)
    queries, members = to_queries(body)
    outcomes = await inference.run(queries, model=body.model)
    return render(body, outcomes, members, model=model)


MODELS_ROUTE: dict[str, Any] = {
    "response_model": ModelList,
    "response_model_exclude_unset": True,
    "responses": STYLE.responses([Unauthorized]),
}


@router.get("/v1/models", summary="Served models (OpenAI/vLLM list)", **MODELS_ROUTE)
@router.get("/models", summary="Served models (vLLM serves the list on both paths)", **MODELS_ROUTE)
async def models(served: ModelsDep) -> ModelList:
    """Each served model (the default first), then each of its aliases (RERANKER_SERVED_MODEL_NAMES for the
    default: vLLM's --served-model-name), all with the model as `root`: clients that check a name against
    this list (LlamaIndex NVIDIARerank) accept the aliases."""
    return ModelList(
        object="list", data=[card for model in served for card in model_cards(model, served.created)]
    )


def model_cards(model: ServedModel[Any], created: int) -> list[ModelCard]:
    """The model's own card, then one per alias; the optional fields only where known (exclude_unset)."""
    described = model.description()
    calibration = described.score_calibration
    known = {
        "max_model_len": described.max_tokens_per_pair,
        "family": described.family,
        "default_instruction": described.default_instruction,
        "score_calibration": CalibrationCard.of(calibration) if calibration else None,
    }
    fields: dict[str, Any] = {
        "object": "model",
        "created": created,
        "owned_by": "reranker-service",
        "root": described.id,
        "parent": None,
        "permission": [],
        **{k: v for k, v in known.items() if v is not None},
    }
    return [ModelCard.model_validate({"id": name, **fields}) for name in model.listed_names()]
