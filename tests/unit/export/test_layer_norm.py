"""LayerNorms as plain ops (export/layer_norm.py): the rewritten graph computes what ONNX Runtime's fused
kernels compute, ONNX Runtime does not fuse it back when it loads the graph (the rewrite would then be for
nothing), and the nodes it cannot rewrite stay as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import layer_norm

HIDDEN = 48
NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization"}


def _graph(opset: int, *, gamma_type: int = TensorProto.FLOAT, read_mean: bool = False) -> onnx.ModelProto:
    """x -> SkipLayerNormalization (beta and bias; its sum read by the next residual) -> MatMul ->
    SkipLayerNormalization (no beta) -> LayerNormalization -> y."""
    rng = np.random.default_rng(0)
    dtype = helper.tensor_dtype_to_np_dtype(gamma_type)

    def init(name: str, shape: tuple[int, ...], scale: float = 1.0, kind: np.dtype = np.float32) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(kind), name)

    inits = [
        init("gamma", (HIDDEN,), kind=dtype), init("beta", (HIDDEN,), 0.1), init("bias", (HIDDEN,), 0.1),
        init("w", (HIDDEN, HIDDEN), HIDDEN**-0.5), init("gamma2", (HIDDEN,)), init("gamma3", (HIDDEN,)),
        init("beta3", (HIDDEN,), 0.1),
    ]  # fmt: skip
    first_outputs = ["n1", "mean1" if read_mean else "", "", "sum1"]
    nodes = [
        helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], first_outputs,
                         domain="com.microsoft", epsilon=1e-5, name="sln1"),
        helper.make_node("MatMul", ["n1", "w"], ["h"]),
        helper.make_node("SkipLayerNormalization", ["h", "sum1", "gamma2"], ["n2"], domain="com.microsoft",
                         epsilon=1e-6, name="sln2"),
        helper.make_node("LayerNormalization", ["n2", "gamma3", "beta3"], ["y"], axis=-1, epsilon=1e-5),
    ]  # fmt: skip
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", HIDDEN])]
    if read_mean:
        outputs.append(helper.make_tensor_value_info("mean1", TensorProto.FLOAT, ["b", "s", 1]))
    graph = helper.make_graph(
        nodes, "norms",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s", HIDDEN]) for n in ("x", "skip")],
        outputs, inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return model


def _run(
    model: onnx.ModelProto | Path, feed: dict[str, np.ndarray], optimized: Path | None = None
) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the gateway loads it
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def _feed(rows: int = 3, tokens: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {n: rng.standard_normal((rows, tokens, HIDDEN)).astype(np.float32) * 2 + 1 for n in ("x", "skip")}


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean's axes: an attribute before 18, an input from 18
def test_the_rewrite_scores_like_the_fused_kernels_and_is_not_fused_back(opset: int, tmp_path: Path):
    model = _graph(opset)
    feed = _feed()
    expected = _run(model, feed)
    assert layer_norm.decompose(model) == 3
    assert not NORM_OPS & {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    optimized = tmp_path / "optimized.onnx"
    got = _run(model, feed, optimized)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(expected).max() > 0.1  # the outputs are not all near zero: the comparison can fail
    # what ONNX Runtime really runs after its own fusions: still the plain ops
    ops = {n.op_type for n in onnx.load(str(optimized)).graph.node}
    assert not NORM_OPS & ops and {"ReduceMean", "Reciprocal"} <= ops, ops


def test_a_norm_whose_statistics_are_read_and_an_fp16_norm_stay(tmp_path: Path):
    read = _graph(18, read_mean=True)
    assert layer_norm.decompose(read) == 2  # the second and the last; the first's mean is a graph output
    kept = [n.name for n in read.graph.node if n.op_type == "SkipLayerNormalization"]
    assert kept == ["sln1"]
    half = _graph(18, gamma_type=TensorProto.FLOAT16)
    assert layer_norm.decompose(half) == 2 and "sln1" in {n.name for n in half.graph.node}


def test_a_file_with_external_weights_is_rewritten_without_touching_them(tmp_path: Path):
    model = _graph(18)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    data = (tmp_path / "model.onnx.data").read_bytes()
    feed = _feed()
    expected = _run(path, feed)
    assert layer_norm.decompose_file(path) == 3
    assert (tmp_path / "model.onnx.data").read_bytes() == data
    assert np.abs(_run(path, feed) - expected).max() <= 1e-5
    assert layer_norm.decompose_file(path) == 0  # nothing left to rewrite: the file is not written again
