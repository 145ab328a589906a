"""LayerNorm as plain ONNX ops in the CPU graphs: onnxruntime's CPU kernels for LayerNormalization and
SkipLayerNormalization sum each row in one scalar loop (mean and mean of squares, float accumulators in a
dependency chain, no SIMD), which made them about a millisecond per 512 x 768 norm on 2 threads, 12% of a
ModernBERT int8 pair in onnxruntime's profiler. The same norm written as Add, ReduceMean, Sub, Mul, Sqrt,
Reciprocal (each one vectorized) took a third of that time, and it is closer to a float64 reference (two passes
instead of mean-of-squares minus squared mean). `python -m bench.cpu_kernels` measures the whole graph: with the
CPU arena, ModernBERT int8 1.18x-1.22x; MiniLM's small norms (384 values) within the noise. onnxruntime's own LayerNormFusion does not fold it back: its
pattern divides by the square root, this one multiplies by the reciprocal.

Written into the fused fp32 graph before int8 is quantized from it, so both CPU files carry it; the plain fp32
graph (the gate's reference and the GPU's fp16 source) keeps the fused op. Only float32 norms over the last
axis are rewritten; a node whose mean or inverse-deviation outputs are read stays as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

_MS = "com.microsoft"
# SkipLayerNormalization: inputs (input, skip, gamma, beta?, bias?); outputs (output, mean?, inv_std?, sum?)
# LayerNormalization: inputs (X, scale, B?); outputs (Y, mean?, inv_std?)
_KINDS = {("", "LayerNormalization"): "plain", (_MS, "SkipLayerNormalization"): "skip"}


def decompose_file(path: Path) -> int:
    """Rewrite the LayerNorms of the ONNX file at `path` in place (its external weights untouched); the number
    of nodes rewritten."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    count = decompose(model)
    if count:
        onnx.save(model, str(path))
    return count


def decompose(model: Any) -> int:
    """Rewrite `model`'s (an onnx ModelProto) float32 last-axis LayerNorms into plain ops; how many."""
    from onnx import TensorProto

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    float_inits = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    read = _read_names(graph.node, graph.output)
    constants = _Constants(graph)
    nodes: list[Any] = []
    count = 0
    for index, node in enumerate(graph.node):
        kind = _KINDS.get((node.domain, node.op_type))
        if kind is None or not _rewritable(node, kind, float_inits, read):
            nodes.append(node)
            continue
        nodes.extend(_decomposed(node, kind, f"{node.name or 'norm'}_{index}", constants, opset))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        constants.add_to_graph()
    return count


def _read_names(nodes: Iterable[Any], outputs: Iterable[Any]) -> set[str]:
    names = {name for node in nodes for name in node.input}
    names.update(o.name for o in outputs)
    return names


def _rewritable(node: Any, kind: str, float_inits: set[str], read: set[str]) -> bool:
    attrs = {a.name: a for a in node.attribute}
    if kind == "plain":
        if attrs.get("axis") is not None and attrs["axis"].i != -1:
            return False
        if attrs.get("stash_type") is not None and attrs["stash_type"].i != 1:
            return False
    gamma = node.input[2] if kind == "skip" else node.input[1]
    if gamma not in float_inits:  # fp16 graphs, or a scale computed in the graph: left alone
        return False
    # the statistics outputs: SkipLayerNormalization's 1 and 2, LayerNormalization's 1 and 2
    return not any(name and name in read for name in node.output[1:3])


def _decomposed(node: Any, kind: str, prefix: str, constants: _Constants, opset: int) -> list[Any]:
    from onnx import helper

    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    inputs = list(node.input)
    out: list[Any] = []

    def op(op_type: str, args: list[str], name: str, result: str = "", **attrs: Any) -> str:
        result = result or f"{prefix}/{name}"
        out.append(helper.make_node(op_type, args, [result], name=f"{prefix}/{name}", **attrs))
        return result

    def mean(x: str, name: str) -> str:
        if opset >= 18:
            return op("ReduceMean", [x, constants.last_axis()], name, keepdims=1)
        return op("ReduceMean", [x], name, axes=[-1], keepdims=1)

    if kind == "skip":
        # the residual the next layer reads (output 3) keeps its name
        summed = node.output[3] if len(node.output) > 3 else ""
        if len(inputs) > 4 and inputs[4]:
            total = op("Add", [op("Add", inputs[:2], "sum"), inputs[4]], "sum_bias", summed)
        else:
            total = op("Add", inputs[:2], "sum", summed)
        gamma, beta = inputs[2], (inputs[3] if len(inputs) > 3 else "")
    else:
        total, gamma, beta = inputs[0], inputs[1], (inputs[2] if len(inputs) > 2 else "")
    centered = op("Sub", [total, mean(total, "mean")], "centered")
    variance = mean(op("Mul", [centered, centered], "squared"), "variance")
    deviation = op("Sqrt", [op("Add", [variance, constants.scalar(epsilon)], "variance_eps")], "deviation")
    normed = op("Mul", [centered, op("Reciprocal", [deviation], "inv_deviation")], "normed")
    if beta:
        op("Add", [op("Mul", [normed, gamma], "scaled"), beta], "shifted", node.output[0])
    else:
        op("Mul", [normed, gamma], "scaled", node.output[0])
    return out


class _Constants:
    """The few small initializers the rewrite needs (epsilons, the reduction axis), each added once."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.tensors: dict[str, Any] = {}

    def scalar(self, value: float) -> str:
        import numpy as np
        from onnx import numpy_helper

        name = f"layer_norm_epsilon_{value!r}"
        if name not in self.tensors:
            self.tensors[name] = numpy_helper.from_array(np.array([value], dtype=np.float32), name)
        return name

    def last_axis(self) -> str:
        import numpy as np
        from onnx import numpy_helper

        name = "layer_norm_last_axis"
        if name not in self.tensors:
            self.tensors[name] = numpy_helper.from_array(np.array([-1], dtype=np.int64), name)
        return name

    def add_to_graph(self) -> None:
        existing = {t.name for t in self.graph.initializer}
        self.graph.initializer.extend(t for n, t in self.tensors.items() if n not in existing)
