"""Decoder prompt templates: the templates pinned to the model cards' text, and our pair ids against the cards'
own code, on a Qwen-style tokenizer.

The card text comes from tests/model_cards.py (copied from the cards), never from gateway.families, the code under
test. The id references below are the model cards' tokenization, written with transformers on the same folder:
Qwen3-Reranker's `process_inputs` (prefix + tokenizer(format_instruction(...)) + suffix, the middle cut by
`truncation='longest_first'`) and mxbai_rerank.MxbaiRerankV2.prepare_inputs (every piece tokenized alone).
"""

from __future__ import annotations

import itertools
import random

import model_cards as cards
import numpy as np
import pytest
from family_tokenizers import build_modernbert_tokenizer, build_qwen_tokenizer

from gateway.errors import InputTooLong
from gateway.families import MXBAI_RERANK_V2, QWEN3_RERANKER, TEMPLATES, PromptTemplate
from gateway.tokenization import PairTokenizer, build_batch

QWEN3 = QWEN3_RERANKER
MXBAI = MXBAI_RERANK_V2
DEFAULT_INSTRUCTION = cards.QWEN3_DEFAULT_INSTRUCTION

QUERY = "How many people live in Berlin?"
BERLIN = "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers."
# Boundaries where a joint tokenization could differ from part-by-part: punctuation and spaces before the
# template's newline, newlines, an empty document, non-ASCII, text that spells a special token.
PAIRS = [
    (QUERY, BERLIN),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("trailing spaces   ", "  leading spaces and a trailing newline\n"),
    ("ends with a newline\n", "\n\nstarts with newlines"),
    ("Größe?", "東京 北京 😀 café naïve"),
    ("question", ""),
    ("1,2,3?!", "...?\n"),
    ("<Query>: nested", "a <|im_end|> inside the document"),
]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_qwen_tokenizer(tmp_path_factory.mktemp("qwen-tokenizer"))


@pytest.fixture(scope="module")
def hf(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return PairTokenizer.from_dir(qwen_dir, max_length=8192, template=QWEN3, padding_side="left")


@pytest.fixture(scope="module")
def mxbai(qwen_dir):
    return PairTokenizer.from_dir(qwen_dir, max_length=8192, template=MXBAI, padding_side="left")


def qwen3_card(hf, query: str, doc: str, instruction: str | None = None, max_length: int = 8192) -> list[int]:
    """Qwen3-Reranker model card: format_instruction + process_inputs, one pair."""
    prefix = hf.encode(cards.QWEN3_PREFIX, add_special_tokens=False)
    suffix = hf.encode(cards.QWEN3_SUFFIX, add_special_tokens=False)
    pair = cards.qwen3_format_instruction(instruction, query, doc)
    body = hf(
        [pair],
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix) - len(suffix),
    )["input_ids"][0]
    return prefix + body + suffix


def mxbai_card(hf, query: str, doc: str, instruction: str | None = None) -> list[int]:
    """mxbai_rerank.MxbaiRerankV2.prepare_inputs for one pair that fits (its truncation not exercised)."""

    def ids(text: str) -> list[int]:
        return hf(text, return_tensors=None, add_special_tokens=False)["input_ids"]

    sep = ids(cards.MXBAI_SEP)
    body = (
        ids(cards.mxbai_query_text(query, instruction))
        + sep
        + ids(cards.MXBAI_DOC_PROMPT.format(document=doc))
    )
    return ids(cards.MXBAI_PREFIX) + body + sep + ids(cards.MXBAI_TASK_PROMPT) + ids(cards.MXBAI_SUFFIX)


def test_qwen3_template_is_the_model_cards_text():
    assert QWEN3.prefix == cards.QWEN3_PREFIX and QWEN3.suffix == cards.QWEN3_SUFFIX
    assert QWEN3.default_instruction == cards.QWEN3_DEFAULT_INSTRUCTION
    assert (QWEN3.positive_token, QWEN3.negative_token) == (cards.QWEN3_TRUE, cards.QWEN3_FALSE)
    for instruction in (None, "Find the passage"):
        used = instruction or QWEN3.default_instruction
        text = QWEN3.query.format(instruction=used, query="Q?") + QWEN3.document.format(document="D.")
        assert text == cards.qwen3_format_instruction(instruction, "Q?", "D.")


def test_mxbai_template_is_the_librarys_text():
    assert MXBAI.prefix == cards.MXBAI_PREFIX
    assert MXBAI.suffix == cards.MXBAI_SEP + cards.MXBAI_TASK_PROMPT + cards.MXBAI_SUFFIX
    assert MXBAI.default_instruction is None and MXBAI.instruction is not None
    assert (MXBAI.positive_token, MXBAI.negative_token) == (cards.MXBAI_POS, cards.MXBAI_NEG)
    assert MXBAI.query.format(query="Q?") == cards.mxbai_query_text("Q?", None)
    with_instruction = MXBAI.instruction.format(instruction="Find it") + MXBAI.query.format(query="Q?")
    assert with_instruction == cards.mxbai_query_text("Q?", "Find it")
    assert MXBAI.document.format(document="D.") == cards.MXBAI_SEP + cards.MXBAI_DOC_PROMPT.format(
        document="D."
    )


def test_every_template_reads_back_from_its_manifest_entry():
    for template in TEMPLATES.values():
        assert PromptTemplate.from_manifest(template.manifest()) == template


def test_the_test_tokenizer_is_qwen_shaped(hf, qwen):
    for word in ("yes", "no", "0", "1"):
        assert len(hf.encode(word, add_special_tokens=False)) == 1
    assert hf.pad_token == "<|endoftext|>"
    assert qwen.pad_id == hf.convert_tokens_to_ids("<|endoftext|>")
    assert hf.encode("?\n", add_special_tokens=False) != hf.encode("?", add_special_tokens=False) + hf.encode(
        "\n", add_special_tokens=False
    )  # merges across a boundary exist, so the parity tests below can fail


@pytest.mark.parametrize(("query", "doc"), PAIRS)
def test_qwen3_pair_equals_the_model_card(qwen, hf, query, doc):
    enc = qwen.encode_pairs(query, [doc])
    [window] = enc.windows
    assert window.ids == qwen3_card(hf, query, doc)
    assert enc.instruction == DEFAULT_INSTRUCTION
    assert enc.truncated == [False] and not enc.query_truncated


def test_qwen3_request_instruction_replaces_the_default(qwen, hf):
    instruction = "Given a question, retrieve passages that answer it"
    enc = qwen.encode_pairs(QUERY, [BERLIN], instruction=instruction)
    assert enc.windows[0].ids == qwen3_card(hf, QUERY, BERLIN, instruction)
    assert enc.instruction == instruction
    assert enc.windows[0].ids != qwen.encode_pairs(QUERY, [BERLIN]).windows[0].ids


def test_random_boundaries_equal_the_model_card(qwen, mxbai, hf):
    rng = random.Random(7)
    alphabet = [
        "a",
        "b",
        "Berlin",
        " ",
        "  ",
        "\n",
        "?",
        ".",
        "!",
        ":",
        "<",
        ">",
        "1",
        "23",
        "é",
        "東",
        "😀",
        "\t",
    ]
    for _ in range(150):
        query = "".join(rng.choices(alphabet, k=rng.randint(1, 12)))
        doc = "".join(rng.choices(alphabet, k=rng.randint(0, 20)))
        assert qwen.encode_pairs(query, [doc]).windows[0].ids == qwen3_card(hf, query, doc), (query, doc)
        assert mxbai.encode_pairs(query, [doc]).windows[0].ids == mxbai_card(hf, query, doc), (query, doc)


@pytest.mark.parametrize(("query", "doc"), PAIRS)
@pytest.mark.parametrize("instruction", [None, "Find the passage that answers the question"])
def test_mxbai_pair_equals_the_model_card(mxbai, hf, query, doc, instruction):
    enc = mxbai.encode_pairs(query, [doc], instruction=instruction)
    assert enc.windows[0].ids == mxbai_card(hf, query, doc, instruction)
    assert enc.instruction == instruction  # no default instruction: none unless the request brings one


@pytest.mark.parametrize("max_length", [128, 151, 256])
def test_long_document_keeps_prefix_and_suffix_and_fills_max_length(qwen, hf, max_length):
    doc = "Berlin population grows every year. " * 200
    enc = qwen.encode_pairs(QUERY, [doc], max_length=max_length)
    [window] = enc.windows
    prefix = hf.encode(QWEN3.prefix, add_special_tokens=False)
    suffix = hf.encode(QWEN3.suffix, add_special_tokens=False)
    assert len(window.ids) == max_length
    assert window.ids[: len(prefix)] == prefix and window.ids[-len(suffix) :] == suffix
    assert window.ids == qwen3_card(hf, QUERY, doc, max_length=max_length)  # the card cuts the same tokens
    assert enc.truncated == [True] and enc.chunked == [False] and not enc.query_truncated
    assert doc.startswith(doc[window.chars[0] : window.chars[1]]) and window.chars[0] == 0


def test_very_long_document_is_cut_before_tokenizing_with_the_same_ids(qwen, hf):
    doc = "Berlin population " * 5000
    [window] = qwen.encode_pairs(QUERY, [doc], max_length=256).windows
    assert window.ids == qwen3_card(hf, QUERY, doc, max_length=256)


def test_left_truncation_keeps_the_document_end_and_the_template(qwen, hf):
    doc = "alpha " * 300 + "omega"
    [window] = qwen.encode_pairs(QUERY, [doc], max_length=96, direction="left").windows
    suffix = hf.encode(QWEN3.suffix, add_special_tokens=False)
    assert len(window.ids) == 96
    assert window.ids[-len(suffix) :] == suffix
    assert window.chars[1] == len(doc) and doc[window.chars[0] : window.chars[1]].endswith("omega")
    document_part = hf.decode(window.ids[: -len(suffix)])
    assert document_part.endswith("omega") and "<Document>:" in document_part


def test_chunks_each_carry_the_whole_template(qwen, hf):
    doc = " ".join(f"w{i}" for i in range(600))
    enc = qwen.encode_pairs("w5", [doc], max_length=120, max_chunks=4, overlap=8)
    prefix = hf.encode(QWEN3.prefix, add_special_tokens=False)
    suffix = hf.encode(QWEN3.suffix, add_special_tokens=False)
    head = qwen3_card(hf, "w5", "")[: -len(suffix)]  # prefix + query part + "<Document>:"
    assert len(enc.windows) == 4 and enc.chunked == [True] and enc.truncated == [True]
    for window in enc.windows:
        assert len(window.ids) <= 120
        assert window.ids[: len(prefix)] == prefix and window.ids[-len(suffix) :] == suffix
        assert window.ids[: len(head) - 1] == head[:-1]  # up to the frame's last token, which may merge
        text = hf.decode(window.ids)
        assert "<Query>: w5\n<Document>:" in text
    assert enc.windows[0].ids == qwen3_card(hf, "w5", doc, max_length=120)
    spans = [w.chars for w in enc.windows]
    assert spans[0][0] == 0
    for (a0, a1), (b0, _) in itertools.pairwise(spans):
        assert a0 < b0 < a1  # windows overlap and move forward


def test_truncate_false_names_the_document(qwen):
    with pytest.raises(InputTooLong, match="document 7 needs more than"):
        qwen.encode_pairs(QUERY, [BERLIN, "word " * 200], max_length=160, truncate=False, names=[3, 7])
    assert len(qwen.encode_pairs(QUERY, [BERLIN], max_length=160, truncate=False).windows) == 1


@pytest.mark.parametrize("query", ["berlin " * 500, "Where is Berlin?" * 200, "Berlin.\n" * 300])
def test_overlong_query_is_cut_but_the_template_survives(qwen, hf, query):
    # "?" or "." and the template's newline after the query are one token when whole: cut, the newline stays.
    enc = qwen.encode_pairs(query, [BERLIN], max_length=128)
    [window] = enc.windows
    prefix = hf.encode(QWEN3.prefix, add_special_tokens=False)
    suffix = hf.encode(QWEN3.suffix, add_special_tokens=False)
    assert enc.query_truncated
    assert len(window.ids) <= 128
    assert window.ids[: len(prefix)] == prefix and window.ids[-len(suffix) :] == suffix
    text = hf.decode(window.ids)
    assert "\n<Document>: Berlin has" in text  # the query part's closing newline and the document's start
    with pytest.raises(InputTooLong, match="the query has"):
        qwen.encode_pairs(query, [BERLIN], max_length=128, truncate=False)


def test_max_length_below_the_template_is_refused(qwen):
    with pytest.raises(InputTooLong, match="template tokens"):
        qwen.encode_pairs(QUERY, [BERLIN], max_length=40)


def test_left_padded_batch_puts_pads_and_zero_attention_on_the_left(qwen, hf):
    enc = qwen.encode_pairs(QUERY, [BERLIN, "short", ""])
    names = ("input_ids", "attention_mask", "position_ids")
    batch = build_batch(enc.windows, names, qwen.pad_id, padding_side=qwen.padding_side)
    ids, mask, pos = (batch.inputs[n] for n in names)
    width = max(len(w.ids) for w in enc.windows)
    assert ids.shape == (3, width)
    last = hf.encode(QWEN3.suffix, add_special_tokens=False)[-1]
    assert (ids[:, -1] == last).all() and (mask[:, -1] == 1).all()  # every row's last position is real
    for row, window in enumerate(enc.windows):
        pads = width - len(window.ids)
        assert ids[row, pads:].tolist() == window.ids
        assert (ids[row, :pads] == hf.pad_token_id).all()
        assert mask[row].tolist() == [0] * pads + [1] * len(window.ids)
        assert pos[row, pads:].tolist() == list(range(len(window.ids)))
    assert (mask[1:, 0] == 0).all()
    right = build_batch(enc.windows, names[:2], qwen.pad_id)
    assert right.inputs["attention_mask"][1].tolist()[: len(enc.windows[1].ids)] == [1] * len(
        enc.windows[1].ids
    )


def test_left_padding_matches_the_cards_padded_batch(qwen, hf):
    docs = [BERLIN, "short"]
    enc = qwen.encode_pairs(QUERY, docs)
    batch = build_batch(enc.windows, ("input_ids", "attention_mask"), qwen.pad_id, padding_side="left")
    hf.padding_side = "left"
    padded = hf.pad(
        {"input_ids": [qwen3_card(hf, QUERY, d) for d in docs]}, padding=True, return_tensors="np"
    )
    np.testing.assert_array_equal(batch.inputs["input_ids"], padded["input_ids"])
    np.testing.assert_array_equal(batch.inputs["attention_mask"], padded["attention_mask"])


def test_pad_token_comes_from_tokenizer_config(qwen_dir, tmp_path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    endoftext = tokenizer.token_to_id("<|endoftext|>")
    assert PairTokenizer.from_dir(qwen_dir, max_length=64, template=QWEN3).pad_id == endoftext
    assert PairTokenizer(tokenizer, max_length=64, template=QWEN3).pad_id == endoftext  # known name
    im_end = tokenizer.token_to_id("<|im_end|>")
    assert PairTokenizer(tokenizer, max_length=64, template=QWEN3, pad_token="<|im_end|>").pad_id == im_end


def test_modernbert_pairs_use_the_post_processor_without_type_ids(tmp_path):
    from transformers import AutoTokenizer

    folder = build_modernbert_tokenizer(tmp_path / "modernbert")
    hf = AutoTokenizer.from_pretrained(folder)
    tok = PairTokenizer.from_dir(folder, max_length=64)
    enc = tok.encode_pairs(QUERY, [BERLIN, "Größe?"])
    for window, doc in zip(enc.windows, [BERLIN, "Größe?"], strict=True):
        assert window.ids == hf(QUERY, doc)["input_ids"]
    cls_id, sep_id = hf.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    assert enc.windows[0].ids[0] == cls_id and enc.windows[0].ids.count(sep_id) == 2
    assert tok.pad_id == hf.pad_token_id
    batch = build_batch(enc.windows, tuple(hf.model_input_names), tok.pad_id)
    assert set(batch.inputs) == {"input_ids", "attention_mask"}
    long = tok.encode_pairs(QUERY, ["Berlin " * 200])
    [window] = long.windows
    truncated = hf(QUERY, "Berlin " * 200, truncation="only_second", max_length=64)["input_ids"]
    assert window.ids == truncated and len(window.ids) == 64


def test_models_without_a_template_ignore_an_instruction(tmp_path):
    folder = build_modernbert_tokenizer(tmp_path / "modernbert")
    tok = PairTokenizer.from_dir(folder, max_length=64)
    plain = tok.encode_pairs(QUERY, [BERLIN])
    asked = tok.encode_pairs(QUERY, [BERLIN], instruction="Find the answer")
    assert asked.instruction is None and plain.instruction is None
    assert asked.windows[0].ids == plain.windows[0].ids


def test_lone_surrogates_are_replaced_keeping_offsets(qwen):
    doc = "Berlin \udfff population"
    enc = qwen.encode_pairs("berlin \ud800", [doc, "plain"])
    assert len(enc.windows) == 2
    assert enc.windows[0].chars == (0, len(doc))
