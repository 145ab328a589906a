"""Triton config.pbtxt files written from the ONNX graph's real inputs and outputs.

Three configs per model, selectable with tritonserver's --model-config-name:
- config.pbtxt                  GPU default: onnxruntime_onnx, KIND_GPU, TensorRT fp16 with an engine cache and
                                optimization profiles, warmup, ONNX Runtime memory parameters at model level
                                (the backend resets anything not set there to its own defaults);
- configs/cpu-onnxruntime.pbtxt onnxruntime_onnx on KIND_CPU running the int8 file (NGC image, no GPU);
- configs/cpu.pbtxt             python backend running ONNX Runtime on the CPU (`python_cpu_config`), for the
                                local tritonserver that ships no onnxruntime backend.

Each is built as a `tritonclient.grpc.model_config_pb2.ModelConfig` and printed with protobuf's text_format,
so a misspelt field fails here rather than in tritonserver; data types come from export.dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from export import dtypes

TRT_ENGINE_CACHE_ROOT = "/tmp/trt-engine-cache"
PYTHON_CPU_PREFERRED_BATCH_SIZES = (8, 16, 32, 64)


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


def render(config: pb.ModelConfig, header: str = "") -> str:
    """config.pbtxt text; `header` lines become comments at the top."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + text_format.MessageToString(config)


def _data_type(dtype: str) -> int:
    return int(pb.DataType.Value(dtypes.by_name(dtype).triton))


def _tensors(repeated: object, entries: Sequence[Mapping[str, object]], default_dims: Sequence[int]) -> None:
    """Fill `config.input` / `config.output` from manifest entries ({"name", "dtype"}, optional "dims")."""
    for entry in entries:
        tensor = repeated.add()  # type: ignore[attr-defined]
        tensor.name = str(entry["name"])
        tensor.data_type = _data_type(str(entry["dtype"]))
        tensor.dims.extend(int(d) for d in entry.get("dims", default_dims))  # type: ignore[attr-defined]


def _base(
    name: str,
    inputs: Sequence[Mapping[str, object]],
    outputs: Sequence[Mapping[str, object]],
    *,
    max_batch_size: int,
    preferred: Sequence[int],
    max_queue_delay_us: int,
    instances: int,
    kind: int,
) -> pb.ModelConfig:
    """What every config shares: name, batch bound, [batch, sequence] inputs, one logit out, dynamic batching."""
    config = pb.ModelConfig(name=name, max_batch_size=max_batch_size)
    _tensors(config.input, inputs, [-1])
    _tensors(config.output, outputs, [1])
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.instance_group.add(count=instances, kind=kind)
    return config


def _parameters(config: pb.ModelConfig, values: Sequence[tuple[str, str | int]]) -> None:
    for key, value in values:
        config.parameters[key].string_value = str(value)


def _shapes(inputs: Sequence[Mapping[str, object]], batch: int, length: int) -> str:
    return ",".join(f"{e['name']}:{batch}x{length}" for e in inputs)


def _preferred(settings: TritonSettings) -> list[int]:
    return [b for b in settings.preferred_batch_sizes if b <= settings.max_batch_size]


def gpu_config(
    name: str,
    inputs: Sequence[Mapping[str, object]],
    outputs: Sequence[Mapping[str, object]],
    *,
    max_length: int,
    settings: TritonSettings = TritonSettings(),
) -> pb.ModelConfig:
    """Default config: fp32 ONNX on the GPU with TensorRT building fp16 engines (never int8 here)."""
    opt_len = min(settings.opt_length, max_length)
    opt_batch = min(settings.opt_batch, settings.max_batch_size)
    config = _base(
        name, inputs, outputs,
        max_batch_size=settings.max_batch_size, preferred=_preferred(settings),
        max_queue_delay_us=settings.max_queue_delay_us, instances=settings.gpu_instances,
        kind=pb.ModelInstanceGroup.KIND_GPU,
    )  # fmt: skip
    config.platform = "onnxruntime_onnx"
    config.default_model_filename = "model.onnx"
    tensorrt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    tensorrt.parameters.update(
        {
            "precision_mode": "FP16",
            "max_workspace_size_bytes": str(settings.trt_workspace_bytes),
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": f"{TRT_ENGINE_CACHE_ROOT}/{name}",
            "trt_timing_cache_enable": "true",
            "trt_timing_cache_path": f"{TRT_ENGINE_CACHE_ROOT}/{name}",
            "trt_layer_norm_fp32_fallback": "true",
            "trt_profile_min_shapes": _shapes(inputs, 1, 1),
            "trt_profile_opt_shapes": _shapes(inputs, opt_batch, opt_len),
            "trt_profile_max_shapes": _shapes(inputs, settings.max_batch_size, max_length),
        }
    )
    # Zero-filled warmup (token id 0 is [PAD] and always valid): builds the TensorRT engine at load time.
    for batch_size in (1, opt_batch):
        warmup = config.model_warmup.add(name=f"warmup_b{batch_size}_l{opt_len}", batch_size=batch_size)
        for entry in inputs:
            warmup.inputs[str(entry["name"])].CopyFrom(
                pb.ModelWarmup.Input(
                    data_type=_data_type(str(entry["dtype"])), dims=[opt_len], zero_data=True
                )
            )
    _parameters(
        config,
        [
            # ONNX Runtime memory: set at model level, or the backend applies its own defaults
            ("gpu_mem_limit", settings.gpu_mem_limit_bytes),
            # kSameAsRequested: no power-of-two over-allocation; no arena shrinkage (it would cudaFree/cudaMalloc
            # on every request), gpu_mem_limit bounds the arena instead
            ("arena_extend_strategy", 1),
            ("cudnn_conv_algo_search", 1),  # heuristic: no exhaustive search at load
            ("enable_mem_pattern", 1),
        ],
    )
    return config


def cpu_onnxruntime_config(
    name: str,
    inputs: Sequence[Mapping[str, object]],
    outputs: Sequence[Mapping[str, object]],
    *,
    onnx_file: str = "model.int8.onnx",
    settings: TritonSettings = TritonSettings(),
) -> pb.ModelConfig:
    """onnxruntime_onnx on KIND_CPU: the int8 file (int8 belongs to the CPU path only)."""
    config = _base(
        name, inputs, outputs,
        max_batch_size=settings.max_batch_size, preferred=_preferred(settings),
        max_queue_delay_us=settings.max_queue_delay_us, instances=settings.cpu_instances,
        kind=pb.ModelInstanceGroup.KIND_CPU,
    )  # fmt: skip
    config.platform = "onnxruntime_onnx"
    config.default_model_filename = onnx_file
    _parameters(config, [("enable_mem_arena", 1), ("enable_mem_pattern", 1)])
    if settings.cpu_threads:
        _parameters(config, [("intra_op_thread_count", settings.cpu_threads), ("inter_op_thread_count", 1)])
    return config


def python_cpu_config(
    name: str,
    inputs: Sequence[Mapping[str, object]],
    outputs: Sequence[Mapping[str, object]],
    max_batch_size: int,
    onnx_file: str = "model.onnx",
) -> pb.ModelConfig:
    """`configs/cpu.pbtxt`: the python backend running `onnx_file` (relative to the version folder)."""
    if max_batch_size <= 0:
        raise ValueError("max_batch_size must be > 0: the python model batches requests on the first axis")
    if not inputs or not outputs:
        raise ValueError("a model needs at least one input and one output")
    if "/" in onnx_file or "\\" in onnx_file:
        raise ValueError(f"onnx_file must be a file name inside the version folder, got {onnx_file!r}")
    preferred = [s for s in PYTHON_CPU_PREFERRED_BATCH_SIZES if s <= max_batch_size] or [max_batch_size]
    config = _base(
        name, inputs, outputs,
        max_batch_size=int(max_batch_size), preferred=preferred, max_queue_delay_us=2000, instances=1,
        kind=pb.ModelInstanceGroup.KIND_CPU,
    )  # fmt: skip
    config.backend = "python"
    _parameters(config, [("onnx_file", onnx_file), ("intra_op_num_threads", "0")])
    return config


def render_gpu_config(
    name: str,
    inputs: Sequence[Mapping[str, object]],
    outputs: Sequence[Mapping[str, object]],
    *,
    max_length: int,
    settings: TritonSettings = TritonSettings(),
) -> str:
    return render(gpu_config(name, inputs, outputs, max_length=max_length, settings=settings))


def render_cpu_onnxruntime_config(
    name: str,
    inputs: Sequence[Mapping[str, object]],
    outputs: Sequence[Mapping[str, object]],
    *,
    onnx_file: str = "model.int8.onnx",
    settings: TritonSettings = TritonSettings(),
) -> str:
    return render(cpu_onnxruntime_config(name, inputs, outputs, onnx_file=onnx_file, settings=settings))
