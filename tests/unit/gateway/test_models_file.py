"""RERANKER_MODELS_FILE: one TOML table per served model, validated at start-up (an error names the file, the
model and the field, and the start exits 2), the flat RERANKER_* values as the defaults; each part built per
model from the merged settings; the served app answers per model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import gateway.loading
from gateway.__main__ import main
from gateway.admission import AdmissionConfig
from gateway.api.deps import bound_services
from gateway.app import create_app
from gateway.config import ConfigurationError, Settings, load_settings
from gateway.loading import LoadOptions
from gateway.pipeline import PipelineConfig

GOOD = """
# the first table is the default model
[models.minilm]
aliases = ["small", "rerank-english-v3.0"]
weight = 3
max_in_flight = 4

[models.qwen3]
max_length = 256
cpu_precision = "fp32"
device = "cpu"
token_budget = 1024
gpu_token_budget = 8192
max_batch_size = 8
default_instruction = "Given a question, find the passage that answers it"
request_timeout_s = 12.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_a_good_file_gives_each_model_its_settings_over_the_flat_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKER_MODELS_FILE", str(write(tmp_path, GOOD)))
    monkeypatch.setenv("RERANKER_TOKEN_BUDGET", "256")  # a flat value: the default of every model
    s = load_settings()
    assert s.configured_models == ["minilm", "qwen3"]  # the file's order; no RERANKER_MODELS needed
    small, big = s.for_model("minilm"), s.for_model("qwen3")
    assert small.max_in_flight == 4 and small.token_budget == 256 and small.max_length is None
    assert (big.max_length, big.cpu_precision, big.device, big.token_budget) == (256, "fp32", "cpu", 1024)
    assert (big.gpu_token_budget, big.max_batch_size, big.request_timeout_s) == (8192, 8, 12.5)
    assert s.token_budget == 256 and s.max_length is None  # the flat settings are left as they were
    assert s.model_table("minilm").aliases == ("small", "rerank-english-v3.0")
    assert s.model_table("other").weight == 1.0  # a model without a table: every default

    load = LoadOptions.for_model(s, "qwen3")
    assert (load.model_name, load.max_length, load.cpu_precision, load.token_budget) == (
        "qwen3",
        256,
        "fp32",
        1024,
    )
    assert load.default_instruction == "Given a question, find the passage that answers it"
    assert LoadOptions.for_model(s, "minilm").weight == 3.0
    assert PipelineConfig.from_settings(s.for_model("qwen3"), "qwen3").max_batch_size == 8
    assert PipelineConfig.from_settings(s.for_model("qwen3"), "qwen3").model == "qwen3"
    assert AdmissionConfig.from_settings(s.for_model("qwen3")).request_timeout_s == 12.5
    assert AdmissionConfig.from_settings(s.for_model("minilm"), weight=3).max_in_flight == 4


def test_models_names_the_served_ones_and_the_file_sets_them(tmp_path):
    s = Settings(models=["qwen3", "minilm"], models_file=write(tmp_path, GOOD))
    assert s.configured_models == ["qwen3", "minilm"]  # RERANKER_MODELS decides which and in what order
    assert s.for_model("qwen3").max_length == 256
    assert Settings(models=["all"], models_file=write(tmp_path, GOOD)).configured_models == ["all"]
    assert Settings(models=["a", "b"]).configured_models == ["a", "b"]  # without a file, as before
    assert Settings().configured_models == ["reranker"]


@pytest.mark.parametrize(
    ("line", "field", "problem"),
    [
        ("max_length = 4", "max_length", "Input should be greater than or equal to 8 (got 4)"),
        ('max_length = "long"', "max_length", "Input should be a valid integer"),
        ('cpu_precision = "int4"', "cpu_precision", "Input should be 'int8' or 'fp32' (got 'int4')"),
        ('device = "tpu"', "device", "Input should be 'auto', 'cpu' or 'cuda' (got 'tpu')"),
        ("token_budget = 0", "token_budget", "Input should be greater than or equal to 64 (got 0)"),
        ("gpu_token_budget = 10", "gpu_token_budget", "Input should be greater than or equal to 64"),
        ("max_batch_size = 0", "max_batch_size", "Input should be greater than or equal to 1"),
        ('default_instruction = ""', "default_instruction", "String should have at least 1 character"),
        ("request_timeout_s = 0", "request_timeout_s", "Input should be greater than 0 (got 0)"),
        ("max_in_flight = -1", "max_in_flight", "Input should be greater than or equal to 1"),
        ("weight = 0", "weight", "Input should be greater than 0 (got 0)"),
        ("aliases = [1]", "aliases.0", "Input should be a valid string (got 1)"),
        ("max_lenght = 256", "max_lenght", "Extra inputs are not permitted"),
    ],
)
def test_each_bad_field_is_named_with_its_model(tmp_path, monkeypatch, line, field, problem):
    path = write(tmp_path, f"[models.minilm]\nweight = 1\n\n[models.qwen3]\n{line}\n")
    monkeypatch.setenv("RERANKER_MODELS_FILE", str(path))
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert f"RERANKER_MODELS_FILE: models file {path}: model 'qwen3': {field}: {problem}" in str(info.value)


@pytest.mark.parametrize(
    ("text", "env", "problem"),
    [
        ("[models.a\n", {}, "is not valid TOML"),
        ("title = 'x'\n[models.a]\n", {}, "unknown top-level keys ['title']"),
        ("", {}, "holds no [models.<folder>] table"),
        ("models = 3\n", {}, "holds no [models.<folder>] table"),
        ("[models]\na = 3\n", {}, "model 'a': must be a table ([models.a]), not 3"),
        ('[models."org/m"]\n', {}, "model 'org/m': names a folder of the model repository, not a hub id"),
        (
            '[models.a]\naliases = ["b"]\n[models.b]\n',
            {},
            "model 'a': aliases: 'b' is already a name of model 'b'",
        ),
        ("[models.a]\n[models.b]\n", {"RERANKER_MODELS": "a"}, "model 'b' is not served (RERANKER_MODELS=a)"),
        ("[models.prefilter]\n", {}, "model 'prefilter': is the prefilter's folder"),
        (
            "[models.a]\nmax_length = 40\n",
            {},
            "model 'a': max_length: 40 must be more than twice chunk_overlap_tokens (32)",
        ),
    ],
)
def test_a_bad_file_is_named(tmp_path, monkeypatch, text, env, problem):
    path = write(tmp_path, text)
    monkeypatch.setenv("RERANKER_MODELS_FILE", str(path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert f"RERANKER_MODELS_FILE: models file {path}: " in message and problem in message


def test_a_missing_file_fails_the_start_with_status_2(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere.toml"
    monkeypatch.setenv("RERANKER_MODELS_FILE", str(missing))
    assert main([]) == 2
    err = capsys.readouterr().err
    assert f"RERANKER_MODELS_FILE: models file {missing}: cannot be read (No such file or directory)" in err


def test_an_empty_variable_means_no_file(monkeypatch):
    monkeypatch.setenv("RERANKER_MODELS_FILE", "")
    assert load_settings().models_file is None


def test_the_service_serves_each_model_with_its_own_settings(tiny_model_repository, tmp_path):
    """The tiny repository's two cross-encoders served as two models from one file: aliases, pair length,
    precision, deadline and share per model; /health and /info report each one; /metrics tells them apart."""
    path = write(
        tmp_path,
        """
[models.reranker]
aliases = ["small"]
weight = 2

[models.prefilter]
aliases = ["other"]
max_length = 96
cpu_precision = "fp32"
request_timeout_s = 7
""",
    )
    settings = Settings(
        model_repository=tiny_model_repository, models_file=path, prefilter_name="", threads=1, cache_size=0
    )
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert set(health["served_models"]) == {"reranker", "prefilter"}
        for status in health["served_models"].values():
            assert (
                status["state"] == "loaded" and status["backend"] == "onnx-cpu" and status["device"] == "cpu"
            )
        assert health["served_models"]["prefilter"]["variant"] in ("fp32", "fp32-opt")
        assert health["served_models"]["reranker"]["variant"] == "int8"
        assert health["backend"] == "onnx-cpu" and health["gpu_model_loaded"] is False  # the first version's
        info = client.get("/info").json()["served_models"]
        assert info["prefilter"]["max_input_length"] == 96 and info["reranker"]["max_input_length"] == 512
        for served in info.values():  # each model's speed, measured at load
            assert all(stage["tokens_per_second"] > 0 for stage in served["models"].values())
        listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert {"small", "other"} <= listed
        body = {"query": "berlin population", "documents": ["Berlin has 3.5 million people.", "Trains."]}
        assert client.post("/rerank", json={**body, "model": "other"}).status_code == 200
        assert client.post("/rerank", json={**body, "model": "small"}).status_code == 200
        unknown = client.post("/rerank", json={**body, "model": "medium"})
        assert unknown.status_code == 400
        assert "reranker" in unknown.json()["error"] and "prefilter" in unknown.json()["error"]
        admission = bound_services(client.app).admission
        assert admission.queue("prefilter").config.request_timeout_s == 7  # type: ignore[attr-defined]
        assert admission.queue("reranker").config.weight == 2  # type: ignore[attr-defined]
        metrics = client.get("/metrics").text
        for model in ("reranker", "prefilter"):
            assert (
                f'reranker_requests_total{{method="POST",model="{model}",route="/rerank",status="200"}}'
                in metrics
            )
            assert f'reranker_lane_batches_total{{model="{model}"}}' in metrics
            assert f'reranker_work_rate_tokens_per_second{{model="{model}"}}' in metrics
            assert (
                f'reranker_phase_duration_seconds_count{{model="{model}",phase="inference",stage="reranker"}}'
                in metrics
            )
            assert f'reranker_in_flight_requests{{model="{model}"}} 0.0' in metrics


@pytest.mark.parametrize(("wide_from", "width"), [(4096, 1), (8, 2)])
def test_a_wide_model_holds_the_cpu_lane_alone_when_several_are_served(
    tiny_model_repository, tmp_path, monkeypatch, wide_from, width
):
    """Two served models on a two-batch lane: a model at least `WIDE_HIDDEN_SIZE` wide takes both places with a
    session on both threads; a narrower one takes one place on one thread (/info says which)."""
    monkeypatch.setattr(gateway.loading, "WIDE_HIDDEN_SIZE", wide_from)  # the tiny models are 128 wide
    path = write(tmp_path, "[models.reranker]\n[models.prefilter]\n")
    settings = Settings(
        model_repository=tiny_model_repository,
        models_file=path,
        prefilter_name="",
        threads=1,
        cpu_concurrency=2,
        cache_size=0,
    )
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()["served_models"]
        for served in info.values():
            assert served["device"]["cpu_lane"] == {
                "threads": width,
                "width": width,
                "lane_workers": 2,
                "flush_denormals": True,
            }
        body = {"query": "berlin population", "documents": ["Berlin has 3.5 million people.", "Trains."]}
        for model in ("reranker", "prefilter"):
            assert client.post("/rerank", json={**body, "model": model}).status_code == 200


def test_a_model_served_alone_is_never_wide(tiny_model_repository, monkeypatch):
    monkeypatch.setattr(gateway.loading, "WIDE_HIDDEN_SIZE", 8)
    settings = Settings(
        model_repository=tiny_model_repository, prefilter_name="", threads=1, cpu_concurrency=2, cache_size=0
    )
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()["served_models"]["reranker"]
        assert info["device"]["cpu_lane"] == {
            "threads": 1,
            "width": 1,
            "lane_workers": 2,
            "flush_denormals": True,
        }
