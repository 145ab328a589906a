"""The decoder's batch layout scores every row as the model card does: a tiny random Qwen3ForCausalLM,
fed our left-padded batch, gives each pair the logit(yes) - logit(no) it gives the pair alone, and the card's
own padded batch gives the same."""

from __future__ import annotations

import importlib
import os
from typing import Any

import model_cards as cards
import pytest
from family_tokenizers import build_qwen_tokenizer

from gateway.families import QWEN3_RERANKER
from gateway.tokenization import PairTokenizer, build_batch


def _need(module: str) -> Any:
    """torch and transformers come with the `export` extra; skip without them (fail under CI, which has them)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed ({exc}): pip install -e '.[export]'"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


torch = _need("torch")
transformers = _need("transformers")

QUERY = "How many people live in Berlin?"
DOCS = [
    "Berlin has a population of 3,520,031 registered inhabitants.",
    "short",
    "",
    "The quick brown fox jumps over the lazy dog. " * 3,
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = build_qwen_tokenizer(tmp_path_factory.mktemp("qwen-tokenizer"))
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=len(hf),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
    )
    model = transformers.Qwen3ForCausalLM(config).eval()
    tok = PairTokenizer.from_dir(folder, max_length=512, template=QWEN3_RERANKER, padding_side="left")
    return hf, model, tok


def yes_minus_no(model, hf, input_ids, attention_mask):
    yes, no = hf.convert_tokens_to_ids(["yes", "no"])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1, :]
    return (logits[:, yes] - logits[:, no]).numpy()


def test_left_padded_batch_scores_each_row_as_alone(setup):
    hf, model, tok = setup
    enc = tok.encode_pairs(QUERY, DOCS)
    batch = build_batch(enc.windows, ("input_ids", "attention_mask"), tok.pad_id, padding_side="left")
    batched = yes_minus_no(
        model,
        hf,
        torch.from_numpy(batch.inputs["input_ids"]),
        torch.from_numpy(batch.inputs["attention_mask"]),
    )
    for row, window in enumerate(enc.windows):
        ids = torch.tensor([window.ids])
        alone = yes_minus_no(model, hf, ids, torch.ones_like(ids))
        assert abs(batched[row] - alone[0]) < 1e-4
    # Right padding would read a pad at the last position of the shorter rows: not the same scores.
    right = build_batch(enc.windows, ("input_ids", "attention_mask"), tok.pad_id)
    wrong = yes_minus_no(
        model,
        hf,
        torch.from_numpy(right.inputs["input_ids"]),
        torch.from_numpy(right.inputs["attention_mask"]),
    )
    assert abs(wrong[1:] - batched[1:]).max() > 1e-3


def test_scores_equal_the_model_cards_padded_batch(setup):
    hf, model, tok = setup
    prefix = hf.encode(cards.QWEN3_PREFIX, add_special_tokens=False)
    suffix = hf.encode(cards.QWEN3_SUFFIX, add_special_tokens=False)
    pairs = [cards.qwen3_format_instruction(None, QUERY, doc) for doc in DOCS]
    inputs = hf(pairs, padding=False, truncation="longest_first", return_attention_mask=False, max_length=512)
    inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
    hf.padding_side = "left"
    card = hf.pad(inputs, padding=True, return_tensors="pt")
    expected = torch.sigmoid(
        torch.from_numpy(yes_minus_no(model, hf, card["input_ids"], card["attention_mask"]))
    )
    # The card's own formula: softmax over [no, yes] at the last token, probability of yes.
    yes, no = hf.convert_tokens_to_ids(["yes", "no"])
    with torch.no_grad():
        last = model(**card).logits[:, -1, :]
    card_scores = torch.nn.functional.log_softmax(torch.stack([last[:, no], last[:, yes]], dim=1), dim=1)[
        :, 1
    ].exp()
    assert torch.allclose(expected, card_scores, atol=1e-6)

    enc = tok.encode_pairs(QUERY, DOCS)
    batch = build_batch(
        enc.windows, ("input_ids", "attention_mask"), tok.pad_id, padding_side=tok.padding_side
    )
    ours = torch.sigmoid(
        torch.from_numpy(
            yes_minus_no(
                model,
                hf,
                torch.from_numpy(batch.inputs["input_ids"]),
                torch.from_numpy(batch.inputs["attention_mask"]),
            )
        )
    )
    assert torch.allclose(ours, card_scores, atol=1e-4)
