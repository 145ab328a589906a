"""Derived variants: ORT-fused fp32 (CPU), dynamic int8 (CPU only), fp16 (GPU).

int8 stays on the CPU path: dynamically quantized ops have no CUDA kernels and fall back to the CPU under the
CUDA provider (optimum PR #407, onnxruntime #12229). Settings below were chosen by measurement on the
build machine (see INT8_SETTINGS and the report in model_repository/README.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from export import onnx_export
from export.errors import ExportError
from gateway.families import ort_optimizer


@dataclass(frozen=True)
class Int8Settings:
    """quantize_dynamic settings (recorded in the manifest).

    Measured on the L6 stand-in (160 parity pairs vs fp32 ONNX; ORT 1.31 CPU, 2 threads; figures in
    model_repository/README.md):
    - per-channel weights: Spearman 0.995; per-tensor 0.971 (fails the 0.98 gate), with reduce_range 0.861;
    - the ORT-fused graph (MatMul + fused Attention) runs ~15% faster than the plain graph's quantized MatMuls
      at the same accuracy; leaving Attention in fp32 is ~35% slower;
    - reduce_range (7-bit weights): same speed, slightly noisier here (L6 Spearman 0.9949 vs 0.9951, prefilter
      top-1 97.5% vs 100%), kept on by default because u8 x s8 products saturate int16 on AVX2 CPUs without
      VNNI (e.g. AMD Zen 2/3), where ORT recommends it; `--int8-full-range` for VNNI/AMX machines (the
      file then records that it needs one of VNNI_CPU_FLAGS, and a 7-bit file is kept beside it).
    """

    per_channel: bool = True
    reduce_range: bool = True
    weight_type: str = "QInt8"
    op_types: tuple[str, ...] = ("MatMul", "Attention")
    from_fused_graph: bool = True


INT8_SETTINGS = Int8Settings()

# Full-range (8-bit) u8 x s8 products accumulate without saturation only with one of these instructions
# (/proc/cpuinfo flag names); on plain AVX2 ORT's kernel saturates int16 and ranking accuracy drops.
VNNI_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# The variant that keeps the 7-bit file beside a full-range "int8" file (served on CPUs without VNNI).
PORTABLE_INT8_VARIANT = "int8-7bit"


def int8_requirement(settings: Int8Settings) -> dict[str, object]:
    """The manifest's `int8` entry: which CPUs the int8 file is accurate on."""
    if settings.reduce_range:
        return {"reduce_range": True, "requires": None}
    return {"reduce_range": False, "requires": "vnni", "requires_cpu_flags": list(VNNI_CPU_FLAGS)}


def fusion_unsupported(model_type: str) -> str | None:
    """Why no fused graph is built for this model type (None: ORT's optimizer knows it; the family table's
    `Backbone.ort_optimizer`)."""
    if ort_optimizer(model_type) is not None:
        return None
    return f"ONNX Runtime's transformer optimizer has no fusion for model_type {model_type!r}"


def optimize_fp32(source: Path, output: Path, model_type: str, *, num_heads: int, hidden_size: int) -> None:
    """Write an ORT-fused fp32 graph (Attention, SkipLayerNorm, BiasGelu); ExportError if that fails."""
    optimizer_type = ort_optimizer(model_type)
    if optimizer_type is None:
        raise ExportError(str(fusion_unsupported(model_type)))
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with _quiet_ort():
            optimized = optimize_model(
                str(source),
                model_type=optimizer_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                opt_level=1,
                use_gpu=False,
            )
            onnx_export.save_model(optimized.model, output)
    except Exception as exc:
        raise ExportError(f"ORT fusion of {source.name} failed: {type(exc).__name__}: {exc}") from exc


def quantize_int8(source: Path, output: Path, settings: Int8Settings = INT8_SETTINGS) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_ort():
        try:
            quantize_dynamic(
                str(source),
                str(output),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                weight_type=getattr(QuantType, settings.weight_type),
                op_types_to_quantize=list(settings.op_types),
                use_external_data_format=bool(onnx_export.external_files(source)),
                # fused com.microsoft ops defeat ONNX shape inference: their outputs are float32
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:
            raise ExportError(
                f"int8 quantization of {source.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
    if not output.is_file():
        raise ExportError(f"int8 quantization wrote no {output.name}")
    written = onnx_export.external_files(output)
    if written:  # one data file named after the graph, or none when the int8 weights fit inline
        model = onnx.load(str(output), load_external_data=True)
        for stale in written:
            stale.unlink(missing_ok=True)
        onnx_export.save_model(model, output)


@dataclass(frozen=True)
class GpuFusion:
    """What ONNX Runtime's transformer optimizer needs to fuse a graph for the CUDA provider."""

    model_type: str
    num_heads: int
    hidden_size: int

    def manifest(self) -> dict[str, object]:
        return {"model_type": self.model_type, "num_heads": self.num_heads, "hidden_size": self.hidden_size}


def convert_fp16(source: Path, output: Path, gpu_fusion: GpuFusion | None = None) -> None:
    """fp16 weights and math with int64 inputs and float32 logits kept, so the same client works.

    `gpu_fusion` (BERT-like encoders ONNX Runtime's optimizer knows, graphs without external data): the graph is
    first fused for the CUDA provider (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu;
    `optimize_model(use_gpu=True, opt_level=0)`: the optimizer's own passes only, no onnxruntime session, so the
    output is the same with or without a GPU here). On an H200 (`make gpu-check`, onnxruntime-gpu 1.31.1) the
    unfused fp16 graph ran 512-token pairs at 0.37x sentence-transformers' torch fp16, the fused one at 1.19x;
    but the fused Attention pays 64-80 ms for each batch shape it has not seen, so the export fuses only when
    asked (`--fp16-gpu-fusion`; `_Variants.build_all`).

    onnxruntime's converter (`convert_float_to_float16`: the graph's types, its casts around the ops that stay
    float32) runs on the graph with its inline tensors. Weights kept in an external data file (a graph over the
    protobuf limit: a 0.6B decoder's 2.2 GB) are not loaded with it: the converter only retypes them, and
    `_stream_external` then converts them one at a time from a memory map of the fp32 data file into
    `<output>.data`, so the peak memory is the graph plus one tensor (converting the whole loaded model peaked at
    11.5 GiB on the 0.6B decoder, 5x its fp32 file). A graph without external data converts as it always did.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if gpu_fusion is not None and not onnx_export.external_files(source):
        model = _fused_for_gpu(source, gpu_fusion)
    else:
        model = onnx.load(str(source), load_external_data=False)
    # External tensors go through the converter as dims alone (shape inference would look for their file):
    # their bytes stay in the fp32 data file until _stream_external reads them.
    external: dict[str, list[tuple[str, str]]] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external[tensor.name] = [(e.key, e.value) for e in tensor.external_data]
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    try:
        with _quiet_ort(), _value_info_from_dims(bool(external)):
            converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=None)
    except Exception as exc:
        raise ExportError(f"fp16 conversion of {source.name} failed: {type(exc).__name__}: {exc}") from exc
    if not external:
        onnx_export.save_model(converted, output)
        return
    for tensor in converted.graph.initializer:
        if tensor.name in external:
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in external[tensor.name]:
                tensor.external_data.add(key=key, value=value)
    _stream_external(converted, source.parent, output)


def _fused_for_gpu(source: Path, fusion: GpuFusion) -> onnx.ModelProto:
    optimizer_type = ort_optimizer(fusion.model_type)
    if optimizer_type is None:
        raise ExportError(str(fusion_unsupported(fusion.model_type)))
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with _quiet_ort():
            optimized = optimize_model(
                str(source),
                model_type=optimizer_type,
                num_heads=fusion.num_heads,
                hidden_size=fusion.hidden_size,
                opt_level=0,
                use_gpu=True,
            )
    except Exception as exc:
        raise ExportError(f"GPU fusion of {source.name} failed: {type(exc).__name__}: {exc}") from exc
    model = optimized.model
    # the optimizer declares its fused ops' domain only when it saves; the converter's shape inference needs it
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


# Elements converted at a time (16 MiB of float32): the converter's clamping makes several temporaries per call.
_FP16_CHUNK = 4 * 2**20
# Offsets of tensors of at least 1 MiB in the data file are multiples of 64 KiB (onnx's own external-data
# layout), so ONNX Runtime can map them.
_ALIGN, _ALIGN_FROM = 65536, 2**20


def _stream_external(model: onnx.ModelProto, folder: Path, output: Path) -> None:
    """Write model as output with its external tensors in `<output>.data`: each read alone from the data file
    it points at (in `folder`), converted to float16 where the converter retyped it (its own elementwise
    conversion, chunk by chunk: the same values as converting the whole tensor), copied as is otherwise."""
    import numpy as np
    from onnxruntime.transformers.float16 import convert_np_to_float16

    data = output.with_name(output.name + ".data")
    data.unlink(missing_ok=True)
    with data.open("wb") as out:
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            offset, length = int(info.get("offset", 0)), int(info["length"])
            mapped = np.memmap(
                folder / info["location"], dtype=np.uint8, mode="r", offset=offset, shape=(length,)
            )
            if length >= _ALIGN_FROM and out.tell() % _ALIGN:
                out.write(b"\0" * (_ALIGN - out.tell() % _ALIGN))
            start = out.tell()
            if tensor.data_type == onnx.TensorProto.FLOAT16 and length == 4 * _elements(tensor):
                values = np.frombuffer(
                    mapped, dtype=np.float32
                )  # retyped by the converter, still float32 bytes
                for at in range(0, values.size, _FP16_CHUNK):
                    out.write(convert_np_to_float16(values[at : at + _FP16_CHUNK]).tobytes())
            else:
                out.write(mapped.tobytes())
            del mapped
            del tensor.external_data[:]
            for key, value in (
                ("location", data.name),
                ("offset", str(start)),
                ("length", str(out.tell() - start)),
            ):
                tensor.external_data.add(key=key, value=value)
    onnx.save(model, str(output))


@contextlib.contextmanager
def _value_info_from_dims(active: bool) -> Iterator[None]:
    """The converter describes each converted initializer by `numpy_helper.to_array(tensor).shape`, which needs
    the tensor's bytes; its dims say the same without them (external tensors carry dims alone here)."""
    if not active:
        yield
        return
    from unittest import mock

    from onnx import helper
    from onnxruntime.transformers import float16

    def from_dims(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))

    with mock.patch.object(float16, "make_value_info_from_tensor", from_dims):
        yield


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count


def settings_dict(settings: Int8Settings) -> dict[str, object]:
    data = asdict(settings)
    data["op_types"] = list(settings.op_types)
    return data


@contextlib.contextmanager
def _quiet_ort():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
