"""fp32 ONNX export through optimum's exporter (plain ONNX ops, dynamic batch and sequence axes)."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import onnx

from export import dtypes
from export.errors import ExportError

DEFAULT_OPSET = 17


def export_fp32(model_dir: Path, output: Path, *, opset: int = DEFAULT_OPSET, quiet: bool = False) -> None:
    """Write output (model.onnx): text-classification task, no optimum validation (we run our own gate)."""
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".optimum-") as tmp:
        with _muted(quiet):
            try:
                main_export(
                    str(model_dir),
                    output=tmp,
                    task="text-classification",
                    opset=opset,
                    device="cpu",
                    do_validation=False,
                    local_files_only=True,
                )
            except Exception as exc:
                raise ExportError(f"ONNX export of {model_dir} failed: {type(exc).__name__}: {exc}") from exc
        produced = Path(tmp) / "model.onnx"
        if not produced.is_file():
            raise ExportError(f"optimum produced no model.onnx for {model_dir}")
        if any(p.name.endswith((".onnx_data", ".data")) for p in Path(tmp).iterdir()):
            # > 2 GB models keep weights outside the proto; re-save them as one file beside model.onnx
            model = onnx.load(str(produced), load_external_data=True)
            onnx.save(model, str(output), save_as_external_data=True, location=output.name + ".data")
        else:
            shutil.move(str(produced), output)
    check_plain(output)


def check_plain(path: Path) -> None:
    """The fp32 file is for Triton/TensorRT: only standard-domain ops, dynamic batch and sequence axes."""
    model = onnx.load(str(path), load_external_data=False)
    domains = {node.domain for node in model.graph.node} - {"", "ai.onnx"}
    if domains:
        raise ExportError(f"{path.name} uses non-standard op domains {sorted(domains)}")
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 2 or any(d.dim_value for d in dims):
            raise ExportError(f"{path.name}: input {value.name} is not [batch, sequence] with dynamic axes")


def graph_io(path: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Inputs and outputs as the graph declares them (never assumed: XLM-R has no token_type_ids)."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def entry(value: onnx.ValueInfoProto) -> dict[str, str]:
        try:
            dtype = dtypes.from_onnx(value.type.tensor_type.elem_type)
        except ValueError as exc:
            raise ExportError(f"{path.name}: {value.name}: {exc}") from exc
        return {"name": value.name, "dtype": dtype.name}

    inputs = [entry(v) for v in model.graph.input if v.name not in initializers]
    outputs = [entry(v) for v in model.graph.output]
    return inputs, outputs


def opset_of(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@contextlib.contextmanager
def _muted(quiet: bool):
    """optimum and torch print tracer and deprecation warnings a user cannot act on: hide them.

    Errors still raise; --quiet also swallows optimum's stdout chatter.
    """
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO() if quiet else sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
