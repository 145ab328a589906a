from __future__ import annotations

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


@pytest.mark.parametrize(
    ("var", "value"),
    [
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
