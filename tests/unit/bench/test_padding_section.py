"""bench.padding: the batch strategies it compares, and one tiny run of both sections end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_test_data import tiny_scifact

from bench.padding import padded_tokens, padding_plans, run, write_markdown

LENGTHS = [30, 500, 31, 200, 29, 480, 120, 64, 33, 512, 90, 45, 300, 250, 12, 18, 77]


def test_every_strategy_scores_every_pair_once() -> None:
    plans = padding_plans(LENGTHS, budgets=[512, 4096])
    assert list(plans) == ["arrival_16", "sorted_16", "budget_512", "budget_4096", "unpadded"]
    for name, batches in plans.items():
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS))), name
    real = sum(LENGTHS)
    assert padded_tokens(LENGTHS, plans["unpadded"]) == real
    # sorting cuts padding; arrival order pays for the longest pair in each batch of 16
    assert padded_tokens(LENGTHS, plans["sorted_16"]) < padded_tokens(LENGTHS, plans["arrival_16"])
    assert all(len(b) * max(LENGTHS[i] for i in b) <= 512 or len(b) == 1 for b in plans["budget_512"])


def test_a_tiny_run_writes_both_sections(tiny_model_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    results = run(
        tiny_model_repository,
        tiny_scifact(tmp_path / "data"),
        out,
        queries=1,
        docs=8,
        phase_queries=1,
        threads=1,
        command="test",
    )
    pad = results["padding"]
    assert pad["pairs"] == 8 and set(pad["strategies"]) == {
        "arrival_16", "sorted_16", "budget_512", "budget_4096", "unpadded",
    }  # fmt: skip
    assert pad["strategies"]["unpadded"]["speed_vs_unpadded"] == 1.0
    assert pad["strategies"]["unpadded"]["batches"] == 8
    for precision in ("int8", "fp32"):
        phases = results["phases"][precision]
        assert phases["requests"] == 1 and phases["docs_per_request"] == 8
        assert sum(phases["shares"].values()) == pytest.approx(1.0, abs=0.01)
        assert phases["non_inference_share"] == pytest.approx(1 - phases["shares"]["inference"], abs=1e-3)
    assert json.loads((out / "padding.json").read_text())["command"] == "test"
    text = (out / "padding.md").read_text()
    assert text == write_markdown(results)
    assert "| unpadded | 8 | 1.000 |" in text and "| int8 | int8 | 1 |" in text
