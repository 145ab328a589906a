"""Triton python-backend model: runs the exported ONNX file with ONNX Runtime on the CPU.

The exporter copies this file to `<model>/1/model.py`; `configs/cpu.pbtxt` selects it. It exists because the
tritonserver in the `nvidia-pytriton` wheel has no onnxruntime backend. It runs inside Triton's python stub,
whose environment needs `numpy<2` and the `onnxruntime` package; it must not import anything from this
project (the model repository is self-contained).

Config parameters: `onnx_file` (relative to the version folder, default "model.onnx") and
`intra_op_num_threads` ("0" lets ONNX Runtime decide).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


class TritonPythonModel:
    """One ONNX Runtime session per model instance; a dynamic batch is run in as few calls as possible."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path = os.path.join(version_dir, _parameter(config, "onnx_file", "model.onnx"))

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(config, "intra_op_num_threads", "0"))
        options.inter_op_num_threads = 1
        # Denormals flushed to zero on ONNX Runtime's threads (and on this one, by its first session): a masked
        # attention makes them, and the CPU computes with them on a slow path (gateway/denormals.py).
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

        self.input_names = [tensor["name"] for tensor in config["input"]]
        graph_inputs = {node.name for node in self.session.get_inputs()}
        missing = [name for name in self.input_names if name not in graph_inputs]
        if missing:
            raise pb_utils.TritonModelException(f"{onnx_path} has no inputs named {missing}")
        # Triton's own TYPE_* -> numpy table (this file may not import the project's export.dtypes)
        self.input_dtypes = {
            tensor["name"]: pb_utils.triton_string_to_numpy(tensor["data_type"]) for tensor in config["input"]
        }
        self.outputs = [
            (tensor["name"], pb_utils.triton_string_to_numpy(tensor["data_type"]))
            for tensor in config["output"]
        ]

    def execute(self, requests: list) -> list:
        # Requests whose inputs have the same shape (apart from the batch axis) are concatenated and run
        # together; different sequence lengths are run separately rather than re-padded, so every request
        # gets exactly the logits it would get alone.
        arrays = []
        for request in requests:
            arrays.append(
                {
                    name: pb_utils.get_input_tensor_by_name(request, name)
                    .as_numpy()
                    .astype(self.input_dtypes[name], copy=False)
                    for name in self.input_names
                }
            )
        groups: dict[tuple, list[int]] = {}
        for index, feed in enumerate(arrays):
            key = tuple(feed[name].shape[1:] for name in self.input_names)
            groups.setdefault(key, []).append(index)

        results: list = [None] * len(requests)
        output_names = [name for name, _ in self.outputs]
        for members in groups.values():
            feed = {name: np.concatenate([arrays[i][name] for i in members]) for name in self.input_names}
            try:
                produced = self.session.run(output_names, feed)
            except Exception as exc:  # an ORT failure answers these requests, the model stays up
                error = pb_utils.TritonError(f"ONNX Runtime failed: {exc}")
                for i in members:
                    results[i] = pb_utils.InferenceResponse(output_tensors=[], error=error)
                continue
            start = 0
            for i in members:
                rows = arrays[i][self.input_names[0]].shape[0]
                tensors = []
                for (name, dtype), value in zip(self.outputs, produced, strict=True):
                    part = np.ascontiguousarray(value[start : start + rows], dtype=dtype)
                    if part.ndim == 1:
                        part = part.reshape(rows, 1)
                    tensors.append(pb_utils.Tensor(name, part))
                results[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += rows
        return results

    def finalize(self) -> None:
        self.session = None
