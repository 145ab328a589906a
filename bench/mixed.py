"""`make bench-mixed` (`python -m bench.mixed`): several models in one gateway, under load.

One gateway (`python -m gateway`, real uvicorn on 127.0.0.1) serves two models from one models file: the MiniLM
stand-in (`minilm`, int8) and a decoder reranker costing more than 10x per token (`qwen3`: a random-weight
Qwen3ForCausalLM in the Qwen3-Reranker layout, 8 layers x hidden 1024, with the real Qwen3 tokenizer, fp32),
both exported with `python -m export --prefilter none`. A light client sends small requests (10 short
documents) to the small model, first alone, then while 6 clients flood the decoder with 20 x 400-word
documents. The table: the small model's p50/p99 in both phases, every status code per model, the Retry-After
the flood was told, and what /metrics says per model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.settings import REPO_ROOT, WORK, log

MIXED_WORK = WORK / "mixed"
SMALL, BIG = "minilm", "qwen3"
SMALL_SOURCE = REPO_ROOT.parent / "shared" / "models" / "minilm-l6-rerank-standin"
QWEN3_TOKENIZER = REPO_ROOT.parent / "shared" / "tokenizers" / "qwen3"
BIG_MAX_LENGTH = 512
# A Qwen3-Reranker-layout decoder at 8 layers x hidden 1024 (Qwen3-0.6B's width, 8 of its 28 layers) with the
# real vocabulary rows: about 12x MiniLM-L6's multiply-adds per token.
QWEN3_BENCH: dict[str, Any] = {
    "vocab_size": 151669, "hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16,
    "num_key_value_heads": 8, "intermediate_size": 3072, "head_dim": 128, "tie_word_embeddings": True,
    "max_position_embeddings": 1024, "initializer_range": 0.02,
}  # fmt: skip


def build_decoder_source(folder: Path) -> Path:
    """The random-weight decoder with the real Qwen3 tokenizer (reused when built with the same config)."""
    stamp = folder / "bench_config.json"
    wanted = json.dumps(QWEN3_BENCH, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == wanted:
        return folder
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(QWEN3_TOKENIZER / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen3Config(
        **QWEN3_BENCH,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    Qwen3ForCausalLM(config).eval().save_pretrained(folder)
    stamp.write_text(wanted)
    return folder


def _export(args: Sequence[str], log_path: Path) -> None:
    """`python -m export ...` in a child (its peak memory leaves with it), output in `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "export", *args], cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise RuntimeError(f"python -m export {' '.join(args)} failed; see {log_path}")


def build_repository(work: Path = MIXED_WORK) -> Path:
    """`work/repository` with `minilm` and `qwen3`, each exported by `python -m export --prefilter none` (kept
    while their sources and the exporter's code are unchanged)."""
    repository = work / "repository"
    logs = work / "logs"
    stamp = repository / "bench_sources.json"
    wanted = json.dumps({"exporter": _exporter_digest(), "qwen3": QWEN3_BENCH, "small": str(SMALL_SOURCE)})
    if stamp.is_file() and stamp.read_text() == wanted:
        return repository
    if not SMALL_SOURCE.is_dir():
        raise SystemExit(f"the MiniLM stand-in is missing: {SMALL_SOURCE}")
    if not (QWEN3_TOKENIZER / "tokenizer.json").is_file():
        raise SystemExit(f"the Qwen3 tokenizer is missing: {QWEN3_TOKENIZER}")
    shutil.rmtree(repository, ignore_errors=True)
    started = time.perf_counter()
    log(f"mixed: exporting {SMALL} from {SMALL_SOURCE}")
    _export(["--model", str(SMALL_SOURCE), "--prefilter", "none", "--output", str(repository),
             "--name", SMALL, "--quiet"], logs / "export-minilm.log")  # fmt: skip
    source = build_decoder_source(work / "qwen3-source")
    log(f"mixed: exporting {BIG} (8 x 1024 decoder, real Qwen3 tokenizer) with its parity gate")
    _export(["--model", str(source), "--template", "qwen3-reranker", "--prefilter", "none",
             "--output", str(repository), "--name", BIG, "--max-length", str(BIG_MAX_LENGTH)],
            logs / "export-qwen3.log")  # fmt: skip
    log(f"mixed: repository built in {time.perf_counter() - started:.0f}s")
    stamp.write_text(wanted)
    return repository


def _exporter_digest() -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "export").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    build_repository()
