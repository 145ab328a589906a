"""bench/mixed.py's figures and report from recorded answers (the run itself: `make bench-mixed`, and the smoke
run of `python -m bench` in tests/integration/bench)."""

from __future__ import annotations

from bench.mixed import Answer, batch_seconds, checks, markdown, metric_lines, percentile, summarize

METRICS = """# HELP reranker_lane_batches_total Batches
reranker_lane_batches_total{model="small"} 100.0
reranker_lane_batches_total{model="big"} 10.0
reranker_lane_busy_seconds_total{model="small"} 1.0
reranker_lane_busy_seconds_total{model="big"} 5.0
reranker_requests_total{method="GET",model="",route="/metrics",status="200"} 3.0
reranker_work_rate_tokens_per_second{model="small"} 4000.0
reranker_work_rate_tokens_per_second{model="big"} 400.0
reranker_process_rss_bytes 1.0
"""


def answers() -> list[Answer]:
    out = [Answer("small", "alone", 200, 0.05 + i / 1000) for i in range(50)]
    out += [Answer("small", "flood", 200, 0.4 + i / 100) for i in range(40)]
    out += [Answer("big", "flood", 200, 20.0), Answer("big", "flood", 429, 0.1, "7")]
    out += [Answer("big", "flood", 429, 0.2, "12")]
    return out


def test_the_phases_are_summarized_per_model():
    s = summarize(answers())
    assert s["small_alone"]["requests"] == 50 and s["small_alone"]["statuses"] == {"200": 50}
    assert s["small_flood"]["p50_s"] == percentile([0.4 + i / 100 for i in range(40)], 50)
    assert s["big_flood"]["statuses"] == {"200": 1, "429": 2}
    assert s["big_flood"]["retry_after_s"] == [7, 12] and s["big_flood"]["refused_max_s"] == 0.2
    assert "big_alone" not in s
    c = checks(s)
    assert c == {
        "small_p99_flood_within_target": True,
        "every_small_answer_200": True,
        "flood_never_504": True,
    }
    timed_out = summarize([*answers(), Answer("big", "flood", 504, 30.0)])
    assert checks(timed_out)["flood_never_504"] is False


def test_the_report_shows_both_models_apart():
    lines = metric_lines(METRICS)
    assert all('model=""' not in line and "process_rss" not in line for line in lines)
    assert batch_seconds(lines, "big") == 0.5 and batch_seconds(lines, "small") == 0.01
    results = {
        "command": "python -m bench.mixed",
        "started": "now",
        "seconds": 60.0,
        "size": "quick",
        "sizes": {
            "alone_s": 10,
            "flood_s": 20,
            "flood_clients": 6,
            "small_docs": 10,
            "big_docs": 20,
            "big_words": 400,
            "pause_s": 0.2,
        },
        "targets": {"small_p99_flood_s": 1.5},
        "models": {
            "small": {"variant": "int8", "max_length": 512},
            "big": {"variant": "int8", "max_length": 512},
        },
        "models_file": "[models.small]\n[models.big]\nrequest_timeout_s = 60\n",
        "tokens_per_second": {"small": 4000.0, "big": 400.0},
        "cost_ratio_per_token": 10.0,
        "summary": summarize(answers()),
        "metrics": lines,
        "peak_rss_bytes": 2**30,
        "machine": {"cpus": 2, "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.0, 1.0, 1.0]},
        "note": "a quiet machine",
        "checks": checks(summarize(answers())),
    }
    md = markdown(results)
    assert "`big` costs **10x** `small` per token" in md
    assert "| flood (20 s) | 40 |" in md and "1 x 200, 2 x 429" in md and "7 s, 12 s" in md
    assert "held the CPU lane 500 ms on average" in md and "request_timeout_s = 60" in md
    assert 'reranker_lane_batches_total{model="big"} 10.0' in md and "a quiet machine" in md
