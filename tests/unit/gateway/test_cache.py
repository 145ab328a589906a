from __future__ import annotations

from gateway.cache import CachedScore, PairScoreCache

SCORE = CachedScore(logit=1.0, chunk=None, tokens=10, truncated=False)


def test_lru_bound_and_hit_counts():
    cache = PairScoreCache(2, 60)
    keys = [PairScoreCache.key("v1", "q", d) for d in "abc"]
    cache.put_many([(k, SCORE) for k in keys])
    assert len(cache) == 2
    assert cache.get_many(keys) == [None, SCORE, SCORE]
    assert (cache.hits, cache.misses) == (2, 1)
    assert abs(cache.hit_ratio - 2 / 3) < 1e-9


def test_ttl_expires_entries():
    now = [0.0]
    cache = PairScoreCache(10, 5, clock=lambda: now[0])
    key = PairScoreCache.key("v1", "q", "d")
    cache.put_many([(key, SCORE)])
    now[0] = 4.9
    assert cache.get_many([key]) == [SCORE]
    now[0] = 5.1
    assert cache.get_many([key]) == [None]
    assert len(cache) == 0


def test_keys_separate_model_versions_and_fields():
    assert PairScoreCache.key("v1", "q", "d") != PairScoreCache.key("v2", "q", "d")
    assert PairScoreCache.key("v1", "ab", "c") != PairScoreCache.key("v1", "a", "bc")


def test_size_zero_disables():
    cache = PairScoreCache(0, 5)
    key = PairScoreCache.key("v", "q", "d")
    cache.put_many([(key, SCORE)])
    assert cache.get_many([key]) == [None]
