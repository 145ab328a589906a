"""bench/attention_window.py at a small size: the banded computation equals the full one where tokens are real,
and the report says which was faster (the committed figures: `python -m bench.attention_window`)."""

from __future__ import annotations

import json

from bench import attention_window


def test_the_banded_attention_equals_the_full_one_and_is_reported(tmp_path):
    assert attention_window.main(["--batch", "2", "--seq", "150", "--heads", "2", "--head-dim", "16",
                                  "--repeats", "1", "--output", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "attention_window.json").read_text())
    assert (
        result["max_abs_diff"] < 1e-5
    )  # 150 tokens: 3 blocks, the last one padded, a pair padded by a quarter
    assert set(result["median_ms"]) == {"full", "banded", "assembly", "attention_on_blocks"}
    report = (tmp_path / "attention_window.md").read_text()
    assert f"**{result['banded_over_full']:.2f}x** the full one's time" in report
