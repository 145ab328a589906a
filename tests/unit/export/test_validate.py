"""The parity set and the gate's arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from export import validate
from export.errors import ParityError


def test_parity_set_is_fixed_large_and_varied(real_models_dir: Path):
    first, again = validate.build_parity_set(), validate.build_parity_set()
    tokenizer = AutoTokenizer.from_pretrained(
        real_models_dir / "ms-marco-MiniLM-L-6-v2-config-tokenizer-NO-WEIGHTS"
    )
    lengths = [len(e["input_ids"]) for e in validate.tokenize_pairs(tokenizer, first.pairs, 512)]

    assert first == again
    assert len(first.pairs) >= 64 and len(first.queries) >= 20  # 95% top-1 must allow one miss
    assert sorted(set(first.groups)) == list(range(len(first.queries)))
    assert min(lengths) < 48 and sum(n == 512 for n in lengths) >= len(first.queries)
    assert len({n // 32 for n in lengths}) >= 5, "lengths spread over many buckets"


def test_spearman_and_top1():
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert validate.spearman(a, a * 2 + 1) == pytest.approx(1.0)
    assert validate.spearman(a, -a) == pytest.approx(-1.0)
    assert validate.spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    groups = [0, 0, 1, 1]
    assert validate.top1_agreement(a, a, groups) == 1.0
    assert validate.top1_agreement(a, np.array([0.1, 0.5, 0.9, 0.3]), groups) == 0.5


def test_gate_lists_every_missed_bound():
    figures = {
        "fp32": {"max_abs_diff": 3e-4, "spearman": 1.0, "top1_agreement": 1.0},
        "int8": {"max_abs_diff": 0.5, "spearman": 0.95, "top1_agreement": 0.9},
    }
    with pytest.raises(ParityError) as info:
        validate.check_gate("reranker", figures, validate.Thresholds())
    message = str(info.value)
    assert "fp32 ONNX vs PyTorch max |diff| 0.0003 > 0.0001" in message
    assert "int8 Spearman vs fp32 0.9500 < 0.98" in message
    assert "90.0% of queries < 95%" in message

    figures["fp32"]["max_abs_diff"] = 5e-5
    figures["int8"].update(spearman=0.99, top1_agreement=0.96)
    validate.check_gate("reranker", figures, validate.Thresholds())
