"""export/pooled_token.py: the last layer computed for the pooled token only. On ONNX Runtime's fused BERT graph
(packed Attention), on XLM-R's through the exporter's own `fusion.optimize_variant` and on a CLS-pooled
ModernBERT's fused graph (MultiHeadAttention with a sliding-window bias) the scores stay what they were on padded
batches, in fp32 and int8; graphs that pool every token, or read the hidden state elsewhere too, are left as they
are; external data stays external."""

from __future__ import annotations

import shutil
from pathlib import Path

import family_models as fm
import numpy as np
import onnx
import pytest
from onnx import helper

from export import fusion, graph_layout, onnx_export, pooled_token, quantize, torch_export
from export.sources import resolve_source


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT cross-encoder's graph fused by ONNX Runtime's optimizer (Attention, EmbedLayerNormalization)."""
    root = tmp_path_factory.mktemp("pooled-bert")
    folder = fm.build_bert(root / "bert")
    fp32 = root / "model.onnx"
    onnx_export.export_fp32(folder, fp32, opset=onnx_export.DEFAULT_OPSET, quiet=True)
    out = root / "model.opt.onnx"
    quantize.optimize_fp32(fp32, out, "bert", num_heads=2, hidden_size=128)
    return out


@pytest.fixture(scope="module")
def modernbert_cls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ModernBERT with `classifier_pooling="cls"`, fused as the exporter fuses it."""
    root = tmp_path_factory.mktemp("pooled-modernbert")
    folder = fm.build_modernbert(root / "modernbert", classifier_pooling="cls")
    out = root / "model.opt.onnx"
    torch_export.export_fused(resolve_source(str(folder), quiet=True).family, folder, out,
                              positive_id=None, negative_id=None)  # fmt: skip
    graph_layout.rewrite_file(out)
    return out


def _copy(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / source.name))


def _scores(path: Path) -> np.ndarray:
    """Right-padded rows of different lengths (one past the tiny ModernBERT's 16-token local window)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    lengths = (70, 41, 9, 1)
    ids = rng.integers(5, 600, (len(lengths), max(lengths)))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    names = {i.name for i in session.get_inputs()}
    return session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0][:, 0]


def _nodes(path: Path) -> tuple[list[onnx.NodeProto], dict[str, onnx.NodeProto]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return list(graph.node), {out: node for node in graph.node for out in node.output}


def _count(nodes: list[onnx.NodeProto], op: str) -> int:
    return sum(n.op_type == op for n in nodes)


def test_bert_last_layer_runs_on_the_pooled_token(bert: Path, tmp_path: Path):
    path = _copy(bert, tmp_path)
    before = _scores(bert)
    counts = pooled_token.rewrite_file(path)
    # the output projection, the norm, the MLP (MatMul, BiasGelu, MatMul), the norm
    assert counts["pooled_token_attention"] == 1 and counts["pooled_token_nodes"] >= 6
    nodes, producer = _nodes(path)
    old, _ = _nodes(bert)
    # the last packed Attention is a MultiHeadAttention whose query is token 0's projection
    assert _count(nodes, "Attention") == _count(old, "Attention") - 1
    (attention,) = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    query, key = producer[attention.input[0]], producer[attention.input[1]]
    assert query.op_type == key.op_type == "MatMul" and producer[query.input[0]].op_type == "Slice"
    assert producer[key.input[0]].op_type != "Slice"  # keys and values of every token
    # the residual add after the attention reads token 0 of the layer's input
    (projection,) = [n for n in nodes if n.op_type == "MatMul" and n.input[0] == attention.output[0]]
    (residual,) = [n for n in nodes if projection.output[0] in n.input]
    assert {producer[i].op_type for i in residual.input if i in producer} == {"MatMul", "Slice"}
    assert np.abs(_scores(path) - before).max() <= 1e-5

    # int8 quantized from each graph, as the exporter does: the same scores within int8's own spread
    int8_before, int8_after = tmp_path / "before.int8.onnx", tmp_path / "after.int8.onnx"
    quantize.quantize_int8(bert, int8_before)
    quantize.quantize_int8(path, int8_after)
    error_before = np.abs(_scores(int8_before) - before).max()
    assert np.abs(_scores(int8_after) - before).max() <= 2 * error_before + 1e-3


def test_cls_pooled_modernbert_cuts_its_attention_query_and_bias(modernbert_cls: Path, tmp_path: Path):
    path = _copy(modernbert_cls, tmp_path)
    before = _scores(modernbert_cls)
    counts = pooled_token.rewrite_file(path)
    assert counts["pooled_token_attention"] == 1 and counts["pooled_token_nodes"] >= 6
    nodes, producer = _nodes(path)
    attentions = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    cut = [a for a in attentions if producer[a.input[0]].op_type == "Slice"]
    assert len(cut) == 1 and len(attentions) == 3  # the last of the tiny model's 3 layers
    bias = producer[cut[0].input[5]]
    assert bias.op_type == "Slice" and bias.input[3] == "pooled_token_axis2"  # row 0 of the window's bias
    assert np.abs(_scores(path) - before).max() <= 1e-5


def test_mean_pooled_graphs_are_left_alone(tmp_path: Path):
    folder = fm.build_modernbert(tmp_path / "modernbert")  # classifier_pooling="mean"
    out = tmp_path / "model.opt.onnx"
    torch_export.export_fused(resolve_source(str(folder), quiet=True).family, folder, out,
                              positive_id=None, negative_id=None)  # fmt: skip
    data = out.read_bytes()
    assert pooled_token.rewrite_file(out) == {"pooled_token_nodes": 0, "pooled_token_attention": 0}
    assert out.read_bytes() == data


def test_a_hidden_state_read_elsewhere_stays_whole(bert: Path, tmp_path: Path):
    """The pooled tensor is also a graph output: every token of it is wanted, nothing is cut."""
    model = onnx.load(str(bert))
    (gather,) = [
        n
        for n in model.graph.node
        if n.op_type == "Gather" and n.output[0].endswith("pooler/Gather_output_0")
    ]
    model.graph.output.append(helper.make_tensor_value_info(gather.input[0], onnx.TensorProto.FLOAT, None))
    path = tmp_path / "model.opt.onnx"
    onnx.save(model, str(path))
    assert pooled_token.rewrite_file(path) == {"pooled_token_nodes": 0, "pooled_token_attention": 0}


def test_external_data_stays_in_its_file(bert: Path, tmp_path: Path):
    model = onnx.load(str(bert))
    path = tmp_path / "model.opt.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.opt.onnx.data", size_threshold=1024)  # fmt: skip
    before = _scores(path)
    assert pooled_token.rewrite_file(path)["pooled_token_attention"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.opt.onnx", "model.opt.onnx.data"]
    assert path.stat().st_size < 100_000  # the weights are still outside the graph
    assert np.abs(_scores(path) - before).max() <= 1e-5


def test_xlm_roberta_through_the_exporters_fused_variant(tmp_path: Path):
    """bge-reranker's layout (`features[:, 0]` into its classification head), fused as `python -m export` fuses
    it: the manifest's counts say the last layer was cut, and the scores equal the graph fused without it."""
    folder = fm.build_xlm_roberta(tmp_path / "xlmr")
    family = resolve_source(str(folder), quiet=True).family
    fp32 = tmp_path / "model.onnx"
    onnx_export.export_fp32(folder, fp32, opset=onnx_export.DEFAULT_OPSET, quiet=True)
    graphs = {}
    for cut in (False, True):
        graphs[cut] = tmp_path / f"model.opt.{int(cut)}.onnx"
        facts = fusion.optimize_variant(family, folder, fp32, graphs[cut], num_heads=2, hidden_size=128,
                                        token_ids=None, pooled_token_only=cut)  # fmt: skip
        assert facts["optimizations"].get("pooled_token_attention", 0) == int(cut)
    assert facts["optimizations"]["contrib_ops"]["MultiHeadAttention"] == 1
    assert np.abs(_scores(graphs[True]) - _scores(graphs[False])).max() <= 1e-5
