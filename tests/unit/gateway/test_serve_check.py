"""`python -m gateway check` and `make serve`: the models the settings will serve are looked for (not a fixed
`reranker/` folder), `RERANKER_MODEL_REPOSITORY` is honoured, and only `make export`'s own folders are exported
on demand."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.__main__ import main

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("env", "status", "said"),
    [
        ({}, 0, ""),
        ({"RERANKER_MODELS": "reranker,prefilter", "RERANKER_PREFILTER_NAME": ""}, 0, ""),
        ({"RERANKER_MODELS": "modernbert,qwen3"}, 1, "lacks the models it is configured to serve"),
        ({"RERANKER_MODELS": "reranker,qwen3", "RERANKER_PREFILTER_NAME": ""}, 1, "qwen3: no model 'qwen3'"),
        ({"RERANKER_MODEL_NAME": "gone"}, 1, "--name <folder>"),
        ({"RERANKER_KEEP": "-1"}, 2, "RERANKER_KEEP"),
    ],
)
def test_check_looks_for_the_models_it_will_serve(
    tiny_model_repository, monkeypatch, capsys, env, status, said
):
    monkeypatch.setenv("RERANKER_MODEL_REPOSITORY", str(tiny_model_repository))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["check"]) == status
    assert said in capsys.readouterr().err


def test_check_asks_for_make_export_only_for_its_own_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RERANKER_MODEL_REPOSITORY", str(tmp_path))
    assert main(["check"]) == 3 and "`make export` builds it" in capsys.readouterr().err
    monkeypatch.setenv("RERANKER_MODELS", "all")
    assert main(["check"]) == 3
    monkeypatch.setenv("RERANKER_MODELS", "modernbert,qwen3")
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert "or serve without a prefilter: RERANKER_PREFILTER_NAME=" in err


def _make_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`make -n serve`: prints the commands; the line that may call `make export` runs (its check is real)."""
    if shutil.which("make") is None:
        pytest.fail("GNU make is needed by this test")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    return subprocess.run(
        ["make", "-n", "serve"], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_make_serve_honours_the_repository_and_checks_the_served_models(tiny_model_repository, tmp_path):
    ready = _make_serve({"RERANKER_MODEL_REPOSITORY": str(tiny_model_repository)})
    assert ready.returncode == 0, ready.stderr
    assert f'RERANKER_MODEL_REPOSITORY="{tiny_model_repository}"' in ready.stdout
    assert "-m export" not in ready.stdout  # its models are there: nothing to export

    others = _make_serve(
        {"RERANKER_MODEL_REPOSITORY": str(tiny_model_repository), "RERANKER_MODELS": "modernbert,qwen3"}
    )
    assert others.returncode != 0 and "-m export" not in others.stdout  # never exports the hub default
    assert "lacks the models it is configured to serve" in others.stderr

    empty = _make_serve({"RERANKER_MODEL_REPOSITORY": str(tmp_path)})
    assert f'--output "{tmp_path}"' in empty.stdout  # the default folders: `make export` into that repository
