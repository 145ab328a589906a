from __future__ import annotations

import os

import pytest

from gateway.config import ConfigurationError, load_settings


def test_environment_is_read_with_the_prefix(monkeypatch):
    monkeypatch.setenv("RERANKER_KEEP", "50")
    monkeypatch.setenv("RERANKER_API_KEYS", "alpha, beta,,")
    monkeypatch.setenv("RERANKER_PRELOAD", "false")
    monkeypatch.setenv("RERANKER_TRITON_URL", "")
    monkeypatch.setenv("RERANKER_LOG_LEVEL", "DEBUG")
    s = load_settings()
    assert s.keep == 50 and s.api_keys == ["alpha", "beta"] and s.preload is False
    assert s.triton_url is None and s.log_level == "debug"
    assert s.effective_triton_model_name == "reranker"
    assert s.intra_op_threads >= 1


def test_the_cpu_lane_runs_the_batches_the_settings_allow_at_once(monkeypatch):
    from gateway.loading import LoadOptions, ModelLoader

    cores = len(os.sched_getaffinity(0))
    s = load_settings()
    assert s.cpu_concurrency == 2 and s.intra_op_threads == max(1, cores // 2)  # the cores shared out
    monkeypatch.setenv("RERANKER_CPU_CONCURRENCY", "1")
    assert load_settings().intra_op_threads == cores  # one batch at a time, on every core
    monkeypatch.setenv("RERANKER_CPU_CONCURRENCY", "3")
    monkeypatch.setenv("RERANKER_THREADS", "5")
    options = LoadOptions.from_settings(load_settings())
    assert options.cpu_concurrency == 3 and options.threads == 5  # a set thread count is kept
    assert ModelLoader(options)._cpu_lane.workers == 3


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RERANKER_CPU_CONCURRENCY", "0"),
        ("RERANKER_KEEP", "-1"),
        ("RERANKER_CPU_PRECISION", "int4"),
        ("RERANKER_PORT", "http"),
        ("RERANKER_TOKEN_BUDGET", "0"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert var in str(info.value)


def test_inconsistent_settings_are_refused():
    with pytest.raises(ConfigurationError, match="prefilter_name must differ"):
        load_settings(prefilter_name="reranker")


@pytest.mark.parametrize(
    ("var", "value", "field", "expected"),
    [
        ("RERANKER_CACHE_TTL_SECONDS", "120", "cache_ttl_s", 120.0),
        ("RERANKER_REQUEST_TIMEOUT_SECONDS", "7.5", "request_timeout_s", 7.5),
        ("RERANKER_PRELOAD_MODEL", "false", "preload", False),
    ],
)
def test_seed_variable_names_are_aliases(monkeypatch, var, value, field, expected):
    monkeypatch.setenv(var, value)
    assert getattr(load_settings(), field) == expected


def test_a_seed_alias_that_contradicts_ours_names_the_one_to_keep(monkeypatch):
    monkeypatch.setenv("RERANKER_REQUEST_TIMEOUT_SECONDS", "10")
    monkeypatch.setenv("RERANKER_REQUEST_TIMEOUT_S", "20")
    with pytest.raises(ConfigurationError, match="set only RERANKER_REQUEST_TIMEOUT_S"):
        load_settings()
    monkeypatch.setenv("RERANKER_REQUEST_TIMEOUT_S", "10")  # the same value twice is fine
    assert load_settings().request_timeout_s == 10.0


def test_a_bad_seed_alias_value_names_the_variable_that_was_set(monkeypatch):
    monkeypatch.setenv("RERANKER_CACHE_TTL_SECONDS", "-1")
    with pytest.raises(ConfigurationError, match=r"RERANKER_CACHE_TTL_SECONDS \(= RERANKER_CACHE_TTL_S\)"):
        load_settings()


def test_a_hub_id_as_model_name_says_what_to_do(monkeypatch):
    monkeypatch.setenv("RERANKER_MODEL_NAME", "cross-encoder/ms-marco-MiniLM-L-6-v2")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "RERANKER_MODEL_NAME" in message and "not a hub id" in message
    assert "make export MODEL=cross-encoder/ms-marco-MiniLM-L-6-v2" in message
    assert "RERANKER_SERVED_MODEL_NAMES" in message


def test_served_model_names_are_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("RERANKER_SERVED_MODEL_NAMES", "BAAI/bge-reranker-v2-m3, rerank-english-v3.0,")
    assert load_settings().served_model_names == ["BAAI/bge-reranker-v2-m3", "rerank-english-v3.0"]
