"""Fused graphs (export/fusion.py, export/decoder_prefix.py): per family, the fused graph scores what the plain
graph scores, and really runs ONNX Runtime's fused contrib ops; the decoders' cached graph gives the same
scores with an empty past, and after its own head's cache."""

from __future__ import annotations

from pathlib import Path

import family_models as fm
import numpy as np
import onnx
import pytest

from export import decoder_prefix, torch_export
from export.sources import resolve_source
from gateway.tokenization import Window

TEMPLATES = {"qwen3": "qwen3-reranker", "mxbai": "mxbai-rerank-v2", "modernbert": None}
EXPECTED_OPS = {
    "qwen3": {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"},
    "mxbai": {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"},
    "modernbert": {"MultiHeadAttention", "RotaryEmbedding", "Gelu", "SkipLayerNormalization"},
}
LENGTHS = (61, 40, 17, 5)  # right padding: rows of different lengths in one batch


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, int]]:
    """key -> (plain fp32 graph, fused graph, layers); tiny models of each family."""
    root = tmp_path_factory.mktemp("fusion")
    builders = {
        "qwen3": fm.build_qwen3_reranker,
        "mxbai": fm.build_mxbai_v2,
        "modernbert": fm.build_modernbert,
    }
    out: dict[str, tuple[Path, Path, int]] = {}
    for key, builder in builders.items():
        folder = builder(root / key)
        family = resolve_source(str(folder), quiet=True, template=TEMPLATES[key]).family
        plain, fused = root / f"{key}.onnx", root / f"{key}.opt.onnx"
        torch_export.export_fp32(family, folder, plain, opset=17, positive_id=5, negative_id=6)
        _, layout = torch_export.export_fused(family, folder, fused, positive_id=5, negative_id=6)
        out[key] = (plain, fused, layout.layers if layout else 0)
    return out


def _batch(seed: int, lengths: tuple[int, ...] = LENGTHS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = rng.integers(5, 600, (len(lengths), width))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_fused_graph_runs_fused_ops_and_scores_like_the_plain_graph(graphs, key: str):
    plain, fused, layers = graphs[key]
    ops = {n.op_type for n in onnx.load(str(fused), load_external_data=False).graph.node}
    assert EXPECTED_OPS[key] <= ops, ops
    assert "Softmax" not in ops  # attention is one fused node, not MatMul/Softmax/MatMul
    feed = _batch(0)
    expected = _session(plain).run(["logits"], feed)[0]
    cached = _session(fused)
    if layers:  # the decoder's cached graph: an empty past is the single graph's function
        kv = cached.get_inputs()[2]
        feed = {**feed, **{n: np.zeros((4, kv.shape[1], 0, kv.shape[3]), np.float32)
                           for n in decoder_prefix.past_names(layers)}}  # fmt: skip
    got = cached.run(["logits"], feed)[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert np.ptp(expected) > 1e-3  # the rows differ: the comparison can fail


@pytest.mark.parametrize("key", ["qwen3", "mxbai"])
def test_head_cache_then_each_document_equals_the_full_computation(graphs, key: str):
    plain, fused, layers = graphs[key]
    lengths = (61, 40, 24, 30)
    feed = _batch(1, lengths)
    head = 23  # rows share their first 23 tokens (a prompt prefix + query part); the third adds one token
    feed["input_ids"][:, :head] = feed["input_ids"][0, :head]
    expected = _session(plain).run(["logits"], feed)[0][:, 0]
    windows = [
        Window(
            doc=r, ids=[int(i) for i in feed["input_ids"][r, :n]], type_ids=[0] * n, chars=(0, 0), shared=head
        )
        for r, n in enumerate(lengths)
    ]
    got = decoder_prefix.scores_with_heads(fused, windows)
    assert np.abs(got - expected).max() <= 1e-4
    assert layers == 2


@pytest.mark.parametrize("key", ["qwen3", "modernbert"])
def test_int8_of_the_fused_graph_quantizes_every_weight_matmul(graphs, key: str, tmp_path: Path):
    """Every layer's MatMul becomes int8; the rotary embedding's angles (positions [P, 1] x frequencies
    [1, H/2]) stay float: quantized, the positions would be rounded to steps of P/255."""
    from onnx import numpy_helper

    from export import quantize, quantize_matmul

    _, fused, layers = graphs[key]
    out = tmp_path / "model.int8.onnx"
    count = quantize_matmul.quantize_matmuls(fused, out, quantize.INT8_SETTINGS)
    source, model = onnx.load(str(fused)), onnx.load(str(out))
    weights = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    matmuls = [n for n in source.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    layer_matmuls = [n for n in matmuls if weights[n.input[1]].shape[0] >= quantize_matmul.MIN_INNER]
    assert count == len(layer_matmuls) > 0
    kept = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert kept and {weights[n.input[1]].shape[0] for n in kept} == {1}  # the rotary angles, and only they
    assert {n.name for n in kept} == {n.name for n in matmuls} - {n.name for n in layer_matmuls}
    quantized = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in layer_matmuls[:3]:  # 7-bit symmetric per column: w ~ q * scale within half a step
        name = node.input[1]
        q, scale = quantized[f"{name}_quantized"], quantized[f"{name}_scale"]
        assert q.dtype == np.int8 and np.abs(q).max() <= 64
        assert np.abs(q * scale - weights[name]).max() <= scale.max() / 2 + 1e-7
    rng = np.random.default_rng(3)
    feed = {"input_ids": rng.integers(5, 600, (16, 40)), "attention_mask": np.ones((16, 40), dtype=np.int64)}
    if layers:
        feed.update({n: np.zeros((16, 2, 0, 16), np.float32) for n in decoder_prefix.past_names(layers)})
    reference = _session(fused).run(["logits"], feed)[0][:, 0]
    int8 = _session(out).run(["logits"], feed)[0][:, 0]
    assert np.corrcoef(reference, int8)[0, 1] > 0.9


def test_the_gate_is_sized_by_the_models_non_embedding_parameters(tmp_path: Path):
    """The family's GateSize: the whole set up to 70 M non-embedding parameters (MiniLM, BERT-base), fewer
    queries in proportion above (ModernBERT-base 25), never under 6 (a 0.6B decoder); the size is read from the
    safetensors headers, the embedding matrix left out (a lookup costs nothing)."""
    from transformers import AutoModelForCausalLM

    from export import gate_size
    from gateway.families import FAMILIES, GateSize

    policy = GateSize()
    assert [policy.queries(n) for n in (22_000_000, 70_000_000, 110_000_000, 440_000_000, 10**10)] == [
        40, 40, 25, 6, 6,
    ]  # fmt: skip
    assert FAMILIES["decoder"].gate_size == FAMILIES["modernbert"].gate_size == policy
    folder = fm.build_qwen3_reranker(tmp_path / "qwen3")  # tied output layer: stored once, as the embedding
    lm = AutoModelForCausalLM.from_pretrained(folder)
    expected = sum(p.numel() for name, p in lm.named_parameters() if "embed_tokens" not in name)
    assert gate_size.non_embedding_parameters(folder) == expected > 0
    assert gate_size.parity_queries(folder, GateSize(full_params=expected // 2)) == 20


def test_int8_of_a_graph_with_external_data_is_written_tensor_by_tensor(graphs, tmp_path: Path):
    """A fused graph whose weights sit in an external data file (a 0.6B decoder's) gets an int8 file with external
    data, written as each tensor is made: the same tensors as the in-memory path writes, and the same scores."""
    from onnx import numpy_helper

    from export import quantize, quantize_matmul

    _, fused, layers = graphs["qwen3"]
    external = tmp_path / "external" / "model.opt.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(str(fused)), str(external), save_as_external_data=True, location="model.opt.onnx.data",
              size_threshold=1024)  # fmt: skip
    inline, streamed = tmp_path / "inline.onnx", tmp_path / "external" / "model.int8.onnx"
    count = quantize_matmul.quantize_matmuls(fused, inline, quantize.INT8_SETTINGS)
    assert quantize_matmul.quantize_matmuls(external, streamed, quantize.INT8_SETTINGS) == count
    proto = onnx.load(str(streamed), load_external_data=False)
    assert {t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL} >= {
        n.input[1] for n in proto.graph.node if n.op_type == "MatMulIntegerToFloat"
    }  # every int8 weight in the data file
    expected = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(inline)).graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(streamed)).graph.initializer}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
    feed = {
        **_batch(4),
        **{n: np.zeros((4, 2, 0, 16), np.float32) for n in decoder_prefix.past_names(layers)},
    }
    assert np.array_equal(
        _session(streamed).run(["logits"], feed)[0], _session(inline).run(["logits"], feed)[0]
    )
