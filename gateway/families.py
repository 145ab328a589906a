"""The model families, as one table read by both the build step and the gateway.

A family is data: an entry of FAMILIES says how a source folder is recognised, which graph the exporter builds
(inputs, padding side, pooling, score head and its activation), the prompt templates a decoder reranker takes,
how its fused fp32 graph is made (`FusionRecipe`), and the parity gate's bounds and size; BACKBONES says, per config.json `model_type`, which classifier or causal-LM family
it belongs to, what ONNX Runtime's transformer optimizer makes of it and how its positions count. Adding a family
or a model type is adding an entry: no other module compares family names or model types.

| family          | recognised by (source folder)                                         | graph built by         | fused fp32 graph (fp32-opt) |
|-----------------|-----------------------------------------------------------------------|------------------------|-----------------------------|
| bert            | Bert/DistilBert/Electra/DebertaV2 ...ForSequenceClassification, 1 label | optimum                | ORT optimizer (bert)   |
| xlm-roberta     | XLMRoberta/Roberta/Camembert ...ForSequenceClassification, 1 label    | optimum                | ORT optimizer (bert)        |
| modernbert      | ModernBertForSequenceClassification, 1 label                          | torch.onnx             | onnxscript ORT fusions      |
| st-crossencoder | sentence-transformers modules.json: Transformer (encoder) -> Pooling -> Dense/LayerNorm ... -> Dense(1, "scores") | torch.onnx, the whole module stack | none |
| decoder         | Qwen3ForCausalLM / Qwen2ForCausalLM + a reranker prompt template      | torch.onnx, logit(pos) - logit(neg) at the last real token (right padding) | onnxscript ORT fusions, with a key/value cache |

`detect_family` refuses with UnsupportedSource (the exporter's SourceError) what cannot be exported correctly:
an encoder without a head (`ModernBertModel`, `BertModel`: the layout of the encoder-only ONNX file published
beside Ettin, which scores nothing), a sentence-transformers embedding model (no "scores" module), a classifier with
more than one label, a causal LM whose template is not known (pass --template), an unknown architecture. Never a
graph without its head.

The build step imports this module (detection, templates, gate bounds), the gateway reads a manifest's family
fields through it (`gateway.repository`); it reads JSON files only and imports no runtime.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

PaddingSide = Literal["right", "left"]
PADDING_SIDES: tuple[PaddingSide, ...] = ("right", "left")
Activation = Literal["sigmoid", "identity"]
ACTIVATIONS: tuple[Activation, ...] = ("sigmoid", "identity")
Exporter = Literal["optimum", "torch"]
# What the graph computes after the encoder or decoder body; the exporter and the gate's PyTorch reference each
# have one builder per kind (export/torch_export.py, export/validate.py).
HeadKind = Literal["classifier", "module-stack", "last-token-difference"]

# The sentence-transformers release whose CrossEncoder module layout (modules.json types, Dense/LayerNorm/
# Pooling configs, `activation_fn` in config_sentence_transformers.json, "scores" as the output key) the
# st-crossencoder family was written against and tested with: module stacks came with 5.4; 5.7.0 is the newest
# release that runs on transformers 4.x (6.x needs transformers 5).
ST_LAYOUT_VERSION = "5.7.0"
# modules.json types by their class name (the module path changed between releases: models.Pooling,
# sentence_transformer.modules.pooling.Pooling, ...); only these can sit between the encoder and the score
_ST_HEAD_MODULES = {"Pooling", "Dense", "LayerNorm", "Dropout"}
_ST_POOLING = {"cls", "mean", "max", "lasttoken", "mean_sqrt_len_tokens"}


class UnsupportedSource(ValueError):
    """The source folder holds no family this table can export; the message says why (export: SourceError)."""


class ManifestFieldError(ValueError):
    """One field of manifest.json holds a value the gateway cannot use; `field` is its dotted name."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name!r}: {problem}")
        self.field = field_name


# --- prompt templates ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    """A decoder reranker's prompt: prefix + query part + document part + suffix, each tokenized alone.

    `query` is a format with `{query}` (and optionally `{instruction}`), `document` one with `{document}`;
    prefix and suffix are plain text (special tokens written as text). `instruction`, when set, is a format
    with `{instruction}` put before the query part only when there is an instruction (mxbai-rerank-v2 writes
    an `instruction: ...` line only then); `default_instruction` is used when a request brings none. The score
    is logit(positive_token) - logit(negative_token) at the last position. manifest.json holds these fields;
    manifests written before `instruction` existed hold `query_with_instruction` (the whole query part as
    written with an instruction) instead, which reads as the same template.
    """

    name: str
    prefix: str
    query: str
    document: str
    suffix: str
    default_instruction: str | None = None
    instruction: str | None = None
    positive_token: str | None = None
    negative_token: str | None = None
    source: str | None = None

    def manifest(self) -> dict[str, Any]:
        """The manifest's `template` object."""
        return asdict(self)

    @classmethod
    def from_manifest(cls, raw: Any) -> PromptTemplate:
        """Parse the manifest's `template` object; a wrong value raises ManifestFieldError naming it."""
        if not isinstance(raw, dict):
            raise ManifestFieldError("template", f"must be an object or null, not {type(raw).__name__}")

        def text(key: str, *, required: bool = True) -> str | None:
            value = raw.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str):
                raise ManifestFieldError(f"template.{key}", f"must be a string, not {value!r}")
            return value

        query, document = str(text("query")), str(text("document"))
        instruction = text("instruction", required=False)
        with_instruction = text("query_with_instruction", required=False)
        if instruction is None and with_instruction is not None:
            # The older spelling (mxbai-rerank-v2's first manifests): the query part as written when an
            # instruction is given, i.e. an instruction line before the plain query part.
            if not with_instruction.endswith(query):
                raise ManifestFieldError(
                    "template.query_with_instruction", f"must end with the query part {query!r}"
                )
            instruction = with_instruction[: -len(query)]
        _check_format("template.query", query, required={"query"}, allowed={"query", "instruction"})
        _check_format("template.document", document, required={"document"}, allowed={"document"})
        if instruction is not None:
            _check_format(
                "template.instruction", instruction, required={"instruction"}, allowed={"instruction"}
            )
        return cls(
            name=str(text("name")),
            prefix=str(text("prefix")),
            query=query,
            document=document,
            suffix=str(text("suffix")),
            default_instruction=text("default_instruction", required=False),
            instruction=instruction,
            positive_token=text("positive_token", required=False),
            negative_token=text("negative_token", required=False),
            source=text("source", required=False),
        )


def _check_format(name: str, fmt: str, *, required: set[str], allowed: set[str]) -> None:
    """Each required field exactly once, no other field, no stray brace: the tokenizer splits on them."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(fmt) if f is not None]
    except ValueError as exc:
        raise ManifestFieldError(name, f"is not a valid format string ({exc}): {fmt!r}") from exc
    if any(spec or conv for _, spec, conv in parsed):
        raise ManifestFieldError(name, f"fields take no conversion or format spec: {fmt!r}")
    fields = [f for f, _, _ in parsed]
    unknown = sorted({str(f) for f in fields} - allowed)
    if unknown:
        raise ManifestFieldError(name, f"has unknown fields {unknown} (allowed: {sorted(allowed)}): {fmt!r}")
    for key in required:
        if fields.count(key) != 1:
            raise ManifestFieldError(name, f"must hold {{{key}}} exactly once: {fmt!r}")


# The model cards' own prompts. Qwen/Qwen3-Reranker-{0.6B,4B,8B} model card, "Transformers usage": prefix,
# format_instruction ("<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}") and suffix; the query part
# ends with the newline before "<Document>", where Qwen's pre-tokenizer always splits (gateway/tokenization.py).
QWEN3_RERANKER = PromptTemplate(
    name="qwen3-reranker",
    prefix=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    ),
    query="<Instruct>: {instruction}\n<Query>: {query}\n",
    document="<Document>: {document}",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    default_instruction="Given a web search query, retrieve relevant passages that answer the query",
    positive_token="yes",
    negative_token="no",
    source="Qwen3-Reranker model card (transformers usage: prefix, format_instruction, suffix)",
)
# mixedbread-ai/mxbai-rerank (python package mxbai_rerank 0.1.6, commit 8e709dc): MxbaiRerankV2.sep ("\n"),
# instruction_prompt, query_prompt, doc_prompt, task_prompt, chat_template; prepare_inputs joins
# prefix + query + sep + document + sep + task_prompt + suffix, the instruction line only with an instruction;
# the score is logit("1") - logit("0"). A "\n" before a letter is its own pre-token, so the separators join the
# document part and the suffix without changing an id.
QWEN_CHAT_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
MXBAI_RERANK_V2 = PromptTemplate(
    name="mxbai-rerank-v2",
    prefix=QWEN_CHAT_SYSTEM + "<|im_end|>\n<|im_start|>user\n",
    query="query: {query}",
    instruction="instruction: {instruction}\n",
    document="\ndocument: {document}",
    suffix=(
        "\nYou are a search relevance expert who evaluates how well documents match search queries. For each "
        "query-document pair, carefully analyze the semantic relationship between them, then provide your "
        "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
        "<|im_end|>\n<|im_start|>assistant\n"
    ),
    default_instruction=None,
    positive_token="1",
    negative_token="0",
    source="mxbai_rerank 0.1.6 (github mixedbread-ai/mxbai-rerank 8e709dc) MxbaiRerankV2",
)
TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (QWEN3_RERANKER, MXBAI_RERANK_V2)}
# Names in a folder path, hub id or config `_name_or_path` that say which template a causal LM uses.
_TEMPLATE_HINTS = (
    (re.compile(r"qwen3[-_]?reranker", re.I), "qwen3-reranker"),
    (re.compile(r"mxbai[-_]rerank[-_].*v2", re.I), "mxbai-rerank-v2"),
)


def template_names() -> list[str]:
    return sorted(TEMPLATES)


# --- gate bounds ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateBounds:
    """The parity gate of one family (`python -m export --fp32-atol/--fp32-rtol` set the fp32 bound).

    fp32 (and the fused fp32 graph) against PyTorch: max |ONNX - PyTorch| <= fp32_atol + fp32_rtol * scale, where
    `scale` is the largest magnitude the PyTorch reference computed on the parity set before its last
    subtraction: a classifier's logit, a module stack's score, for a decoder the larger of the two vocabulary
    logits whose difference is the score. float32 rounding grows with that magnitude, not with the difference:
    a deep decoder with yes/no logits near 40 misses 1e-4 by rounding alone (measured: 1.05e-4 on 8 layers x
    hidden 1024). rtol 1e-5 is about 170 float32 unit roundoffs (6e-8) of that magnitude: the MiniLM stand-in
    (scale 4.8) gets a bound of 1.5e-4 against a measured 4.6e-6, a wrong graph misses by orders of magnitude.
    Decoders take twice that relative part (their table entry): toy Qwen3 layouts with logits near 40 measured
    max |diff| / scale of 2.3e-6 to 4.7e-6 at 2 to 8 layers, and real ones stack 28 and more.
    int8 (dynamic, CPU) and fp16 are judged against the fp32 graph: ranking for int8, numbers and ranking for fp16.
    """

    fp32_atol: float = 1e-4
    fp32_rtol: float = 1e-5
    int8_min_spearman: float = 0.98
    int8_min_top1_agreement: float = 0.95
    fp16_max_abs_diff: float = 0.05
    fp16_min_spearman: float = 0.99

    def fp32_bound(self, scale: float) -> float:
        return self.fp32_atol + self.fp32_rtol * abs(scale)


@dataclass(frozen=True)
class GateSize:
    """How many parity queries the gate scores (4 documents each), by the model's size: the gate's cost is
    parameters x tokens x passes (PyTorch, fp32, fused fp32, int8, fp16), and a 0.6B decoder must export with its
    gate on 2 cores in minutes (issue 22: at most 15 minutes, peak RSS at most 3x its fp32 file).

    Up to `full_params` non-embedding parameters (MiniLM, BERT-base-sized rerankers) the whole set of
    `full_queries`; above, the number falls in proportion, never under `min_queries` (24 pairs: 6 of them long
    and cut at the max length, 6 queries for the same-best-document check). A Qwen3-0.6B-sized decoder (440 M
    non-embedding parameters) gets 6 queries, ModernBERT-base (110 M) 25.
    """

    full_queries: int = 40
    min_queries: int = 6
    full_params: int = 70_000_000

    def queries(self, non_embedding_params: int) -> int:
        if non_embedding_params <= self.full_params:
            return self.full_queries
        scaled = self.full_queries * self.full_params // non_embedding_params
        return max(self.min_queries, min(self.full_queries, scaled))


# --- fused graphs --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionRecipe:
    """How a family's fused fp32 graph (fp32-opt) is made where ONNX Runtime's transformer optimizer has no
    fusion for it: a dynamo export of the family's graph with transformers' `attn_implementation` (eager: plain
    MatMul/Softmax nodes, the form the rewriter matches), rewritten by onnxscript's ONNX Runtime fusions
    (export/fusion.py). `required`: the fusion counts that must be > 0, else the file would run as many small
    nodes and is not kept. `extra`: our own rewrite rules run after onnxscript's (by their count key).
    `kv_cache`: the graph takes and returns a key/value cache (the shared prompt computed once,
    export/decoder_prefix.py; served by gateway/backends/prefix_reuse.py).
    """

    attn_implementation: str
    required: tuple[str, ...]
    description: str
    kv_cache: bool = False
    extra: tuple[str, ...] = ()


# Decoders: GroupQueryAttention with the rotary embedding inside, RMSNorm with and without the residual add.
_DECODER_FUSION = FusionRecipe(
    "eager",
    ("gqa", "skip_rms_normalization", "rms_normalization"),
    "GroupQueryAttention (rotary inside), SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization",
    kv_cache=True,
)
# ModernBERT: attention (its local/global sliding window as an attention bias), rotary embedding, the GeGLU's
# Gelu, and the residual add + bias-less LayerNorm (a rule onnxscript lacks).
_MODERNBERT_FUSION = FusionRecipe(
    "eager",
    ("sdpa_via_mha", "rotary_embedding", "skip_layer_normalization_no_beta"),
    "MultiHeadAttention (sliding-window bias), RotaryEmbedding, Gelu, SkipLayerNormalization (no beta)",
    extra=("skip_layer_normalization_no_beta",),
)


# --- the families --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreHead:
    """What turns the body's output into one logit per pair, and what the gate compares it with.

    `formula` (manifest `score.formula`) may hold {positive}, {negative} (a template's tokens) and {modules} (a
    module stack's names); `activation` is the default turned into `relevance_score` (a module stack's config may
    say otherwise).
    """

    kind: HeadKind
    formula: str
    reference: str
    activation: Activation = "sigmoid"


@dataclass(frozen=True)
class FamilyDefinition:
    """One family: how it is exported, what its graph takes, how the gateway feeds it, and its gate.

    inputs: what a torch-built graph takes, in order (optimum writes its own: the gateway and the gate read the
    inputs from the graph, manifest `inputs`), plus `token_type_ids` when `typed_inputs` and the encoder has a
    type vocabulary. pooling: the manifest's default, `pooling_config_key` in config.json may say another.
    templates: the prompt templates a decoder reranker is exported with (empty: the tokenizer's pair encoding).
    max_positions: a cap on the pair length below the position table (the decoder cards' 8192).
    fusion: how the fused fp32 graph is made (None: ONNX Runtime's optimizer for the backbone, `Backbone`).
    gate_size: how many parity pairs the gate scores for a model of this family, by its size.
    """

    name: str
    exporter: Exporter
    head: ScoreHead
    padding_side: PaddingSide = "right"
    pooling: str = "cls"
    pooling_config_key: str | None = None
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    typed_inputs: bool = False
    templates: tuple[str, ...] = ()
    max_positions: int | None = None
    gate: GateBounds = field(default_factory=GateBounds)
    fusion: FusionRecipe | None = None
    gate_size: GateSize = field(default_factory=GateSize)

    @property
    def needs_template(self) -> bool:
        return bool(self.templates)


_CLASSIFIER = ScoreHead(
    "classifier",
    formula="the classifier's single logit",
    reference="PyTorch fp32 AutoModelForSequenceClassification, separately loaded",
)
_MODULE_STACK = ScoreHead(
    "module-stack",
    formula="the module stack's 'scores' output ({modules})",
    reference="PyTorch fp32 sentence-transformers CrossEncoder module stack ('scores'), separately loaded",
)
_LAST_TOKEN = ScoreHead(
    "last-token-difference",
    formula="logit({positive!r}) - logit({negative!r}) at the last real token",
    reference="PyTorch fp32 AutoModelForCausalLM: logit(positive) - logit(negative) of the full vocabulary "
    "logits at the last position, left padding (the model card's formula before its softmax/sigmoid)",
)
FAMILIES: dict[str, FamilyDefinition] = {
    f.name: f
    for f in (
        FamilyDefinition("bert", "optimum", _CLASSIFIER, typed_inputs=True),
        FamilyDefinition("xlm-roberta", "optimum", _CLASSIFIER, typed_inputs=True),
        FamilyDefinition(
            "modernbert",
            "torch",
            _CLASSIFIER,
            pooling_config_key="classifier_pooling",
            fusion=_MODERNBERT_FUSION,
        ),
        FamilyDefinition("st-crossencoder", "torch", _MODULE_STACK, typed_inputs=True),
        FamilyDefinition(
            "decoder",
            "torch",
            _LAST_TOKEN,
            # Right: onnxscript's GroupQueryAttention rewrite drops the padding mask (export/fusion.py), and a
            # right pad comes after every real token of a causal model, which therefore never attends to one;
            # every decoder graph reads the score at each row's last real token.
            padding_side="right",
            pooling="last-token",
            templates=tuple(TEMPLATES),
            max_positions=8192,
            gate=GateBounds(fp32_rtol=2e-5),
            fusion=_DECODER_FUSION,
        ),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)
# What a manifest without `family` holds: it was written when optimum's classifiers were all there was.
_OLDER_MANIFEST_FAMILY = "bert"


@dataclass(frozen=True)
class Backbone:
    """A config.json `model_type`: the family its *ForSequenceClassification / *ForCausalLM belongs to.

    architecture: the class-name prefix transformers gives it (an older manifest without `model_type`).
    ort_optimizer: `onnxruntime.transformers.optimizer`'s model_type for its fused fp32 graph (None: no fusion),
    used where the family has no `FusionRecipe` (the recipe comes first: a Qwen3 decoder's fused graph is the
    recipe's, not the optimizer's).
    positions_after_padding: position ids start after padding_idx (RoBERTa-like), so two fewer pair tokens fit.
    """

    model_type: str
    family: str
    architecture: str
    ort_optimizer: str | None = None
    positions_after_padding: bool = False


BACKBONES: dict[str, Backbone] = {
    b.model_type: b
    for b in (
        Backbone("bert", "bert", "Bert", "bert"),
        Backbone("distilbert", "bert", "DistilBert", "bert"),
        Backbone("electra", "bert", "Electra", "bert"),
        Backbone("deberta-v2", "bert", "DebertaV2", "bert"),
        Backbone("xlm-roberta", "xlm-roberta", "XLMRoberta", "bert", positions_after_padding=True),
        Backbone("roberta", "xlm-roberta", "Roberta", "bert", positions_after_padding=True),
        Backbone("camembert", "xlm-roberta", "Camembert", "bert", positions_after_padding=True),
        Backbone("modernbert", "modernbert", "ModernBert"),
        Backbone("qwen3", "decoder", "Qwen3", "qwen3"),
        Backbone("qwen2", "decoder", "Qwen2"),
    )
}
# Which head a transformers architecture's class-name suffix carries.
_HEAD_OF_ARCHITECTURE: dict[str, HeadKind] = {
    "ForSequenceClassification": "classifier",
    "ForCausalLM": "last-token-difference",
}


def family_definition(name: str) -> FamilyDefinition:
    """The table's entry; KeyError for a name it does not hold."""
    return FAMILIES[name]


def backbone(model_type: str) -> Backbone | None:
    return BACKBONES.get(model_type)


def ort_optimizer(model_type: str) -> str | None:
    """ONNX Runtime's optimizer model_type for this config model_type (None: it has no fusion for it)."""
    known = BACKBONES.get(model_type)
    return known.ort_optimizer if known else None


def positions_after_padding(model_type: str) -> bool:
    known = BACKBONES.get(model_type)
    return bool(known and known.positions_after_padding)


def family_of_older_manifest(architecture: str, model_type: str = "") -> FamilyDefinition:
    """The family a manifest without `family` implies (it could only hold a classifier): by model type, else by
    the architecture's class name, else BERT."""
    known = BACKBONES.get(model_type)
    if known is None:
        by_prefix = sorted(BACKBONES.values(), key=lambda b: len(b.architecture), reverse=True)
        known = next((b for b in by_prefix if architecture.startswith(b.architecture)), None)
    return FAMILIES[known.family if known else _OLDER_MANIFEST_FAMILY]


# --- detection -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A source folder's family as detected: the table's entry and what this folder says on top of it."""

    definition: FamilyDefinition
    architecture: str
    model_type: str
    pooling: str
    activation: Activation
    formula: str
    template: PromptTemplate | None = None
    st_modules: tuple[dict[str, Any], ...] = field(default=())

    @property
    def family(self) -> str:
        return self.definition.name

    @property
    def exporter(self) -> Exporter:
        return self.definition.exporter

    @property
    def padding_side(self) -> PaddingSide:
        return self.definition.padding_side

    @property
    def head(self) -> ScoreHead:
        return self.definition.head

    def manifest_fields(self) -> dict[str, Any]:
        """The manifest's family fields, as `gateway.repository` reads them."""
        fields: dict[str, Any] = {
            "family": self.family,
            "architecture": self.architecture,
            "padding_side": self.padding_side,
            "pooling": self.pooling,
            "score": {"activation": self.activation, "formula": self.formula},
            "template": self.template.manifest() if self.template else None,
        }
        if self.st_modules:
            fields["sentence_transformers"] = {
                "layout_matched": ST_LAYOUT_VERSION,
                "modules": list(self.st_modules),
            }
        return fields


def detect_family(
    folder: Path,
    config: dict[str, Any],
    spec: str,
    *,
    template: str | None = None,
    hints: tuple[str, ...] = (),
) -> Family:
    """The family of the source in `folder` (config = its config.json); UnsupportedSource when not exportable.

    template: --template (a key of TEMPLATES), for a decoder folder that does not say which it is.
    hints: names that may say it (the hub id, the folder name); config `_name_or_path` is read too.
    """
    if template is not None and template not in TEMPLATES:
        raise UnsupportedSource(f"unknown --template {template!r} (known: {', '.join(template_names())})")
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if architectures else ""
    model_type = str(config.get("model_type", ""))
    head = next((k for suffix, k in _HEAD_OF_ARCHITECTURE.items() if architecture.endswith(suffix)), None)
    modules = _st_modules(folder, spec)
    if modules is not None and len(modules) > 1:
        names = [_class_name(m) for m in modules]
        if names[0] != "Transformer":
            raise UnsupportedSource(
                f"{spec!r}: modules.json starts with {names[0]}, not a Transformer module"
            )
        if "LogitScore" in names:  # a causal LM with sentence-transformers' yes/no scorer: a decoder reranker
            return _decoder(spec, config, architecture, model_type, template, hints)
        return _st_family(folder, spec, modules, names, architecture, model_type, head)
    if template is not None and head != "last-token-difference":
        raise UnsupportedSource(
            f"{spec!r}: --template {template} is for decoder rerankers (a *ForCausalLM model); this folder "
            f"holds {architecture or 'no architecture'}"
        )
    if head == "classifier":
        return _classifier(spec, config, architecture, model_type)
    if head == "last-token-difference":
        return _decoder(spec, config, architecture, model_type, template, hints)
    if architecture.endswith(("Model", "ForMaskedLM", "ForTokenClassification")) or not architecture:
        raise UnsupportedSource(
            f"{spec!r} is an encoder without a relevance head (architectures: {architectures or 'none'}): "
            "its graph would output hidden states and rank nothing (the encoder-only ONNX files published "
            "beside some rerankers are this). Export the checkpoint with its head: a "
            "*ForSequenceClassification model with 1 label, or a sentence-transformers CrossEncoder folder "
            "whose modules.json ends in a Dense score module"
        )
    raise UnsupportedSource(
        f"{spec!r}: unknown architecture {architecture} (model_type {model_type!r}); supported: "
        "BERT/XLM-R/ModernBERT *ForSequenceClassification with 1 label, sentence-transformers CrossEncoder "
        f"module stacks, Qwen2/Qwen3 *ForCausalLM rerankers with --template ({', '.join(template_names())})"
    )


def _backbones_with(head: HeadKind) -> dict[str, FamilyDefinition]:
    """Model type -> family, for the backbones whose family has this head."""
    return {t: FAMILIES[b.family] for t, b in BACKBONES.items() if FAMILIES[b.family].head.kind == head}


def _classifier(spec: str, config: dict[str, Any], architecture: str, model_type: str) -> Family:
    num_labels = num_labels_of(config)
    if num_labels != 1:
        raise UnsupportedSource(
            f"{spec!r} has {num_labels} output logits; a cross-encoder reranker must have exactly 1 "
            "(one relevance score per query/document pair)"
        )
    known = _backbones_with("classifier")
    if model_type not in known:
        raise UnsupportedSource(
            f"{spec!r}: {architecture} (model_type {model_type!r}) is not a supported classifier family "
            f"(supported model types: {', '.join(sorted(known))})"
        )
    definition = known[model_type]
    pooling = definition.pooling
    if definition.pooling_config_key is not None:
        pooling = str(config.get(definition.pooling_config_key, pooling))
    head = definition.head
    return Family(definition, architecture, model_type, pooling, head.activation, head.formula)


def _decoder(
    spec: str,
    config: dict[str, Any],
    architecture: str,
    model_type: str,
    template: str | None,
    hints: tuple[str, ...],
) -> Family:
    known = _backbones_with("last-token-difference")
    if model_type not in known:
        raise UnsupportedSource(
            f"{spec!r}: {architecture} is a causal LM of model_type {model_type!r}; decoder rerankers are "
            f"supported for {', '.join(sorted(known))}"
        )
    definition = known[model_type]
    chosen = template or _template_from_names((*hints, str(config.get("_name_or_path", ""))))
    if chosen is None or chosen not in definition.templates:
        raise UnsupportedSource(
            f"{spec!r} is a causal LM ({architecture}) and nothing in the folder says which reranker prompt "
            f"it was trained with: pass --template ({' or '.join(sorted(definition.templates))})"
        )
    prompt = TEMPLATES[chosen]
    head = definition.head
    formula = head.formula.format(positive=prompt.positive_token, negative=prompt.negative_token)
    return Family(definition, architecture, model_type, definition.pooling, head.activation, formula, prompt)


def _template_from_names(names: tuple[str, ...]) -> str | None:
    for name in names:
        for pattern, template in _TEMPLATE_HINTS:
            if name and pattern.search(name):
                return template
    return None


def _st_modules(folder: Path, spec: str) -> list[dict[str, Any]] | None:
    path = folder / "modules.json"
    if not path.is_file():
        return None
    try:
        modules = json.loads(path.read_text())
        return sorted(modules, key=lambda m: int(m["idx"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnsupportedSource(
            f"{spec!r}: modules.json is not a sentence-transformers module list ({exc})"
        ) from exc


def _class_name(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _module_config(folder: Path, module: dict[str, Any], spec: str) -> dict[str, Any]:
    path = folder / str(module.get("path", "")) / "config.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise UnsupportedSource(f"{spec!r}: cannot read {path.relative_to(folder)} ({exc})") from exc


def _st_family(
    folder: Path,
    spec: str,
    modules: list[dict[str, Any]],
    names: list[str],
    architecture: str,
    model_type: str,
    head: HeadKind | None,
) -> Family:
    """A sentence-transformers CrossEncoder module stack (Transformer -> ... -> Dense "scores")."""
    last = _module_config(folder, modules[-1], spec)
    if names[-1] != "Dense" or last.get("module_output_name") != "scores":
        raise UnsupportedSource(
            f"{spec!r} is a sentence-transformers model without a score head (modules: {' -> '.join(names)}): "
            "an embedding model, not a cross-encoder; a CrossEncoder module stack ends in a Dense module "
            "whose module_output_name is 'scores'"
        )
    unknown = [n for n in names[1:] if n not in _ST_HEAD_MODULES]
    if unknown:
        raise UnsupportedSource(
            f"{spec!r}: sentence-transformers modules {unknown} are not supported in a CrossEncoder head "
            f"(supported: {', '.join(sorted(_ST_HEAD_MODULES))})"
        )
    if int(last.get("out_features", 0)) != 1:
        raise UnsupportedSource(
            f"{spec!r}: the score module outputs {last.get('out_features')} values; a reranker needs 1"
        )
    if not architecture or head is not None:
        raise UnsupportedSource(
            f"{spec!r}: a sentence-transformers score head over {architecture or 'no architecture'} is not "
            "supported (expected an encoder such as ModernBertModel under the module stack)"
        )
    definition = FAMILIES["st-crossencoder"]
    summary: list[dict[str, Any]] = [{"type": "Transformer", "architecture": architecture}]
    pooling = definition.pooling
    for module, name in zip(modules[1:], names[1:], strict=True):
        settings = _module_config(folder, module, spec)
        entry: dict[str, Any] = {"type": name}
        if name == "Pooling":
            mode = settings.get("pooling_mode") or _legacy_pooling(settings)
            if not isinstance(mode, str) or mode not in _ST_POOLING:
                raise UnsupportedSource(f"{spec!r}: pooling mode {mode!r} is not supported")
            pooling = entry["pooling_mode"] = mode
        elif name == "Dense":
            entry.update(
                {k: settings.get(k) for k in ("in_features", "out_features", "bias", "activation_function")}
            )
            function = str(settings.get("activation_function") or "")
            if function and not function.startswith("torch."):
                raise UnsupportedSource(f"{spec!r}: Dense activation {function} is not a torch function")
        summary.append(entry)
    formula = definition.head.formula.format(modules=" -> ".join(names))
    activation = _st_activation(folder, spec)
    return Family(definition, architecture, model_type, pooling, activation, formula, None, tuple(summary))


def _legacy_pooling(settings: dict[str, Any]) -> str | None:
    for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                      ("pooling_mode_lasttoken", "lasttoken"), ("pooling_mode_max_tokens", "max")):  # fmt: skip
        if settings.get(key):
            return mode
    return None


def _st_activation(folder: Path, spec: str) -> Activation:
    """What CrossEncoder.predict applies by default: config_sentence_transformers.json's activation_fn,
    else Sigmoid for one label."""
    path = folder / "config_sentence_transformers.json"
    activation = None
    if path.is_file():
        try:
            activation = json.loads(path.read_text()).get("activation_fn")
        except ValueError as exc:
            raise UnsupportedSource(
                f"{spec!r}: config_sentence_transformers.json is not JSON ({exc})"
            ) from exc
    if activation is None or activation.endswith(".Sigmoid"):
        return "sigmoid"
    if activation.endswith(".Identity"):
        return "identity"
    raise UnsupportedSource(f"{spec!r}: score activation {activation} is not supported (Sigmoid or Identity)")


def num_labels_of(config: dict[str, Any]) -> int:
    if "num_labels" in config:
        return int(config["num_labels"])
    if "id2label" in config:
        return len(config["id2label"])
    return 2  # transformers' default for a classification head
