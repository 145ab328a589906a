"""The protobuf config builder writes what the hand-concatenated pbtxt wrote, and one dtype table serves all.

golden_configs/*.pbtxt are the texts the former string renderers of export/triton_repo.py and
export/triton_cpu.py produced (commit d296cd3) for these arguments; old and new are parsed with text_format
and compared as ModelConfig messages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export import dtypes, triton_repo
from export.triton_repo import render_python_cpu_config

GOLDEN = Path(__file__).with_name("golden_configs")
BERT = [{"name": n, "dtype": "int64"} for n in ("input_ids", "attention_mask", "token_type_ids")]
XLMR = BERT[:2]
LOGITS = [{"name": "logits", "dtype": "float32"}]
SMALL = triton_repo.TritonSettings(
    max_batch_size=8, preferred_batch_sizes=(4, 8, 16), cpu_threads=4, cpu_instances=2
)

CASES = {
    "bert.gpu.pbtxt": lambda: triton_repo.render_gpu_config("reranker", BERT, LOGITS, max_length=512),
    "xlmr-small.gpu.pbtxt": lambda: triton_repo.render_gpu_config(
        "xlmr", XLMR, LOGITS, max_length=128, settings=SMALL
    ),
    "bert.cpu-onnxruntime.pbtxt": lambda: triton_repo.render_cpu_onnxruntime_config("reranker", BERT, LOGITS),
    "xlmr-small.cpu-onnxruntime.pbtxt": lambda: triton_repo.render_cpu_onnxruntime_config(
        "xlmr", XLMR, LOGITS, onnx_file="model.opt.onnx", settings=SMALL
    ),
    "bert.cpu.pbtxt": lambda: render_python_cpu_config("reranker", BERT, LOGITS, 64),
    "xlmr-small.cpu.pbtxt": lambda: render_python_cpu_config(
        "xlmr", XLMR, [{"name": "logits", "dtype": "float16", "dims": [1]}], 4, onnx_file="model.opt.onnx"
    ),
}


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("golden", sorted(CASES))
def test_built_config_equals_the_former_hand_written_text(golden: str) -> None:
    old = parse((GOLDEN / golden).read_text())
    new = parse(CASES[golden]())
    assert new == old, f"{golden} differs:\n{text_format.MessageToString(new)}"
    assert new.name and new.input and new.output  # not two empty messages


def test_a_changed_setting_changes_the_config() -> None:
    other = triton_repo.TritonSettings(max_queue_delay_us=500)
    new = parse(triton_repo.render_gpu_config("reranker", BERT, LOGITS, max_length=512, settings=other))
    assert new != parse((GOLDEN / "bert.gpu.pbtxt").read_text())
    assert new.dynamic_batching.max_queue_delay_microseconds == 500


def test_cpu_config_keeps_its_header_comment() -> None:
    text = render_python_cpu_config("reranker", BERT, LOGITS, 64)
    assert text.startswith("# Local CPU Triton") and "--model-config-name=cpu" in text.splitlines()[0]


@pytest.mark.parametrize("row", dtypes.DTYPES, ids=lambda d: d.name)
def test_dtype_row_agrees_with_onnx_triton_and_numpy(row: dtypes.DType) -> None:
    assert onnx.helper.tensor_dtype_to_np_dtype(row.onnx) == row.numpy == np.dtype(row.name)
    assert model_config_pb2.DataType.Name(model_config_pb2.DataType.Value(row.triton)) == row.triton
    assert row.triton == "TYPE_" + row.wire
    assert dtypes.by_name(row.name) is dtypes.from_onnx(row.onnx) is dtypes.from_triton(row.triton) is row


def test_unknown_dtypes_name_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no Triton data type for 'string'.*float16"):
        dtypes.by_name("string")
    with pytest.raises(ValueError, match="ONNX element type 8"):
        dtypes.from_onnx(onnx.TensorProto.STRING)
