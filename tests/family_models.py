"""Tiny, deterministic models of every exported family, and their PyTorch reference scorers.

Each `build_*` saves a small model built from the real transformers / sentence-transformers classes with
random weights (fixed seeds) and a small tokenizer trained here with `tokenizers` (the hub is out of reach),
in a few seconds. `reference_scores(folder, pairs)` scores query/document pairs the way the model's own
card or library does (CrossEncoder.predict, the Qwen3-Reranker card's code, mxbai-rerank's
`MxbaiRerankV2.prepare_inputs/forward`) and returns relevance scores after the default activation: what the
gateway's `relevance_score` must equal within 1e-4.

Every builder writes `family_models.json` (the family and, for decoders, the template) for
`reference_scores`; the exporter never reads it (the decoder folders do not say their template:
`python -m export ... --template NAME`, or a folder name that says it).

Used by tests/unit/export (parity of the export) and reusable by the gateway and Triton parity tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import model_cards as cards

MARKER = "family_models.json"

# The words the tiny tokenizers are trained on: the exporter's parity set and the templates' text, so that
# the test pairs tokenize into real sub-words rather than [UNK].
_EXTRA_TEXT = [
    "what is the capital of France? Paris is the capital and largest city of France.",
    "how do plants make food? Plants use photosynthesis to turn light, water and CO2 into sugar.",
    "the weather is nice today. a railway timetable for the harbour.",
]


def _corpus() -> list[str]:
    from export.validate import build_parity_set

    parity = build_parity_set()
    texts = [*_EXTRA_TEXT, *parity.queries, *(d for _, d in parity.pairs[:80])]
    texts += [
        cards.QWEN3_PREFIX,
        cards.QWEN3_SUFFIX,
        cards.QWEN3_DEFAULT_INSTRUCTION,
        cards.MXBAI_PREFIX,
        cards.MXBAI_TASK_PROMPT,
        "<Instruct>: <Query>: <Document>:",
    ]
    texts += ["instruction: query: document:"] * 5
    return texts


def _wordpiece_tokenizer(target: Path, model_max_length: int = 512, token_types: bool = True) -> Any:
    """A BERT-style WordPiece tokenizer ([CLS] a [SEP] b [SEP]) saved into target; ModernBERT's real
    tokenizer returns no token_type_ids (`token_types=False`)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=700, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"]
        if token_types
        else ["input_ids", "attention_mask"],
    )
    fast.save_pretrained(target)
    return fast


def _bpe_tokenizer(target: Path, model_max_length: int = 512) -> Any:
    """A Qwen-style byte-level BPE with the chat tokens; "yes", "no", "0", "1" are single tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([*_corpus(), *(["yes", "no", "yes no", "no yes"] * 40)], trainer)
    tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    for word in ("yes", "no", "0", "1"):
        ids = fast(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and fast.convert_tokens_to_ids(word) == ids[0], f"{word!r} is not one token"
    fast.save_pretrained(target)
    return fast


def _mark(target: Path, **data: object) -> None:
    (target / MARKER).write_text(json.dumps(data) + "\n")


def build_bert(target: Path, *, seed: int = 0) -> Path:
    """BertForSequenceClassification, 1 logit, hidden 128 (spread logits: int8 keeps the ranking)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    target.mkdir(parents=True, exist_ok=True)
    tokenizer = _wordpiece_tokenizer(target)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, max_position_embeddings=512, num_labels=1, initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    BertForSequenceClassification(config).eval().save_pretrained(target)
    _mark(target, family="bert")
    return target


def _sentencepiece_like_tokenizer(target: Path, model_max_length: int = 512) -> Any:
    """An XLM-R-style tokenizer: `<s> q </s></s> d </s>` (RobertaProcessing), `<pad>` = 1, no token type ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=700, special_tokens=specials))
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>"))
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip
    fast.save_pretrained(target)
    return fast


def build_xlm_roberta(target: Path, *, seed: int = 0) -> Path:
    """XLMRobertaForSequenceClassification, 1 logit (bge-reranker-base layout: no token type ids, position ids
    after padding_idx)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    target.mkdir(parents=True, exist_ok=True)
    tokenizer = _sentencepiece_like_tokenizer(target)
    assert tokenizer.pad_token_id == 1
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, max_position_embeddings=514, type_vocab_size=1, num_labels=1,
        initializer_range=0.1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(target)
    _mark(target, family="xlm-roberta")
    return target


def _tiny_modernbert_config(tokenizer: Any, **overrides: object) -> Any:
    from transformers import ModernBertConfig

    values: dict[str, object] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "global_attn_every_n_layers": 3,  # layer 0 global, layers 1-2 local (sliding window)
        "local_attention": 16,  # a window shorter than the parity set's long pairs: the mask is exercised
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "num_labels": 1,
        "initializer_range": 0.1,
    }
    values.update(overrides)
    return ModernBertConfig(**values)  # type: ignore[arg-type]


def build_modernbert(target: Path, *, seed: int = 0, **config: object) -> Path:
    """ModernBertForSequenceClassification (gte-reranker-modernbert-base layout), 1 logit; `config` overrides
    the tiny shape (bench/families.py builds a ModernBERT-base-sized one)."""
    import torch
    from transformers import ModernBertForSequenceClassification

    target.mkdir(parents=True, exist_ok=True)
    tokenizer = _wordpiece_tokenizer(target, token_types=False)
    torch.manual_seed(seed)
    model = ModernBertForSequenceClassification(
        _tiny_modernbert_config(tokenizer, **{"classifier_pooling": "mean", **config})
    )
    model.eval().save_pretrained(target)
    _mark(target, family="modernbert")
    return target


def build_tiny_vocab_modernbert(target: Path, *, seed: int = 0) -> Path:
    """A ModernBERT classifier whose vocabulary has 40 entries (a word-level tokenizer: the specials and 35
    words, everything else [UNK]): the export must trace it with ids from that vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import ModernBertForSequenceClassification, PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = ["what", "is", "the", "capital", "of", "france", "paris", "and", "largest", "city", "how", "do",
             "plants", "make", "food", "use", "light", "water", "sugar", "does", "vitamin", "affect", "bone",
             "density", "in", "older", "adults", "effect", "on", "risk", "study", "weather", "today", "query",
             "document"]  # fmt: skip
    vocab = {token: i for i, token in enumerate([*specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512, model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip
    tokenizer.save_pretrained(target)
    assert len(tokenizer) == 40
    torch.manual_seed(seed)
    model = ModernBertForSequenceClassification(_tiny_modernbert_config(tokenizer))
    model.eval().save_pretrained(target)
    _mark(target, family="modernbert")
    return target


def build_modernbert_encoder_only(target: Path, *, seed: int = 0) -> Path:
    """A bare ModernBertModel (no head): the layout of the encoder-only ONNX published beside Ettin."""
    import torch
    from transformers import ModernBertModel

    target.mkdir(parents=True, exist_ok=True)
    tokenizer = _wordpiece_tokenizer(target, token_types=False)
    torch.manual_seed(seed)
    ModernBertModel(_tiny_modernbert_config(tokenizer)).eval().save_pretrained(target)
    _mark(target, family="encoder-only")
    return target


def build_st_crossencoder(target: Path, *, seed: int = 0, pooling: str = "cls") -> Path:
    """A sentence-transformers CrossEncoder with the Ettin module stack (sentence-transformers >= 5.4):
    Transformer(feature-extraction, ModernBertModel) -> Pooling -> Dense(h, h, GELU) -> LayerNorm(h)
    -> Dense(h, 1, identity, module_output_name="scores")."""
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling

    target.mkdir(parents=True, exist_ok=True)
    encoder = target.parent / f".{target.name}-encoder"
    build_modernbert_encoder_only(encoder, seed=seed)
    torch.manual_seed(seed + 1)
    transformer = Transformer(str(encoder), transformer_task="feature-extraction", max_seq_length=512)
    hidden = transformer.get_embedding_dimension()
    modules = [
        transformer,
        Pooling(hidden, pooling_mode=pooling),
        Dense(hidden, hidden, activation_function=torch.nn.GELU()),
        LayerNorm(hidden),
        Dense(hidden, 1, activation_function=None, module_output_name="scores"),
    ]
    with torch.no_grad():  # spread the random head so that scores differ visibly between pairs
        modules[2].linear.weight.normal_(0, 0.3)
        modules[4].linear.weight.normal_(0, 0.5)
    model = CrossEncoder(modules=modules)
    model.save_pretrained(str(target))
    import shutil

    shutil.rmtree(encoder)
    (target / MARKER).unlink(missing_ok=True)
    _mark(target, family="st-crossencoder")
    return target


def _tiny_decoder(target: Path, config_cls: Any, model_cls: Any, seed: int, **overrides: object) -> Path:
    import torch

    target.mkdir(parents=True, exist_ok=True)
    tokenizer = _bpe_tokenizer(target)
    torch.manual_seed(seed)
    values: dict[str, object] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "initializer_range": 0.1,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.pad_token_id,
    }
    values.update(overrides)
    model_cls(config_cls(**values)).eval().save_pretrained(target)
    return target


def build_qwen3_reranker(
    target: Path, *, seed: int = 0, lm_head_std: float | None = None, **config: object
) -> Path:
    """Qwen3ForCausalLM in the Qwen3-Reranker layout (yes/no at the last token). The folder does not say
    "reranker" unless its name does: export it with --template qwen3-reranker. `config` overrides the tiny
    shape (bench/families.py builds a Qwen3-0.6B-sized one). `lm_head_std`: an untied output layer drawn with
    this spread, for vocabulary logits as large as a trained deep model's (|logit| ~ lm_head_std x
    sqrt(hidden_size) after the final RMSNorm)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    overrides: dict[str, object] = {"head_dim": 16, **config}
    if lm_head_std is not None:
        overrides["tie_word_embeddings"] = False
    _tiny_decoder(target, Qwen3Config, Qwen3ForCausalLM, seed, **overrides)
    if lm_head_std is not None:
        import torch

        model = Qwen3ForCausalLM.from_pretrained(target, dtype=torch.float32)
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, lm_head_std)
        model.eval().save_pretrained(target)
    _mark(target, family="decoder", template="qwen3-reranker")
    return target


def build_mxbai_v2(target: Path, *, seed: int = 0) -> Path:
    """Qwen2ForCausalLM in the mxbai-rerank-v2 layout ("1"/"0" at the last token): --template mxbai-rerank-v2."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _tiny_decoder(target, Qwen2Config, Qwen2ForCausalLM, seed)
    _mark(target, family="decoder", template="mxbai-rerank-v2")
    return target


def family_of(folder: Path) -> dict[str, str]:
    return json.loads((Path(folder) / MARKER).read_text())


def reference_scores(
    folder: Path,
    pairs: Sequence[tuple[str, str]],
    *,
    instruction: str | None = None,
    max_length: int = 8192,
) -> list[float]:
    """Relevance scores as the model's own library computes them (after its default activation).
    `max_length`: the decoder libraries' own (mxbai's counts the query and the document only)."""
    folder = Path(folder)
    kind = family_of(folder)
    if kind["family"] == "decoder" and kind["template"] == "qwen3-reranker":
        return _qwen3_card_scores(folder, pairs, instruction, max_length)
    if kind["family"] == "decoder":
        return _mxbai_v2_scores(folder, pairs, instruction, max_length)
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu")  # Sigmoid for one label (CrossEncoder's default)
    return [float(s) for s in model.predict(list(pairs), batch_size=16, convert_to_numpy=True)]


def qwen3_card_input_ids(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], instruction: str | None, max_length: int = 8192
) -> list[list[int]]:
    """The Qwen3-Reranker model card's process_inputs (transformers usage), verbatim in substance: each pair's
    ids, `max_length` counting the whole prompt."""
    prefix_tokens = tokenizer.encode(cards.QWEN3_PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(cards.QWEN3_SUFFIX, add_special_tokens=False)
    texts = [cards.qwen3_format_instruction(instruction, q, d) for q, d in pairs]
    inputs = tokenizer(
        texts, padding=False, truncation="longest_first", return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )  # fmt: skip
    return [prefix_tokens + ids + suffix_tokens for ids in inputs["input_ids"]]


def _qwen3_card_scores(
    folder: Path, pairs: Sequence[tuple[str, str]], instruction: str | None, max_length: int = 8192
) -> list[float]:
    """The Qwen3-Reranker model card's code (transformers usage): softmax over [no, yes] at the last token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    token_false_id = tokenizer.convert_tokens_to_ids(cards.QWEN3_FALSE)
    token_true_id = tokenizer.convert_tokens_to_ids(cards.QWEN3_TRUE)
    ids = qwen3_card_input_ids(tokenizer, pairs, instruction, max_length)
    scores: list[float] = []
    for start in range(0, len(ids), 16):
        batch = tokenizer.pad({"input_ids": ids[start : start + 16]}, padding=True, return_tensors="pt")
        with torch.no_grad():
            last = model(**batch).logits[:, -1, :]
            pair = torch.stack([last[:, token_false_id], last[:, token_true_id]], dim=1)
            scores += torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp().tolist()
    return scores


def mxbai_v2_input_ids(
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    instruction: str | None,
    *,
    model_max_length: int,
    max_length: int = 8192,
) -> list[list[int]]:
    """mxbai_rerank.MxbaiRerankV2.prepare_inputs (mixedbread-ai/mxbai-rerank @ 8e709dc, v0.1.6): each pair's ids.
    `max_length` counts the query and the document only; the prompt's own tokens come on top."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, return_tensors=None, add_special_tokens=False)["input_ids"]

    task, sep = ids(cards.MXBAI_TASK_PROMPT), ids(cards.MXBAI_SEP)
    prefix, suffix = ids(cards.MXBAI_PREFIX), ids(cards.MXBAI_SUFFIX)
    predefined = len(prefix) + len(task) + len(suffix) + len(sep)
    if max_length + predefined > model_max_length:
        max_length = model_max_length - predefined
    out = []
    for query, document in pairs:
        query_prompt = cards.mxbai_query_text(query, instruction)
        q = tokenizer(query_prompt, add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)
        doc_max = min(model_max_length - len(q["input_ids"]) - predefined, max_length)
        d = tokenizer(
            cards.MXBAI_DOC_PROMPT.format(document=document), add_special_tokens=False, max_length=doc_max,
            truncation=True,
        )  # fmt: skip
        item = tokenizer.prepare_for_model(
            q["input_ids"], sep + d["input_ids"], truncation="only_second", max_length=max_length,
            padding=False, return_attention_mask=False, return_token_type_ids=False, add_special_tokens=False,
        )  # fmt: skip
        out.append(prefix + item["input_ids"] + sep + task + suffix)
    return out


def _mxbai_v2_scores(
    folder: Path, pairs: Sequence[tuple[str, str]], instruction: str | None, max_length: int = 8192
) -> list[float]:
    """mxbai_rerank.MxbaiRerankV2.prepare_inputs + forward, then its sigmoid normalisation's core:
    sigmoid(logit("1") - logit("0"))."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model_max_length = AutoConfig.from_pretrained(folder).max_position_embeddings
    yes_loc = tokenizer(cards.MXBAI_POS, add_special_tokens=False)["input_ids"][0]
    no_loc = tokenizer(cards.MXBAI_NEG, add_special_tokens=False)["input_ids"][0]
    ids = mxbai_v2_input_ids(
        tokenizer, pairs, instruction, model_max_length=model_max_length, max_length=max_length
    )
    items = [{"input_ids": row, "attention_mask": [1] * len(row)} for row in ids]
    scores: list[float] = []
    for start in range(0, len(items), 16):
        batch = tokenizer.pad(
            items[start : start + 16], padding="longest", pad_to_multiple_of=8, return_tensors="pt"
        )
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            diff = logits[:, -1, yes_loc] - logits[:, -1, no_loc]
        scores += [1.0 / (1.0 + math.exp(-float(x))) for x in diff]
    return scores


def exported_scores(
    model_folder: Path,
    pairs: Sequence[tuple[str, str]],
    *,
    variant: str = "fp32",
    instruction: str | None = None,
) -> list[float]:
    """Relevance scores of an exported model folder (manifest.json + tokenizer/ + ONNX), computed the way the
    manifest contract says the gateway does: template parts tokenized separately without special tokens
    (decoders, left padding) or the tokenizer's pair encoding (encoders), then activation(logits[:, 0])."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    model_folder = Path(model_folder)
    manifest = json.loads((model_folder / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_folder / manifest["tokenizer_dir"])
    names = [i["name"] for i in manifest["inputs"]]
    template = manifest.get("template")
    rows: list[dict[str, list[int]]] = []
    for query, document in pairs:
        if template is None:
            enc = tokenizer(query, document, truncation="only_second", max_length=manifest["max_length"])
            rows.append({n: list(enc[n]) for n in names})
            continue
        instr = instruction or template["default_instruction"]
        lead = template["instruction"].format(instruction=instr) if instr and template["instruction"] else ""
        parts = [
            template["prefix"],
            lead + template["query"].format(instruction=instr or "", query=query),
            template["document"].format(document=document),
            template["suffix"],
        ]
        ids = [i for part in parts for i in tokenizer(part, add_special_tokens=False)["input_ids"]]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    width = max(len(r["input_ids"]) for r in rows)
    feed = {}
    for name in names:
        fill = tokenizer.pad_token_id if name == "input_ids" else 0
        arr = np.full((len(rows), width), fill, dtype=np.int64)
        for i, row in enumerate(rows):
            seq = row.get(name, [0] * len(row["input_ids"]))
            if manifest.get("padding_side", "right") == "left":
                arr[i, width - len(seq) :] = seq
            else:
                arr[i, : len(seq)] = seq
        feed[name] = arr
    path = model_folder / manifest["variants"][variant]["file"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], feed)[0][:, 0].astype(np.float64)
    if manifest.get("score", {}).get("activation", "sigmoid") == "sigmoid":
        return [float(x) for x in 1.0 / (1.0 + np.exp(-logits))]
    return [float(x) for x in logits]
