"""Build a validated Triton model repository from one or two cross-encoders.

Everything is written into a staging folder beside the output; the model folders replace their old versions
only after the fp32 graph of every model matched PyTorch, so a failed export leaves the previous repository
(or none) untouched. A reduced-precision or fused variant (int8, fp16, fp32-opt) that cannot be built or
misses its bound is left out of the folder, its reason printed and recorded in `variants_skipped`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export import decoder_prefix, fusion, gate_size, onnx_export, quantize, triton_repo, validate
from export.errors import ExportError, ParityError, SourceError
from export.families import Family
from export.sources import TOKENIZER_FILES, ModelSource, file_sha256, resolve_source

# The gateway reads the same flags when it picks the int8 file to serve: one reader for both.
from gateway.cpu_features import cpu_flags as read_cpu_flags
from gateway.families import positions_after_padding
from gateway.heap import release_heap

# The gateway's pair tokenizer: the gate encodes its pairs with the code that will serve them.
from gateway.tokenization import tokenizer_from_manifest

SAME_AS_MODEL = ("same", "reranker")
NO_PREFILTER = ("", "none")
# Measured on the build machine (see model_repository/README.md): the fused fp32 graph is faster on the CPU
KEEP_FUSED_FP32 = True
BUILD_FP16 = True


class Progress:
    """Step timings for a person at a terminal; silent with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """Shown with --quiet too: the repository differs from what was asked for."""
        print(f"warning: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, message: str):
        start = time.perf_counter()
        if not self.quiet:
            print(f"  {message} ...", end="", file=sys.stderr, flush=True)
        try:
            yield
        except BaseException:
            if not self.quiet:
                print(" failed", file=sys.stderr, flush=True)
            raise
        release_heap()  # what the step freed goes back to the OS, not into the next step's peak
        if not self.quiet:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
            print(
                f" {time.perf_counter() - start:.1f}s (peak RSS so far {peak:.1f} GiB)",
                file=sys.stderr,
                flush=True,
            )


def build_repository(
    model: str,
    prefilter: str | None,
    output: Path,
    *,
    name: str = "reranker",
    prefilter_name: str = "prefilter",
    max_length: int | None = None,
    quiet: bool = False,
    opset: int = onnx_export.DEFAULT_OPSET,
    thresholds: validate.Thresholds | None = None,
    revision: str | None = None,
    int8: quantize.Int8Settings = quantize.INT8_SETTINGS,
    cpu_flags: Callable[[], frozenset[str]] = read_cpu_flags,
    template: str | None = None,
    fp16_gpu_fusion: bool = False,
) -> dict[str, dict[str, Any]]:
    """Export, validate and install `name` (and `prefilter_name`) under output; returns the manifests.

    prefilter: a hub id or folder; "same" uses the cross-encoder itself (its int8 file on the CPU);
    None / "none" builds no prefilter. `cpu_flags` (this CPU's /proc/cpuinfo flags; injectable for tests)
    decides whether a requested full-range int8 file can be validated here. `template` names a decoder
    reranker's prompt (gateway.families.TEMPLATES) where the model folder does not say it. `thresholds` sets
    gate bounds in place of each model family's own (gateway.families.GateBounds). `fp16_gpu_fusion`: the fp16
    file of a BERT-like encoder fused for the CUDA provider (off by default: `_Variants.build_all` says why).
    """
    started = time.perf_counter()
    output = Path(output).resolve()
    thresholds = thresholds or validate.Thresholds()
    progress = Progress(quiet)
    if opset < 17:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset >= 17")
    if prefilter is not None and prefilter.strip().lower() in NO_PREFILTER:
        prefilter = None
    if prefilter is not None and name == prefilter_name:
        raise ExportError(f"the model and the prefilter need different names (both are {name!r})")

    source = resolve_source(model, revision=revision, quiet=quiet, template=template)
    prefilter_source: ModelSource | None = None
    same = prefilter is not None and prefilter.strip().lower() in SAME_AS_MODEL
    if prefilter is not None and not same:
        try:
            prefilter_source = resolve_source(prefilter, quiet=quiet)
        except SourceError as exc:
            raise SourceError(
                f"prefilter: {exc} (pass --prefilter same to use the cross-encoder's int8 file as the "
                "prefilter, or --prefilter none)"
            ) from exc

    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.build-"))
    try:
        manifests: dict[str, dict[str, Any]] = {}

        def build_one(src: ModelSource, model_name: str, role: str) -> dict[str, Any]:
            progress.info(f"{model_name}: {src.spec}")
            return _build_model(
                src,
                staging / model_name,
                name=model_name,
                role=role,
                max_length=max_length,
                opset=opset,
                thresholds=thresholds,
                progress=progress,
                quiet=quiet,
                int8=int8,
                cpu_flags=cpu_flags(),
                fp16_gpu_fusion=fp16_gpu_fusion,
            )

        manifests[name] = build_one(source, name, "reranker")
        if same:
            progress.info(f"{prefilter_name}: the cross-encoder itself (int8 on the CPU)")
            manifests[prefilter_name] = _copy_as(
                staging / name, staging / prefilter_name, prefilter_name, manifests[name]
            )
        elif prefilter_source is not None:
            manifests[prefilter_name] = build_one(prefilter_source, prefilter_name, "prefilter")
        elapsed = round(time.perf_counter() - started, 2)
        for model_name, manifest in manifests.items():
            manifest["export_seconds"] = elapsed
            _write_json(staging / model_name / "manifest.json", manifest)
        for model_name in manifests:
            _install(staging / model_name, output / model_name)
        progress.info(f"wrote {', '.join(str(output / n) for n in manifests)} in {elapsed:.1f}s")
        return manifests
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_model(
    source: ModelSource,
    folder: Path,
    *,
    name: str,
    role: str,
    max_length: int | None,
    opset: int,
    thresholds: validate.Thresholds,
    progress: Progress,
    quiet: bool,
    int8: quantize.Int8Settings,
    cpu_flags: frozenset[str],
    fp16_gpu_fusion: bool = False,
) -> dict[str, Any]:
    """Export, gate and lay out one model folder.

    The fp32 graph must match PyTorch (else ParityError: nothing is written); each reduced-precision or
    fused variant that fails to build or misses its bound is left out, its reason in `variants_skipped`.
    """
    from transformers import AutoConfig, AutoTokenizer

    family = source.family
    version_dir = folder / "1"
    version_dir.mkdir(parents=True)
    config = AutoConfig.from_pretrained(source.folder)
    tokenizer = AutoTokenizer.from_pretrained(source.folder, use_fast=True)
    length = _max_length(tokenizer, config, max_length, source.spec, family)
    token_ids = _template_token_ids(tokenizer, family, source.spec)
    _copy_tokenizer(source.folder, folder / "tokenizer", tokenizer)

    fp32 = version_dir / "model.onnx"
    inputs, outputs = _export_fp32(
        source, fp32, opset=opset, token_ids=token_ids, progress=progress, quiet=quiet
    )
    int8, int8_entry = _int8_plan(name, int8, cpu_flags, progress)
    built = _Variants(version_dir, progress, fp16_gpu_fusion=fp16_gpu_fusion)
    built.build_all(source, config, fp32, int8, token_ids)

    with progress.step("validate against PyTorch"):
        gate = _Gate(source, folder / "tokenizer", length, thresholds, token_ids)
        parity = gate.run({"fp32": fp32, **built.files}, inputs, cached=built.cached)
    built.skipped.update(gate.verdict(name, parity["figures"]))
    built.drop_skipped(name)

    files = {"fp32": fp32, **built.files}
    _write_triton_files(folder, name, inputs, outputs, length, cpu_file=_cpu_file(files, built.cached))
    variants = {key: _variant(key, path, folder) for key, path in files.items()}
    for key in variants.keys() & built.derived:
        variants[key].update(built.graph_facts)
    if "fp16" in variants:
        variants["fp16"]["gpu_fusion"] = built.fp16_fusion_facts()
    if int8_entry.get("requires_cpu_flags") and "int8" in variants:
        variants["int8"]["requires_cpu_flags"] = int8_entry["requires_cpu_flags"]
    return {
        "name": name,
        "role": role,
        "model_id": source.model_id,
        "source": source.manifest_entry(),
        "architecture": source.architecture,
        "model_type": source.model_type,
        **family.manifest_fields(),
        "opset": onnx_export.opset_of(fp32),
        "max_length": length,
        "inputs": inputs,
        "outputs": outputs,
        "tokenizer_dir": "tokenizer",
        "variants": variants,
        "variants_skipped": built.skipped,
        "int8_settings": {
            **quantize.settings_dict(int8),
            "graph": built.int8_source.name,
            "quantizer": fusion.int8_quantizer_name(family, built.from_fused),
        },
        "int8": int8_entry,
        "parity": parity,
        "export_seconds": 0.0,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def _export_fp32(
    source: ModelSource,
    fp32: Path,
    *,
    opset: int,
    token_ids: tuple[int, int] | None,
    progress: Progress,
    quiet: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The plain fp32 graph (optimum, or our builder for the heads optimum cannot export): its inputs and
    outputs, which must be one output named `logits`."""
    family = source.family
    with progress.step(f"export fp32 ONNX ({family.family}, opset {opset})"):
        if family.exporter == "optimum":
            onnx_export.export_fp32(source.folder, fp32, opset=opset, quiet=quiet)
        else:
            from export import torch_export

            torch_export.export_fp32(
                family, source.folder, fp32, opset=opset,
                positive_id=token_ids[0] if token_ids else None,
                negative_id=token_ids[1] if token_ids else None,
            )  # fmt: skip
    inputs, outputs = onnx_export.graph_io(fp32)
    if [o["name"] for o in outputs] != ["logits"]:
        raise ExportError(f"{source.spec}: expected one output named 'logits', the graph has {outputs}")
    return inputs, outputs


class _Variants:
    """The variants built from the fp32 graph: the fused fp32, int8 (from the fused graph where the family
    says so), the 7-bit int8 and fp16. One that fails to build is left out, its reason in `skipped`."""

    def __init__(self, version_dir: Path, progress: Progress, *, fp16_gpu_fusion: bool = False) -> None:
        self.version_dir = version_dir
        self.progress = progress
        self.fp16_gpu_fusion = fp16_gpu_fusion
        self.files: dict[str, Path] = {}
        self.skipped: dict[str, str] = {}
        self.graph_facts: dict[str, Any] = {}  # what the manifest records of the fused graph (and its int8)
        self.derived: set[str] = {"fp32-opt"}  # the files made from the fused graph: they carry its facts
        self.cached: set[str] = set()  # files with a decoder's key/value cache inputs
        self.from_fused = False
        self.int8_source = version_dir / "model.onnx"
        self.gpu_fusion: quantize.GpuFusion | None = None  # how the fp16 file was fused for the CUDA provider

    def fp16_fusion_facts(self) -> dict[str, Any] | None:
        """The manifest's fp16 `gpu_fusion`: the optimizer's arguments (bench.gpu_bundle re-derives the file with
        them) and the fused ops the file holds; None for an fp16 file converted unfused."""
        if self.gpu_fusion is None or "fp16" not in self.files:
            return None
        ops = fusion.contrib_ops(self.files["fp16"])
        return {**self.gpu_fusion.manifest(), "contrib_ops": ops} if ops else None

    def build(self, key: str, path: Path, message: str, make: Callable[[], object]) -> None:
        with self.progress.step(message):
            try:
                make()
            except ExportError as exc:
                self.skipped[key] = str(exc)
                return
        self.files[key] = path

    def build_all(
        self,
        source: ModelSource,
        config: Any,
        fp32: Path,
        int8: quantize.Int8Settings,
        token_ids: tuple[int, int] | None,
    ) -> None:
        family, folder = source.family, self.version_dir
        fused = folder / "model.opt.onnx"
        no_fusion = fusion.unfused_reason(family)
        if no_fusion is not None:
            self.skipped["fp32-opt"] = no_fusion
        else:

            def optimize() -> None:
                heads, hidden = _heads_and_hidden(config)
                self.graph_facts = fusion.optimize_variant(
                    family,
                    source.folder,
                    fp32,
                    fused,
                    num_heads=heads,
                    hidden_size=hidden,
                    token_ids=token_ids,
                )

            self.build("fp32-opt", fused, "optimize (ONNX Runtime fusions)", optimize)
        self.from_fused = "fp32-opt" in self.files and int8.from_fused_graph
        self.int8_source = source_graph = fused if self.from_fused else fp32
        quantizer = fusion.int8_quantizer(family, self.from_fused)
        int8_path = folder / "model.int8.onnx"
        self.build(
            "int8",
            int8_path,
            "quantize int8 (dynamic, CPU)",
            lambda: quantizer(source_graph, int8_path, int8),
        )
        if not int8.reduce_range:
            portable = folder / f"model.{quantize.PORTABLE_INT8_VARIANT}.onnx"
            self.build(quantize.PORTABLE_INT8_VARIANT, portable, "quantize int8 7-bit (for CPUs without VNNI)",
                       lambda: quantizer(source_graph, portable, replace(int8, reduce_range=True)))  # fmt: skip
        # The files made from the fused graph keep its fusions and, for a decoder, its key/value cache.
        if self.from_fused:
            self.derived |= {"int8", quantize.PORTABLE_INT8_VARIANT}
        if "kv_cache" in self.graph_facts:
            self.cached = {k for k in self.files if k in self.derived}
        if BUILD_FP16:
            self.build_fp16(family, config, fp32, no_fusion)

    def build_fp16(self, family: Family, config: Any, fp32: Path, no_fusion: str | None) -> None:
        """The fp16 file, fused for the CUDA provider first with --fp16-gpu-fusion on a BERT-like encoder
        (families with their own recipe, and graphs over the protobuf limit, convert unfused, with a warning).

        Off by default: on an H200 with onnxruntime-gpu 1.31.1 the fused file ran fixed shapes 2.0-2.9x faster than
        the unfused one, but its Attention (cuDNN flash attention) pays 64-80 ms for each batch shape it has not
        seen, and the gateway's batches take many shapes: 100-document requests ran at 0.40x the fp32 file's speed
        in the same run (bench/results/gpu-fp16-fused.md; why: bench/results/gpu_shapes.json).
        """
        fp16 = self.version_dir / "model.fp16.onnx"
        if self.fp16_gpu_fusion and no_fusion is None and family.definition.fusion is None:
            self.gpu_fusion = quantize.GpuFusion(family.model_type, *_heads_and_hidden(config))
        message = "convert fp16 (GPU" + (", fused for the CUDA provider)" if self.gpu_fusion else ")")
        self.build("fp16", fp16, message, lambda: quantize.convert_fp16(fp32, fp16, self.gpu_fusion))
        if self.fp16_gpu_fusion and "fp16" in self.files and self.fp16_fusion_facts() is None:
            recipe = (
                family.definition.fusion is not None and f"{family.family} has its own fusion recipe (CPU)"
            )
            why = no_fusion or recipe or "its graph keeps its weights in an external data file"
            self.progress.warn(f"--fp16-gpu-fusion: the fp16 file is unfused: {why}")

    def drop_skipped(self, name: str) -> None:
        """Remove the files the gate left out (and the fused fp32 unless it is kept), and say why."""
        for key in [k for k in self.files if k in self.skipped or (k == "fp32-opt" and not KEEP_FUSED_FP32)]:
            _remove_graph(self.files.pop(key))
        for key, reason in self.skipped.items():
            self.progress.warn(f"{name}: {key} left out: {reason}")


def _heads_and_hidden(config: Any) -> tuple[int, int]:
    """Attention heads and hidden size from a transformers config (0: ONNX Runtime's optimizer reads them off the
    graph)."""
    return int(getattr(config, "num_attention_heads", 0) or 0), int(getattr(config, "hidden_size", 0) or 0)


def _cpu_file(files: dict[str, Path], cached: set[str] | frozenset[str] = frozenset()) -> str:
    """The file the CPU onnxruntime config serves: int8 where it passed the gate, else the best fp32 file;
    never a `cached` one (a decoder graph with key/value cache inputs, which Triton's config does not feed)."""
    for key in ("int8", quantize.PORTABLE_INT8_VARIANT, "fp32-opt", "fp32"):
        if key in files and key not in cached:
            return files[key].name
    raise ExportError("no graph to serve")


def _remove_graph(path: Path) -> None:
    for data in onnx_export.external_files(path):
        data.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _template_token_ids(tokenizer: Any, family: Family, spec: str) -> tuple[int, int] | None:
    """A decoder's (positive, negative) token ids; each must be one token of the tokenizer."""
    if family.template is None:
        return None
    ids = []
    for token in (family.template.positive_token, family.template.negative_token):
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ExportError(
                f"{spec}: the {family.template.name} template scores the token {token!r}, which this "
                f"tokenizer splits into {len(encoded)} tokens: not a {family.template.name} model?"
            )
        ids.append(int(encoded[0]))
    return ids[0], ids[1]


def _int8_plan(
    name: str, int8: quantize.Int8Settings, cpu_flags: frozenset[str], progress: Progress
) -> tuple[quantize.Int8Settings, dict[str, Any]]:
    """The int8 settings to build with and the manifest's `int8` entry.

    A full-range file is built only on request, and only where it can be validated: on a CPU without VNNI
    its parity figures would measure this CPU's saturation, not the target's accuracy, and the gate would
    refuse an export that is fine on a VNNI server. There the export goes on with the 7-bit file only
    (validated, accurate everywhere) and says so, rather than failing or shipping an unchecked file.
    """
    if int8.reduce_range or cpu_flags & set(quantize.VNNI_CPU_FLAGS):
        entry = quantize.int8_requirement(int8)
        if not int8.reduce_range:
            entry["portable_variant"] = quantize.PORTABLE_INT8_VARIANT
        return int8, entry
    reason = (
        f"this CPU has none of {', '.join(quantize.VNNI_CPU_FLAGS)}, where full-range int8 saturates, so the "
        "full-range file cannot be validated here; built the 7-bit file only (export on a VNNI/AMX machine "
        "for the full-range file)"
    )
    progress.warn(f"{name}: --int8-full-range: {reason}")
    portable = replace(int8, reduce_range=True)
    return portable, {**quantize.int8_requirement(portable), "full_range_skipped": reason}


_PRECISION = {
    "fp32": ("fp32", "any"),
    "fp32-opt": ("fp32", "cpu"),
    "int8": ("int8", "cpu"),
    quantize.PORTABLE_INT8_VARIANT: ("int8", "cpu"),
    "fp16": ("fp16", "gpu"),
}


def _variant(key: str, path: Path, folder: Path) -> dict[str, Any]:
    precision, target = _PRECISION[key]
    entry: dict[str, Any] = {
        "file": path.relative_to(folder).as_posix(),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "precision": precision,
        "target": target,
    }
    data = onnx_export.external_files(path)
    if data:  # weights over the protobuf limit: the files ONNX Runtime loads beside the graph
        entry["external_data"] = [
            {"file": d.relative_to(folder).as_posix(), "sha256": file_sha256(d), "bytes": d.stat().st_size}
            for d in data
        ]
    return entry


class _Gate:
    """The parity gate of one model: every file scored on the parity set, encoded by the gateway's tokenizer
    (tokenizer/ + the manifest's family fields: the ids the server will build), judged by the family's bounds."""

    def __init__(
        self,
        source: ModelSource,
        tokenizer_dir: Path,
        length: int,
        thresholds: validate.Thresholds,
        token_ids: tuple[int, int] | None,
    ) -> None:
        self.source = source
        self.family = source.family
        self.bounds = thresholds.bounds_for(self.family.definition.gate)
        self.tokenizer = tokenizer_from_manifest(
            tokenizer_dir, self.family.manifest_fields(), max_length=length
        )
        self.token_ids = token_ids

    def run(
        self,
        files: dict[str, Path],
        inputs: list[dict[str, str]],
        *,
        cached: set[str] | frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """The manifest's `parity`: fp32 and fused fp32 against PyTorch, int8 and fp16 against the fp32 graph.

        The set's size follows the model's (the family's GateSize). `cached` files (decoder graphs with a
        key/value cache) are scored the way the gateway serves them: each query's head (`Window.shared`) once,
        each document after its cache (export.decoder_prefix)."""
        queries = gate_size.parity_queries(self.source.folder, self.family.definition.gate_size)
        pairs = validate.build_parity_set(n_queries=queries)
        encoded = validate.encode_parity_set(self.tokenizer, pairs.pairs, [i["name"] for i in inputs])
        reference = validate.reference_logits(self.family, self.source.folder, encoded, self.token_ids)
        release_heap()  # each model in turn: the PyTorch one's freed memory is not kept beside the next one
        scores: dict[str, np.ndarray] = {}
        for key, path in files.items():
            scores[key] = (
                decoder_prefix.scores_with_heads(path, encoded.windows)
                if key in cached
                else validate.onnx_scores(path, encoded)
            )
            release_heap()
        figures: dict[str, dict[str, float]] = {}
        for key in ("fp32", "fp32-opt"):
            if key in scores:
                figures[key] = {
                    **validate.compare(reference.logits, scores[key], pairs.groups),
                    "reference_scale": round(reference.scale, 6),
                    "bound": self.bounds.fp32_bound(reference.scale),
                }
        # the relevance score the gateway returns: activation(logit)
        if self.family.activation == "sigmoid":
            probabilities = np.abs(_sigmoid(reference.logits) - _sigmoid(scores["fp32"]))
            figures["fp32"]["max_abs_diff_after_sigmoid"] = float(probabilities.max())
        # int8 and fp16 are judged against the fp32 ONNX scores (their own baseline)
        for key in ("int8", quantize.PORTABLE_INT8_VARIANT, "fp16"):
            if key in scores:
                figures[key] = validate.compare(scores["fp32"], scores[key], pairs.groups)
        lengths = encoded.lengths
        return {
            "pairs": len(pairs.pairs),
            "queries": len(pairs.queries),
            "pairs_at_max_length": sum(n == self.tokenizer.max_length for n in lengths),
            "min_tokens": min(lengths),
            "max_tokens": max(lengths),
            "reference": self.family.head.reference,
            "padding_side": self.tokenizer.padding_side,
            "pad_id": self.tokenizer.pad_id,
            "encoded_by": "gateway.tokenization.PairTokenizer (the ids the gateway builds)",
            "ids_sha256": encoded.ids_sha256(),
            "figures": figures,
            "thresholds": validate.bounds_dict(self.bounds),
            "reference_logits_head": [round(float(x), 6) for x in reference.logits[:8]],
            **({"prefix_reuse": _prefix_reuse(cached, encoded)} if cached else {}),
        }

    def verdict(self, name: str, figures: dict[str, dict[str, float]]) -> dict[str, str]:
        """The variants that miss their bounds, with why; ParityError when the fp32 graph does (nothing is
        written)."""
        fp32_problems = validate.variant_problems("fp32", figures["fp32"], self.bounds)
        if fp32_problems:
            raise ParityError(
                f"{name}: parity gate failed: " + "; ".join(fp32_problems) + "; no repository was written"
            )
        missed = {key: validate.variant_problems(key, figures[key], self.bounds) for key in figures}
        return {key: "; ".join(problems) for key, problems in missed.items() if problems}


def _prefix_reuse(cached: set[str] | frozenset[str], encoded: validate.ParityInputs) -> dict[str, Any]:
    """The manifest's `parity.prefix_reuse`: which files were scored head once, documents after its cache."""
    return {
        "variants": sorted(cached),
        "mean_head_tokens": float(np.mean([w.shared for w in encoded.windows])),
        "scored_by": "export.decoder_prefix.scores_with_heads (gateway.backends.prefix_reuse's order)",
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _max_length(tokenizer: Any, config: Any, requested: int | None, spec: str, family: Family) -> int:
    positions = int(getattr(config, "max_position_embeddings", 512) or 512)
    if family.definition.max_positions is not None:
        positions = min(positions, family.definition.max_positions)
    if positions_after_padding(str(getattr(config, "model_type", ""))):
        positions -= int(getattr(config, "pad_token_id", 1) or 1) + 1  # position ids start after padding_idx
    limit = min(int(tokenizer.model_max_length), positions) if tokenizer.model_max_length < 1e6 else positions
    if requested is None:
        return limit
    if not 8 <= requested <= limit:
        raise ExportError(f"{spec}: --max-length {requested} is outside 8..{limit} (the model's limit)")
    return requested


def _copy_tokenizer(source: Path, target: Path, tokenizer: Any) -> None:
    """Copy the tokenizer files verbatim (same sha256 as the source); make tokenizer.json if absent."""
    target.mkdir(parents=True)
    for file_name in (*TOKENIZER_FILES, "config.json"):
        if (source / file_name).is_file():
            shutil.copy2(source / file_name, target / file_name)
    if not (target / "tokenizer.json").is_file():
        tokenizer.save_pretrained(target)  # a fast tokenizer writes tokenizer.json (the gateway reads it)
    if not (target / "tokenizer.json").is_file():
        raise ExportError(f"{source}: could not produce tokenizer.json (no fast tokenizer for this model)")


def _write_triton_files(
    folder: Path,
    name: str,
    inputs: list[dict[str, str]],
    outputs: list[dict[str, str]],
    length: int,
    cpu_file: str = "model.int8.onnx",
) -> None:
    settings = triton_repo.TritonSettings()
    trt_outputs = [{"name": o["name"], "dtype": o["dtype"]} for o in outputs]
    (folder / "config.pbtxt").write_text(
        triton_repo.render_gpu_config(name, inputs, trt_outputs, max_length=length, settings=settings)
    )
    configs = folder / "configs"
    configs.mkdir(exist_ok=True)
    (configs / "cpu-onnxruntime.pbtxt").write_text(
        triton_repo.render_cpu_onnxruntime_config(
            name, inputs, trt_outputs, onnx_file=cpu_file, settings=settings
        )
    )
    (configs / "cpu.pbtxt").write_text(
        triton_repo.render_python_cpu_config(name, inputs, trt_outputs, settings.max_batch_size)
    )
    shutil.copy2(triton_repo.PYTHON_MODEL_SOURCE, folder / "1" / "model.py")


def _copy_as(source: Path, target: Path, name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The prefilter folder as a copy of the cross-encoder's, renamed (configs and manifest)."""
    shutil.copytree(source, target)
    manifest = {**manifest, "name": name, "role": "prefilter", "same_as": manifest["name"]}
    variants = manifest["variants"]
    cpu_file = _cpu_file(
        {k: target / v["file"] for k, v in variants.items()},
        {k for k, v in variants.items() if v.get("kv_cache")},
    )
    _write_triton_files(
        target, name, manifest["inputs"], manifest["outputs"], manifest["max_length"], cpu_file=cpu_file
    )
    return manifest


def _install(staged: Path, final: Path) -> None:
    """Swap the staged folder in: rename the old one aside, rename the new one in, delete the old one."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in (
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime-gpu",
        "onnxruntime",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions
