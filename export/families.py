"""Which family a source folder belongs to, read from its files; refuse what cannot be exported correctly.

A family says how the folder becomes one ONNX graph with inputs `input_ids`, `attention_mask` (+
`token_type_ids` where the model has them) and one output `logits` [batch, 1], and what the manifest tells
the gateway (family, padding side, pooling, score activation and formula, prompt template):

| family          | folder                                                     | graph built by                 |
|-----------------|------------------------------------------------------------|--------------------------------|
| bert            | Bert/DistilBert/Electra/DebertaV2 ...ForSequenceClassification, 1 label | optimum (text-classification) |
| xlm-roberta     | XLMRoberta/Roberta/Camembert ...ForSequenceClassification | optimum (text-classification) |
| modernbert      | ModernBertForSequenceClassification                        | torch.onnx (export.torch_export) |
| st-crossencoder | sentence-transformers modules.json: Transformer (encoder) -> Pooling -> Dense/LayerNorm ... -> Dense(1, "scores") | torch.onnx, the whole module stack |
| decoder         | Qwen3ForCausalLM / Qwen2ForCausalLM + a reranker template  | torch.onnx, logit(pos) - logit(neg) at the last position |

Refused with a SourceError that says why: an encoder without a head (`ModernBertModel`, `BertModel`: the
layout of the encoder-only ONNX file published beside Ettin, which scores nothing), a sentence-transformers
embedding model (no "scores" module), a classifier with more than one label, a causal LM whose template is
not known (pass --template), an unknown architecture. Never a graph without its head.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export.errors import SourceError

# The sentence-transformers release whose CrossEncoder module layout (modules.json types, Dense/LayerNorm/
# Pooling configs, `activation_fn` in config_sentence_transformers.json, "scores" as the output key) this
# module was written against and tested with: module stacks came with 5.4; 5.7.0 is the newest release
# that runs on transformers 4.x (6.x needs transformers 5).
ST_LAYOUT_VERSION = "5.7.0"

_BERT_TYPES = {"bert", "distilbert", "electra", "deberta-v2"}
_XLMR_TYPES = {"xlm-roberta", "roberta", "camembert"}
_DECODER_TYPES = {"qwen3", "qwen2"}
# modules.json types by their class name (the module path changed between releases: models.Pooling,
# sentence_transformer.modules.pooling.Pooling, ...); only these can sit between the encoder and the score
_ST_HEAD_MODULES = {"Pooling", "Dense", "LayerNorm", "Dropout"}
_ST_POOLING = {"cls", "mean", "max", "lasttoken", "mean_sqrt_len_tokens"}


@dataclass(frozen=True)
class Template:
    """A decoder reranker's prompt, as the gateway assembles it (see HELPERS contract / manifest `template`).

    Pair text = prefix + query.format(instruction=..., query=q) + document.format(document=d) + suffix, each
    part tokenized without special tokens. `query_with_instruction`, where set, replaces `query` when an
    instruction is given and the template has no default one (mxbai-rerank-v2 adds its instruction line only
    when there is an instruction).
    """

    name: str
    prefix: str
    query: str
    document: str
    suffix: str
    default_instruction: str | None
    positive_token: str
    negative_token: str
    source: str
    query_with_instruction: str | None = None

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        if data["query_with_instruction"] is None:
            del data["query_with_instruction"]
        return data

    def format_query(self, query: str, instruction: str | None = None) -> str:
        instruction = instruction or self.default_instruction
        if instruction and self.query_with_instruction:
            return self.query_with_instruction.format(instruction=instruction, query=query)
        return self.query.format(instruction=instruction or "", query=query)


# Qwen/Qwen3-Reranker-{0.6B,4B,8B} model card, "Transformers usage": prefix, format_instruction, suffix.
QWEN3_RERANKER = Template(
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
# mixedbread-ai/mxbai-rerank (python package mxbai_rerank 0.1.6, commit 8e709dc): MxbaiRerankV2.sep,
# instruction_prompt, query_prompt, doc_prompt, task_prompt, chat_template; prepare_inputs joins
# prefix + query + sep + document + sep + task_prompt + suffix; the score is logit("1") - logit("0").
_MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_RERANK_V2 = Template(
    name="mxbai-rerank-v2",
    prefix=(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
    ),
    query="query: {query}",
    query_with_instruction="instruction: {instruction}\nquery: {query}",
    document="\ndocument: {document}",
    suffix="\n" + _MXBAI_TASK + "<|im_end|>\n<|im_start|>assistant\n",
    default_instruction=None,
    positive_token="1",
    negative_token="0",
    source="mxbai_rerank 0.1.6 (github mixedbread-ai/mxbai-rerank 8e709dc) MxbaiRerankV2",
)
TEMPLATES = {t.name: t for t in (QWEN3_RERANKER, MXBAI_RERANK_V2)}
# Names in a folder path, hub id or config `_name_or_path` that say which template a causal LM uses.
_TEMPLATE_HINTS = (
    (re.compile(r"qwen3[-_]?reranker", re.I), "qwen3-reranker"),
    (re.compile(r"mxbai[-_]rerank[-_].*v2", re.I), "mxbai-rerank-v2"),
)


@dataclass(frozen=True)
class Family:
    """How a source is exported and what its manifest says about it."""

    family: str
    architecture: str
    model_type: str
    exporter: str  # "optimum" | "torch"
    padding_side: str
    pooling: str
    activation: str
    formula: str
    template: Template | None = None
    st_modules: tuple[dict[str, Any], ...] = field(default=())

    def manifest_fields(self) -> dict[str, Any]:
        """The contract's fields (HELPERS.md, issue 16)."""
        fields: dict[str, Any] = {
            "family": self.family,
            "architecture": self.architecture,
            "padding_side": self.padding_side,
            "pooling": self.pooling,
            "score": {"activation": self.activation, "formula": self.formula},
            "template": self.template.manifest() if self.template else None,
        }
        if self.family == "st-crossencoder":
            fields["sentence_transformers"] = {
                "layout_matched": ST_LAYOUT_VERSION,
                "modules": list(self.st_modules),
            }
        return fields


def template_names() -> list[str]:
    return sorted(TEMPLATES)


def detect_family(
    folder: Path,
    config: dict[str, Any],
    spec: str,
    *,
    template: str | None = None,
    hints: tuple[str, ...] = (),
) -> Family:
    """The family of the source in `folder` (config = its config.json); SourceError when not exportable.

    template: --template (a key of TEMPLATES), for a decoder folder that does not say which it is.
    hints: names that may say it (the hub id, the folder name); config `_name_or_path` is read too.
    """
    if template is not None and template not in TEMPLATES:
        raise SourceError(f"unknown --template {template!r} (known: {', '.join(template_names())})")
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if architectures else ""
    model_type = str(config.get("model_type", ""))
    modules = _st_modules(folder, spec)
    if modules is not None and len(modules) > 1:
        family = _st_family(folder, spec, modules, config, architecture, model_type, template, hints)
        if family is not None:
            return family
    if template is not None and not architecture.endswith("ForCausalLM"):
        raise SourceError(
            f"{spec!r}: --template {template} is for decoder rerankers (a *ForCausalLM model); this folder "
            f"holds {architecture or 'no architecture'}"
        )
    if architecture.endswith("ForSequenceClassification"):
        return _classifier(spec, config, architecture, model_type)
    if architecture.endswith("ForCausalLM"):
        return _decoder(spec, config, architecture, model_type, template, hints)
    if architecture.endswith(("Model", "ForMaskedLM", "ForTokenClassification")) or not architecture:
        raise SourceError(
            f"{spec!r} is an encoder without a relevance head (architectures: {architectures or 'none'}): "
            "its graph would output hidden states and rank nothing (the encoder-only ONNX files published "
            "beside some rerankers are this). Export the checkpoint with its head: a "
            "*ForSequenceClassification model with 1 label, or a sentence-transformers CrossEncoder folder "
            "whose modules.json ends in a Dense score module"
        )
    raise SourceError(
        f"{spec!r}: unknown architecture {architecture} (model_type {model_type!r}); supported: "
        "BERT/XLM-R/ModernBERT *ForSequenceClassification with 1 label, sentence-transformers CrossEncoder "
        f"module stacks, Qwen2/Qwen3 *ForCausalLM rerankers with --template ({', '.join(template_names())})"
    )


def _classifier(spec: str, config: dict[str, Any], architecture: str, model_type: str) -> Family:
    num_labels = num_labels_of(config)
    if num_labels != 1:
        raise SourceError(
            f"{spec!r} has {num_labels} output logits; a cross-encoder reranker must have exactly 1 "
            "(one relevance score per query/document pair)"
        )
    formula = "the classifier's single logit"
    if model_type in _BERT_TYPES or model_type in _XLMR_TYPES:
        family = "xlm-roberta" if model_type in _XLMR_TYPES else "bert"
        return Family(family, architecture, model_type, "optimum", "right", "cls", "sigmoid", formula)
    if model_type == "modernbert":
        pooling = str(config.get("classifier_pooling", "cls"))
        return Family("modernbert", architecture, model_type, "torch", "right", pooling, "sigmoid", formula)
    raise SourceError(
        f"{spec!r}: {architecture} (model_type {model_type!r}) is not a supported classifier family "
        f"(supported model types: {', '.join(sorted(_BERT_TYPES | _XLMR_TYPES | {'modernbert'}))})"
    )


def _decoder(
    spec: str,
    config: dict[str, Any],
    architecture: str,
    model_type: str,
    template: str | None,
    hints: tuple[str, ...],
) -> Family:
    if model_type not in _DECODER_TYPES:
        raise SourceError(
            f"{spec!r}: {architecture} is a causal LM of model_type {model_type!r}; decoder rerankers are "
            f"supported for {', '.join(sorted(_DECODER_TYPES))}"
        )
    chosen = template or _template_from_names((*hints, str(config.get("_name_or_path", ""))))
    if chosen is None:
        raise SourceError(
            f"{spec!r} is a causal LM ({architecture}) and nothing in the folder says which reranker prompt "
            f"it was trained with: pass --template ({' or '.join(template_names())})"
        )
    chosen_template = TEMPLATES[chosen]
    formula = (
        f"logit({chosen_template.positive_token!r}) - logit({chosen_template.negative_token!r}) at the last "
        "real token"
    )
    # Right padding: the fused graphs' GroupQueryAttention takes no padding mask (export/fusion.py), and a
    # right pad is never attended by a real token of a causal model.
    return Family(
        "decoder",
        architecture,
        model_type,
        "torch",
        "right",
        "last-token",
        "sigmoid",
        formula,
        chosen_template,
    )


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
        raise SourceError(
            f"{spec!r}: modules.json is not a sentence-transformers module list ({exc})"
        ) from exc


def _class_name(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _module_config(folder: Path, module: dict[str, Any], spec: str) -> dict[str, Any]:
    path = folder / str(module.get("path", "")) / "config.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{spec!r}: cannot read {path.relative_to(folder)} ({exc})") from exc


def _st_family(
    folder: Path,
    spec: str,
    modules: list[dict[str, Any]],
    config: dict[str, Any],
    architecture: str,
    model_type: str,
    template: str | None,
    hints: tuple[str, ...],
) -> Family | None:
    """A sentence-transformers module stack; None when it is just a Transformer module (plain classifier)."""
    names = [_class_name(m) for m in modules]
    if names[0] != "Transformer":
        raise SourceError(f"{spec!r}: modules.json starts with {names[0]}, not a Transformer module")
    if "LogitScore" in names:  # a causal LM with sentence-transformers' yes/no scorer: a decoder reranker
        return _decoder(spec, config, architecture, model_type, template, hints)
    last = _module_config(folder, modules[-1], spec)
    if names[-1] != "Dense" or last.get("module_output_name") != "scores":
        raise SourceError(
            f"{spec!r} is a sentence-transformers model without a score head (modules: {' -> '.join(names)}): "
            "an embedding model, not a cross-encoder; a CrossEncoder module stack ends in a Dense module "
            "whose module_output_name is 'scores'"
        )
    unknown = [n for n in names[1:] if n not in _ST_HEAD_MODULES]
    if unknown:
        raise SourceError(
            f"{spec!r}: sentence-transformers modules {unknown} are not supported in a CrossEncoder head "
            f"(supported: {', '.join(sorted(_ST_HEAD_MODULES))})"
        )
    if int(last.get("out_features", 0)) != 1:
        raise SourceError(
            f"{spec!r}: the score module outputs {last.get('out_features')} values; a reranker needs 1"
        )
    if not architecture or architecture.endswith(("ForCausalLM", "ForSequenceClassification")):
        raise SourceError(
            f"{spec!r}: a sentence-transformers score head over {architecture or 'no architecture'} is not "
            "supported (expected an encoder such as ModernBertModel under the module stack)"
        )
    summary: list[dict[str, Any]] = [{"type": "Transformer", "architecture": architecture}]
    pooling = "cls"
    for module, name in zip(modules[1:], names[1:], strict=True):
        settings = _module_config(folder, module, spec)
        entry: dict[str, Any] = {"type": name}
        if name == "Pooling":
            mode = settings.get("pooling_mode") or _legacy_pooling(settings)
            if not isinstance(mode, str) or mode not in _ST_POOLING:
                raise SourceError(f"{spec!r}: pooling mode {mode!r} is not supported")
            pooling = entry["pooling_mode"] = mode
        elif name == "Dense":
            entry.update(
                {k: settings.get(k) for k in ("in_features", "out_features", "bias", "activation_function")}
            )
            function = str(settings.get("activation_function") or "")
            if function and not function.startswith("torch."):
                raise SourceError(f"{spec!r}: Dense activation {function} is not a torch function")
        summary.append(entry)
    return Family(
        "st-crossencoder", architecture, model_type, "torch", "right", pooling, _st_activation(folder, spec),
        "the module stack's 'scores' output (" + " -> ".join(names) + ")", None, tuple(summary),
    )  # fmt: skip


def _legacy_pooling(settings: dict[str, Any]) -> str | None:
    for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                      ("pooling_mode_lasttoken", "lasttoken"), ("pooling_mode_max_tokens", "max")):  # fmt: skip
        if settings.get(key):
            return mode
    return None


def _st_activation(folder: Path, spec: str) -> str:
    """What CrossEncoder.predict applies by default: config_sentence_transformers.json's activation_fn,
    else Sigmoid for one label."""
    path = folder / "config_sentence_transformers.json"
    activation = None
    if path.is_file():
        try:
            activation = json.loads(path.read_text()).get("activation_fn")
        except ValueError as exc:
            raise SourceError(f"{spec!r}: config_sentence_transformers.json is not JSON ({exc})") from exc
    if activation is None or activation.endswith(".Sigmoid"):
        return "sigmoid"
    if activation.endswith(".Identity"):
        return "identity"
    raise SourceError(f"{spec!r}: score activation {activation} is not supported (Sigmoid or Identity)")


def num_labels_of(config: dict[str, Any]) -> int:
    if "num_labels" in config:
        return int(config["num_labels"])
    if "id2label" in config:
        return len(config["id2label"])
    return 2  # transformers' default for a classification head
