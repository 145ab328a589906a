"""Triton config.pbtxt files written from the ONNX graph's real inputs and outputs.

Three configs per model, selectable with tritonserver's --model-config-name:
- config.pbtxt                  GPU default: onnxruntime_onnx, KIND_GPU, TensorRT fp16 with an engine cache and
                                optimization profiles, warmup, ONNX Runtime memory parameters at model level
                                (the backend resets anything not set there to its own defaults);
- configs/cpu-onnxruntime.pbtxt onnxruntime_onnx on KIND_CPU running the int8 file (NGC image, no GPU);
- configs/cpu.pbtxt             python backend running ONNX Runtime on the CPU (export.triton_cpu), for the
                                local tritonserver that ships no onnxruntime backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_TRITON_TYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}

TRT_ENGINE_CACHE_ROOT = "/tmp/trt-engine-cache"


@dataclass(frozen=True)
class TritonSettings:
    """Serving shapes: max_batch_size bounds a dynamic batch, max_length the sequence axis."""

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (16, 32, 64)
    max_queue_delay_us: int = 2000
    gpu_instances: int = 1
    cpu_instances: int = 1
    cpu_threads: int = 0  # 0 = ONNX Runtime's default (all cores)
    opt_batch: int = 32
    opt_length: int = 256
    gpu_mem_limit_bytes: int = 4 << 30
    trt_workspace_bytes: int = 2 << 30


def _io_block(kind: str, entries: Sequence[dict[str, str]], dims: str) -> str:
    rows = []
    for entry in entries:
        rows.append(
            "  {\n"
            f'    name: "{entry["name"]}"\n'
            f"    data_type: {_TRITON_TYPES[entry['dtype']]}\n"
            f"    dims: [ {dims} ]\n"
            "  }"
        )
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def _param(key: str, value: str | int) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def _batching(settings: TritonSettings) -> str:
    preferred = [b for b in settings.preferred_batch_sizes if b <= settings.max_batch_size]
    return (
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]\n"
        f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}\n"
        "}\n"
    )


def _warmup(inputs: Sequence[dict[str, str]], batch_size: int, length: int) -> str:
    """Zero-filled warmup (token id 0 is [PAD] and always valid): builds the TensorRT engine at load time."""
    blocks = []
    for entry in inputs:
        blocks.append(
            f'    inputs {{ key: "{entry["name"]}" value: {{ data_type: {_TRITON_TYPES[entry["dtype"]]} '
            f"dims: [ {length} ] zero_data: true }} }}"
        )
    return (
        f'  {{\n    name: "warmup_b{batch_size}_l{length}"\n    batch_size: {batch_size}\n'
        + "\n".join(blocks)
        + "\n  }"
    )


def _shapes(inputs: Sequence[dict[str, str]], batch: int, length: int) -> str:
    return ",".join(f"{e['name']}:{batch}x{length}" for e in inputs)


def render_gpu_config(
    name: str,
    inputs: Sequence[dict[str, str]],
    outputs: Sequence[dict[str, str]],
    *,
    max_length: int,
    settings: TritonSettings = TritonSettings(),
) -> str:
    """Default config: fp32 ONNX on the GPU with TensorRT building fp16 engines (never int8 here)."""
    opt_len = min(settings.opt_length, max_length)
    opt_batch = min(settings.opt_batch, settings.max_batch_size)
    trt = [
        ("precision_mode", "FP16"),
        ("max_workspace_size_bytes", settings.trt_workspace_bytes),
        ("trt_engine_cache_enable", "true"),
        ("trt_engine_cache_path", f"{TRT_ENGINE_CACHE_ROOT}/{name}"),
        ("trt_timing_cache_enable", "true"),
        ("trt_timing_cache_path", f"{TRT_ENGINE_CACHE_ROOT}/{name}"),
        ("trt_layer_norm_fp32_fallback", "true"),
        ("trt_profile_min_shapes", _shapes(inputs, 1, 1)),
        ("trt_profile_opt_shapes", _shapes(inputs, opt_batch, opt_len)),
        ("trt_profile_max_shapes", _shapes(inputs, settings.max_batch_size, max_length)),
    ]
    trt_params = "\n".join(f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in trt)
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        'default_model_filename: "model.onnx"\n'
        f"max_batch_size: {settings.max_batch_size}\n"
        + _io_block("input", inputs, "-1")
        + _io_block("output", outputs, "1")
        + _batching(settings)
        + f"instance_group [\n  {{\n    count: {settings.gpu_instances}\n    kind: KIND_GPU\n  }}\n]\n"
        + "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n    {\n"
        + '      name: "tensorrt"\n'
        + trt_params
        + "\n    }\n    ]\n  }\n}\n"
        + "model_warmup [\n"
        + _warmup(inputs, 1, opt_len)
        + ",\n"
        + _warmup(inputs, opt_batch, opt_len)
        + "\n]\n"
        # ONNX Runtime memory: set at model level, or the backend applies its own defaults
        + _param("gpu_mem_limit", settings.gpu_mem_limit_bytes)
        # kSameAsRequested: no power-of-two over-allocation; no arena shrinkage (it would cudaFree/cudaMalloc
        # on every request), gpu_mem_limit bounds the arena instead
        + _param("arena_extend_strategy", 1)
        + _param("cudnn_conv_algo_search", 1)  # heuristic: no exhaustive search at load
        + _param("enable_mem_pattern", 1)
    )


def render_cpu_onnxruntime_config(
    name: str,
    inputs: Sequence[dict[str, str]],
    outputs: Sequence[dict[str, str]],
    *,
    onnx_file: str = "model.int8.onnx",
    settings: TritonSettings = TritonSettings(),
) -> str:
    """onnxruntime_onnx on KIND_CPU: the int8 file (int8 belongs to the CPU path only)."""
    text = (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f'default_model_filename: "{onnx_file}"\n'
        f"max_batch_size: {settings.max_batch_size}\n"
        + _io_block("input", inputs, "-1")
        + _io_block("output", outputs, "1")
        + _batching(settings)
        + f"instance_group [\n  {{\n    count: {settings.cpu_instances}\n    kind: KIND_CPU\n  }}\n]\n"
        + _param("enable_mem_arena", 1)
        + _param("enable_mem_pattern", 1)
    )
    if settings.cpu_threads:
        text += _param("intra_op_thread_count", settings.cpu_threads)
        text += _param("inter_op_thread_count", 1)
    return text
