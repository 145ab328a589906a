"""Helpers for the gateway unit tests: stand-in scorers and a tokenizer from the tiny repository."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from gateway.backends.base import BatchScores, EncodedBatch
from gateway.config import Settings
from gateway.models import LoadedModels, ModelStage
from gateway.repository import read_model_spec
from gateway.tokenization import PairTokenizer


class CountingScorer:
    """Scores a pair by how many query tokens its document shares (deterministic, meaningful order)."""

    def __init__(self, name: str = "fake", input_names: tuple[str, ...] = ("input_ids", "attention_mask")):
        self.name = name
        self.input_names = input_names
        self.max_batch_size: int | None = None
        self.batches: list[EncodedBatch] = []
        self.rows = 0
        self.fail_with: Exception | None = None
        self.is_ready = True

    def logits(self, batch: EncodedBatch) -> np.ndarray:
        ids = batch.inputs["input_ids"]
        out = np.zeros(batch.size, dtype=np.float32)
        for r in range(batch.size):
            row = ids[r]
            seps = np.flatnonzero(row == 102)  # BERT [SEP]
            query = set(row[1 : seps[0]].tolist())
            doc = row[seps[0] + 1 : seps[1]].tolist()
            out[r] = sum(1 for t in doc if t in query) - 0.01 * len(doc)
        return out

    async def score(self, batch: EncodedBatch) -> BatchScores:
        await asyncio.sleep(0)
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(batch)
        self.rows += batch.size
        return BatchScores(self.logits(batch), self.name)

    async def ready(self) -> bool:
        return self.is_ready

    async def close(self) -> None:
        return None


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_repository: Path):
    return read_model_spec(tiny_model_repository, "reranker")


@pytest.fixture()
def make_reranker(tiny_model_repository: Path):
    """Build a Reranker whose stages use the tiny tokenizer and CountingScorers."""
    from gateway.pipeline import PipelineConfig, Reranker

    def build(prefilter: bool = True, **overrides):
        # The prefilter path on plain input, and no background fidelity samples unless a test asks.
        overrides = {"cascade_unranked": "prefilter", "cascade_sample_rate": 0.0, **overrides}
        settings = Settings(model_repository=tiny_model_repository, **overrides)
        spec = read_model_spec(tiny_model_repository, "reranker")
        pspec = read_model_spec(tiny_model_repository, "prefilter")
        ce = CountingScorer("fake-ce")
        pf = CountingScorer("fake-pf")

        def loader() -> LoadedModels:
            return LoadedModels(
                reranker=ModelStage(
                    spec,
                    PairTokenizer.from_dir(spec.tokenizer_dir, max_length=512),
                    ce,
                    512,
                    "int8",
                    settings.token_budget,
                ),
                prefilter=ModelStage(
                    pspec,
                    PairTokenizer.from_dir(pspec.tokenizer_dir, max_length=128),
                    pf,
                    128,
                    "int8",
                    settings.token_budget,
                )
                if prefilter
                else None,
            )

        reranker = Reranker(PipelineConfig.from_settings(settings), loader)
        reranker.settings = settings  # type: ignore[attr-defined]  # the tests build their app with these
        return reranker, ce, pf

    return build
