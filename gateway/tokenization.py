"""Pair tokenization and length-bucketed batching, with the `tokenizers` library only (no transformers).

The query is encoded once per request and every document once; pairs are then assembled from the
model's own special-token template (learnt from the tokenizer's post-processor, so BERT's
`[CLS] q [SEP] d [SEP]` with segment ids and XLM-R's `<s> q </s></s> d </s>` both come out right).
Only the document is truncated; a document longer than its window may be split into overlapping
windows ("chunks") that are scored separately, the best one winning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from gateway.domain import EncodedBatch
from gateway.errors import InputTooLong, ModelRepositoryError

SUPPORTED_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids", "position_ids"})
# A BERT word piece rarely spans more than this many characters: documents are cut to
# `tokens_needed * CHARS_PER_TOKEN_BOUND` characters before tokenizing (and re-tokenized whole if
# the cut turned out too short), so a 20k-character document costs the tokens it can use.
CHARS_PER_TOKEN_BOUND = 12


@dataclass(frozen=True)
class _Template:
    prefix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    query_type: int
    middle: tuple[int, ...]
    middle_types: tuple[int, ...]
    doc_type: int
    suffix: tuple[int, ...]
    suffix_types: tuple[int, ...]

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


@dataclass(frozen=True)
class Window:
    """One (query, document window) pair ready to batch. `doc` is the position in the caller's list."""

    doc: int
    ids: list[int]
    type_ids: list[int]
    chars: tuple[int, int]  # character offsets of the window in the document


@dataclass(frozen=True)
class EncodedPairs:
    """All windows of one query against its documents, plus what the response reports."""

    windows: list[Window]
    chunked: list[bool]  # per document: split into more than one window
    truncated: list[bool]  # per document: some of its tokens were scored by no window
    query_truncated: bool


class PairTokenizer:
    """Builds model inputs for (query, document) pairs from a folder holding `tokenizer.json`."""

    def __init__(self, tokenizer: Tokenizer, *, max_length: int) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.max_length = max_length
        self._template = _learn_template(tokenizer)
        self.pad_id = next(
            (
                tid
                for name in ("[PAD]", "<pad>", "<|pad|>")
                if (tid := tokenizer.token_to_id(name)) is not None
            ),
            0,
        )

    @classmethod
    def from_dir(cls, folder: Path, *, max_length: int) -> PairTokenizer:
        path = folder / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses for bad files
            raise ModelRepositoryError(f"cannot load {path}: {exc}") from exc
        return cls(tokenizer, max_length=max_length)

    @property
    def special_tokens(self) -> int:
        return self._template.specials

    def encode_pairs(
        self,
        query: str,
        documents: Sequence[str],
        *,
        max_length: int | None = None,
        max_chunks: int = 1,
        overlap: int = 32,
        direction: str = "right",
        truncate: bool = True,
        names: Sequence[int] | None = None,
    ) -> EncodedPairs:
        """Tokenize one query against its documents into windows that fit `max_length` tokens.

        `names`: each document's index in the client's request, for error messages (default: position).
        """
        t = self._template
        max_length = min(max_length or self.max_length, self.max_length)
        q_ids = self._tok.encode(_valid_text(query), add_special_tokens=False).ids
        min_room = max(8, max_length // 4)
        q_limit = max_length - t.specials - min_room
        query_truncated = len(q_ids) > q_limit
        if query_truncated:
            if not truncate:
                raise InputTooLong(
                    f"the query has {len(q_ids)} tokens; with truncate=false at most {q_limit} fit "
                    f"(max_length {max_length})",
                    limit="max_length",
                    value=max_length,
                )
            q_ids = q_ids[:q_limit]
        room = max_length - t.specials - len(q_ids)
        overlap = min(overlap, room // 2)
        stride = room - overlap
        need = room if max_chunks == 1 else room + stride * (max_chunks - 1)

        head = t.prefix + tuple(q_ids) + t.middle
        head_types = t.prefix_types + (t.query_type,) * len(q_ids) + t.middle_types
        encodings = self._encode_documents(documents, need, direction)
        windows: list[Window] = []
        chunked: list[bool] = []
        truncated: list[bool] = []
        for doc_index, (enc_ids, offsets, full_len) in enumerate(encodings):
            n = len(enc_ids)
            if full_len > room and not truncate:
                name = doc_index if names is None else names[doc_index]
                raise InputTooLong(
                    f"document {name} needs more than {room} tokens beside the query; with truncate=false "
                    f"at most {room} fit (max_length {max_length})",
                    limit="max_length",
                    value=max_length,
                )
            if n <= room:
                spans = [(0, n)]
            elif max_chunks == 1:
                spans = [(n - room, n)] if direction == "left" else [(0, room)]
            else:
                spans = []
                start = 0
                while len(spans) < max_chunks:
                    end = min(start + room, n)
                    spans.append((start, end))
                    if end >= n:
                        break
                    start += stride
            covered = spans[-1][1] - spans[0][0]
            truncated.append(full_len > covered)
            chunked.append(len(spans) > 1)
            for start, end in spans:
                piece = enc_ids[start:end]
                chars = (offsets[start][0], offsets[end - 1][1]) if end > start else (0, 0)
                windows.append(
                    Window(
                        doc=doc_index,
                        ids=[*head, *piece, *t.suffix],
                        type_ids=[*head_types, *((t.doc_type,) * len(piece)), *t.suffix_types],
                        chars=chars,
                    )
                )
        return EncodedPairs(windows, chunked, truncated, query_truncated)

    def _encode_documents(
        self, documents: Sequence[str], need: int, direction: str
    ) -> list[tuple[list[int], list[tuple[int, int]], int]]:
        """(ids, char offsets, full token count) per document; only `need` tokens matter downstream."""
        limit = need * CHARS_PER_TOKEN_BOUND
        cut = [
            doc if len(doc) <= limit else (doc[-limit:] if direction == "left" else doc[:limit])
            for doc in documents
        ]
        try:
            encoded = self._tok.encode_batch(cut, add_special_tokens=False)
        except Exception:  # texts the Rust side cannot take (lone surrogates from JSON "\ud800")
            cut = [_valid_text(piece) for piece in cut]
            documents = [_valid_text(doc) for doc in documents]
            encoded = self._tok.encode_batch(cut, add_special_tokens=False)
        out: list[tuple[list[int], list[tuple[int, int]], int]] = []
        for doc, piece, enc in zip(documents, cut, encoded, strict=True):
            ids, offsets = enc.ids, enc.offsets
            if piece is not doc:
                if len(ids) <= need + 2:  # the cut was too short to be sure: tokenize the whole document
                    enc = self._tok.encode(doc, add_special_tokens=False)
                    ids, offsets = enc.ids, enc.offsets
                elif direction == "left":
                    shift = len(doc) - len(piece)
                    offsets = [(a + shift, b + shift) for a, b in offsets]
            full = len(ids) if piece is doc or len(ids) <= need + 2 else len(ids) + 1  # +1: more existed
            if direction == "left" and len(ids) > need:
                out.append((ids[-need:], offsets[-need:], full))
            else:
                out.append((ids[:need], offsets[:need], full))
        return out


def _valid_text(text: str) -> str:
    """Replace lone surrogates (valid JSON, invalid Unicode) by "?": same length, so offsets still hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _learn_template(tokenizer: Tokenizer) -> _Template:
    """Read the special tokens around each sequence of a pair from the tokenizer's post-processor."""
    enc = tokenizer.encode("hello", "world", add_special_tokens=True)
    seq = enc.sequence_ids
    ids, types = enc.ids, enc.type_ids
    first_a = seq.index(0)
    last_a = len(seq) - 1 - seq[::-1].index(0)
    first_b = seq.index(1)
    last_b = len(seq) - 1 - seq[::-1].index(1)
    if not (last_a < first_b):
        raise ModelRepositoryError("the tokenizer's pair template puts the document before the query")
    return _Template(
        prefix=tuple(ids[:first_a]),
        prefix_types=tuple(types[:first_a]),
        query_type=types[first_a],
        middle=tuple(ids[last_a + 1 : first_b]),
        middle_types=tuple(types[last_a + 1 : first_b]),
        doc_type=types[first_b],
        suffix=tuple(ids[last_b + 1 :]),
        suffix_types=tuple(types[last_b + 1 :]),
    )


def plan_batches(lengths: Sequence[int], *, token_budget: int, max_rows: int) -> list[list[int]]:
    """Length buckets: indices sorted longest first, cut so rows x longest-of-batch <= token_budget.

    Each batch is padded only to its own longest pair, so short pairs never pay for long ones.
    A single pair longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if (current and (len(current) + 1) * longest > token_budget) or len(current) >= max_rows:
            batches.append(current)
            current = []
        if not current:
            longest = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


def build_batch(windows: Sequence[Window], input_names: Sequence[str], pad_id: int) -> EncodedBatch:
    """Pad the windows to the longest of them and lay out the model's declared inputs (int64)."""
    rows = len(windows)
    width = max(len(w.ids) for w in windows)
    ids = np.full((rows, width), pad_id, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    types = np.zeros((rows, width), dtype=np.int64) if "token_type_ids" in input_names else None
    for r, w in enumerate(windows):
        n = len(w.ids)
        ids[r, :n] = w.ids
        mask[r, :n] = 1
        if types is not None:
            types[r, :n] = w.type_ids
    inputs: dict[str, np.ndarray] = {}
    for name in input_names:
        if name == "input_ids":
            inputs[name] = ids
        elif name == "attention_mask":
            inputs[name] = mask
        elif name == "token_type_ids":
            assert types is not None
            inputs[name] = types
        elif name == "position_ids":
            inputs[name] = np.broadcast_to(np.arange(width, dtype=np.int64), (rows, width)).copy()
        else:
            raise ModelRepositoryError(f"the model declares input {name!r}, which the gateway cannot build")
    return EncodedBatch(inputs)


def check_inputs(input_names: Sequence[str]) -> None:
    """Fail at load time, not at the first request, on a model whose inputs we cannot build."""
    unknown = [name for name in input_names if name not in SUPPORTED_INPUTS]
    if unknown or "input_ids" not in input_names:
        raise ModelRepositoryError(
            f"unsupported model inputs {list(input_names)}: need input_ids, may use {sorted(SUPPORTED_INPUTS)}"
        )
