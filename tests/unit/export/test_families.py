"""Export families (issue 16, issue 21 part 5): detection from the folder, refusals, one export per family through
`python -m export` checked against the model's own PyTorch scoring (tests/family_models.py), the ids the gate
scored against the ids the gateway builds from the exported manifest, and the gate's bounds on a deep decoder."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import family_models as fm
import model_cards as cards
import numpy as np
import pytest

from export import validate
from export.errors import SourceError
from export.families import ST_LAYOUT_VERSION
from export.sources import resolve_source
from gateway.families import GateBounds
from gateway.repository import read_model_spec
from gateway.tokenization import PairTokenizer, build_batch

REPO_ROOT = Path(__file__).resolve().parents[3]
PAIRS = [
    ("what is the capital of France?", "Paris is the capital and largest city of France."),
    ("what is the capital of France?", "the railway timetable changes in spring when new trains arrive"),
    ("Does vitamin D affect bone density in older adults?", "Vitamin D and bone density in older adults."),
    ("Does vitamin D affect bone density in older adults?", "the weather is nice today."),
    ("how do plants make food?", "Plants use photosynthesis to turn light, water and CO2 into sugar. " * 3),
]
CONTRACT_KEYS = {"family", "architecture", "padding_side", "pooling", "score", "template", "variants_skipped"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {
        "bert": fm.build_bert(root / "tiny-bert"),
        "xlmr": fm.build_xlm_roberta(root / "tiny-xlm-roberta"),
        "modernbert": fm.build_modernbert(root / "modernbert"),
        "st": fm.build_st_crossencoder(root / "ettin-like"),
        "qwen3": fm.build_qwen3_reranker(root / "tiny-causal-lm"),
        "mxbai": fm.build_mxbai_v2(root / "tiny-qwen2"),
        "encoder": fm.build_modernbert_encoder_only(root / "encoder-only"),
    }


# --- detection and refusals (fast) ---------------------------------------------------------------


def test_families_are_detected_from_the_folder(folders: dict[str, Path]):
    modernbert = resolve_source(str(folders["modernbert"])).family
    assert (modernbert.family, modernbert.pooling, modernbert.padding_side) == ("modernbert", "mean", "right")
    st = resolve_source(str(folders["st"])).family
    assert st.family == "st-crossencoder" and st.architecture == "ModernBertModel"
    assert [m["type"] for m in st.st_modules] == ["Transformer", "Pooling", "Dense", "LayerNorm", "Dense"]
    assert (st.pooling, st.activation) == ("cls", "sigmoid")
    assert st.manifest_fields()["sentence_transformers"]["layout_matched"] == ST_LAYOUT_VERSION
    qwen3 = resolve_source(str(folders["qwen3"]), template="qwen3-reranker").family
    assert (qwen3.family, qwen3.padding_side, qwen3.pooling) == ("decoder", "right", "last-token")
    assert qwen3.template is not None and qwen3.template.positive_token == "yes"


def test_encoder_only_folder_is_refused_with_a_clear_message(folders: dict[str, Path]):
    with pytest.raises(SourceError, match=r"encoder without a relevance head.*ModernBertModel.*rank nothing"):
        resolve_source(str(folders["encoder"]))


def test_cli_refuses_the_encoder_only_folder_and_writes_nothing(folders: dict[str, Path], tmp_path: Path):
    result = _export(folders["encoder"], tmp_path / "repo")
    assert result.returncode == 1
    assert "export failed" in result.stderr and "encoder without a relevance head" in result.stderr
    assert not (tmp_path / "repo" / "reranker").exists()


def test_decoder_without_template_is_refused_unless_its_name_says(folders: dict[str, Path], tmp_path: Path):
    with pytest.raises(
        SourceError, match=r"causal LM .*pass --template \(mxbai-rerank-v2 or qwen3-reranker\)"
    ):
        resolve_source(str(folders["qwen3"]))
    named = tmp_path / "Qwen3-Reranker-tiny"
    named.symlink_to(folders["qwen3"], target_is_directory=True)
    template = resolve_source(str(named)).family.template
    assert template is not None and template.name == "qwen3-reranker"


def test_template_on_an_encoder_and_unknown_template_are_refused(folders: dict[str, Path]):
    with pytest.raises(SourceError, match="--template qwen3-reranker is for decoder rerankers"):
        resolve_source(str(folders["modernbert"]), template="qwen3-reranker")
    with pytest.raises(SourceError, match="unknown --template 'bge'"):
        resolve_source(str(folders["qwen3"]), template="bge")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta",
          "num_labels": 1}, "xlm-roberta"),
        ({"architectures": ["BertForSequenceClassification"], "model_type": "bert", "num_labels": 1}, "bert"),
        ({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}, "unknown architecture"),
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "supported for qwen2, qwen3"),
        ({"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta"}, "encoder without a relevance head"),
        ({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}, "has 2 output logits"),
    ],
)  # fmt: skip
def test_family_table_from_config_alone(tmp_path: Path, config: dict, expected: str):
    from export.families import detect_family

    if expected in ("bert", "xlm-roberta"):
        family = detect_family(tmp_path, config, "m")
        assert (family.family, family.exporter, family.padding_side) == (expected, "optimum", "right")
        assert family.manifest_fields()["score"]["activation"] == "sigmoid"
    else:
        with pytest.raises(SourceError, match=expected):
            detect_family(tmp_path, config, "m")


def test_mxbai_v2_is_detected_from_its_hub_name(tmp_path: Path):
    from export.families import detect_family

    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    family = detect_family(tmp_path, config, "m", hints=("mixedbread-ai/mxbai-rerank-base-v2",))
    assert family.template is not None and family.template.name == "mxbai-rerank-v2"
    assert (family.template.positive_token, family.template.negative_token) == ("1", "0")


def test_st_embedding_model_without_score_module_is_refused(folders: dict[str, Path], tmp_path: Path):
    import shutil

    embedding = tmp_path / "st-embedding"
    shutil.copytree(folders["st"], embedding)
    modules = json.loads((embedding / "modules.json").read_text())
    (embedding / "modules.json").write_text(json.dumps(modules[:2]))  # Transformer -> Pooling
    with pytest.raises(SourceError, match=r"without a score head .*Transformer -> Pooling"):
        resolve_source(str(embedding))


# --- one export per family (slow) ----------------------------------------------------------------


def _export(model: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", "--model", str(model), "--output", str(output),
         "--prefilter", "none", *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def exported(
    folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, dict, str]]:
    """export(key) -> (model folder in the repository, manifest, export output); one export per family."""
    cache: dict[str, tuple[Path, dict, str]] = {}
    templates = {"qwen3": "qwen3-reranker", "mxbai": "mxbai-rerank-v2"}

    def export(key: str) -> tuple[Path, dict, str]:
        if key not in cache:
            repo = tmp_path_factory.mktemp(f"repo-{key}")
            # 256 tokens: the parity set's long pairs are still truncated, at half the cost
            extra = ("--max-length", "256", *(("--template", templates[key]) if key in templates else ()))
            result = _export(folders[key], repo, *extra)
            assert result.returncode == 0, result.stderr
            folder = repo / "reranker"
            cache[key] = (folder, json.loads((folder / "manifest.json").read_text()), result.stderr)
        return cache[key]

    return export


def _assert_served_files_exist(folder: Path, manifest: dict) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    for config_file in (folder / "config.pbtxt", folder / "configs" / "cpu-onnxruntime.pbtxt"):
        config = text_format.Parse(config_file.read_text(), pb.ModelConfig())
        assert (folder / "1" / config.default_model_filename).is_file(), config_file
    for key, variant in manifest["variants"].items():
        assert (folder / variant["file"]).is_file(), key
    for key in manifest["variants_skipped"]:
        assert key not in manifest["variants"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "family", "architecture", "pooling"),
    [
        ("modernbert", "modernbert", "ModernBertForSequenceClassification", "mean"),
        ("st", "st-crossencoder", "ModernBertModel", "cls"),
        ("qwen3", "decoder", "Qwen3ForCausalLM", "last-token"),
        ("mxbai", "decoder", "Qwen2ForCausalLM", "last-token"),
    ],
)
def test_family_exports_and_matches_pytorch(
    exported: Callable[[str], tuple[Path, dict, str]],
    folders: dict[str, Path],
    key: str,
    family: str,
    architecture: str,
    pooling: str,
):
    folder, manifest, output = exported(key)
    assert set(manifest) >= CONTRACT_KEYS
    assert (manifest["family"], manifest["architecture"], manifest["pooling"]) == (
        family,
        architecture,
        pooling,
    )
    assert manifest["padding_side"] == "right"
    assert manifest["score"]["activation"] == "sigmoid"
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32"}]
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    # the gate's own figure, and an independent check: the model's library vs the exported graph, scored
    # the way the manifest tells the gateway to (template parts, padding side, activation)
    assert manifest["parity"]["figures"]["fp32"]["max_abs_diff"] <= 1e-4
    reference = fm.reference_scores(folders[key], PAIRS)
    scores = fm.exported_scores(folder, PAIRS)
    assert max(abs(a - b) for a, b in zip(reference, scores, strict=True)) <= 1e-4
    assert len({round(s, 4) for s in reference}) > 1  # the scores differ: the head is in the graph
    _assert_served_files_exist(folder, manifest)
    for variant, reason in manifest["variants_skipped"].items():
        assert f"{variant} left out ({reason})" in output
    if family == "decoder":
        template = manifest["template"]
        assert template["name"] == {"qwen3": "qwen3-reranker", "mxbai": "mxbai-rerank-v2"}[key]
        assert {"prefix", "query", "document", "suffix", "default_instruction"} <= set(template)
        assert template["suffix"].endswith(
            "<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if key == "qwen3" else "")
        )
    else:
        assert manifest["template"] is None
    if key == "st":
        head = manifest["sentence_transformers"]
        assert head["layout_matched"] == ST_LAYOUT_VERSION
        assert [m["type"] for m in head["modules"]][-1] == "Dense"
    if key == "st":  # no fusion recipe for a module stack, and ORT's optimizer has no ModernBERT fusion
        assert "no fusion for model_type 'modernbert'" in manifest["variants_skipped"]["fp32-opt"]
        return
    # ModernBERT and the decoders: a fused graph (export/fusion.py), its contrib ops recorded
    fused = manifest["variants"]["fp32-opt"]
    ops = fused["optimizations"]["contrib_ops"]
    assert ("GroupQueryAttention" if family == "decoder" else "MultiHeadAttention") in ops
    # ModernBERT's LayerNorms as plain ops (export/layer_norm.py); the decoders' RMSNorms keep their kernels
    plain_norms = fused["optimizations"]["layer_norms_as_plain_ops"]
    assert (
        (plain_norms == 0 and "SkipSimplifiedLayerNormalization" in ops)
        if family == "decoder"
        else plain_norms > 0
    )
    assert "SkipLayerNormalization" not in ops
    # mean pooling and the decoders' last token read every position: nothing for export/pooled_token.py to cut
    assert fused["optimizations"]["pooled_token_nodes"] == 0
    assert manifest["parity"]["figures"]["fp32-opt"]["max_abs_diff"] <= 1e-4
    if family == "decoder":  # the cached graph, gated the way the gateway serves it (head once)
        assert fused["kv_cache"]["layers"] == 2
        assert "fp32-opt" in manifest["parity"]["prefix_reuse"]["variants"]


@pytest.mark.slow
def test_decoder_instruction_and_batch_position_do_not_change_a_row(
    exported: Callable[[str], tuple[Path, dict, str]], folders: dict[str, Path]
):
    folder, _, _ = exported("qwen3")
    alone = fm.exported_scores(folder, PAIRS[:1])
    batched = fm.exported_scores(folder, PAIRS)  # row 0 is padded beside the longest pair
    assert abs(alone[0] - batched[0]) <= 1e-5
    instruction = "Given a question, find the passage that answers it"
    assert fm.exported_scores(folder, PAIRS[:2], instruction=instruction) == pytest.approx(
        fm.reference_scores(folders["qwen3"], PAIRS[:2], instruction=instruction), abs=1e-4
    )


# --- the gate scores the ids the gateway builds (slow) --------------------------------------------------------

DECODERS = {"qwen3", "mxbai"}


def _card_ids(key: str, hf, pairs, max_length: int, instruction: str | None = None) -> list[list[int]]:
    """The ids of the model's own library: the tokenizer's pair encoding with the document cut (encoders), the
    Qwen3-Reranker card's process_inputs, mxbai_rerank's prepare_inputs (its max_length counts the query and
    the document only: the prompt's own tokens apart)."""
    if key == "qwen3":
        return fm.qwen3_card_input_ids(hf, pairs, instruction, max_length)
    if key == "mxbai":
        return fm.mxbai_v2_input_ids(
            hf, pairs, instruction, model_max_length=512, max_length=max_length - _mxbai_prompt_tokens(hf)
        )
    encoded = hf(
        [q for q, _ in pairs], [d for _, d in pairs], truncation="only_second", max_length=max_length
    )
    return list(encoded["input_ids"])


def _mxbai_prompt_tokens(hf) -> int:
    def count(text: str) -> int:
        return len(hf(text, add_special_tokens=False)["input_ids"])

    return sum(
        count(t) for t in (cards.MXBAI_PREFIX, cards.MXBAI_TASK_PROMPT, cards.MXBAI_SUFFIX, cards.MXBAI_SEP)
    )


@pytest.mark.slow
@pytest.mark.parametrize("key", ["bert", "xlmr", "modernbert", "st", "qwen3", "mxbai"])
def test_the_gate_scored_the_ids_the_gateway_builds(
    exported: Callable[[str], tuple[Path, dict, str]], key: str
):
    """One family table: the ids the gate scored at export (manifest parity.ids_sha256, pad id, padding side)
    are the ones the gateway builds from the exported manifest, and the ones the model's own library builds."""
    from transformers import AutoTokenizer

    folder, manifest, _ = exported(key)
    spec = read_model_spec(folder.parent, folder.name)
    served = PairTokenizer.from_spec(spec)
    pairs = validate.build_parity_set().pairs
    encoded = validate.encode_parity_set(served, pairs, spec.input_names)
    parity = manifest["parity"]
    assert parity["ids_sha256"] == encoded.ids_sha256()
    assert (parity["pad_id"], parity["padding_side"]) == (served.pad_id, served.padding_side)
    assert served.padding_side == "right"  # decoders too: the fused graphs take no padding mask
    if key in DECODERS:  # the cached graphs were gated head once, at the heads the gateway's windows declare
        reuse = parity["prefix_reuse"]
        assert reuse["mean_head_tokens"] == pytest.approx(np.mean([w.shared for w in encoded.windows]))
        assert "fp32-opt" in reuse["variants"] and min(w.shared for w in encoded.windows) > 0
    else:
        assert "prefix_reuse" not in parity
    assert parity["pairs_at_max_length"] > 0  # truncation is part of what is compared
    hf = AutoTokenizer.from_pretrained(folder / "tokenizer")
    assert [w.ids for w in encoded.windows] == _card_ids(key, hf, pairs, spec.max_length)


@pytest.mark.slow
def test_mxbai_v2_with_an_instruction_and_truncation_through_the_exported_manifest(
    exported: Callable[[str], tuple[Path, dict, str]], folders: dict[str, Path]
):
    """The gateway's tokenizer, built from the exported manifest, against mxbai_rerank's own prepare_inputs and
    formula: with an instruction, a document cut to fit, and a short one beside it in one (right-)padded batch."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    folder, _, _ = exported("mxbai")
    spec = read_model_spec(folder.parent, folder.name)
    served = PairTokenizer.from_spec(spec)
    hf = AutoTokenizer.from_pretrained(folder / "tokenizer")
    # a query part that fits whole: a longer one is cut differently (the gateway leaves the document at least a
    # quarter of max_length, mxbai_rerank gives the query up to 3/4 of its own max_length; README says so)
    instruction = "Find the answer"
    pairs = [
        (
            "how do plants make food?",
            "Plants use photosynthesis to turn light, water and CO2 into sugar. " * 40,
        ),
        ("what is the capital of France?", "Paris is the capital and largest city of France."),
    ]
    encodings = [served.encode_pairs(q, [d], instruction=instruction) for q, d in pairs]
    windows = [e.windows[0] for e in encodings]
    assert encodings[0].truncated == [True] and len(windows[0].ids) == spec.max_length == 256
    assert encodings[1].truncated == [False] and encodings[0].instruction == instruction
    assert not any(e.query_truncated for e in encodings)
    # mxbai's max_length counts query and document only; the gateway's counts the whole prompt
    assert [w.ids for w in windows] == _card_ids("mxbai", hf, pairs, spec.max_length, instruction)
    plain = served.encode_pairs(pairs[1][0], [pairs[1][1]]).windows[0].ids
    assert plain == _card_ids("mxbai", hf, pairs[1:], spec.max_length)[0] != windows[1].ids

    batch = build_batch(windows, spec.input_names, served.pad_id, padding_side=served.padding_side)
    session = ort.InferenceSession(str(spec.variant_path("fp32")), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], batch.inputs)[0][:, 0].astype(np.float64)
    served_scores = 1.0 / (1.0 + np.exp(-logits))
    reference = fm.reference_scores(
        folders["mxbai"],
        pairs,
        instruction=instruction,
        max_length=spec.max_length - _mxbai_prompt_tokens(hf),
    )
    assert np.abs(served_scores - np.asarray(reference)).max() <= 1e-4
    assert abs(reference[0] - reference[1]) > 1e-4  # two different scores, each matched


# --- the gate's bounds and the export's dummy inputs (slow) ---------------------------------------------------


@pytest.mark.slow
def test_a_deep_decoder_with_large_logits_passes_the_gate(tmp_path: Path):
    """Qwen3 layout, yes/no logits near 40 as deep trained rerankers have: float32 rounding alone misses the
    former 1e-4 absolute bound; the bound relative to the reference's scale lets it through."""
    folder = fm.build_qwen3_reranker(
        tmp_path / "deep-qwen3", num_hidden_layers=4, hidden_size=256, intermediate_size=768,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, lm_head_std=1.2,
    )  # fmt: skip
    result = _export(folder, tmp_path / "repo", "--max-length", "256", "--template", "qwen3-reranker")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "repo" / "reranker" / "manifest.json").read_text())
    fp32 = manifest["parity"]["figures"]["fp32"]
    assert 30.0 <= fp32["reference_scale"] <= 60.0
    assert manifest["parity"]["thresholds"]["fp32_rtol"] == 2e-5  # the decoder family's relative part
    assert fp32["max_abs_diff"] <= fp32["bound"] == pytest.approx(1e-4 + 2e-5 * fp32["reference_scale"])
    # the former bound (1e-4 absolute) refused this export: rounding on large logits, not a wrong graph
    assert validate.variant_problems("fp32", fp32, GateBounds(fp32_atol=1e-4, fp32_rtol=0.0))


@pytest.mark.slow
def test_a_vocabulary_under_50_tokens_exports(tmp_path: Path):
    folder = fm.build_tiny_vocab_modernbert(tmp_path / "tiny-vocab")
    result = _export(folder, tmp_path / "repo", "--max-length", "128", "--fp16-gpu-fusion")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "repo" / "reranker" / "manifest.json").read_text())
    assert manifest["family"] == "modernbert"
    # asked for a GPU fusion the family has not: converted unfused, and said so
    assert manifest["variants"]["fp16"]["gpu_fusion"] is None
    assert (
        "--fp16-gpu-fusion: the fp16 file is unfused: modernbert has its own fusion recipe" in result.stderr
    )
    fp32 = manifest["parity"]["figures"]["fp32"]
    assert fp32["max_abs_diff"] <= fp32["bound"]


def test_dummy_ids_come_from_the_models_own_vocabulary():
    from export.torch_export import dummy_ids

    ids = dummy_ids(40, 2, 24)
    assert ids.shape == (2, 24) and int(ids.min()) >= 0 and int(ids.max()) < 40
    assert int(dummy_ids(7, 4, 64).max()) < 7


@pytest.mark.slow
def test_calibration_scores_a_decoder_with_its_prompt(
    exported: Callable[[str], tuple[Path, dict, str]], folders: dict[str, Path], tmp_path: Path
):
    """`--calibration` scores pairs the way the gateway serves them: a decoder inside its prompt template (the
    card's scores), its cached graph head once and each document after it, not as a bare query/document
    pair."""
    import shutil

    from export.calibrate import cpu_logits

    folder, manifest, _ = exported("qwen3")
    repository = tmp_path / "repo"
    shutil.copytree(folder, repository / "reranker")
    # the fp32 graphs only: the comparison below is with PyTorch, exactly
    fp32_only = {k: v for k, v in manifest["variants"].items() if k in ("fp32", "fp32-opt")}
    (repository / "reranker" / "manifest.json").write_text(json.dumps({**manifest, "variants": fp32_only}))
    query = PAIRS[0][0]
    documents = [PAIRS[0][1], PAIRS[1][1], PAIRS[4][1]]
    [logits] = cpu_logits(repository, "reranker", [{"query": query, "documents": documents}], None)
    # the card's own truncation at the exported max_length (the last document is cut to fit 256 tokens)
    pairs = [(query, d) for d in documents]
    probabilities = fm.reference_scores(folders["qwen3"], pairs, max_length=manifest["max_length"])
    expected = [float(np.log(p / (1.0 - p))) for p in probabilities]
    assert logits == pytest.approx(expected, abs=1e-4)
