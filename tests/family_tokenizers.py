"""Small tokenizers shaped like the real ones of each model family, for tests that cannot reach the hub.

`build_qwen_tokenizer(dir)` writes a byte-level BPE folder laid out like Qwen2/Qwen3's (the same split regex,
NFC, ByteLevel without a prefix space, `<|endoftext|>` as pad, the chat special tokens appended after the
learnt vocabulary, `<think>`/`</think>` as plain added tokens) that `transformers.AutoTokenizer` loads.
`build_modernbert_tokenizer(dir)` writes a byte-level BPE with ModernBERT's `[CLS] q [SEP] d [SEP]`
post-processor and no token type ids. The decoder rerankers' prompts are the model cards' (tests/model_cards.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The pre-tokenizer split of Qwen2/Qwen3's tokenizer.json.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_ADDED = ("<think>", "</think>")  # added tokens Qwen3 does not mark special

_CORPUS = (
    "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
    "How many people live in Berlin? What is the capital of France? Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog. Document, query, instruction, relevance, judgment.",
    "Given a web search query, retrieve relevant passages that answer the query.",
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    'Note that the answer can only be "yes" or "no". You are a helpful assistant. system user assistant',
    "<Instruct>: <Query>: <Document>: query: document: instruction: Relevance: 0 1 2 3 4 5 6 7 8 9",
    "You are a search relevance expert who evaluates how well documents match search queries.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, naïve café, 東京 北京 😀",
    # Punctuation before a newline is one pre-token in Qwen's split; the real vocabulary merges it ("?Ċ").
    "Is it?\nIt is.\nWhere?\nHere!\n\nThe end.\n",
)


def _train_byte_bpe(split: str | None, vocab_size: int) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=split is None)
    if split is None:
        tok.pre_tokenizer = byte_level
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False), byte_level]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    # "yes" and "no" (Qwen3-Reranker's answers) must be single tokens of their own, as in the real vocabulary.
    corpus = [*_CORPUS * 20, *("yes", "no", " yes", " no") * 100]
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def build_qwen_tokenizer(folder: Path, *, vocab_size: int = 1000, model_max_length: int = 32768) -> Path:
    """Write a Qwen-style tokenizer folder (tokenizer.json + tokenizer_config.json) into `folder`."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_byte_bpe(QWEN_SPLIT, vocab_size)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED])
    for word in ("yes", "no", "0", "1"):
        ids = tok.encode(word, add_special_tokens=False).ids
        assert len(ids) == 1, f"{word!r} is not one token of the test vocabulary: {ids}"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def build_modernbert_tokenizer(folder: Path, *, vocab_size: int = 1000, model_max_length: int = 8192) -> Path:
    """Write a ModernBERT-style folder: byte-level BPE, `[CLS] q [SEP] d [SEP]`, no token_type_ids input."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_byte_bpe(None, vocab_size)
    specials = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder
