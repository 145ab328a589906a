"""The model repository a run benchmarks, what it was exported from, and the gateway settings that serve it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.settings import (
    REPO_ROOT,
    WORK,
    log,
)
from gateway.config import DEFAULT_CPU_CONCURRENCY, session_threads

# Figures the stand-ins are known by (../shared/models/*/SOURCE.md).
STANDIN_SHA256 = "4986aff22cb00c6e1be9733369ebb1f06b6981601200b6ef955a42f7412ab1f4"
PREFILTER_SHA256 = "4500930322544829c9afe6f91cdf9603e97c8fdfd7139b7e98b9924524c56bfc"


@dataclass(frozen=True)
class Models:
    repository: Path
    reranker: dict[str, Any]  # manifest.json of the cross-encoder
    prefilter: dict[str, Any] | None

    @property
    def reranker_dir(self) -> Path:
        return self.repository / self.reranker["name"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.reranker_dir / self.reranker.get("tokenizer_dir", "tokenizer")

    def source(self) -> str:
        """What sentence-transformers loads: the very weights the repository was exported from (a relative
        path, as a carried repository's manifest has, is relative to the model's folder)."""
        return source_of(self.reranker, self.reranker_dir)

    def is_standin(self) -> bool:
        return self.reranker["source"].get("sha256") == STANDIN_SHA256

    def prefilter_is_standin(self) -> bool:
        return bool(self.prefilter) and self.prefilter["source"].get("sha256") == PREFILTER_SHA256  # type: ignore[index]

    def variant_file(self, precision: str) -> Path:
        """The file the gateway runs on this CPU for `precision` (its own choice: gateway/cpu_features.py)."""
        from gateway.cpu_features import cpu_flags, cpu_variant
        from gateway.repository import read_model_spec

        spec = read_model_spec(self.repository, self.reranker["name"])
        variant, _ = cpu_variant(spec, precision, cpu_flags())
        path = spec.variant_path(variant)
        assert path is not None
        return path


class ExportFailed(RuntimeError):
    """`python -m export` did not produce the repository a run asked for (its own message is in the text)."""


def source_of(manifest: dict[str, Any], folder: Path) -> str:
    """The manifest's source as something to load: a hub id, or a path (a relative one from `folder`)."""
    src = manifest["source"]
    path = src.get("path")
    if not path:
        return str(src["id"])
    return str(path if Path(path).is_absolute() else (folder / path).resolve())


def _same_source(manifest: dict[str, Any], wanted: str | None) -> bool:
    """Whether the repository was exported from `wanted` (None: whatever it was exported from). A local folder
    is the same source when it is the recorded path, or when its weights have the recorded sha256: a
    repository carried from another machine names that machine's path, and is still this model."""
    if wanted is None:
        return True
    src = manifest.get("source", {})
    if src.get("id") == wanted:
        return True
    folder = Path(wanted).expanduser()
    path = src.get("path")
    if path and Path(path).is_absolute() and folder.resolve() == Path(path).resolve():
        return True
    recorded = src.get("sha256")
    if not recorded or not folder.is_dir():
        return False
    from export.sources import weights_sha256

    try:
        return weights_sha256(folder) == recorded
    except Exception:  # no weights file there: not the same model
        return False


def resolve_models(repository: Path, model: str | None, prefilter: str | None) -> Models:
    """Use `repository` when it was exported from `model` (and `prefilter`), else export them under bench/.work.

    So `make bench MODEL=...` benchmarks the named model even if model_repository/ holds another one.
    """

    def load(repo: Path) -> Models | None:
        manifest = repo / "reranker" / "manifest.json"
        if not manifest.exists():
            return None
        rr = json.loads(manifest.read_text())
        pf_path = repo / "prefilter" / "manifest.json"
        pf = json.loads(pf_path.read_text()) if pf_path.exists() else None
        if not _same_source(rr, model):
            return None
        if prefilter not in (None, "none") and (pf is None or not _same_source(pf, prefilter)):
            return None
        return Models(repo.resolve(), rr, pf)

    found = load(repository)
    if found is not None:
        return found
    if model is None:
        raise SystemExit(f"no model repository at {repository}; run `make export` or pass --model")
    slug = hashlib.sha256(f"{model}|{prefilter}".encode()).hexdigest()[:12]
    target = WORK / "repositories" / slug
    found = load(target)
    if found is None:
        log(f"{repository} was not exported from {model}; exporting it into {target}")
        cmd = [sys.executable, "-m", "export", "--model", model, "--output", str(target), "--quiet"]
        if prefilter:
            cmd += ["--prefilter", prefilter]
        try:
            done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        except OSError as exc:
            raise ExportFailed(f"could not run {' '.join(cmd[:3])}: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
            raise ExportFailed(f"export of {model} failed (exit {done.returncode}):\n" + "\n".join(tail))
        found = load(target)
    if found is None:
        raise ExportFailed(f"export into {target} did not produce a repository for {model}")
    return found


def two_stage_settings(keep: int | None) -> dict[str, Any]:
    """Gateway settings of a two-stage configuration (`keep` survivors; None: single stage, no prefilter):
    the prefilter cascade on plain (unranked) requests, which the gateway otherwise serves single stage, and
    no fidelity sampling, so every configuration does only its own work."""
    if keep is None:
        return {"prefilter_name": ""}
    return {"keep": keep, "cascade_unranked": "prefilter", "cascade_sample_rate": 0}


def lane_settings(cores: int, concurrency: int = DEFAULT_CPU_CONCURRENCY) -> dict[str, int]:
    """The gateway's CPU lane on `cores` cores (what `--threads` gives every contender): `concurrency` batches
    at once, each session on its share of the cores (gateway_env's keyword arguments)."""
    return {"cpu_concurrency": concurrency, "threads": session_threads(cores, concurrency)}


def gateway_env(models: Models, **settings: Any) -> dict[str, str]:
    env = {
        "RERANKER_MODEL_REPOSITORY": str(models.repository),
        "RERANKER_MODEL_NAME": models.reranker["name"],
        "RERANKER_DEVICE": "cpu",
        "RERANKER_REQUEST_TIMEOUT_S": "900",
        "RERANKER_LOG_LEVEL": "warning",
        "RERANKER_MAX_DOCUMENTS": "1000",
    }
    if models.prefilter is None:
        env["RERANKER_PREFILTER_NAME"] = ""
    else:
        env["RERANKER_PREFILTER_NAME"] = models.prefilter["name"]
    for key, value in settings.items():
        env[f"RERANKER_{key.upper()}"] = "" if value is None else str(value)
    return env
