"""The exported repository: manifest contract, variants, tokenizer files, and scores that match PyTorch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification

MODELS = ("reranker", "prefilter")
MANIFEST_KEYS = {
    "name", "role", "model_id", "source", "architecture", "opset", "max_length", "inputs", "outputs",
    "tokenizer_dir", "variants", "parity", "export_seconds", "created_at", "versions",
}  # fmt: skip


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model", MODELS)
def test_manifest_has_the_contract_keys_and_true_file_hashes(tiny_model_repository: Path, model: str):
    folder = tiny_model_repository / model
    manifest = manifest_of(folder)

    assert set(manifest) >= MANIFEST_KEYS
    assert manifest["name"] == model
    assert manifest["role"] == model  # default names double as roles
    assert manifest["architecture"] == "BertForSequenceClassification"
    assert manifest["opset"] >= 17
    assert manifest["max_length"] == 512
    assert manifest["model_id"] == f"tiny-{model}"
    source = manifest["source"]
    assert Path(source["path"]).is_absolute() and Path(source["path"]).name == f"tiny-{model}"
    weights = Path(source["path"]) / "model.safetensors"
    assert source["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["inputs"] == [
        {"name": n, "dtype": "int64"} for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32"}]
    assert manifest["export_seconds"] > 0
    assert manifest["int8_settings"] == {
        "per_channel": True, "reduce_range": True, "weight_type": "QInt8", "op_types": ["MatMul", "Attention"],
        "from_fused_graph": True, "graph": "model.opt.onnx", "quantizer": "onnxruntime.quantization.quantize_dynamic",
    }  # fmt: skip
    # ONNX Runtime's optimizer fused the BERT graph; the int8 file quantized from it keeps its fusions
    fused_ops = manifest["variants"]["fp32-opt"]["optimizations"]["contrib_ops"]
    # (the last layer's Attention is a MultiHeadAttention now, see below: the 1-layer prefilter has no other)
    assert (
        "EmbedLayerNormalization" in fused_ops
        and manifest["variants"]["int8"]["optimizations"]["contrib_ops"] == fused_ops
    )
    layers = json.loads((Path(manifest["source"]["path"]) / "config.json").read_text())["num_hidden_layers"]
    assert fused_ops.get("Attention", 0) == layers - 1
    # its LayerNorms as plain ops (export/layer_norm.py), in the files the CPU serves
    assert manifest["variants"]["fp32-opt"]["optimizations"]["layer_norms_as_plain_ops"] > 0
    assert "SkipLayerNormalization" not in fused_ops
    # the last layer runs for the pooled [CLS] token only (export/pooled_token.py): its attention's query
    assert manifest["variants"]["fp32-opt"]["optimizations"]["pooled_token_attention"] == 1
    assert (
        fused_ops["MultiHeadAttention"] == 1
        and manifest["variants"]["fp32-opt"]["optimizations"]["pooled_token_nodes"] > 0
    )
    assert "kv_cache" not in manifest["variants"]["fp32-opt"] and "prefix_reuse" not in manifest["parity"]

    variants = manifest["variants"]
    assert {"fp32", "int8", "fp16"} <= set(variants)
    assert variants["fp32"]["file"] == "1/model.onnx" and variants["fp32"]["target"] == "any"
    assert variants["int8"]["file"] == "1/model.int8.onnx" and variants["int8"]["target"] == "cpu"
    assert variants["fp16"]["file"] == "1/model.fp16.onnx" and variants["fp16"]["target"] == "gpu"
    for variant in variants.values():
        path = folder / variant["file"]
        assert path.stat().st_size == variant["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == variant["sha256"]

    tokenizer_dir = folder / manifest["tokenizer_dir"]
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "config.json",
    ):
        assert (tokenizer_dir / name).is_file(), name
    original = Path(source["path"]) / "tokenizer.json"
    assert (tokenizer_dir / "tokenizer.json").read_bytes() == original.read_bytes()


@pytest.mark.parametrize("model", MODELS)
def test_parity_figures_are_within_the_gate(tiny_model_repository: Path, model: str):
    parity = manifest_of(tiny_model_repository / model)["parity"]
    figures, bounds = parity["figures"], parity["thresholds"]

    assert parity["pairs"] >= 64
    assert parity["pairs_at_max_length"] > 0
    assert parity["min_tokens"] < 64 < parity["max_tokens"] == 512
    assert (bounds["fp32_atol"], bounds["fp32_rtol"]) == (1e-4, 1e-5)  # the bert family's bounds
    scale = figures["fp32"]["reference_scale"]
    assert figures["fp32"]["max_abs_diff"] <= figures["fp32"]["bound"] == pytest.approx(1e-4 + 1e-5 * scale)
    assert figures["int8"]["spearman"] >= bounds["int8_min_spearman"] == 0.98
    assert figures["int8"]["top1_agreement"] >= bounds["int8_min_top1_agreement"] == 0.95


def test_fp32_graph_is_plain_onnx_with_dynamic_batch_and_sequence(tiny_model_repository: Path):
    path = tiny_model_repository / "reranker" / "1" / "model.onnx"
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)

    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}, "TensorRT needs standard ops"
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sess = session(path)
    for batch, length in ((1, 5), (3, 37)):
        feed = {i.name: np.ones((batch, length), dtype=np.int64) for i in sess.get_inputs()}
        (logits,) = sess.run(["logits"], feed)
        assert logits.shape == (batch, 1) and logits.dtype == np.float32


def test_int8_is_quantized_and_fp16_keeps_int64_in_float32_out(tiny_model_repository: Path):
    version = tiny_model_repository / "reranker" / "1"
    int8_ops = {node.op_type for node in onnx.load(str(version / "model.int8.onnx")).graph.node}
    assert int8_ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention"}

    fp16 = onnx.load(str(version / "model.fp16.onnx"))
    kinds = {init.data_type for init in fp16.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in fp16.graph.input)
    assert [o.type.tensor_type.elem_type for o in fp16.graph.output] == [onnx.TensorProto.FLOAT]


def test_repository_scores_match_pytorch_through_the_shipped_tokenizer(tiny_model_repository: Path):
    """What a gateway does: tokenizer/tokenizer.json + 1/model.onnx must give the PyTorch logits."""
    folder = tiny_model_repository / "reranker"
    manifest = manifest_of(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    tokenizer.enable_truncation(manifest["max_length"], strategy="only_second")
    query = "How many people live in Berlin?"
    docs = [
        "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
        "New York City is famous for the Metropolitan Museum of Art.",
        "word " * 600,
    ]
    model = AutoModelForSequenceClassification.from_pretrained(manifest["source"]["path"]).eval()
    sess = session(folder / "1" / "model.onnx")
    for doc in docs:
        enc = tokenizer.encode(query, doc)
        feed = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        with torch.inference_mode():
            expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        (got,) = sess.run(["logits"], feed)
        assert len(enc.ids) <= manifest["max_length"]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
