"""Fused fp32 graphs for the families ONNX Runtime's own optimizer does not know (ModernBERT, Qwen2/Qwen3
decoders): a dynamo export (`torch.onnx.export(..., dynamo=True)`) rewritten by onnxscript's ONNX Runtime
fusions (`onnxscript.rewriter.ort_fusions.optimize_for_ort`) into com.microsoft contrib ops.

What the rewriter turns the graphs into (counts per graph in the manifest's `optimizations`):

- decoders:   GroupQueryAttention (grouped-query attention with the rotary embedding inside, `do_rotary`),
              SimplifiedLayerNormalization (RMSNorm, also Qwen3's per-head q/k norms) and
              SkipSimplifiedLayerNormalization (RMSNorm with the residual add);
- ModernBERT: MultiHeadAttention (its local/global sliding window stays an attention bias), RotaryEmbedding,
              Gelu (the GeGLU's activation); then export/graph_layout.py feeds the attention straight from
              its own q, k and v MatMuls (no transposes, slices or splits between them).

The recipe per family is data in the family table (gateway/families.py `FamilyDefinition.fusion`, a
`FusionRecipe`: the attention the export traces, which fusions must have happened, or the file would run as
many small nodes and is not worth keeping, our own extra rules, whether the graph carries a key/value cache). onnxscript's GQA rewrite assumes onnxruntime-genai's inputs: it
drops the padding mask and takes each row's length from its position ids. Our decoder graphs are therefore
right-padded and read the score at each row's last real token, so that right pads are never attended by a
real token (causal) and the dropped mask changes nothing; the gate checks it (fused vs PyTorch).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export import onnx_export
from export.errors import ExportError
from gateway.families import Family, FusionRecipe

# Dynamo export opset: the rewriter's contrib ops sit beside opset-18 standard ops (LayerNormalization >= 17).
FUSED_OPSET = 18


def _skip_layer_norm_without_beta() -> Any:
    """The residual add + LayerNormalization without bias (ModernBERT's `norm_bias=False`) as ONNX Runtime's
    SkipLayerNormalization (beta is optional there). onnxscript's rule wants a LayerNormalization with a beta
    input, so these stayed two nodes."""
    from onnxscript.rewriter import pattern

    def target(op: Any, x: Any, skip: Any, gamma: Any) -> Any:
        total = op.Add(x, skip, _outputs=["total"])
        return op.LayerNormalization(
            total, gamma, axis=-1, _allow_other_attributes=True, _outputs=["norm"]
        ), total

    def check(context: Any, x: Any, skip: Any, gamma: Any, norm: Any, **_: Any) -> Any:
        result = pattern.MatchResult()
        node = norm.producer()
        if node.attributes.get_int("stash_type", 1) != 1:
            return result.fail("stash_type is not float32")
        shapes = [v.shape for v in (x, skip)]
        if any(s is None or len(s) != 3 for s in shapes) or gamma.shape is None or len(gamma.shape) != 1:
            return result.fail("not [batch, sequence, hidden] with a [hidden] scale")
        if shapes[0][2] != shapes[1][2] or shapes[0][2] != gamma.shape[0]:
            return result.fail("hidden sizes differ")
        return result

    def replacement(op: Any, x: Any, skip: Any, gamma: Any, norm: Any, **_: Any) -> Any:
        epsilon = norm.producer().attributes.get_float("epsilon", 1e-5)
        normalized, _mean, _inv_std, total = op.SkipLayerNormalization(
            x, skip, gamma, epsilon=epsilon, _outputs=4, _domain="com.microsoft"
        )
        return normalized, total

    return pattern.RewriteRuleSet([pattern.RewriteRule(target, replacement, check)])


# Our own rules, by the fusion-count key they report under; a recipe lists the ones it runs (`extra`).
_EXTRA_RULES = {"skip_layer_normalization_no_beta": _skip_layer_norm_without_beta}


@dataclass(frozen=True)
class FusedGraph:
    """What `fuse_to_file` wrote: the fusions applied and the contrib ops the graph now runs."""

    fusions: dict[str, int]
    contrib_ops: dict[str, int]

    def manifest(self, recipe: FusionRecipe) -> dict[str, Any]:
        return {
            "library": _library_versions(),
            "method": "torch.onnx.export(dynamo=True) + onnxscript ort_fusions.optimize_for_ort",
            "fusions": self.fusions,
            "contrib_ops": self.contrib_ops,
            "recipe": recipe.description,
        }


def dynamo_export(
    module: Any,
    args: tuple[Any, ...],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Any,
) -> Any:
    """The module as an onnx_ir Model (dynamo exporter, opset FUSED_OPSET, weights kept in memory)."""
    import torch

    try:
        with onnx_export._muted(True), torch.inference_mode():
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=dynamic_shapes, opset_version=FUSED_OPSET, optimize=False, verbose=False,
            )  # fmt: skip
    except Exception as exc:
        raise ExportError(f"dynamo export failed: {type(exc).__name__}: {exc}") from exc
    if program is None:
        raise ExportError("dynamo export returned no program")
    return program.model


def fuse(model: Any, recipe: FusionRecipe) -> FusedGraph:
    """Rewrite `model` (onnx_ir) in place with ONNX Runtime's fusions; ExportError when the recipe's fusions
    did not all happen (the graph would run unfused)."""
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    try:
        with onnx_export._muted(True):
            _, counts = optimize_for_ort(model, clear_metadata=True)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime fusion failed: {type(exc).__name__}: {exc}") from exc
    counts = dict(counts)
    for key, rules in _EXTRA_RULES.items():
        counts[key] = rules().apply_to_model(model) if key in recipe.extra else 0
    missing = [key for key in recipe.required if not counts.get(key)]
    if missing:
        raise ExportError(
            f"onnxscript's ORT fusions did not fuse {', '.join(missing)} (applied: "
            f"{ {k: v for k, v in counts.items() if v} }): the graph would run as unfused nodes"
        )
    ops: dict[str, int] = {}
    for node in model.graph.all_nodes():
        if node.domain == "com.microsoft":
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return FusedGraph({k: int(v) for k, v in counts.items() if v}, dict(sorted(ops.items())))


def save(model: Any, output: Path) -> None:
    """Save an onnx_ir Model as output, its weights in `<output>.data` when they pass the protobuf limit."""
    import onnx_ir as ir

    data = output.with_name(output.name + ".data")
    data.unlink(missing_ok=True)
    _drop_inner_shapes(model)
    size = sum(
        int(v.const_value.nbytes) for v in model.graph.initializers.values() if v.const_value is not None
    )
    if size > onnx_export.EXTERNAL_DATA_THRESHOLD_BYTES:
        ir.save(model, str(output), external_data=data.name)
    else:
        ir.save(model, str(output))
    _drop_value_info(output)


def _drop_value_info(path: Path) -> None:
    """Remove the graph's value_info (the weights stay where they are): the shapes onnxscript annotates
    conflict with the ones ONNX shape inference finds in the int8 quantizer's second pass."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    del proto.graph.value_info[:]
    onnx.save(proto, str(path))


def export_fused(
    module: Any,
    args: tuple[Any, ...],
    output: Path,
    recipe: FusionRecipe,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Any,
) -> FusedGraph:
    """Dynamo-export `module`, fuse it for ONNX Runtime and write it to output."""
    model = dynamo_export(
        module, args, input_names=input_names, output_names=output_names, dynamic_shapes=dynamic_shapes
    )
    fused = fuse(model, recipe)
    save(model, output)
    _drop_weights(model)
    del model
    gc.collect()
    return fused


def _drop_weights(model: Any) -> None:
    """Let go of what the saved graph holds of the traced model: its weights (torch tensors of the exported
    model, zero-copy) and each node's and value's `meta["node"]` (the torch.fx node, whose graph module owns the
    parameters). onnxscript's module-level rewrite rules keep the last graph they matched (their matcher's
    `_graph`): through it a 0.6B decoder's 2.4 GB of weights and its fx graph stayed alive through the rest of
    the export."""
    graph = model.graph
    for value in graph.initializers.values():
        value.const_value = None
    for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
        value.meta.clear()
    for node in graph.all_nodes():
        node.meta.clear()
        for value in node.outputs:
            value.meta.clear()


def _drop_inner_shapes(model: Any) -> None:
    """Forget the shapes the rewriter inferred for inner values: some are stale after the rewrites (a fused
    op's output annotated [1] where it is [hidden]), which ONNX's strict shape inference in the int8
    quantizer refuses. ONNX Runtime infers them again when it loads the graph."""
    keep = {id(v) for v in (*model.graph.inputs, *model.graph.outputs)}
    for node in model.graph.all_nodes():
        for value in node.outputs:
            if id(value) not in keep:
                value.shape = None
                value.type = None


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "onnxscript", "onnx-ir", "onnxruntime-gpu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def optimize_variant(
    family: Family,
    folder: Path,
    fp32: Path,
    output: Path,
    *,
    num_heads: int,
    hidden_size: int,
    token_ids: tuple[int, int] | None,
    plain_layer_norms: bool = True,
    layout_rewrites: bool = True,
    pooled_token_only: bool = True,
) -> dict[str, Any]:
    """Write the fp32-opt file for any family and return what the manifest records of it (`optimizations`,
    and `kv_cache` for a cached decoder graph): the family's fusion recipe where it has one, else ONNX
    Runtime's own transformer optimizer on the fp32 graph (BERT-like encoders); ExportError when neither
    applies or the fusion fails. `plain_layer_norms`: LayerNorms as plain ops (export/layer_norm.py; off only
    for `python -m bench.cpu_kernels`, which measures both); `layout_rewrites`: attention inputs unpacked and
    packed MatMuls split (export/graph_layout.py; off only for `python -m bench.graph_layout`);
    `pooled_token_only`: the last layer computed for the token the score reads (export/pooled_token.py; off
    only for `python -m bench.graph_layout --rewrite pooled-token`)."""
    from export import graph_layout, layer_norm, pooled_token, quantize, torch_export

    recipe = family.definition.fusion
    if recipe is not None:
        graph, layout = torch_export.export_fused(
            family, folder, output,
            positive_id=token_ids[0] if token_ids else None, negative_id=token_ids[1] if token_ids else None,
        )  # fmt: skip
        facts: dict[str, Any] = {"optimizations": graph.manifest(recipe)}
        if layout is not None:
            facts["kv_cache"] = layout.manifest()
    else:
        quantize.optimize_fp32(fp32, output, family.model_type, num_heads=num_heads, hidden_size=hidden_size)
        facts = {
            "optimizations": {
                "library": _library_versions(),
                "method": "onnxruntime.transformers.optimizer.optimize_model (opt_level 1) on model.onnx",
            }
        }
    # before int8 is quantized from this graph, so both CPU files carry these (export/graph_layout.py and
    # export/layer_norm.py say why)
    if layout_rewrites:
        facts["optimizations"].update(graph_layout.rewrite_file(output))
    if pooled_token_only:
        facts["optimizations"].update(pooled_token.rewrite_file(output))
    facts["optimizations"]["layer_norms_as_plain_ops"] = (
        layer_norm.decompose_file(output) if plain_layer_norms else 0
    )
    facts["optimizations"]["contrib_ops"] = contrib_ops(output)
    return facts


def unfused_reason(family: Family) -> str | None:
    """Why no fused graph can be built (None: the family's recipe or ONNX Runtime's optimizer covers it)."""
    from export import quantize

    return None if family.definition.fusion is not None else quantize.fusion_unsupported(family.model_type)


def contrib_ops(path: Path) -> dict[str, int]:
    """The com.microsoft (fused) ops of a graph, counted by type."""
    import onnx

    ops: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft":
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return dict(sorted(ops.items()))


def int8_quantizer(family: Family, fused_source: bool) -> Callable[[Path, Path, Any], None]:
    """The int8 writer for a graph: our one-pass MatMul quantizer for the fused graph a family's recipe made
    (a 0.6B decoder's stays near its fp32 size in memory, export/quantize_matmul.py), ONNX Runtime's
    quantize_dynamic for the rest (BERT-like encoders, whose files and figures stay what they were)."""
    from export import quantize, quantize_matmul

    if _one_pass(family, fused_source):
        return lambda source, output, settings: _ignore(
            quantize_matmul.quantize_matmuls(source, output, settings)
        )
    return quantize.quantize_int8


def int8_quantizer_name(family: Family, fused_source: bool) -> str:
    if _one_pass(family, fused_source):
        return "export.quantize_matmul (DynamicQuantizeLinear + MatMulIntegerToFloat)"
    return "onnxruntime.quantization.quantize_dynamic"


def _one_pass(family: Family, fused_source: bool) -> bool:
    return fused_source and family.definition.fusion is not None


def _ignore(_: object) -> None:
    return None
