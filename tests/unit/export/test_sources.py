"""Bad sources end with a message that names the problem, before any export work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import BertConfig, BertModel

from export import build_repository
from export.errors import SourceError
from export.sources import hub_files_to_fetch, resolve_source

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: Callable[..., Path]) -> Path:
    return tiny_model_factory(
        tmp_path_factory.mktemp("good") / "good-model", hidden_size=32, intermediate_size=64
    )


def copy_model(good: Path, target: Path) -> Path:
    shutil.copytree(good, target)
    return target


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def assert_fails(spec: Path | str, *fragments: str, tmp_path: Path) -> None:
    output = tmp_path / "repo"
    with pytest.raises(SourceError) as info:
        build_repository(str(spec), None, output, quiet=True)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert not (output / "reranker").exists()


def test_good_local_folder_is_recorded_by_path_and_weights_hash(good_model: Path):
    source = resolve_source(str(good_model))

    assert source.folder == good_model.resolve()
    assert source.model_id == "good-model"
    assert source.architecture == "BertForSequenceClassification"
    entry = source.manifest_entry()
    assert entry["path"] == str(good_model.resolve()) and len(entry["sha256"]) == 64


def test_hub_ids_are_not_mistaken_for_folders(monkeypatch: pytest.MonkeyPatch):
    # offline: the id must go to the hub (and fail there), not be reported as a missing folder
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(SourceError, match="Hugging Face hub"):
        resolve_source("cross-encoder/ms-marco-MiniLM-L-6-v2", quiet=True)


def test_missing_folder(tmp_path: Path):
    assert_fails(tmp_path / "does-not-exist", "model folder not found", "does-not-exist", tmp_path=tmp_path)


def test_folder_without_config(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert_fails(tmp_path / "empty", "no config.json", tmp_path=tmp_path)


def test_encoder_without_head_is_refused(tmp_path: Path):
    folder = tmp_path / "encoder-only"
    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)  # fmt: skip
    assert_fails(folder, "encoder without a relevance head", "BertModel", tmp_path=tmp_path)


def test_more_than_one_logit(good_model: Path, tmp_path: Path):
    folder = copy_model(good_model, tmp_path / "two-labels")
    edit_config(folder, id2label={"0": "NO", "1": "YES"}, label2id={"NO": 0, "YES": 1})
    assert_fails(folder, "has 2 output logits", "exactly 1", tmp_path=tmp_path)


def test_truncated_weights(good_model: Path, tmp_path: Path):
    folder = copy_model(good_model, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_fails(folder, "model.safetensors is truncated", f"{len(data) // 2:,} bytes", tmp_path=tmp_path)


def test_hub_files_of_a_sentence_transformers_head():
    files = ["config.json", "model.safetensors", "tokenizer.json", "modules.json",
             "config_sentence_transformers.json", "1_Pooling/config.json", "2_Dense/config.json",
             "2_Dense/model.safetensors", "onnx/model.onnx", "README.md"]  # fmt: skip
    assert sorted(hub_files_to_fetch(files)) == sorted(
        [f for f in files if f not in ("onnx/model.onnx", "README.md")]
    )


def test_config_and_tokenizer_without_weights(real_models_dir: Path, tmp_path: Path):
    folder = real_models_dir / "ms-marco-MiniLM-L-6-v2-config-tokenizer-NO-WEIGHTS"
    assert_fails(folder, "no weights", tmp_path=tmp_path)


def test_missing_prefilter_folder_says_how_to_go_on(good_model: Path, tmp_path: Path):
    with pytest.raises(SourceError) as info:
        build_repository(str(good_model), str(tmp_path / "no-prefilter"), tmp_path / "repo", quiet=True)
    assert "prefilter" in str(info.value) and "--prefilter same" in str(info.value)
    assert not (tmp_path / "repo" / "reranker").exists()


def test_cli_prints_the_problem_and_exits_non_zero(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "export", "--model", str(tmp_path / "nope"), "--prefilter", "none",
         "--output", str(tmp_path / "repo"), "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "export failed: model folder not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_downloads_fetch_one_weights_format_and_no_side_folders():
    # the file list of cross-encoder/ms-marco-MiniLM-L-6-v2 on the hub (onnx/ and openvino/ exports beside it)
    files = [
        ".gitattributes", "README.md", "config.json", "model.safetensors", "pytorch_model.bin",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "train_script.py",
        "onnx/model.onnx", "onnx/model_qint8_avx512.onnx", "openvino/openvino_model.bin",
        "openvino/openvino_model.xml",
    ]  # fmt: skip
    assert sorted(hub_files_to_fetch(files)) == [
        "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json", "vocab.txt",
    ]  # fmt: skip
    sharded = ["config.json", "tokenizer.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
               "pytorch_model-00002-of-00002.bin"]  # fmt: skip
    assert hub_files_to_fetch(sharded) == sharded
