"""The last layer computed for the pooled token only: a rewrite of the fused fp32 graph of an encoder whose score
reads one token of the last hidden state (BERT's pooler and ModernBERT's `classifier_pooling="cls"` take
`hidden[:, 0]`).

Everything after the last attention is per token (the output projection, the residual adds, the norms, the MLP),
and the score reads token 0 only, so those nodes run on [B, 1, E] instead of [B, S, E]; the attention itself
computes token 0's query only, against every key and value (a MultiHeadAttention with a query of one token).
What the score reads is computed by the same operations on the same values, so the logits equal the full
graph's (the tests compare them on padded batches). On MiniLM-L6 (6 layers, 384 hidden, 1,536 MLP) that is 14%
of the MACs of a 385-token pair (`python -m bench.graph_layout --rewrite pooled-token`,
bench/results/pooled_token_minilm.md: int8 1.16x, fp32 1.17x); on a 22-layer ModernBERT about 3.6%. Graphs that pool over every token (mean
pooling, gte-reranker-modernbert-base) or read the last token of each row at its own position (the decoders)
have no such Gather and are left as they are.

What is rewritten, from the score backwards:
- the pooling `Gather(hidden, 0, axis=1)` of a [B, S, E] tensor;
- the nodes that compute `hidden` from the last attention's output, all per token: elementwise ops with
  constants of at most one axis, MatMul by a 2-D weight, last-axis norms and reductions, the MLP's activations.
  A node whose output is read by anything else (another layer, a graph output) stays whole;
- the inputs of that region from outside it (the layer's input for the residual add) become their first token,
  `Slice(x, 0:1, axis 1)`, checked by ONNX Runtime's symbolic shape inference to be [B, S, ...] like `hidden`;
- the attention: a `MultiHeadAttention` gets token 0's query (and row 0 of its attention bias); ONNX Runtime's
  packed BERT `Attention` (one [E, 3E] weight, query length = key length) becomes three MatMuls (the query
  one on token 0) and a MultiHeadAttention with the same bias, mask, heads and scale. Any other attention keeps
  its full output, sliced to token 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.graph_layout import _attr, _drop_unread, _Graph, shapes

_MS = "com.microsoft"
_UNARY = {"Sqrt", "Reciprocal", "Erf", "Tanh", "Relu", "Sigmoid", "Neg", "Exp", "Identity", "Cast",
          "Softplus"}  # fmt: skip
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow"}
_NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
          "SkipSimplifiedLayerNormalization"}  # fmt: skip
_BIASED = {"BiasGelu", "FastGelu"}  # (x, bias of one axis)
_ATTENTIONS = {"Attention", "MultiHeadAttention"}
# the packed Attention attributes the MultiHeadAttention that replaces it carries over
_ATTENTION_ATTRS = {"num_heads", "mask_filter_value", "scale"}
_MHA_INPUTS = 6  # query, key, value, bias, key_padding_mask, attention_bias: past key/value must be absent


def rewrite_file(path: Path) -> dict[str, int]:
    """The rewrite on the ONNX file at `path`, in place; how many nodes now run on the pooled token only and
    whether the attention's query was cut to it (0/1). A graph with external data is read with it only when
    there is something to rewrite, and written back to the same data file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    plan = find(model)
    if plan is None:
        return {"pooled_token_nodes": 0, "pooled_token_attention": 0}
    if locations:  # the packed attention's weight is split: read the weights
        if len(locations) > 1:
            return {"pooled_token_nodes": 0, "pooled_token_attention": 0}
        model = onnx.load(str(path), load_external_data=True)
        plan = find(model)
        assert plan is not None
    rewritten = apply(model, plan)
    if locations:
        location = locations.pop()
        (path.parent / location).unlink()
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=location, size_threshold=1024)  # fmt: skip
    else:
        onnx.save(model, str(path))
    return rewritten


@dataclass
class Plan:
    """What `apply` changes: the per-token nodes (in graph order), the tensors they read from outside (cut to
    token 0), the attention whose output they read (None: its output is cut instead) and the shapes found."""

    region: list[Any]
    outside: list[str]
    attention: Any | None = None
    attention_output: str = ""
    dims: dict[str, list[Any]] = field(default_factory=dict)


def find(model: Any) -> Plan | None:
    """The rewrite's plan for `model` (an onnx ModelProto), or None when no pooling Gather reads a per-token
    region that can be cut."""
    graph = model.graph
    g = _Graph(graph)
    gather = _pooling_gather(g)
    if gather is None:
        return None
    dims = shapes(model)
    hidden = dims.get(gather.input[0])
    if hidden is None or len(hidden) != 3:
        return None
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    weights = {t.name: t for t in graph.initializer}
    region = _region(gather, g, weights, dims, readers, outputs)
    if not region:
        return None
    made = {o for node in region.values() for o in node.output}
    outside = sorted(
        {
            i
            for node in region.values()
            for i in node.input
            if i and i not in made and not _constant(i, g, weights)
        }
    )
    if any(not _token_rows(dims.get(name), hidden) for name in outside):
        return None
    attention = None
    attention_output = ""
    for name in outside:
        producer, source = _through_reshapes(name, g, dims)
        if (
            producer is not None and producer.op_type in _ATTENTIONS and producer.domain == _MS
            and source == producer.output[0] and name not in outputs
            and all(id(r) in region for r in readers.get(name, []))
            and _query_cut(producer, g, weights, dims, hidden)
        ):  # fmt: skip
            attention, attention_output = producer, name
    ordered = [node for node in graph.node if id(node) in region]
    return Plan(ordered, outside, attention, attention_output, dims)


def _region(
    gather: Any,
    g: _Graph,
    weights: dict[str, Any],
    dims: dict[str, list[Any]],
    readers: dict[str, list[Any]],
    outputs: set[str],
) -> dict[int, Any]:
    """The per-token nodes, by id, that compute what the pooling Gather reads, back to the last attention; less
    those whose output anything else reads (another layer, a graph output): they stay whole."""
    region: dict[int, Any] = {}
    stack = [gather.input[0]]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = g.producer.get(name)
        if node is None or node.op_type in _ATTENTIONS or not _per_token(node, g, weights, dims):
            continue
        region[id(node)] = node
        stack.extend(i for i in node.input if i and not _constant(i, g, weights))
    while True:  # dropping a node makes its inputs' producers read from outside: again until none is
        inside = {id(gather), *region}
        drop = [
            key for key, node in region.items()
            if any(o in outputs or any(id(r) not in inside for r in readers.get(o, [])) for o in node.output if o)
        ]  # fmt: skip
        if not drop:
            return region
        for key in drop:
            del region[key]


def apply(model: Any, plan: Plan) -> dict[str, int]:
    """Rewrite `model` by `plan` (the weights loaded when the attention is a packed Attention)."""
    graph = model.graph
    slices = _Slices(graph)
    renamed: dict[str, str] = {}
    if plan.attention is not None:
        out = f"{plan.attention_output}_pooled_token"
        if plan.attention.op_type == "Attention":
            weights = {t.name: t for t in graph.initializer}
            unpacked, parts = _unpacked_attention(plan.attention, weights, slices.token0, out)
            slices.nodes.extend(unpacked)
            graph.initializer.extend(parts)
        else:
            slices.nodes.append(_one_query_attention(plan.attention, plan.dims, slices, out))
        renamed[plan.attention_output] = out
    for name in plan.outside:
        if name not in renamed:
            renamed[name] = slices.token0(name)
    for node in plan.region:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    nodes = _topological([*graph.node, *slices.nodes], graph)
    del graph.node[:]
    graph.node.extend(nodes)
    changed = {o for n in plan.region for o in n.output}
    kept = [v for v in graph.value_info if v.name not in changed]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    _drop_unread(graph)  # also the slice constants no Slice reads
    return {"pooled_token_nodes": len(plan.region), "pooled_token_attention": int(plan.attention is not None)}


class _Slices:
    """The Slice nodes that cut a value to token 0 (one per value and axis), and their constants."""

    def __init__(self, graph: Any) -> None:
        import numpy as np
        from onnx import numpy_helper

        self.nodes: list[Any] = []
        self._made: dict[tuple[str, int], str] = {}
        constants = (("start", [0]), ("end", [1]), ("axis1", [1]), ("axis2", [2]))
        graph.initializer.extend(
            numpy_helper.from_array(np.array(v, dtype=np.int64), f"pooled_token_{n}") for n, v in constants
        )

    def token0(self, name: str, axis: int = 1) -> str:
        """`name` cut to index 0 of `axis` (1: the token axis; 2: an attention bias's query rows)."""
        from onnx import helper

        if (name, axis) not in self._made:
            out = f"{name}_pooled_token" + ("" if axis == 1 else "_rows")
            self._made[(name, axis)] = out
            inputs = [name, "pooled_token_start", "pooled_token_end", f"pooled_token_axis{axis}"]
            self.nodes.append(helper.make_node("Slice", inputs, [out], name=f"{out}_slice"))
        return self._made[(name, axis)]


def _one_query_attention(node: Any, dims: dict[str, list[Any]], slices: _Slices, out: str) -> Any:
    """A MultiHeadAttention with token 0's query and its attention bias's row 0, the same keys, values and
    attributes."""
    from onnx import helper

    inputs = list(node.input) + [""] * (_MHA_INPUTS - len(node.input))
    inputs[0] = slices.token0(inputs[0])
    bias = dims.get(inputs[5]) if inputs[5] else None
    if bias is not None and bias[2] != 1:
        inputs[5] = slices.token0(inputs[5], axis=2)
    used = max(i for i, v in enumerate(inputs) if v) + 1
    return helper.make_node(
        "MultiHeadAttention", inputs[:used], [out], name=f"{node.name}_pooled_token", domain=_MS,
        **{a.name: helper.get_attribute_value(a) for a in node.attribute},
    )  # fmt: skip


def _unpacked_attention(
    node: Any, weights: dict[str, Any], token0: Any, out: str
) -> tuple[list[Any], list[Any]]:
    """ONNX Runtime's packed Attention(x, W [E, 3E], b [3E], mask) as q = token0(x) W_q, k = x W_k, v = x W_v
    and MultiHeadAttention(q, k, v, b, mask): the same projections, bias, mask, heads and scale."""
    import numpy as np
    from onnx import helper, numpy_helper

    x, weight_name, bias = node.input[0], node.input[1], node.input[2]
    weight = numpy_helper.to_array(weights[weight_name])
    width = weight.shape[1] // 3
    nodes, parts, tensors = [], [], []
    for i, part in enumerate("qkv"):
        name = f"{weight_name}_{part}"
        tensors.append(
            numpy_helper.from_array(np.ascontiguousarray(weight[:, i * width : (i + 1) * width]), name)
        )
        parts.append(f"{out}_{part}")
        nodes.append(
            helper.make_node(
                "MatMul", [token0(x) if part == "q" else x, name], [parts[-1]], name=f"{name}_matmul"
            )
        )
    mask = node.input[3] if len(node.input) > 3 else ""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in _ATTENTION_ATTRS}
    nodes.append(
        helper.make_node(
            "MultiHeadAttention", [*parts, bias, *([mask] if mask else [])], [out], name=f"{node.name}_pooled_token",
            domain=_MS, **attrs,
        )
    )  # fmt: skip
    return nodes, tensors


def _through_reshapes(name: str, g: _Graph, dims: dict[str, list[Any]]) -> tuple[Any, str]:
    """The node that computes `name` past Reshapes that give back their first input's shape (the dynamo export
    views the attention's [B, S, E] output as [B, S, N, H] and back), and that node's output read. Nodes the
    rewrite no longer reads stay where anything else reads them."""
    shape = dims.get(name)
    node, source = g.producer.get(name), name
    while node is not None and node.op_type == "Reshape":
        source = node.input[0]
        node = g.producer.get(source)
    same = shape is not None and None not in shape and dims.get(source) == shape
    return (node, source) if same or source == name else (None, name)


def _pooling_gather(g: _Graph) -> Any:
    """The one Gather of token 0 on axis 1 (a scalar index), or None (none or several)."""
    found = [
        node for node in g.graph.node
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and int(_attr(node, "axis", 0)) == 1
        and (index := g.constants.get(node.input[1])) is not None and index.ndim == 0 and int(index) == 0
    ]  # fmt: skip
    return found[0] if len(found) == 1 else None


def _constant(name: str, g: _Graph, weights: dict[str, Any]) -> bool:
    return name in weights or name in g.constants


def _axes(node: Any, g: _Graph) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return g.ints(node.input[1])
    value = _attr(node, "axes")
    return None if value is None else [int(v) for v in value]


def _per_token(node: Any, g: _Graph, weights: dict[str, Any], dims: dict[str, list[Any]]) -> bool:
    """Whether each token's output of `node` depends on that token's inputs only (and on constants of at most
    one axis): then it may run on token 0 alone."""
    op, domain = node.op_type, node.domain
    rank = len(dims[node.input[0]]) if node.input and node.input[0] in dims else None
    if rank is None or rank < 3:
        return False
    last = (-1, rank - 1)

    def small(name: str) -> bool:  # a constant without a token axis
        if name in weights:
            return len(weights[name].dims) <= 1
        value = g.constants.get(name)
        return value is not None and value.ndim <= 1

    def constants_small() -> bool:
        return all(small(i) for i in node.input if i and _constant(i, g, weights))

    if domain in ("", "ai.onnx"):
        if op in _UNARY:
            return True
        if op in _BINARY:
            return constants_small()
        if op == "MatMul":
            weight = weights.get(node.input[1])
            return weight is not None and len(weight.dims) == 2 and not _constant(node.input[0], g, weights)
        if op == "ReduceMean":
            axes = _axes(node, g)
            return axes is not None and len(axes) == 1 and axes[0] in last
        if op in ("LayerNormalization", "Gelu"):
            return int(_attr(node, "axis", -1)) in last and constants_small()
        return False
    if domain == _MS:
        if op in _NORMS or op == "Gelu":
            return int(_attr(node, "axis", -1)) in last and constants_small()
        if op in _BIASED:
            return constants_small()
    return False


def _token_rows(shape: list[Any] | None, hidden: list[Any]) -> bool:
    """Whether a value of this shape is per token like the pooled hidden state [B, S, E]: its batch and
    sequence axes are the hidden state's."""
    if shape is None or len(shape) < 3 or hidden[0] is None or hidden[1] is None:
        return False
    return shape[0] == hidden[0] and shape[1] == hidden[1]


def _query_cut(
    node: Any, g: _Graph, weights: dict[str, Any], dims: dict[str, list[Any]], hidden: list[Any]
) -> bool:
    """Whether the attention can compute token 0's query alone (else its whole output is cut to token 0)."""
    if any(name for name in node.output[1:]):
        return False
    if node.op_type == "Attention":
        attrs = {a.name for a in node.attribute}
        weight, bias = (weights.get(node.input[i]) if len(node.input) > i else None for i in (1, 2))
        if not attrs <= _ATTENTION_ATTRS | {"qkv_hidden_sizes"} or any(node.input[4:]):
            return False
        sizes = _attr(node, "qkv_hidden_sizes")
        if weight is None or bias is None or len(weight.dims) != 2 or weight.dims[1] % 3:
            return False
        if sizes is not None and len(set(sizes)) != 1:
            return False
        mask = dims.get(node.input[3]) if len(node.input) > 3 and node.input[3] else []
        return mask is not None and len(mask) <= 2 and _token_rows(dims.get(node.input[0]), hidden)
    # MultiHeadAttention: separate query, key and value ([B, S, E] each), no past
    inputs = list(node.input)
    if len(inputs) < 3 or not all(inputs[:3]) or any(inputs[_MHA_INPUTS:]):
        return False
    if not all(len(dims.get(name, [])) == 3 for name in inputs[:3]) or not _token_rows(
        dims.get(inputs[0]), hidden
    ):
        return False
    if len(inputs) > 5 and inputs[5]:
        bias = dims.get(inputs[5])
        return bias is not None and len(bias) == 4 and bias[2] in (1, hidden[1])
    return True


def _topological(nodes: list[Any], graph: Any) -> list[Any]:
    """`nodes` in an order where each reads only what is computed before it (the graph's order where it can)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered: list[Any] = []
    pending = list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"the rewritten graph has a cycle or an unknown input at {rest[0].name}")
        pending = rest
    return ordered
