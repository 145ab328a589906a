"""What the pipeline holds once the models are loaded: per stage a tokenizer, a scorer and its spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.backends.base import Scorer, describe_scorer
from gateway.repository import ModelSpec
from gateway.tokenization import PairTokenizer


@dataclass
class ModelStage:
    """One loaded model: `max_length` is the pair length this stage tokenizes to."""

    spec: ModelSpec
    tokenizer: PairTokenizer
    scorer: Scorer
    max_length: int
    variant: str  # the ONNX variant the local runtime loaded ("int8", "fp32", "fp16", ...)
    token_budget: int = 512  # padded tokens per batch for this stage's runtime
    one_row_batches: bool = False  # each pair alone: its score must not depend on its neighbours

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "model_id": self.spec.model_id,
            "role": self.spec.role,
            "version": self.spec.version,
            "max_length": self.max_length,
            "model_max_length": self.spec.max_length,
            "inputs": list(self.spec.input_names),
            "variant": self.variant,
            "backend": self.scorer.name,
            "token_budget": self.token_budget,
            "scorer": describe_scorer(self.scorer),
            "one_row_batches": self.one_row_batches,
        }


@dataclass
class LoadedModels:
    """The cross-encoder, the optional prefilter, and facts about the machine found while loading."""

    reranker: ModelStage
    prefilter: ModelStage | None
    device_report: dict[str, Any] = field(default_factory=dict)

    def stages(self) -> list[ModelStage]:
        return [self.reranker] + ([self.prefilter] if self.prefilter else [])
