"""The parity set, the gate's arithmetic and its bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export import validate
from export.errors import ParityError
from gateway.families import FAMILIES, GateBounds
from gateway.tokenization import PairTokenizer


def test_parity_set_is_fixed_large_and_varied(real_models_dir: Path):
    first, again = validate.build_parity_set(), validate.build_parity_set()
    tokenizer = PairTokenizer.from_dir(
        real_models_dir / "ms-marco-MiniLM-L-6-v2-config-tokenizer-NO-WEIGHTS", max_length=512
    )
    names = ("input_ids", "attention_mask", "token_type_ids")
    lengths = validate.encode_parity_set(tokenizer, first.pairs, names).lengths

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
        "fp32": {"max_abs_diff": 3e-4, "mean_abs_diff": 1e-5, "spearman": 1.0, "top1_agreement": 1.0},
        "int8": {"max_abs_diff": 0.5, "spearman": 0.95, "top1_agreement": 0.9},
    }
    with pytest.raises(ParityError) as info:
        validate.check_gate("reranker", figures, GateBounds())
    message = str(info.value)
    assert (
        "fp32 ONNX vs PyTorch max |diff| 0.0003 > 0.0001 (= atol 0.0001 + rtol 1e-05 x reference scale 0;"
        in message
    )
    assert "mean |diff| 1e-05" in message and "--fp32-atol / --fp32-rtol set the bound" in message
    assert "int8 Spearman vs fp32 0.9500 < 0.98" in message
    assert "90.0% of queries < 95%" in message

    figures["fp32"]["max_abs_diff"] = 5e-5
    figures["int8"].update(spearman=0.99, top1_agreement=0.96)
    validate.check_gate("reranker", figures, GateBounds())


def test_fp32_bound_is_absolute_plus_relative_to_the_reference_scale():
    bounds = GateBounds(fp32_atol=1e-4, fp32_rtol=1e-5)
    # the deep decoder that failed the former absolute bound: yes/no logits near 40, max |diff| 1.05e-4
    deep = {"max_abs_diff": 1.05e-4, "mean_abs_diff": 2e-5, "spearman": 1.0, "top1_agreement": 1.0}
    assert validate.variant_problems("fp32", {**deep, "reference_scale": 40.0}, bounds) == []
    assert bounds.fp32_bound(40.0) == pytest.approx(5e-4)
    [problem] = validate.variant_problems("fp32", {**deep, "reference_scale": 0.2}, bounds)
    assert "max |diff| 0.000105 > 0.000102 (= atol 0.0001 + rtol 1e-05 x reference scale 0.2" in problem
    # the same figures on the fused fp32 graph are held to the same bound
    assert validate.variant_problems("fp32-opt", {**deep, "reference_scale": 0.2}, bounds)


def test_set_bounds_replace_only_what_they_name():
    family = FAMILIES["decoder"].gate
    chosen = validate.Thresholds(fp32_rtol=1e-3).bounds_for(family)
    assert chosen.fp32_rtol == 1e-3 and chosen.fp32_atol == family.fp32_atol
    assert chosen.int8_min_spearman == family.int8_min_spearman
    assert validate.Thresholds().bounds_for(family) == family
