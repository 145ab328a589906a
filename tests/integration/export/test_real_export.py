"""Export of the real stand-ins: the manifest's parity figures hold against the real PyTorch models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from export import validate
from gateway.repository import read_model_spec
from gateway.tokenization import PairTokenizer

pytestmark = [pytest.mark.slow, pytest.mark.real_models]

QUERY = "How many people live in Berlin?"
BERLIN = "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers."
NEW_YORK = "New York City is famous for the Metropolitan Museum of Art."
# SOURCE.md of each stand-in: PyTorch fp32, each pair alone, max_length 512
FIXED_LOGITS = {
    "reranker": {BERLIN: 2.599316, NEW_YORK: 0.580683, "scifact:34386619": -3.689300},
    "prefilter": {BERLIN: -1.533148, NEW_YORK: -1.452842, "scifact:34386619": -4.572800},
}
SCIFACT_QUERY = "0-dimensional biomaterials show inductive properties."


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encode(folder: Path, query: str, doc: str) -> dict[str, np.ndarray]:
    """As the gateway tokenizes: the repository's tokenizer.json, truncating the document only."""
    manifest = manifest_of(folder)
    tokenizer = Tokenizer.from_file(str(folder / manifest["tokenizer_dir"] / "tokenizer.json"))
    tokenizer.enable_truncation(manifest["max_length"], strategy="only_second")
    enc = tokenizer.encode(query, doc)
    arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
    return {i["name"]: np.array([arrays[i["name"]]], dtype=np.int64) for i in manifest["inputs"]}


def scifact_doc() -> str | None:
    corpus = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "scifact" / "corpus.jsonl"
    if not corpus.is_file():
        return None
    with corpus.open() as fh:
        for line in fh:
            if '"34386619"' in line:
                doc = json.loads(line)
                if doc["_id"] == "34386619":
                    return (doc["title"] + " " + doc["text"]).strip()
    return None


@pytest.mark.parametrize("model", ["reranker", "prefilter"])
def test_fixed_pairs_match_source_md_in_every_fp32_variant(real_model_repository: Path, model: str):
    folder = real_model_repository / model
    manifest = manifest_of(folder)
    pairs = {BERLIN: (QUERY, BERLIN), NEW_YORK: (QUERY, NEW_YORK)}
    doc = scifact_doc()
    if doc is not None:  # the data set is optional; the Berlin pairs are not
        pairs["scifact:34386619"] = (SCIFACT_QUERY, doc)
    fp32 = session(folder / manifest["variants"]["fp32"]["file"])
    opt = session(folder / manifest["variants"]["fp32-opt"]["file"])
    int8 = session(folder / manifest["variants"]["int8"]["file"])
    got = {}
    for key, (query, text) in pairs.items():
        feed = encode(folder, query, text)
        expected = FIXED_LOGITS[model][key]
        got[key] = {
            name: float(s.run(["logits"], feed)[0][0, 0]) for name, s in (("fp32", fp32), ("opt", opt))
        }
        got[key]["int8"] = float(int8.run(["logits"], feed)[0][0, 0])
        assert got[key]["fp32"] == pytest.approx(expected, abs=1e-4), key
        assert got[key]["opt"] == pytest.approx(expected, abs=1e-4), key
    if model == "reranker":  # the trained reranker separates these two clearly, in int8 too
        assert got[BERLIN]["int8"] > got[NEW_YORK]["int8"] + 1.0


@pytest.mark.parametrize("model", ["reranker", "prefilter"])
def test_manifest_parity_figures_hold_against_a_fresh_pytorch_model(
    real_model_repository: Path, real_models_dir: Path, model: str
):
    folder = real_model_repository / model
    manifest = manifest_of(folder)
    parity = manifest["parity"]
    source = Path(manifest["source"]["path"])
    assert source.parent == real_models_dir
    spec = read_model_spec(real_model_repository, model)
    pairs = validate.build_parity_set()
    encodings = validate.encode_parity_set(PairTokenizer.from_spec(spec), pairs.pairs, spec.input_names)
    assert encodings.ids_sha256() == parity["ids_sha256"]  # the gate scored the ids the gateway builds
    fp32 = validate.onnx_scores(folder / manifest["variants"]["fp32"]["file"], encodings)
    int8 = validate.onnx_scores(folder / manifest["variants"]["int8"]["file"], encodings)

    # PyTorch on the first 5 queries (20 pairs, 5 of them at 512 tokens) keeps the test short on 2 cores
    subset = [i for i, g in enumerate(pairs.groups) if g < 5]
    reference = validate.pytorch_scores(source, encodings.subset(subset))
    diff = np.abs(reference - fp32[subset]).max()
    assert diff <= 1e-4
    assert diff <= parity["figures"]["fp32"]["max_abs_diff"] + 1e-6
    np.testing.assert_allclose(reference[:8], parity["reference_logits_head"], atol=1e-4)

    recomputed = validate.compare(fp32, int8, pairs.groups)
    assert recomputed["spearman"] == pytest.approx(parity["figures"]["int8"]["spearman"], abs=1e-4)
    assert recomputed["top1_agreement"] == pytest.approx(parity["figures"]["int8"]["top1_agreement"])
    assert recomputed["spearman"] >= 0.98 and recomputed["top1_agreement"] >= 0.95
    assert parity["pairs"] >= 64 and parity["pairs_at_max_length"] >= 20


def test_real_export_is_complete_and_within_the_time_budget(real_model_repository: Path):
    for model in ("reranker", "prefilter"):
        folder = real_model_repository / model
        manifest = manifest_of(folder)
        assert manifest["export_seconds"] < 600
        assert manifest["architecture"] == "BertForSequenceClassification"
        assert len(manifest["source"]["sha256"]) == 64
        for variant in manifest["variants"].values():
            assert (folder / variant["file"]).stat().st_size == variant["bytes"]
        for config in (folder / "config.pbtxt", *sorted((folder / "configs").glob("*.pbtxt"))):
            parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
            assert parsed.name == model
            assert [i.name for i in parsed.input] == [i["name"] for i in manifest["inputs"]]
