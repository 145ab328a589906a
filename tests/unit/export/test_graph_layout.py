"""export/graph_layout.py on a tiny ModernBERT's fused graph: attention reads q, k and v straight from the
projection (no transposes, no slices), the packed MatMuls are split at their weights, and the scores stay
what they were, in fp32 and int8, with the weights inline or in an external data file."""

from __future__ import annotations

import shutil
from pathlib import Path

import family_models as fm
import numpy as np
import onnx
import pytest

from export import graph_layout, quantize, quantize_matmul, torch_export
from export.sources import resolve_source

LAYERS = 3  # the tiny ModernBERT's (tests/family_models.py)


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    folder = fm.build_modernbert(root / "modernbert")
    family = resolve_source(str(folder), quiet=True).family
    out = root / "model.opt.onnx"
    torch_export.export_fused(family, folder, out, positive_id=None, negative_id=None)
    return out


def _copy(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / source.name))


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _scores(path: Path) -> np.ndarray:
    """Rows of different lengths, right-padded, one past the local window (16 tokens)."""
    rng = np.random.default_rng(0)
    lengths = (70, 41, 9)
    ids = rng.integers(5, 600, (len(lengths), max(lengths)))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return _session(path).run(["logits"], {"input_ids": ids, "attention_mask": mask})[0][:, 0]


def _producers(path: Path) -> tuple[list[onnx.NodeProto], dict[str, onnx.NodeProto]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return list(graph.node), {out: node for node in graph.node for out in node.output}


def test_attention_reads_the_projection_and_scores_are_unchanged(fused: Path, tmp_path: Path):
    path = _copy(fused, tmp_path)
    before = _scores(fused)
    assert graph_layout.rewrite_file(path) == {
        "attention_inputs_unpacked": LAYERS,
        "weight_matmuls_split": 2 * LAYERS,
    }
    nodes, producer = _producers(path)
    for attention in [n for n in nodes if n.op_type == "MultiHeadAttention"]:
        q, k, v = (producer[name] for name in attention.input[:3])
        assert [q.op_type, k.op_type, v.op_type] == ["RotaryEmbedding", "RotaryEmbedding", "MatMul"]
        assert producer[q.input[0]].op_type == producer[k.input[0]].op_type == "MatMul"
        assert q.input[1:] == k.input[1:]  # the same positions and cos/sin caches
    ops = {n.op_type for n in nodes}
    # q, k, v and the GeGLU's halves come from their own MatMuls
    assert "Split" not in ops and "Slice" not in ops
    assert [n.op_type for n in nodes].count("Transpose") == [
        n.op_type for n in onnx.load(str(fused), load_external_data=False).graph.node
    ].count("Transpose") - 4 * LAYERS
    after = _scores(path)
    assert np.abs(after - before).max() <= 1e-6
    assert np.ptp(before) > 1e-3  # the rows differ: the comparison can fail


def test_int8_quantizes_the_activation_once_for_the_split_weights(fused: Path, tmp_path: Path):
    path = _copy(fused, tmp_path / "layout")
    graph_layout.rewrite_file(path)
    packed, split = tmp_path / "packed.int8.onnx", tmp_path / "layout" / "model.int8.onnx"
    count_packed = quantize_matmul.quantize_matmuls(fused, packed, quantize.INT8_SETTINGS)
    count_split = quantize_matmul.quantize_matmuls(path, split, quantize.INT8_SETTINGS)
    assert count_split == count_packed + 3 * LAYERS  # q/k/v 3 for 1, the GeGLU's halves 2 for 1
    nodes, _ = _producers(split)
    quantizers = [n for n in nodes if n.op_type == "DynamicQuantizeLinear"]
    assert len(quantizers) == len({n.input[0] for n in quantizers})  # one per activation
    readers = [n for n in nodes if n.op_type == "MatMulIntegerToFloat"]
    per_quantizer = sorted(sum(r.input[0] == q.output[0] for r in readers) for q in quantizers)
    assert per_quantizer.count(3) == LAYERS and per_quantizer.count(2) == LAYERS
    # per-column weight scales and one activation scale: the same numbers as the packed MatMuls
    assert np.abs(_scores(split) - _scores(packed)).max() <= 1e-5


def test_a_graph_with_external_data_keeps_it(fused: Path, tmp_path: Path):
    external = tmp_path / "model.opt.onnx"
    onnx.save(onnx.load(str(fused)), str(external), save_as_external_data=True,
              location="model.opt.onnx.data", size_threshold=1024)  # fmt: skip
    assert graph_layout.rewrite_file(external)["weight_matmuls_split"] == 2 * LAYERS
    proto = onnx.load(str(external), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert np.abs(_scores(external) - _scores(fused)).max() <= 1e-6


def test_other_attentions_are_left_alone(tmp_path: Path):
    """MultiHeadAttention on graph inputs, a MatMul read by a Split of another axis: nothing to rewrite, and
    the file is not written."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 6), np.float32), "w")
    nodes = [
        helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["a"], domain="com.microsoft", num_heads=2),
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("Split", ["m"], ["s0", "s1"], axis=1, num_outputs=2),
        helper.make_node("Concat", ["s0", "s1"], ["out"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8]) for n in "qkv"]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [weight]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    written = path.read_bytes()
    assert graph_layout.rewrite_file(path) == {"attention_inputs_unpacked": 0, "weight_matmuls_split": 0}
    assert path.read_bytes() == written
