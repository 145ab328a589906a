"""One table of tensor data types: the manifest's name, ONNX's element type, Triton's config and wire names.

The manifest writes a tensor's type as its numpy name ("int64", "float32"); Triton's config.pbtxt wants
`TYPE_INT64`, its inference protocol `INT64`, and the ONNX graph says `TensorProto.INT64` (7). Every
translation goes through `DTYPES`, so adding a type is one row. Import-light (numpy only): the exporter
and the tests load it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # manifest name, numpy's dtype name
    onnx: int  # onnx.TensorProto element type
    triton: str  # model_config_pb2.DataType name (config.pbtxt)
    wire: str  # Triton inference protocol datatype (tritonclient InferInput)

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.name)


DTYPES = (
    DType("int64", 7, "TYPE_INT64", "INT64"),
    DType("int32", 6, "TYPE_INT32", "INT32"),
    DType("float32", 1, "TYPE_FP32", "FP32"),
    DType("float16", 10, "TYPE_FP16", "FP16"),
)
_BY_NAME = {d.name: d for d in DTYPES}
_BY_ONNX = {d.onnx: d for d in DTYPES}
_BY_TRITON = {d.triton: d for d in DTYPES}


def by_name(name: str) -> DType:
    """The row for a manifest dtype; a ValueError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"no Triton data type for {name!r} (known: {sorted(_BY_NAME)})") from None


def from_onnx(elem_type: int) -> DType:
    try:
        return _BY_ONNX[elem_type]
    except KeyError:
        raise ValueError(
            f"ONNX element type {elem_type} has no Triton data type (known: {sorted(_BY_ONNX)})"
        ) from None


def from_triton(triton: str) -> DType:
    try:
        return _BY_TRITON[triton]
    except KeyError:
        raise ValueError(f"unknown Triton data type {triton!r} (known: {sorted(_BY_TRITON)})") from None
