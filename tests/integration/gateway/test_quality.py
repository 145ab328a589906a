"""Scores of the real stand-in through the pipeline against its published PyTorch fp32 figures."""

from __future__ import annotations

import asyncio

import pytest

from gateway.app import build_reranker
from gateway.config import Settings
from gateway.domain import RerankQuery

pytestmark = [pytest.mark.slow, pytest.mark.real_models]

QUERY = "How many people live in Berlin?"
BERLIN = "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers."
NYC = "New York City is famous for the Metropolitan Museum of Art."
# ../shared/models/minilm-l6-rerank-standin/SOURCE.md, "Fixed pairs" (PyTorch fp32, max_length 512).
REFERENCE = {BERLIN: 2.599316, NYC: 0.580683}


def score(repo, precision: str) -> dict[str, float]:
    settings = Settings(model_repository=repo, cpu_precision=precision, prefilter_name="", threads=2)

    async def go():
        reranker = build_reranker(settings)
        try:
            out = await reranker.rerank(RerankQuery(QUERY, (BERLIN, NYC)))
        finally:
            await reranker.close()
        assert reranker.models is not None
        return {(BERLIN, NYC)[r.index]: r.logit for r in out.results}

    return asyncio.run(go())


def test_fp32_reproduces_the_reference_logits(real_model_repository):
    logits = score(real_model_repository, "fp32")
    for doc, expected in REFERENCE.items():
        assert abs(logits[doc] - expected) < 1e-3


def test_int8_keeps_the_order(real_model_repository):
    logits = score(real_model_repository, "int8")
    assert logits[BERLIN] > logits[NYC] + 1.0
    for doc, expected in REFERENCE.items():
        assert abs(logits[doc] - expected) < 0.5
