"""The shared prompt computed once: a decoder reranker's head run once per request, its key/value cache reused
for every document (vLLM's prefix caching), on ONNX Runtime.

The graph is the exporter's cached decoder graph (export/decoder_prefix.py): `input_ids`, `attention_mask`,
`past_key_values.{i}.key|value` in; `logits` and `present.{i}.key|value` out. A batch whose rows all begin
with the same `shared_prefix` tokens (the template's prefix and the query part, `EncodedBatch.shared_prefix`)
is scored in two steps: the head alone (batch 1, empty past) gives its cache, kept in a small LRU keyed by
the head's ids, so the request's next batches find it; then each row's own tokens (document part + suffix,
without its padding) after that cache. ONNX Runtime's CPU GroupQueryAttention takes several new tokens after
a past only for batch 1, so rows run one at a time, which on the CPU costs nothing (no padding either).

A batch that shares no head (a document-first template, rows of several queries, a split batch) runs the
full computation: the same graph with an empty past.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from gateway.backends.onnx_local import LaneShare, OnnxScorer, SessionLike
from gateway.domain import EncodedBatch

# Heads kept per scorer: a request's batches run one after another, so one is enough for a request; a few
# more serve concurrent requests. One head costs layers x 2 x kv_heads x head_dim x tokens x 4 bytes (a
# Qwen3-0.6B head of 80 tokens: 18 MiB).
HEAD_CACHE_ENTRIES = 4
# A head shorter than this is not worth a run of its own.
MIN_SHARED_TOKENS = 8


@dataclass(frozen=True)
class KvLayout:
    """The cache inputs of the graph, read from the session: names in layer order and one row's shape."""

    past: tuple[str, ...]
    present: tuple[str, ...]
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, session: SessionLike) -> KvLayout:
        past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
        present = tuple(o.name for o in session.get_outputs() if o.name.startswith("present."))
        if not past or len(past) != len(present):
            raise ValueError("the graph has no key/value cache (past_key_values.* / present.*)")
        shape = past[0].shape
        return cls(tuple(i.name for i in past), present, int(shape[1]), int(shape[3]))

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        zeros = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        return {name: zeros for name in self.past}


class PrefixReuseScorer(OnnxScorer):
    """Scorer over a cached decoder graph: the head once per request, then each document after it (the loader
    sets its stage's `per_query_batches`, so that every batch holds one query's windows and shares a head).
    The rest (failures, metrics, the CPU lane's share of its model) is OnnxScorer's."""

    def __init__(
        self,
        session: SessionLike,
        *,
        name: str,
        lane: LaneShare | None = None,
        max_batch_size: int | None = None,
        head_entries: int = HEAD_CACHE_ENTRIES,
        model: str = "",
    ) -> None:
        super().__init__(session, name=name, lane=lane, max_batch_size=max_batch_size, model=model)
        self.layout = KvLayout.of(session)
        self.input_names = tuple(n for n in self.input_names if not n.startswith("past_key_values."))
        self._heads: OrderedDict[bytes, list[np.ndarray]] = OrderedDict()
        self._head_entries = head_entries
        # The lane may run two batches of one query at once: the first computes the head, the other waits
        # for it and reads it from the LRU (never twice; the LRU is not thread-safe on its own either).
        self._head_lock = threading.Lock()
        self.head_runs = 0  # heads computed (the rest came from the LRU): what the tests and /info read

    def _infer(self, batch: EncodedBatch) -> np.ndarray:
        return self._with_head(batch) if batch.shared_prefix >= MIN_SHARED_TOKENS else self._full(batch)

    def _full(self, batch: EncodedBatch) -> np.ndarray:
        feed = {name: batch.inputs[name] for name in self.input_names}
        feed.update(self.layout.empty(batch.size))
        out = self.session.run(["logits"], feed)[0]
        return np.asarray(out, dtype=np.float32).reshape(batch.size, -1)[:, 0]

    def _with_head(self, batch: EncodedBatch) -> np.ndarray:
        ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        shared = batch.shared_prefix
        past = dict(zip(self.layout.past, self.head(ids[0, :shared]), strict=True))
        logits = np.empty(batch.size, dtype=np.float32)
        for row in range(batch.size):
            end = int(mask[row].sum())  # right padding: the row's real tokens are [0, end)
            feed = {
                "input_ids": ids[row : row + 1, shared:end],
                "attention_mask": np.ones((1, end - shared), dtype=np.int64),
                **past,
            }
            logits[row] = float(np.asarray(self.session.run(["logits"], feed)[0]).reshape(-1)[0])
        return logits

    def head(self, ids: np.ndarray) -> list[np.ndarray]:
        """The head's key/value cache (batch 1), from the LRU or computed now."""
        key = np.ascontiguousarray(ids, dtype=np.int64).tobytes()
        with self._head_lock:
            cached = self._heads.get(key)
            if cached is not None:
                self._heads.move_to_end(key)
                return cached
            row = np.ascontiguousarray(ids, dtype=np.int64)[None, :]
            feed = {"input_ids": row, "attention_mask": np.ones_like(row), **self.layout.empty(1)}
            present = self.session.run(list(self.layout.present), feed)
            self.head_runs += 1
            self._heads[key] = present
            while len(self._heads) > self._head_entries:
                self._heads.popitem(last=False)
            return present

    async def close(self) -> None:
        self._heads.clear()
        await super().close()

    def info(self) -> dict[str, object]:
        return {"name": self.name, "prefix_reuse": True, "heads_computed": self.head_runs}
