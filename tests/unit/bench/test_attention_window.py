"""bench/attention_window.py at a small size: the banded computations equal the full one where tokens are real,
and the report says which was fastest (the committed figures: `python -m bench.attention_window`)."""

from __future__ import annotations

import json

from bench import attention_window


def test_the_banded_attention_equals_the_full_one_and_is_reported(tmp_path):
    assert attention_window.main(["--batch", "2", "--seq", "150", "--heads", "2", "--head-dim", "16",
                                  "--repeats", "1", "--output", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "attention_window.json").read_text())
    # 150 tokens: the last block padded, the last pair padded by a quarter
    assert set(result["max_abs_diff"]) == {"64", "128"} and max(result["max_abs_diff"].values()) < 1e-5
    assert {"full", "banded_64", "assembly_128", "attention_on_blocks_128"} <= set(result["median_ms"])
    report = (tmp_path / "attention_window.md").read_text()
    best = min(result["banded_over_full"].values())
    assert f"**{best:.2f}x** the full one's time" in report and "blocks of 128 queries x 256 keys" in report
