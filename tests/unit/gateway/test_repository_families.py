"""manifest.json's family fields: read with the documented defaults, refused by name when malformed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from family_tokenizers import build_qwen_tokenizer
from tokenizers import Tokenizer

from gateway.errors import ModelRepositoryError
from gateway.families import MXBAI_RERANK_V2, QWEN3_RERANKER
from gateway.repository import read_model_spec
from gateway.tokenization import PairTokenizer

# The manifest's `template` objects as the exporter writes them (their text is pinned to the model cards in
# test_tokenization_templates.py).
QWEN3_RERANKER_TEMPLATE = QWEN3_RERANKER.manifest()
MXBAI_RERANK_V2_TEMPLATE = MXBAI_RERANK_V2.manifest()

DECODER_FIELDS: dict[str, Any] = {
    "family": "decoder",
    "architecture": "Qwen3ForCausalLM",
    "padding_side": "left",
    "pooling": "last-token",
    "score": {"activation": "sigmoid", "formula": "logit(yes) - logit(no) at the last token"},
    "template": QWEN3_RERANKER_TEMPLATE,
    "variants_skipped": {"int8": "int8 Spearman 0.30 < 0.98"},
}


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory) -> Path:
    return build_qwen_tokenizer(tmp_path_factory.mktemp("qwen-tokenizer"))


def write_model(repository: Path, tokenizer: Path, name: str = "model", **fields: Any) -> Path:
    """A model folder with a manifest (the fields given on top of a minimal one) and a stand-in ONNX file."""
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(b"onnx")
    shutil.copytree(tokenizer, folder / "tokenizer")
    manifest = {
        "name": name,
        "max_length": 2048,
        "inputs": [{"name": "input_ids"}, {"name": "attention_mask"}],
        "variants": {"fp32": {"file": "1/model.onnx", "sha256": "abc"}},
        "created_at": "2026-12-02T00:00:00+00:00",
        **fields,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return repository


NEW_FIELDS = ("family", "padding_side", "pooling", "score", "template", "variants_skipped")


def test_older_manifest_reads_as_before(tiny_model_repository, tmp_path):
    """The tiny export's manifest without the fields the families added (as the exporter wrote it before)."""
    old = tmp_path / "repository"
    shutil.copytree(tiny_model_repository / "reranker", old / "reranker")
    manifest = json.loads((old / "reranker" / "manifest.json").read_text())
    for key in NEW_FIELDS:
        manifest.pop(key, None)
    (old / "reranker" / "manifest.json").write_text(json.dumps(manifest))
    spec = read_model_spec(old, "reranker")
    assert spec.family == "bert" and spec.architecture == "BertForSequenceClassification"
    assert spec.padding_side == "right" and spec.pooling == "cls"
    assert spec.score_activation == "sigmoid" and spec.template is None and spec.variants_skipped == {}
    assert spec.input_names == tuple(item["name"] for item in manifest["inputs"])
    tok = PairTokenizer.from_spec(spec)
    assert tok.prompt is None and tok.padding_side == "right" and tok.max_length == spec.max_length


@pytest.mark.parametrize(
    ("architecture", "model_type", "family"),
    [
        ("XLMRobertaForSequenceClassification", "xlm-roberta", "xlm-roberta"),
        ("ModernBertForSequenceClassification", "modernbert", "modernbert"),
        ("BertForSequenceClassification", "bert", "bert"),
        ("", "", "bert"),
    ],
)
def test_family_of_an_older_manifest_follows_the_architecture(
    tmp_path, qwen_tokenizer, architecture, model_type, family
):
    write_model(tmp_path, qwen_tokenizer, architecture=architecture, model_type=model_type)
    assert read_model_spec(tmp_path, "model").family == family


def test_decoder_manifest_gives_the_template_and_left_padding(tmp_path, qwen_tokenizer):
    write_model(tmp_path, qwen_tokenizer, **DECODER_FIELDS)
    spec = read_model_spec(tmp_path, "model")
    assert spec.family == "decoder" and spec.architecture == "Qwen3ForCausalLM"
    assert spec.padding_side == "left" and spec.pooling == "last-token"
    assert spec.score_activation == "sigmoid" and "logit(yes)" in spec.score_formula
    assert spec.variants_skipped == {"int8": "int8 Spearman 0.30 < 0.98"}
    assert spec.template == QWEN3_RERANKER
    tok = PairTokenizer.from_spec(spec, max_length=4096)
    assert tok.max_length == 2048  # a caller may lower the model's limit, never raise it
    assert tok.padding_side == "left" and tok.prompt == spec.template
    enc = tok.encode_pairs("q", ["d"])
    assert enc.instruction == QWEN3_RERANKER_TEMPLATE["default_instruction"]
    im_start = Tokenizer.from_file(str(spec.tokenizer_dir / "tokenizer.json")).token_to_id("<|im_start|>")
    assert enc.windows[0].ids[0] == im_start


def test_mxbai_template_reads_with_its_optional_instruction_line(tmp_path, qwen_tokenizer):
    write_model(tmp_path, qwen_tokenizer, **{**DECODER_FIELDS, "template": MXBAI_RERANK_V2_TEMPLATE})
    spec = read_model_spec(tmp_path, "model")
    assert spec.template == MXBAI_RERANK_V2
    assert spec.template.instruction == "instruction: {instruction}\n"
    assert spec.template.default_instruction is None


def test_an_older_mxbai_manifest_with_query_with_instruction_reads_as_the_same_template(
    tmp_path, qwen_tokenizer
):
    # what the exporter wrote before the template had one spelling: the whole query part with the instruction
    older = {k: v for k, v in MXBAI_RERANK_V2_TEMPLATE.items() if k != "instruction"}
    older["query_with_instruction"] = "instruction: {instruction}\nquery: {query}"
    write_model(tmp_path, qwen_tokenizer, **{**DECODER_FIELDS, "template": older})
    spec = read_model_spec(tmp_path, "model")
    assert spec.template == MXBAI_RERANK_V2
    tok = PairTokenizer.from_spec(spec)
    new = tmp_path / "new"
    write_model(new, qwen_tokenizer, **{**DECODER_FIELDS, "template": MXBAI_RERANK_V2_TEMPLATE})
    current = PairTokenizer.from_spec(read_model_spec(new, "model"))
    for instruction in (None, "Find the answer"):
        ids = tok.encode_pairs("q?", ["d."], instruction=instruction).windows[0].ids
        assert ids == current.encode_pairs("q?", ["d."], instruction=instruction).windows[0].ids
    bad = {**older, "query_with_instruction": "instruction: {instruction}\nask: {query}"}
    write_model(tmp_path / "bad", qwen_tokenizer, **{**DECODER_FIELDS, "template": bad})
    with pytest.raises(ModelRepositoryError, match=r"'template\.query_with_instruction'"):
        read_model_spec(tmp_path / "bad", "model")


def test_a_new_manifest_writes_one_spelling_of_the_instruction():
    assert "query_with_instruction" not in MXBAI_RERANK_V2_TEMPLATE
    assert MXBAI_RERANK_V2_TEMPLATE["instruction"] == "instruction: {instruction}\n"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"family": "gpt"}, "'family'"),
        ({"padding_side": "middle"}, "'padding_side'"),
        ({"score": {"activation": "softmax"}}, "'score.activation'"),
        ({"score": "sigmoid"}, "'score'"),
        ({"score": {"formula": 3}}, "'score.formula'"),
        ({"pooling": 1}, "'pooling'"),
        ({"architecture": ["Qwen3ForCausalLM"]}, "'architecture'"),
        ({"template": "qwen3-reranker"}, "'template'"),
        ({"template": {**QWEN3_RERANKER_TEMPLATE, "query": "<Query>: {q}\n"}}, "'template.query'"),
        ({"template": {**QWEN3_RERANKER_TEMPLATE, "query": "<Query>\n"}}, "'template.query'"),
        (
            {"template": {**QWEN3_RERANKER_TEMPLATE, "document": "{document} {document}"}},
            "'template.document'",
        ),
        (
            {"template": {**QWEN3_RERANKER_TEMPLATE, "document": "<Document>: {document"}},
            "'template.document'",
        ),
        ({"template": {**QWEN3_RERANKER_TEMPLATE, "suffix": None}}, "'template.suffix'"),
        (
            {"template": {**QWEN3_RERANKER_TEMPLATE, "default_instruction": 5}},
            "'template.default_instruction'",
        ),
        ({"template": {**QWEN3_RERANKER_TEMPLATE, "instruction": "no field"}}, "'template.instruction'"),
        ({"family": "decoder", "template": None}, "'template'"),
        ({"variants_skipped": ["int8"]}, "'variants_skipped'"),
        ({"variants_skipped": {"int8": 0.3}}, "'variants_skipped'"),
    ],
)
def test_malformed_family_field_is_refused_by_name(tmp_path, qwen_tokenizer, fields, named):
    write_model(tmp_path, qwen_tokenizer, **{**DECODER_FIELDS, **fields})
    with pytest.raises(ModelRepositoryError, match=f"manifest.json is malformed: field {named}"):
        read_model_spec(tmp_path, "model")


def test_identity_activation_and_encoder_template_free_family(tmp_path, qwen_tokenizer):
    write_model(
        tmp_path,
        qwen_tokenizer,
        family="st-crossencoder",
        architecture="ModernBertModel",
        score={"activation": "identity", "formula": "Dense -> Tanh -> LayerNorm -> Dense"},
        template=None,
    )
    spec = read_model_spec(tmp_path, "model")
    assert spec.family == "st-crossencoder" and spec.score_activation == "identity"
    assert spec.template is None and spec.padding_side == "right"
