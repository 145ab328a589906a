"""Pair tokenization and length-bucketed batching, with the `tokenizers` library only (no transformers).

The query is encoded once per request and every document once; pairs are then assembled from the
model's own special-token template (learnt from the tokenizer's post-processor, so BERT's
`[CLS] q [SEP] d [SEP]` with segment ids and XLM-R's `<s> q </s></s> d </s>` both come out right).
Only the document is truncated; a document longer than its window may be split into overlapping
windows ("chunks") that are scored separately, the best one winning.

Decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2) have no pair template in their tokenizer: the manifest's
prompt template gives it instead (prefix, query part, document part, suffix, each tokenized alone as the
model cards do), and their batches are padded on the manifest's side: on the right for the decoders exported now
(their graphs read each row's last real token; the rows of one query share a head, `Window.shared`, which a
prefix-reusing scorer computes once), on the left for older manifests (the last position is every row's last token).
Tokenizing part by part equals the model cards' ids wherever the card's own pieces meet or the tokenizer's
pre-tokenizer always splits: Qwen3-Reranker tokenizes "<Instruct>: ..\n<Query>: ..\n<Document>: .." as one
text, and Qwen's split regex always breaks between that newline and "<Document>", so the query part ends
with the newline; mxbai-rerank-v2's separators are newlines before a letter, their own pre-token. The tests
check this against both cards' code on a Qwen-style tokenizer, boundary cases and random texts included.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from gateway.domain import EncodedBatch
from gateway.errors import InputTooLong, ModelRepositoryError
from gateway.families import PromptTemplate
from gateway.repository import ModelSpec, read_families

SUPPORTED_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids", "position_ids"})
# A BERT word piece rarely spans more than this many characters: documents are cut to
# `tokens_needed * CHARS_PER_TOKEN_BOUND` characters before tokenizing (and re-tokenized whole if
# the cut turned out too short), so a 20k-character document costs the tokens it can use.
CHARS_PER_TOKEN_BOUND = 12
# Pad tokens by name, for a folder whose tokenizer_config.json names none (BERT, XLM-R, GPT-style, Qwen).
PAD_TOKEN_NAMES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>")


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
    shared: int = 0  # leading tokens every window of this query has too (prompt prefix + query part)


@dataclass(frozen=True)
class EncodedPairs:
    """All windows of one query against its documents, plus what the response reports."""

    windows: list[Window]
    chunked: list[bool]  # per document: split into more than one window
    truncated: list[bool]  # per document: some of its tokens were scored by no window
    query_truncated: bool
    instruction: str | None = None  # the one the prompt template applied; None: the model has no template


class PairTokenizer:
    """Builds model inputs for (query, document) pairs from a folder holding `tokenizer.json`.

    Without a prompt template (encoder cross-encoders) a pair is the tokenizer's own pair encoding. With one
    (decoder rerankers) a pair is prefix + query part + document part + suffix, each part tokenized alone
    without special tokens; the document part is cut first, then the query part, never prefix or suffix.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_length: int,
        template: PromptTemplate | None = None,
        padding_side: str = "right",
        pad_token: str | None = None,
    ) -> None:
        if padding_side not in ("right", "left"):
            raise ModelRepositoryError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
        declared_pad = (tokenizer.padding or {}).get("pad_id")
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.max_length = max_length
        self.padding_side = padding_side
        self.prompt = template
        self.pad_id = _pad_id(tokenizer, pad_token, declared_pad)
        self._template, self._doc_frame, self._doc_static = _layout(tokenizer, template)
        self._reader = _DocumentReader(tokenizer, self._doc_frame)

    @classmethod
    def from_dir(
        cls,
        folder: Path,
        *,
        max_length: int,
        template: PromptTemplate | None = None,
        padding_side: str = "right",
    ) -> PairTokenizer:
        """Load `tokenizer.json`; the pad token is the one `tokenizer_config.json` names, when it names one."""
        path = folder / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses for bad files
            raise ModelRepositoryError(f"cannot load {path}: {exc}") from exc
        return cls(
            tokenizer,
            max_length=max_length,
            template=template,
            padding_side=padding_side,
            pad_token=_configured_pad_token(folder),
        )

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, max_length: int | None = None) -> PairTokenizer:
        """The tokenizer a served model needs: its template and padding side from the manifest.

        `max_length` may lower the model's own limit, never raise it.
        """
        limit = spec.max_length if max_length is None else min(max_length, spec.max_length)
        return cls.from_dir(
            spec.tokenizer_dir, max_length=limit, template=spec.template, padding_side=spec.padding_side
        )

    @property
    def special_tokens(self) -> int:
        """Tokens of a pair that are neither query nor document text (the template's, for decoders)."""
        return self._template.specials + self._doc_static

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
        instruction: str | None = None,
    ) -> EncodedPairs:
        """Tokenize one query against its documents into windows that fit `max_length` tokens.

        `names`: each document's index in the client's request, for error messages (default: position).
        `instruction`: for a model with a prompt template, the task instruction (None: the template's
        default); a model without a template has no place for one and ignores it, which the result's
        `instruction` (None) tells the caller.
        """
        max_length = min(max_length or self.max_length, self.max_length)
        used = None
        if self.prompt is None:
            q_ids = self._tok.encode(_valid_text(query), add_special_tokens=False).ids
            q_body, q_tail = len(q_ids), list[int]()
        else:
            used = instruction if instruction is not None else self.prompt.default_instruction
            q_ids, q_body, q_tail = self._query_part(query, used)
        fit = self._fit_query(q_ids, q_body, q_tail, max_length, truncate)
        room = fit.room
        step = room - min(overlap, room // 2)
        # A decoder document's own frame may cost a few tokens less than the estimate: read that many more.
        slack = 4 if self.prompt is not None else 0
        need = (room if max_chunks == 1 else room + step * (max_chunks - 1)) + slack
        encodings = self._reader.read(documents, need, direction)
        windows: list[Window] = []
        chunked: list[bool] = []
        truncated: list[bool] = []
        for doc_index, doc in enumerate(encodings):
            doc_room = room + self._doc_static - len(doc.frame_head) - len(doc.frame_tail)
            if doc.full_len > doc_room and not truncate:
                name = doc_index if names is None else names[doc_index]
                raise InputTooLong(
                    f"document {name} needs more than {doc_room} tokens beside the query; with truncate=false "
                    f"at most {doc_room} fit (max_length {max_length})",
                    limit="max_length",
                    value=max_length,
                )
            spans = _spans(len(doc.ids), doc_room, max_chunks, min(overlap, doc_room // 2), direction)
            truncated.append(doc.full_len > spans[-1][1] - spans[0][0])
            chunked.append(len(spans) > 1)
            windows.extend(self._window(doc_index, doc, fit.ids, start, end) for start, end in spans)
        return EncodedPairs(windows, chunked, truncated, fit.truncated, used)

    def _fit_query(
        self, q_ids: list[int], q_body: int, q_tail: list[int], max_length: int, truncate: bool
    ) -> _QueryFit:
        """The query part cut to leave a document at least a quarter of the pair (8 tokens at least), and the
        room left for the document's text."""
        fixed = self._template.specials + self._doc_static
        budget = max_length - fixed  # tokens for the query and the document text
        if budget < 2:
            raise InputTooLong(
                f"max_length {max_length} leaves no room for a query and a document beside the model's "
                f"{fixed} template tokens",
                limit="max_length",
                value=max_length,
            )
        q_limit = budget - min(max(8, max_length // 4), budget // 2)
        cut = len(q_ids) > q_limit
        if cut:
            if not truncate:
                raise InputTooLong(
                    f"the query has {len(q_ids)} tokens; with truncate=false at most {q_limit} fit "
                    f"(max_length {max_length})",
                    limit="max_length",
                    value=max_length,
                )
            q_ids = [*q_ids[: min(q_body, max(0, q_limit - len(q_tail)))], *q_tail]
        room = max_length - fixed - len(q_ids)
        if room < 1:
            raise InputTooLong(
                f"max_length {max_length} leaves no room for a document beside the query part's "
                f"{len(q_ids)} tokens and the model's {fixed} template tokens",
                limit="max_length",
                value=max_length,
            )
        return _QueryFit(q_ids, cut, room)

    def _window(self, doc_index: int, doc: _DocTokens, q_ids: list[int], start: int, end: int) -> Window:
        """The pair of the query and the document's tokens [start, end), in the model's template."""
        t = self._template
        piece = [*doc.frame_head, *doc.ids[start:end], *doc.frame_tail]
        chars = (doc.offsets[start][0], doc.offsets[end - 1][1]) if end > start else (0, 0)
        return Window(
            doc=doc_index,
            ids=[*t.prefix, *q_ids, *t.middle, *piece, *t.suffix],
            # a prompt template's head (the document part comes after the query part); an encoder pair's
            # special tokens and segment ids make a head that no scorer reuses
            shared=len(t.prefix) + len(q_ids) + len(t.middle) if self.prompt is not None else 0,
            type_ids=[
                *t.prefix_types,
                *((t.query_type,) * len(q_ids)),
                *t.middle_types,
                *((t.doc_type,) * len(piece)),
                *t.suffix_types,
            ],
            chars=chars,
        )

    def _plain_ids(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def _query_part(self, query: str, instruction: str | None) -> tuple[list[int], int, list[int]]:
        """The template's query part: (its ids, how many of them precede the text after the query, and
        that text's ids alone, which replace the tail when the query is cut).

        The tail is tokenized alone only when the query is cut: whole, a token may straddle the query's end
        and the template's text after it (Qwen merges "?" and the newline that follows into one token).
        """
        assert self.prompt is not None
        p = self.prompt
        values = {"query": _valid_text(query), "instruction": _valid_text(instruction or "")}
        text, _, end = _render(p.query, values, "query")
        if instruction and p.instruction is not None:
            lead = p.instruction.format(instruction=values["instruction"])
            text, end = lead + text, end + len(lead)
        enc = self._tok.encode(text, add_special_tokens=False)
        body = next((k for k, (a, _) in enumerate(enc.offsets) if a >= end), len(enc.ids))
        return list(enc.ids), body, self._plain_ids(text[end:]) if end < len(text) else []


def tokenizer_from_manifest(
    tokenizer_dir: Path, manifest: Mapping[str, Any], *, max_length: int
) -> PairTokenizer:
    """The PairTokenizer a manifest's family fields describe (template, padding side), read as the gateway reads
    them: the build step's parity gate encodes its pairs with it before the manifest is written."""
    fields = read_families(dict(manifest))
    return PairTokenizer.from_dir(
        tokenizer_dir, max_length=max_length, template=fields["template"], padding_side=fields["padding_side"]
    )


class _DocumentReader:
    """Tokenizes documents for windows: only the tokens a window can use (cut by characters first), the full
    count when more existed, and, for a prompt template, inside the document's frame as the model card does."""

    def __init__(self, tokenizer: Tokenizer, frame: tuple[str, str]) -> None:
        self._tok = tokenizer
        self._frame = frame

    def read(self, documents: Sequence[str], need: int, direction: str) -> list[_DocTokens]:
        """Each document's text tokens (ids, char offsets, full count); only `need` tokens matter downstream.

        With a prompt template the document is tokenized inside its frame (`<Document>: {document}`), as the
        model card does, and the frame's tokens are kept apart from the text's.
        """
        limit = need * CHARS_PER_TOKEN_BOUND
        cut = [
            doc if len(doc) <= limit else (doc[-limit:] if direction == "left" else doc[:limit])
            for doc in documents
        ]
        try:
            encoded = self._encode_framed(cut)
        except Exception:  # texts the Rust side cannot take (lone surrogates from JSON "\ud800")
            cut = [_valid_text(piece) for piece in cut]
            documents = [_valid_text(doc) for doc in documents]
            encoded = self._encode_framed(cut)
        out: list[_DocTokens] = []
        for doc, piece, enc in zip(documents, cut, encoded, strict=True):
            if piece is not doc:
                if len(enc.ids) <= need + 2:  # the cut was too short to be sure: tokenize the whole document
                    [enc] = self._encode_framed([doc])
                elif direction == "left":
                    shift = len(doc) - len(piece)
                    enc = replace(enc, offsets=[(a + shift, b + shift) for a, b in enc.offsets])
            ids, offsets = enc.ids, enc.offsets
            full = len(ids) if piece is doc or len(ids) <= need + 2 else len(ids) + 1  # +1: more existed
            if direction == "left" and len(ids) > need:
                ids, offsets = ids[-need:], offsets[-need:]
            else:
                ids, offsets = ids[:need], offsets[:need]
            out.append(_DocTokens(ids, offsets, full, enc.frame_head, enc.frame_tail))
        return out

    def _encode_framed(self, texts: list[str]) -> list[_DocTokens]:
        head, tail = self._frame
        if not head and not tail:
            return [
                _DocTokens(enc.ids, enc.offsets, len(enc.ids))
                for enc in self._tok.encode_batch(texts, add_special_tokens=False)
            ]
        encoded = self._tok.encode_batch([head + text + tail for text in texts], add_special_tokens=False)
        return [
            _unframe(enc.ids, enc.offsets, len(head), len(text))
            for text, enc in zip(texts, encoded, strict=True)
        ]


def _layout(tokenizer: Tokenizer, template: PromptTemplate | None) -> tuple[_Template, tuple[str, str], int]:
    """A pair's fixed tokens: the tokenizer's own pair template (encoders), or a prompt template's prefix and
    suffix with the document part's frame text and its estimated token cost (decoders)."""
    if template is None:
        return _learn_template(tokenizer), ("", ""), 0

    def plain(text: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(text, add_special_tokens=False).ids)

    prefix, suffix = plain(template.prefix), plain(template.suffix)
    layout = _Template(
        prefix=prefix,
        prefix_types=(0,) * len(prefix),
        query_type=0,
        middle=(),
        middle_types=(),
        doc_type=0,
        suffix=suffix,
        suffix_types=(0,) * len(suffix),
    )
    text, start, end = _render(template.document, {"document": ""}, "document")
    # Tokens of the document part around an empty document: the estimate of its frame's cost. A real document
    # may take a frame character into its first token (" Berlin"), so its frame may cost a token less; each
    # document's windows are sized by its own frame, this only sizes the reading.
    return layout, (text[:start], text[end:]), len(plain(text))


@dataclass(frozen=True)
class _QueryFit:
    ids: list[int]  # the query part as it goes into every window
    truncated: bool
    room: int  # tokens left for the document text


@dataclass(frozen=True)
class _DocTokens:
    """One document's text tokens (offsets into the document) and, for a template, its frame's tokens."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    full_len: int
    frame_head: tuple[int, ...] = ()
    frame_tail: tuple[int, ...] = ()


def _unframe(ids: list[int], offsets: list[tuple[int, int]], head_chars: int, text_chars: int) -> _DocTokens:
    """Split a framed document's tokens: those wholly inside the frame's text before/after it, and the rest.

    A token that straddles the boundary (ByteLevel's " Berlin" takes the frame's space) counts as text.
    """
    end = head_chars + text_chars
    lo = 0
    while lo < len(ids) and offsets[lo][1] <= head_chars:
        lo += 1
    hi = len(ids)
    while hi > lo and offsets[hi - 1][0] >= end:
        hi -= 1
    text_offsets = [
        (min(max(a - head_chars, 0), text_chars), min(max(b - head_chars, 0), text_chars))
        for a, b in offsets[lo:hi]
    ]
    return _DocTokens(list(ids[lo:hi]), text_offsets, hi - lo, tuple(ids[:lo]), tuple(ids[hi:]))


def _spans(n: int, room: int, max_chunks: int, overlap: int, direction: str) -> list[tuple[int, int]]:
    """The token ranges of a document's windows: one, cut on `direction`'s side, or overlapping chunks."""
    if n <= room:
        return [(0, n)]
    if max_chunks == 1:
        return [(n - room, n)] if direction == "left" else [(0, room)]
    spans: list[tuple[int, int]] = []
    start = 0
    while len(spans) < max_chunks:
        end = min(start + room, n)
        spans.append((start, end))
        if end >= n:
            break
        start += room - overlap
    return spans


def _render(fmt: str, values: dict[str, str], slot: str) -> tuple[str, int, int]:
    """`fmt.format(**values)` and the character span where `slot`'s value landed."""
    parts: list[str] = []
    span = (0, 0)
    size = 0
    for literal, name, _, _ in string.Formatter().parse(fmt):
        parts.append(literal)
        size += len(literal)
        if name is not None:
            value = values[name]
            if name == slot:
                span = (size, size + len(value))
            parts.append(value)
            size += len(value)
    return "".join(parts), span[0], span[1]


def _configured_pad_token(folder: Path) -> str | None:
    """`pad_token` of the folder's tokenizer_config.json (a string or an AddedToken object), if any."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("pad_token")
    except (ValueError, AttributeError) as exc:
        raise ModelRepositoryError(f"cannot read {path}: {exc}") from exc
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _pad_id(tokenizer: Tokenizer, pad_token: str | None, declared: int | None) -> int:
    """The configured pad token, else tokenizer.json's padding, else a known name; 0 as a last resort.

    Qwen's tokenizers pad with `<|endoftext|>` (their tokenizer_config.json says so); the pad id only fills
    masked positions, but a wrong one (an id past the vocabulary) would still fail the graph's gather.
    """
    if pad_token is not None and (tid := tokenizer.token_to_id(pad_token)) is not None:
        return tid
    if declared is not None:
        return int(declared)
    for name in PAD_TOKEN_NAMES:
        if (tid := tokenizer.token_to_id(name)) is not None:
            return tid
    return 0


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


def build_batch(
    windows: Sequence[Window], input_names: Sequence[str], pad_id: int, *, padding_side: str = "right"
) -> EncodedBatch:
    """Pad the windows to the longest of them and lay out the model's declared inputs (int64).

    `padding_side="left"` (decoders) puts the pads, with attention 0, before each row's tokens; position ids
    then count from each row's first real token, as an unpadded row's would.
    """
    rows = len(windows)
    width = max(len(w.ids) for w in windows)
    left = padding_side == "left"
    ids = np.full((rows, width), pad_id, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    types = np.zeros((rows, width), dtype=np.int64) if "token_type_ids" in input_names else None
    for r, w in enumerate(windows):
        n = len(w.ids)
        cols = slice(width - n, width) if left else slice(0, n)
        ids[r, cols] = w.ids
        mask[r, cols] = 1
        if types is not None:
            types[r, cols] = w.type_ids
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
            if left:
                inputs[name] = np.maximum(mask.cumsum(axis=1) - 1, 0)
            else:
                inputs[name] = np.broadcast_to(np.arange(width, dtype=np.int64), (rows, width)).copy()
        else:
            raise ModelRepositoryError(f"the model declares input {name!r}, which the gateway cannot build")
    return EncodedBatch(inputs, shared_prefix=0 if left else shared_head(windows))


def shared_head(windows: Sequence[Window]) -> int:
    """How many leading tokens all windows share as their declared head (0 when their heads differ)."""
    shared = min(w.shared for w in windows)
    if shared == 0:
        return 0
    head = windows[0].ids[:shared]
    return shared if all(w.ids[:shared] == head for w in windows[1:]) else 0


def check_inputs(input_names: Sequence[str]) -> None:
    """Fail at load time, not at the first request, on a model whose inputs we cannot build."""
    unknown = [name for name in input_names if name not in SUPPORTED_INPUTS]
    if unknown or "input_ids" not in input_names:
        raise ModelRepositoryError(
            f"unsupported model inputs {list(input_names)}: need input_ids, may use {sorted(SUPPORTED_INPUTS)}"
        )
