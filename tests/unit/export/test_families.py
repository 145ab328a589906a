"""Export families (issue 16): detection from the folder, refusals, and one export per family through
`python -m export` checked against the model's own PyTorch scoring (tests/family_models.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import family_models as fm
import pytest

from export.errors import SourceError
from export.families import ST_LAYOUT_VERSION
from export.sources import resolve_source

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
