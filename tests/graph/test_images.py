"""The run's image caches: least recently used goes first, and a value is made only on a miss."""

from __future__ import annotations

import threading

from pagelens.graph.images import LRU


def test_the_least_recently_used_item_goes_first_and_hits_make_nothing():
    cache: LRU[str, int] = LRU(2)
    made = []

    def make(key, value):
        return lambda: made.append(key) or value

    assert cache.get("a", make("a", 1)) == 1 and cache.get("b", make("b", 2)) == 2
    assert cache.get("a", make("a", 99)) == 1  # a hit: a is now the most recently used
    cache.put("c", 3)  # evicts b, the least recently used
    assert cache.get("b", make("b", 20)) == 20 and cache.get("a", make("a", 10)) == 10  # b, made again, pushed a out
    assert made == ["a", "b", "b", "a"]


def test_threads_share_one_cache():
    cache: LRU[int, int] = LRU(64)
    errors = []

    def work(offset):
        try:
            for i in range(2000):
                key = (i + offset) % 100
                assert cache.get(key, lambda key=key: key * 2) == key * 2
        except AssertionError as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
