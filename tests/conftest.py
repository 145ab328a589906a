"""Shared fixtures: model folders and exported model repositories.

Exported repositories are cached under .cache/test-repos/<hash of the sources and the exporter's code>, so
repeated runs (and every test area) reuse one export; a file lock keeps parallel pytest runs from building
the same one twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO_ROOT / ".cache" / "test-repos"
RERANKER_STANDIN = "minilm-l6-rerank-standin"
PREFILTER_STANDIN = "minilm-l2-prefilter-standin"
TOKENIZER_ONLY = "ms-marco-MiniLM-L-6-v2-config-tokenizer-NO-WEIGHTS"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

# A tiny random BERT cross-encoder: hidden 128 and initializer_range 0.1 spread its logits enough that int8
# quantization noise does not reorder them (hidden 32 / range 0.02 gives near-constant logits and fails the
# int8 ranking gate, as a random model should).
TINY_BERT = {
    "vocab_size": 30522,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    "num_labels": 1,
    "initializer_range": 0.1,
}


def models_dir() -> Path | None:
    """The shared real models (RERANKER_TEST_MODELS, default ../shared/models next to the repository)."""
    path = Path(os.environ.get("RERANKER_TEST_MODELS", REPO_ROOT.parent / "shared" / "models")).resolve()
    return path if (path / RERANKER_STANDIN).is_dir() else None


def _need_models() -> Path:
    path = models_dir()
    if path is None:
        message = (
            "real model weights not found: set RERANKER_TEST_MODELS to a folder holding "
            f"{RERANKER_STANDIN}/ and {PREFILTER_STANDIN}/ (default ../shared/models)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    """Folder of the shared real models; skips (fails under CI) when absent."""
    return _need_models()


def tokenizer_source() -> Path:
    """The original cross-encoder tokenizer files (a tiny model borrows them)."""
    path = models_dir()
    if path is None or not (path / TOKENIZER_ONLY).is_dir():
        message = (
            f"{TOKENIZER_ONLY}/ not found in RERANKER_TEST_MODELS (the tiny test model borrows its tokenizer)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path / TOKENIZER_ONLY


def make_tiny_cross_encoder(target: Path, *, seed: int = 0, **overrides: object) -> Path:
    """Save a random BertForSequenceClassification (1 logit) with the real tokenizer files into target."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(**{**TINY_BERT, **overrides})
    BertForSequenceClassification(config).save_pretrained(target)
    source = tokenizer_source()
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, target / name)
    return target


@pytest.fixture(scope="session")
def tiny_model_factory() -> Callable[..., Path]:
    """make_tiny_cross_encoder(target, seed=0, **BertConfig overrides) -> target."""
    return make_tiny_cross_encoder


# The gateway modules the build step runs: the family table, and the manifest reader and tokenizer the parity
# gate encodes its pairs with.
EXPORTER_GATEWAY_MODULES = ("families.py", "repository.py", "tokenization.py")


def _exporter_fingerprint() -> hashlib._Hash:
    digest = hashlib.sha256()
    gateway = [REPO_ROOT / "gateway" / name for name in EXPORTER_GATEWAY_MODULES]
    for path in [*sorted((REPO_ROOT / "export").glob("*.py")), *gateway]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest


def _folder_fingerprint(digest: hashlib._Hash, folder: Path) -> None:
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_repository(key: str, build: Callable[[Path], None]) -> Path:
    """Return .cache/test-repos/<key>/model_repository, building it once (under a lock) if missing."""
    folder = CACHE_ROOT / key
    repository = folder / "model_repository"
    done = folder / "COMPLETE"
    with _locked(CACHE_ROOT / f"{key}.lock"):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(repository)
            done.write_text("ok\n")
            _prune(key)
    return repository


def _prune(key: str, keep: int = 2) -> None:
    """Exports of older exporter code pile up (hundreds of MB each): keep the newest few of this kind."""
    kind = key.split("-", 1)[0]
    entries = sorted(
        (p for p in CACHE_ROOT.glob(f"{kind}-*") if p.is_dir() and p.name != key),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[keep - 1 :]:
        shutil.rmtree(old, ignore_errors=True)
        (CACHE_ROOT / f"{old.name}.lock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def tiny_model_repository() -> Path:
    """Repository with a tiny random BERT `reranker` and a different one as `prefilter` (seconds to build)."""
    digest = _exporter_fingerprint()
    digest.update(repr(sorted(TINY_BERT.items())).encode())
    _folder_fingerprint(digest, tokenizer_source())
    key = "tiny-" + digest.hexdigest()[:16]

    def build(repository: Path) -> None:
        from export import build_repository

        sources = repository.parent / "sources"
        reranker = make_tiny_cross_encoder(sources / "tiny-reranker", seed=0)
        prefilter = make_tiny_cross_encoder(sources / "tiny-prefilter", seed=2, num_hidden_layers=1)
        build_repository(str(reranker), str(prefilter), repository, quiet=True)

    return cached_repository(key, build)


@pytest.fixture(scope="session")
def real_model_repository(real_models_dir: Path) -> Path:
    """Repository exported from the two real stand-ins (about a minute on 2 cores; cached)."""
    reranker = real_models_dir / RERANKER_STANDIN
    prefilter = real_models_dir / PREFILTER_STANDIN
    digest = _exporter_fingerprint()
    _folder_fingerprint(digest, reranker)
    prefilter_arg = "same"
    if prefilter.is_dir():
        _folder_fingerprint(digest, prefilter)
        prefilter_arg = str(prefilter)
    key = "real-" + digest.hexdigest()[:16]

    def build(repository: Path) -> None:
        from export import build_repository

        build_repository(str(reranker), prefilter_arg, repository, quiet=True)

    return cached_repository(key, build)


@pytest.fixture(scope="session")
def tiny_decoder_repository() -> Path:
    """Repository with a tiny random Qwen3 reranker as `reranker` (its fused fp32-opt graph takes a key/value
    cache: served the shared prompt once), no prefilter; built by `build_repository` with its gate (cached)."""
    import family_models as fm

    digest = _exporter_fingerprint()
    digest.update(Path(fm.__file__).read_bytes())
    key = "decoder-" + digest.hexdigest()[:16]

    def build(repository: Path) -> None:
        from export import build_repository

        folder = fm.build_qwen3_reranker(repository.parent / "sources" / "tiny-qwen3-reranker")
        build_repository(str(folder), None, repository, quiet=True, max_length=256, template="qwen3-reranker")

    return cached_repository(key, build)
