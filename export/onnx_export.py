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
# Above this many bytes of weights a graph is saved with its tensors in one external data file
# (`<file>.data` beside it): a protobuf message cannot exceed 2 GiB (bge-reranker-v2-m3 fp32 does), and the
# export's later steps (the fused graph's save, fp16, int8) stream external tensors instead of copying the whole
# model: a 16-layer decoder's 1.6 GB graph saved inline peaked at 9.8 GiB in its export.
# Module-level so tests can force it on a tiny model.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_000_000_000


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
        save_from(produced, output)
    check_plain(output)


def weights_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers (inline or external)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in tensor.external_data}.get("length", 0))
        else:
            total += len(tensor.raw_data) or tensor.ByteSize()
    return total


def save_model(model: onnx.ModelProto, output: Path) -> None:
    """Save `model` as output, with one external data file `<output>.data` when its weights are larger than
    EXTERNAL_DATA_THRESHOLD_BYTES (a stale data file from an earlier save is removed)."""
    data = output.with_name(output.name + ".data")
    data.unlink(missing_ok=True)
    if weights_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save(model, str(output), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)  # fmt: skip
    else:
        onnx.save(model, str(output))


def save_from(source: Path, output: Path) -> None:
    """Re-save the graph at `source` (any external data beside it loaded) as output, see save_model."""
    if not external_files(source) and source.stat().st_size <= EXTERNAL_DATA_THRESHOLD_BYTES:
        output.with_name(output.name + ".data").unlink(missing_ok=True)
        shutil.move(str(source), output)
        return
    save_model(onnx.load(str(source), load_external_data=True), output)


def external_files(path: Path) -> list[Path]:
    """The external data files the graph at `path` refers to (none for a self-contained file)."""
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return [path.parent / loc for loc in sorted(locations)]


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
