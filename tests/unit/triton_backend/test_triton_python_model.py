"""export/triton_python_model.py (the python-backend model.py) and configs/cpu.pbtxt, outside Triton.

A stand-in for `triton_python_backend_utils` lets the model run here on the tiny exported model: requests of
different sequence lengths in one dynamic batch must each get exactly the logits ONNX Runtime gives alone.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from export import dtypes
from export.triton_repo import PYTHON_MODEL_SOURCE, render_python_cpu_config

INPUTS = [{"name": n, "dtype": "int64"} for n in ("input_ids", "attention_mask", "token_type_ids")]
OUTPUTS = [{"name": "logits", "dtype": "float32"}]


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_cpu_config_is_the_python_backend_with_the_gpu_configs_tensors() -> None:
    config = parse(render_python_cpu_config("reranker", INPUTS, OUTPUTS, 64))
    assert config.name == "reranker"
    assert config.backend == "python" and not config.platform
    assert config.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        (n["name"], model_config_pb2.TYPE_INT64, [-1]) for n in INPUTS
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", model_config_pb2.TYPE_FP32, [1])
    ]
    assert config.HasField("dynamic_batching")
    assert max(config.dynamic_batching.preferred_batch_size) <= 64
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert config.parameters["onnx_file"].string_value == "model.onnx"


def test_cpu_config_for_a_model_without_token_type_ids() -> None:
    config = parse(render_python_cpu_config("xlmr", INPUTS[:2], OUTPUTS, 8, onnx_file="model.opt.onnx"))
    assert [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.parameters["onnx_file"].string_value == "model.opt.onnx"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"inputs": []}, "at least one"),
        ({"onnx_file": "../model.onnx"}, "onnx_file"),
        ({"inputs": [{"name": "x", "dtype": "string"}]}, "no Triton data type"),
    ],
)
def test_cpu_config_rejects_what_triton_could_not_serve(kwargs: dict, message: str) -> None:
    arguments = {"name": "m", "inputs": INPUTS, "outputs": OUTPUTS, "max_batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        render_python_cpu_config(**arguments)


# --- the model.py, driven as the python backend would -----------------------------------------------------
class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: object = None) -> None:
        self.output_tensors, self.error = output_tensors, error


class _Error:
    def __init__(self, message: str) -> None:
        self.message = message


class _Request:
    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays


@pytest.fixture
def python_model(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = _Tensor  # type: ignore[attr-defined]
    utils.InferenceResponse = _Response  # type: ignore[attr-defined]
    utils.TritonError = _Error  # type: ignore[attr-defined]
    utils.TritonModelException = RuntimeError  # type: ignore[attr-defined]
    utils.get_input_tensor_by_name = lambda request, name: _Tensor(name, request.arrays[name])  # type: ignore[attr-defined]
    utils.triton_string_to_numpy = lambda triton_type: dtypes.from_triton(triton_type).numpy.type  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    monkeypatch.syspath_prepend(str(PYTHON_MODEL_SOURCE.parent))
    monkeypatch.delitem(sys.modules, "triton_python_model", raising=False)
    return importlib.import_module("triton_python_model")


def _initialized(python_model: types.ModuleType, model_dir: Path, inputs: list[dict]) -> object:
    config = parse(render_python_cpu_config(model_dir.name, inputs, OUTPUTS, 4))
    args = {
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(model_dir),
        "model_version": "1",
        "model_name": model_dir.name,
    }
    model = python_model.TritonPythonModel()
    model.initialize(args)
    return model


def _request(rows: int, length: int, seed: int) -> _Request:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, size=(rows, length), dtype=np.int64)
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[0, length // 2 :] = 0
    types_ = np.zeros_like(ids)
    types_[:, length // 2 :] = 1
    return _Request(input_ids=ids, attention_mask=mask, token_type_ids=types_)


def test_dynamic_batch_of_mixed_lengths_gives_each_request_its_own_logits(
    python_model: types.ModuleType, tiny_model_repository: Path
) -> None:
    model_dir = tiny_model_repository / "reranker"
    model = _initialized(python_model, model_dir, INPUTS)
    # its ONNX Runtime threads flush denormals to zero, as the gateway's do (gateway/denormals.py)
    options = model.session.get_session_options()  # type: ignore[attr-defined]
    assert options.get_session_config_entry("session.set_denormal_as_zero") == "1"
    requests = [_request(2, 16, 0), _request(3, 9, 1), _request(1, 16, 2), _request(4, 9, 3)]
    responses = model.execute(requests)

    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert len(responses) == len(requests)
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        (tensor,) = response.output_tensors
        assert tensor.name() == "logits"
        logits = tensor.as_numpy()
        expected = session.run(["logits"], request.arrays)[0]
        assert logits.dtype == np.float32 and logits.shape == (request.arrays["input_ids"].shape[0], 1)
        np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_an_onnx_runtime_failure_answers_the_requests_with_an_error(
    python_model: types.ModuleType, tiny_model_repository: Path
) -> None:
    model = _initialized(python_model, tiny_model_repository / "reranker", INPUTS)
    bad = _request(1, 8, 0)
    bad.arrays["input_ids"] = bad.arrays["input_ids"][:, :4]  # shapes disagree: ORT refuses the batch
    good = _request(2, 8, 1)
    responses = model.execute([bad, good])
    assert responses[0].error is not None and "ONNX Runtime" in responses[0].error.message
    assert responses[1].error is None


def test_a_config_naming_inputs_the_graph_lacks_fails_at_load(
    python_model: types.ModuleType, tiny_model_repository: Path
) -> None:
    with pytest.raises(RuntimeError, match="no inputs named"):
        _initialized(
            python_model, tiny_model_repository / "reranker", [*INPUTS, {"name": "pixel", "dtype": "int64"}]
        )
