"""Every generated config.pbtxt parses as a Triton ModelConfig and matches the ONNX graph it serves."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export import triton_repo

MODELS = ("reranker", "prefilter")


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def graph_inputs(onnx_path: Path) -> list[str]:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return [i.name for i in session.get_inputs()]


@pytest.mark.parametrize("model", MODELS)
def test_gpu_config_serves_the_graph_inputs_on_gpu_with_tensorrt_fp16(
    tiny_model_repository: Path, model: str
):
    folder = tiny_model_repository / model
    config = parse(folder / "config.pbtxt")
    names = graph_inputs(folder / "1" / "model.onnx")

    assert config.name == model == folder.name
    assert config.platform == "onnxruntime_onnx"
    assert config.default_model_filename == "model.onnx"
    assert config.max_batch_size > 0
    assert [i.name for i in config.input] == names == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.data_type == model_config_pb2.TYPE_INT64 and list(i.dims) == [-1] for i in config.input)
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", model_config_pb2.TYPE_FP32, [1])
    ]
    assert config.HasField("dynamic_batching")
    assert max(config.dynamic_batching.preferred_batch_size) <= config.max_batch_size
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]

    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]
    trt = dict(accelerators[0].parameters)
    assert trt["precision_mode"] == "FP16"
    assert trt["trt_engine_cache_enable"] == "true"
    assert trt["trt_engine_cache_path"].endswith(f"/{model}")
    manifest = json.loads((folder / "manifest.json").read_text())
    for key, (batch, length) in {
        "trt_profile_min_shapes": (1, 1),
        "trt_profile_max_shapes": (config.max_batch_size, manifest["max_length"]),
    }.items():
        assert trt[key] == ",".join(f"{n}:{batch}x{length}" for n in names)
    assert {p.split(":")[0] for p in trt["trt_profile_opt_shapes"].split(",")} == set(names)

    assert config.model_warmup, "warmup builds the TensorRT engine at load time"
    for warmup in config.model_warmup:
        assert set(warmup.inputs) == set(names)
        assert all(w.zero_data for w in warmup.inputs.values())

    params = {k: v.string_value for k, v in config.parameters.items()}
    assert int(params["gpu_mem_limit"]) > 0
    assert params["arena_extend_strategy"] == "1"


@pytest.mark.parametrize("model", MODELS)
def test_cpu_onnxruntime_config_runs_the_int8_file_on_cpu(tiny_model_repository: Path, model: str):
    folder = tiny_model_repository / model
    config = parse(folder / "configs" / "cpu-onnxruntime.pbtxt")
    gpu = parse(folder / "config.pbtxt")

    assert config.name == model
    assert config.platform == "onnxruntime_onnx"
    assert (folder / "1" / config.default_model_filename).is_file()
    assert config.default_model_filename == "model.int8.onnx"
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert config.input == gpu.input and config.output == gpu.output
    assert config.max_batch_size == gpu.max_batch_size
    assert graph_inputs(folder / "1" / "model.int8.onnx") == [i.name for i in config.input]


@pytest.mark.parametrize("model", MODELS)
def test_python_cpu_config_has_the_gpu_configs_interface(tiny_model_repository: Path, model: str):
    folder = tiny_model_repository / model
    config = parse(folder / "configs" / "cpu.pbtxt")
    gpu = parse(folder / "config.pbtxt")

    assert config.name == model
    assert config.backend == "python"
    assert (folder / "1" / "model.py").is_file()
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        (i.name, i.data_type, list(i.dims)) for i in gpu.input
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        (o.name, o.data_type, list(o.dims)) for o in gpu.output
    ]
    assert config.max_batch_size == gpu.max_batch_size


def test_configs_follow_the_graph_for_a_model_without_token_type_ids():
    """XLM-RoBERTa graphs have no token_type_ids: nothing in the config may mention it."""
    inputs = [{"name": "input_ids", "dtype": "int64"}, {"name": "attention_mask", "dtype": "int64"}]
    outputs = [{"name": "logits", "dtype": "float32"}]
    settings = triton_repo.TritonSettings(max_batch_size=8, preferred_batch_sizes=(4, 8, 16))
    gpu_text = triton_repo.render_gpu_config("xlmr", inputs, outputs, max_length=128, settings=settings)
    gpu = text_format.Parse(gpu_text, model_config_pb2.ModelConfig())
    cpu = text_format.Parse(
        triton_repo.render_cpu_onnxruntime_config("xlmr", inputs, outputs, settings=settings),
        model_config_pb2.ModelConfig(),
    )

    assert "token_type_ids" not in gpu_text
    assert [i.name for i in gpu.input] == [i.name for i in cpu.input] == ["input_ids", "attention_mask"]
    assert list(gpu.dynamic_batching.preferred_batch_size) == [4, 8]
    trt = dict(gpu.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)
    assert trt["trt_profile_max_shapes"] == "input_ids:8x128,attention_mask:8x128"
    assert all(set(w.inputs) == {"input_ids", "attention_mask"} for w in gpu.model_warmup)
