"""Pair-level score cache: overlapping requests reuse (query, document) scores of the same model version.

Keys are digests of (model version, pair parameters, query, document), so the cache holds 16 bytes of key
per entry instead of the texts. Bounded by entries (least recently used goes first) and by age (TTL).
Used from the event loop only, so it needs no lock.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedScore:
    logit: float
    chunk: tuple[int, int] | None
    tokens: int
    truncated: bool


class PairScoreCache:
    """LRU + TTL map from pair keys to scores; `max_entries` 0 disables it."""

    def __init__(
        self, max_entries: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._data: OrderedDict[bytes, tuple[float, CachedScore]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(namespace: str, query: str, document: str) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for part in (namespace, query, document):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.digest()

    def get_many(self, keys: Sequence[bytes]) -> list[CachedScore | None]:
        if not self.max_entries:
            self.misses += len(keys)
            return [None] * len(keys)
        now = self._clock()
        out: list[CachedScore | None] = []
        for key in keys:
            item = self._data.get(key)
            if item is None or item[0] < now:
                if item is not None:
                    del self._data[key]
                out.append(None)
                self.misses += 1
            else:
                self._data.move_to_end(key)
                out.append(item[1])
                self.hits += 1
        return out

    def put_many(self, items: Sequence[tuple[bytes, CachedScore]]) -> None:
        if not self.max_entries:
            return
        expires = self._clock() + self.ttl_s
        for key, value in items:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
