from __future__ import annotations

import itertools

import numpy as np
import pytest
from tokenizers import Tokenizer

from gateway.errors import ModelRepositoryError, ValidationFailed
from gateway.tokenization import PairTokenizer, build_batch, check_inputs, plan_batches

QUERY = "How many people live in Berlin?"
BERLIN = "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers."


@pytest.fixture(scope="module")
def tok(tiny_model_repository):
    return PairTokenizer.from_dir(tiny_model_repository / "reranker" / "tokenizer", max_length=512)


@pytest.fixture(scope="module")
def reference(tiny_model_repository):
    return Tokenizer.from_file(str(tiny_model_repository / "reranker" / "tokenizer" / "tokenizer.json"))


def test_pair_matches_the_tokenizers_own_pair_encoding(tok, reference):
    reference.no_truncation()
    expected = reference.encode(QUERY, BERLIN)
    [window] = tok.encode_pairs(QUERY, [BERLIN]).windows
    assert window.ids == expected.ids
    assert window.type_ids == expected.type_ids
    assert window.ids[0] == 101 and window.ids[-1] == 102  # [CLS] ... [SEP]


def test_truncation_cuts_only_the_document_like_only_second(tok, reference):
    long_doc = " ".join(["population"] * 300)
    reference.enable_truncation(64, strategy="only_second")
    expected = reference.encode(QUERY, long_doc)
    enc = tok.encode_pairs(QUERY, [long_doc], max_length=64)
    [window] = enc.windows
    assert window.ids == expected.ids
    assert len(window.ids) == 64
    assert enc.truncated == [True] and enc.chunked == [False]
    reference.no_truncation()


def test_left_truncation_keeps_the_end(tok):
    doc = "alpha " * 100 + "omega"
    [window] = tok.encode_pairs("q", [doc], max_length=32, direction="left").windows
    assert doc[window.chars[0] : window.chars[1]].endswith("omega")


def test_chunks_overlap_and_report_char_offsets(tok):
    doc = " ".join(f"w{i}" for i in range(400))
    enc = tok.encode_pairs("w5", [doc], max_length=64, max_chunks=4, overlap=8)
    assert len(enc.windows) == 4 and enc.chunked == [True] and enc.truncated == [True]
    spans = [w.chars for w in enc.windows]
    assert spans[0][0] == 0
    for (a0, a1), (b0, _) in itertools.pairwise(spans):
        assert b0 < a1  # overlapping windows
        assert a0 < b0
    assert all(len(w.ids) <= 64 for w in enc.windows)


def test_short_document_is_one_window_without_chunk(tok):
    enc = tok.encode_pairs(QUERY, [BERLIN], max_chunks=4)
    assert len(enc.windows) == 1 and enc.chunked == [False] and enc.truncated == [False]


def test_truncate_false_rejects_long_document(tok):
    with pytest.raises(ValidationFailed, match="truncate=false"):
        tok.encode_pairs(QUERY, ["word " * 200], max_length=32, truncate=False)


def test_overlong_query_is_cut_but_leaves_room_for_the_document(tok):
    enc = tok.encode_pairs("berlin " * 500, [BERLIN], max_length=64)
    assert enc.query_truncated
    assert len(enc.windows[0].ids) <= 64


def test_very_long_document_is_cut_before_tokenizing_but_gives_the_same_head(tok, reference):
    doc = "Berlin population " * 5000
    reference.enable_truncation(128, strategy="only_second")
    [window] = tok.encode_pairs(QUERY, [doc], max_length=128).windows
    assert window.ids == reference.encode(QUERY, doc).ids
    reference.no_truncation()


def test_plan_batches_respects_budget_and_sorts_by_length():
    lengths = [10, 500, 30, 500, 12, 31, 100, 11]
    batches = plan_batches(lengths, token_budget=1000, max_rows=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1000
    firsts = [max(lengths[i] for i in b) for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_plan_batches_oversized_pair_gets_its_own_batch():
    assert plan_batches([5000, 3], token_budget=100, max_rows=8) == [[0], [1]]


def test_build_batch_uses_declared_inputs_only(tok):
    enc = tok.encode_pairs(QUERY, [BERLIN, "short"])
    batch = build_batch(enc.windows, ("input_ids", "attention_mask"), tok.pad_id)
    assert set(batch.inputs) == {"input_ids", "attention_mask"}  # no token_type_ids for XLM-R-like models
    assert batch.inputs["input_ids"].dtype == np.int64
    assert batch.seq_len == len(enc.windows[0].ids)
    assert batch.inputs["attention_mask"][1].sum() == len(enc.windows[1].ids)
    with_types = build_batch(enc.windows, ("input_ids", "attention_mask", "token_type_ids"), tok.pad_id)
    assert with_types.inputs["token_type_ids"][0].tolist() == enc.windows[0].type_ids


def test_unknown_inputs_fail_at_load():
    with pytest.raises(ModelRepositoryError):
        check_inputs(["input_ids", "pixel_values"])
    check_inputs(["input_ids", "attention_mask"])


def test_lone_surrogates_are_replaced_keeping_offsets(tok):
    doc = "Berlin \udfff population"
    enc = tok.encode_pairs("berlin \ud800", [doc, "plain"])
    assert len(enc.windows) == 2
    assert enc.windows[0].chars == (0, len(doc))
