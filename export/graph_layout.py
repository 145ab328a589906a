"""Fewer copies between the fused graph's MatMuls and its attention: two rewrites of the fused fp32 file, written
before int8 is quantized from it, so both CPU files carry them. Neither changes what is computed (the tests find
the scores equal), only fewer tensors are copied on the way.

1. `unpack_attention_inputs`: ModernBERT's attention, as exported, views its packed projection [B, S, 3*E] as
   [B, S, 3, N, H], transposes it to [B, N, 3, S, H], slices out q, k and v, applies the rotary embedding to
   q and k in that [B, N, S, H] layout, then transposes each back to [B, S, N, H] and reshapes it to [B, S, E]
   for MultiHeadAttention: four transposes and three slices a layer, each a copy of the activations. The same
   q, k and v come from splitting the projection's last axis in three, and ONNX Runtime's RotaryEmbedding
   takes [B, S, E] with `num_heads` as well: one Split and the two rotary embeddings.
2. `split_weight_matmuls`: a MatMul by a 2-D weight whose only reader is a Split of its last axis (the split
   from (1), the GeGLU's input and gate) becomes one MatMul per part, each by its columns of the weight. The
   Split's copy goes; int8 quantizes the activation once for all the parts (export/quantize_matmul.py).

`python -m bench.graph_layout --source FOLDER` builds the fused graph with and without them and times both
(ModernBERT-base size, one 512-token pair, 2 threads, bench/results/graph_layout_modernbert.md: int8 1.09x,
fp32 1.04x).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MS = "com.microsoft"


def rewrite_file(path: Path) -> dict[str, int]:
    """Both rewrites on the ONNX file at `path`, in place; how many attentions and MatMuls each changed.
    The weights of a graph with external data are read only when a MatMul is to be split."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    attentions = unpack_attention_inputs(model)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    external = bool(locations)
    # ranks read on the graph without its weights (a 2 GB one could not be serialized for the inference)
    ranks = _ranks(model) if any(n.op_type == "Split" for n in model.graph.node) else {}
    # weights spread over several data files (not what our exporter writes): left as they are
    splits = _split_candidates(model, ranks) if len(locations) <= 1 else []
    if splits and external:  # the splits need the weights: reload with them and unpack that copy again
        model = onnx.load(str(path), load_external_data=True)
        unpack_attention_inputs(model)
    matmuls = split_weight_matmuls(model, ranks) if splits else 0
    if matmuls and external:  # the weights are in memory: written again to the same data file
        location = locations.pop()
        (path.parent / location).unlink()
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=location, size_threshold=1024)  # fmt: skip
    elif attentions or matmuls:
        onnx.save(model, str(path))
    return {"attention_inputs_unpacked": attentions, "weight_matmuls_split": matmuls}


# --- 1. attention inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Branch:
    """One of q, k, v on its way from the packed projection to MultiHeadAttention."""

    index: int  # 0 q, 1 k, 2 v: the slice of the packed axis
    rotary: Any  # the RotaryEmbedding node (q and k), or None (v)
    packed: Any  # the 5-D Reshape of the projection


class _Graph:
    """Producers and constants of a graph, looked up by value name."""

    def __init__(self, graph: Any) -> None:
        from onnx import TensorProto, numpy_helper

        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        small = [t for t in graph.initializer if t.data_location != TensorProto.EXTERNAL and _size(t) <= 64]
        self.constants: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in small}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def made_by(self, name: str, op_type: str) -> Any:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def ints(self, name: str) -> list[int] | None:
        value = self.constants.get(name)
        return None if value is None else [int(v) for v in value.reshape(-1)]


def _size(tensor: Any) -> int:
    size = 1
    for d in tensor.dims:
        size *= int(d)
    return size


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _branch(g: _Graph, name: str) -> _Branch | None:
    """Reshape(Transpose[0,2,1,3]([RotaryEmbedding](Squeeze(Slice(Transpose[0,3,2,1,4](Reshape(x)), i:i+1,
    axis 2), 2)))), or None."""
    reshape = g.made_by(name, "Reshape")
    back = reshape is not None and g.made_by(reshape.input[0], "Transpose")
    if not back or list(_attr(back, "perm", [])) != [0, 2, 1, 3]:
        return None
    rotary = g.made_by(back.input[0], "RotaryEmbedding")
    squeeze = g.made_by(rotary.input[0] if rotary is not None else back.input[0], "Squeeze")
    if squeeze is None or len(squeeze.input) < 2 or g.ints(squeeze.input[1]) != [2]:
        return None
    sliced = g.made_by(squeeze.input[0], "Slice")
    if sliced is None or len(sliced.input) < 4 or (len(sliced.input) > 4 and g.ints(sliced.input[4]) != [1]):
        return None
    start, end, axes = (g.ints(sliced.input[i]) for i in (1, 2, 3))
    if start is None or end != [start[0] + 1] or axes != [2]:
        return None
    spread = g.made_by(sliced.input[0], "Transpose")
    if spread is None or list(_attr(spread, "perm", [])) != [0, 3, 2, 1, 4]:
        return None
    packed = g.made_by(spread.input[0], "Reshape")
    return None if packed is None else _Branch(start[0], rotary, packed)


def _packed_as_three(g: _Graph, packed: Any, heads: int) -> bool:
    """The 5-D view is [B, S, 3, heads, H]: its shape a constant, or a Concat whose last three parts are."""
    shape = g.ints(packed.input[1])
    if shape is None:
        concat = g.made_by(packed.input[1], "Concat")
        if concat is None or len(concat.input) != 5:
            return False
        parts = [g.ints(name) for name in concat.input[2:]]
        if any(p is None or len(p) != 1 for p in parts):
            return False
        shape = [0, 0] + [p[0] for p in parts if p is not None]
    return len(shape) == 5 and shape[2] == 3 and shape[3] == heads and shape[4] > 0


def _matched(g: _Graph, attention: Any) -> tuple[_Branch, _Branch, _Branch] | None:
    """The attention's q, k and v branches when all three come from one packed [B, S, 3, heads, H] view, q and k
    through the same rotary embedding and v through none; else None."""
    heads = int(_attr(attention, "num_heads", 0))
    if len(attention.input) < 3 or heads <= 0:
        return None
    q, k, v = (_branch(g, name) for name in attention.input[:3])
    if q is None or k is None or v is None:
        return None
    if (q.index, k.index, v.index) != (0, 1, 2) or len({id(b.packed) for b in (q, k, v)}) != 1:
        return None
    if q.rotary is None or k.rotary is None or v.rotary is not None:
        return None
    if list(q.rotary.input[1:]) != list(k.rotary.input[1:]) or not _packed_as_three(g, q.packed, heads):
        return None
    return q, k, v


def _unpacked(attention: Any, q: _Branch, k: _Branch, prefix: str) -> tuple[list[Any], dict[str, str]]:
    """The nodes that feed `attention` instead (Split, two 3-D RotaryEmbeddings; its inputs are set to their
    outputs), and each replaced rotary output -> its replacement."""
    from onnx import helper

    heads = int(_attr(attention, "num_heads", 0))
    parts = [f"{prefix}/unpacked_{p}" for p in "qkv"]
    nodes = [
        helper.make_node("Split", [q.packed.input[0]], parts, axis=-1, num_outputs=3, name=f"{prefix}/unpack")
    ]
    moved: dict[str, str] = {}
    for branch, part in ((q, parts[0]), (k, parts[1])):
        rotary, out = branch.rotary, f"{part}_rotary"
        attrs = {a.name: helper.get_attribute_value(a) for a in rotary.attribute}
        attrs["num_heads"] = heads  # read by the kernel for a 3-D input
        nodes.append(
            helper.make_node(
                "RotaryEmbedding", [part, *rotary.input[1:]], [out], name=f"{out}_node", domain=_MS, **attrs
            )
        )
        moved[rotary.output[0]] = out
    for i, name in enumerate([f"{parts[0]}_rotary", f"{parts[1]}_rotary", parts[2]]):
        attention.input[i] = name
    return nodes, moved


def unpack_attention_inputs(model: Any) -> int:
    """Feed each MultiHeadAttention fed through the packed projection's 5-D transpose (see the module's
    docstring) from a Split of the projection and 3-D RotaryEmbeddings instead; how many. Attentions of any
    other shape are left as they are. The replaced nodes are removed once nothing reads them; a Shape that read
    the sequence length from a replaced rotary output (axis 2) reads it from the new one (axis 1)."""
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 18:
        return 0  # Split's `num_outputs` (the fused graphs are opset 18)
    g = _Graph(model.graph)
    before: dict[int, list[Any]] = {}  # id(attention) -> the nodes that go before it
    moved: dict[str, str] = {}  # a replaced rotary output -> its replacement
    for attention in [n for n in model.graph.node if n.op_type == "MultiHeadAttention" and n.domain == _MS]:
        branches = _matched(g, attention)
        if branches is None:
            continue
        q, k, _ = branches
        nodes, replaced = _unpacked(attention, q, k, attention.name or f"attention_{len(before)}")
        before[id(attention)] = nodes
        moved.update(replaced)
    if not before:
        return 0
    for node in model.graph.node:
        if (
            node.op_type == "Shape"
            and node.input[0] in moved
            and (_attr(node, "start"), _attr(node, "end")) == (2, 3)
        ):
            node.input[0] = moved[node.input[0]]
            for a in node.attribute:
                a.i = {"start": 1, "end": 2}.get(a.name, a.i)
    nodes = [new for node in model.graph.node for new in (*before.get(id(node), ()), node)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unread(model.graph)
    return len(before)


def _drop_unread(graph: Any) -> None:
    """Remove the nodes (and initializers) whose outputs nothing reads any more."""
    keep_outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    while True:
        read = set(keep_outputs)
        for node in nodes:
            read.update(node.input)
        kept = [n for n in nodes if any(out in read for out in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in nodes for name in node.input} | keep_outputs
    initializers = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


# --- 2. MatMuls split at their weight ---------------------------------------------------------------------------


def _split_candidates(model: Any, ranks: dict[str, int] | None = None) -> list[tuple[Any, Any]]:
    """(MatMul, Split) pairs: a MatMul by a 2-D float weight read only by a Split of the last axis, in equal
    parts or constant sizes."""
    from onnx import TensorProto

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    if not any(n.op_type == "Split" for n in graph.node):
        return []
    g = _Graph(graph)
    ranks = _ranks(model) if ranks is None else ranks
    found = []
    for node in graph.node:
        weight = (
            weights.get(node.input[1])
            if node.op_type == "MatMul" and node.domain in ("", "ai.onnx")
            else None
        )
        if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
            continue
        split = readers.get(node.output[0], [])
        if len(split) != 1 or split[0].op_type != "Split" or node.output[0] in outputs:
            continue
        rank = ranks.get(node.output[0])
        axis = int(_attr(split[0], "axis", 0))
        if axis != -1 and (rank is None or axis != rank - 1):
            continue
        if _sizes(g, split[0], int(weight.dims[1])) is None:
            continue
        found.append((node, split[0]))
    return found


def _ranks(model: Any) -> dict[str, int]:
    """The rank of each value that ONNX Runtime's symbolic shape inference can tell (see `shapes`)."""
    return {name: len(shape) for name, shape in shapes(model).items()}


def shapes(model: Any) -> dict[str, list[Any]]:
    """The shape of each value that ONNX Runtime's symbolic shape inference can tell, as ints and symbol names
    (None where a dimension has neither): it knows the contrib ops, which ONNX's own inference does not, and the
    weights need not be loaded. A graph it cannot read gives {}: nothing is known, nothing is rewritten."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception:
        return {}
    if inferred is None:
        return {}
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        v.name: [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in v.type.tensor_type.shape.dim
        ]
        for v in values
        if v.type.tensor_type.HasField("shape")
    }


def _sizes(g: _Graph, split: Any, width: int) -> list[int] | None:
    """The Split's part sizes along the weight's columns, or None when they are not known constants."""
    if len(split.input) > 1 and split.input[1]:
        sizes = g.ints(split.input[1])
    else:
        count = int(_attr(split, "num_outputs", len(split.output)))
        sizes = [width // count] * count if count and width % count == 0 else None
    if sizes is None or len(sizes) != len(split.output) or sum(sizes) != width or min(sizes) <= 0:
        return None
    return sizes


def split_weight_matmuls(model: Any, ranks: dict[str, int] | None = None) -> int:
    """Each MatMul by a weight read only by a Split of its last axis as one MatMul per part (the weights must
    be loaded; `ranks`: the values' ranks when already known, see `_ranks`); how many."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    pairs = _split_candidates(model, ranks)
    if not pairs:
        return 0
    g = _Graph(graph)
    weights = {t.name: t for t in graph.initializer}
    replaced: dict[int, list[Any]] = {}
    dropped: set[int] = set()
    added = []
    for matmul, split in pairs:
        weight = numpy_helper.to_array(weights[matmul.input[1]])
        sizes = _sizes(g, split, weight.shape[1])
        assert sizes is not None
        nodes, start = [], 0
        for i, (out, size) in enumerate(zip(split.output, sizes, strict=True)):
            name = f"{matmul.input[1]}_part{i}"
            added.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, start : start + size]), name))
            start += size
            if out:
                nodes.append(
                    helper.make_node("MatMul", [matmul.input[0], name], [out], name=f"{name}_matmul")
                )
        replaced[id(matmul)] = nodes
        dropped.add(id(split))
    nodes = [new for node in graph.node if id(node) not in dropped for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    _drop_unread(graph)
    return len(pairs)
