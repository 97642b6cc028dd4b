"""A small TTL + LRU verdict cache.

The guard decodes greedily, so the same prompt gets the same verdict; caching it (reasoning included, unlike the
built-in rail) saves a model call for repeated turns such as retries and regenerated answers. Errors are never cached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

from nemo_csr_rail.options import DEFAULT_CACHE_MAXSIZE, DEFAULT_CACHE_TTL_S

V = TypeVar("V")


class TTLCache(Generic[V]):
    def __init__(self, maxsize: int = DEFAULT_CACHE_MAXSIZE, ttl_s: float = DEFAULT_CACHE_TTL_S) -> None:
        self.maxsize, self.ttl_s = maxsize, ttl_s
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str) -> V | None:
        item = self._data.get(key)
        if item is None or item[0] < time.monotonic():
            if item is not None:
                del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return item[1]

    def put(self, key: str, value: V) -> None:
        self._data[key] = (time.monotonic() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class SharedTTLCache(TTLCache[V]):
    """A :class:`TTLCache` safe to share between threads: a runtime serves every event loop of its process (NeMo's
    synchronous API runs its own loop per call), and an expiring or evicted key must not surface as a KeyError."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_MAXSIZE, ttl_s: float = DEFAULT_CACHE_TTL_S) -> None:
        super().__init__(maxsize, ttl_s)
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            return super().get(key)

    def put(self, key: str, value: V) -> None:
        with self._lock:
            super().put(key, value)
