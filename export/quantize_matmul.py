"""Dynamic int8 of a fused graph's MatMuls in one pass over its weights, at a peak memory near the fp32 file.

onnxruntime.quantization.quantize_dynamic keeps several copies of a model (shape inference saves and reloads
it, the quantizer rebuilds it): on a 0.6B decoder (2.3 GB fp32) it peaked near 10 GB, over the 3x-the-fp32-file
bound of issue 22. This writes what that quantizer writes for our settings, after ONNX Runtime's own graph
fusion of it, directly: every MatMul whose second input is a 2-D float weight (of MIN_INNER rows or more)
becomes ONNX Runtime's `DynamicQuantizeLinear` of its activation (uint8, asymmetric, per tensor; once per
activation, shared by the MatMuls that read it: Q, K and V) and `MatMulIntegerToFloat` (com.microsoft), the
form ONNX Runtime fuses the quantizer's output into; weights int8, symmetric, one scale per output column
(per-channel), 7-bit when `reduce_range` (ORT's `compute_scale_zp`: scale = max|w| / 64, or / 127 full range).
Each fp32 weight is dropped as soon as its int8 copy exists; for a graph with external data, the int8 copy goes
straight to the output's data file. Used for the families with a fusion recipe (export/fusion.py); BERT-like
encoders keep quantize_dynamic (their files are small, and their figures stay what they were).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export import onnx_export
from export.errors import ExportError
from export.quantize import Int8Settings


def quantize_matmuls(source: Path, output: Path, settings: Int8Settings) -> int:
    """Write output with every weight MatMul of source as MatMulIntegerToFloat; returns how many.

    The graph is read without its external data; each weight is read from the data file alone (a memory map),
    quantized and dropped, so the fp32 weights are never all in memory at once. A source with external data
    (a 0.6B decoder) gets an output with external data too, written tensor by tensor (`_Weights`): the int8
    graph is never whole in memory either (holding it, then serializing it, peaked at 5 GiB over the step's
    start on the 0.6B decoder).
    """
    if settings.weight_type != "QInt8" or not settings.per_channel:
        raise ExportError("quantize_matmuls writes per-channel QInt8 weights only")
    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    store = _Weights(source.parent, output, external)
    rewrite = _Rewrite(source.parent, store, qmax=64.0 if settings.reduce_range else 127.0)
    weights = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in graph.node:
        weight = _float_weight(node, weights)
        if weight is None:
            rewrite.nodes.append(node)
            continue
        rewrite.quantize(node, weight)
        uses[weight.name] -= 1
    if not rewrite.replaced:
        store.close()
        raise ExportError(f"{source.name} has no MatMul with a 2-D float weight to quantize")
    # the weights that stay fp32 (embeddings, norms): inline, or copied into the output's data file
    kept = [store.keep(t) for t in graph.initializer if uses.get(t.name, 1) > 0]
    store.close()
    del graph.node[:]
    graph.node.extend(rewrite.nodes)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *rewrite.added])
    replaced = rewrite.replaced
    del kept, rewrite
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    gc.collect()
    if external:
        onnx.save(model, str(output))  # the weights are in <output>.data already
    else:
        onnx_export.save_model(model, output)
    return replaced


# Below this inner dimension a MatMul is no layer's weight and int8 gains nothing. The one the fused graphs have
# is the rotary embedding's angles, positions [P, 1] x frequencies [1, H/2]: quantized, the positions would be
# rounded to steps of P/255 (2 positions at 512 tokens), the angles with them.
MIN_INNER = 16


def _float_weight(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """The 2-D float weight `node` multiplies by, when it is a MatMul of one worth int8 (else None)."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return None
    weight = weights.get(node.input[1])
    if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
        return None
    return weight if weight.dims[0] >= MIN_INNER else None


def _per_channel_int8(w: np.ndarray, qmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of a [in, out] weight with one scale per output column: (values, scales)."""
    absmax = np.abs(w).max(axis=0)
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8), scale


class _Rewrite:
    """The int8 graph's nodes and new initializers, built MatMul by MatMul."""

    def __init__(self, folder: Path, store: _Weights, *, qmax: float) -> None:
        self.folder, self.store, self.qmax = folder, store, qmax
        self.nodes: list[onnx.NodeProto] = []
        self.added: list[onnx.TensorProto] = []
        self.replaced = 0
        self._activations: dict[str, list[str]] = {}  # activation -> its quantized value, scale, zero point

    def quantize(self, node: onnx.NodeProto, weight: onnx.TensorProto) -> None:
        """`node` (a MatMul by `weight`) as MatMulIntegerToFloat of its quantized activation and weight."""
        q, scale = _per_channel_int8(_read(weight, self.folder), self.qmax)
        base = weight.name
        quantized = self.store.add(q, f"{base}_quantized")
        scales = numpy_helper.from_array(scale, f"{base}_scale")
        zero = numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), f"{base}_zero_point")
        self.added.extend([quantized, scales, zero])
        a_q, a_scale, a_zero = self._quantized_activation(node.input[0])
        self.nodes.append(
            helper.make_node(
                "MatMulIntegerToFloat",
                [a_q, quantized.name, a_scale, scales.name, a_zero, zero.name],
                list(node.output),
                name=f"{node.name or base}_quant",
                domain="com.microsoft",
            )
        )
        self.replaced += 1

    def _quantized_activation(self, activation: str) -> list[str]:
        """One DynamicQuantizeLinear per activation, shared by the MatMuls that read it (Q, K, V)."""
        if activation not in self._activations:
            outputs = [f"{activation}_{part}" for part in ("quantized", "scale", "zero_point")]
            self._activations[activation] = outputs
            self.nodes.append(
                helper.make_node(
                    "DynamicQuantizeLinear", [activation], outputs, name=f"{activation}_quantize"
                )
            )
        return self._activations[activation]


class _Weights:
    """Where the int8 graph's large tensors go: inline TensorProtos (a graph without external data, small), or
    `<output>.data`, written as they are made, each entry pointing at its bytes (a source with external
    data). Offsets of tensors of 1 MiB and more are multiples of 64 KiB (onnx's own layout)."""

    ALIGN, ALIGN_FROM = 65536, 2**20

    def __init__(self, folder: Path, output: Path, external: bool) -> None:
        self.folder = folder
        self.data = output.with_name(output.name + ".data")
        self.data.unlink(missing_ok=True)
        self._file = self.data.open("wb") if external else None

    def add(self, array: np.ndarray, name: str) -> onnx.TensorProto:
        if self._file is None:
            return numpy_helper.from_array(array, name)
        proto = onnx.TensorProto(name=name, dims=list(array.shape))
        proto.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        self._write(proto, array.nbytes, [np.ascontiguousarray(array).tobytes()])
        return proto

    def keep(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """A tensor that stays as it is: inline as before, or its bytes copied from the source data file."""
        if self._file is None or tensor.data_location != onnx.TensorProto.EXTERNAL:
            return tensor
        info = {e.key: e.value for e in tensor.external_data}
        offset, length = int(info.get("offset", 0)), int(info["length"])
        mapped = np.memmap(
            self.folder / info["location"], dtype=np.uint8, mode="r", offset=offset, shape=(length,)
        )
        chunk = 64 * 2**20
        self._write(tensor, length, (mapped[at : at + chunk].tobytes() for at in range(0, length, chunk)))
        del mapped
        return tensor

    def _write(self, tensor: onnx.TensorProto, size: int, pieces: Iterable[bytes]) -> None:
        out = self._file
        assert out is not None
        if size >= self.ALIGN_FROM and out.tell() % self.ALIGN:
            out.write(b"\0" * (self.ALIGN - out.tell() % self.ALIGN))
        start = out.tell()
        for piece in pieces:
            out.write(piece)
        length = out.tell() - start
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.data.name), ("offset", str(start)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """A float tensor's values, from its external data file (a memory map of its bytes) or inline."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    offset, length = int(info.get("offset", 0)), int(info["length"])
    mapped = np.memmap(folder / info["location"], dtype=np.uint8, mode="r", offset=offset, shape=(length,))
    values = np.frombuffer(mapped, dtype=np.float32).reshape(tuple(tensor.dims)).copy()
    del mapped
    return values
