"""``DecodedFrameCache``: whole videos of decoded frames, least recently used evicted past a byte budget.

One cache lives in each ``pipelines.train_data.SampleBuilder`` actor. An entry is keyed by
``(source name, video id, (height, width))`` and holds every frame of that video decoded at that output size
as one read-only (T, H, W, 3) uint8 array; samples index it instead of decoding their few frames again.

- ``fetch(key, nbytes, decode)``: the entry when held (a hit); else (a miss) least recently used entries are
  evicted until ``nbytes`` more fit in the budget, then ``decode()`` makes the entry, which is kept. An entry
  of more than the whole budget is never decoded nor kept (``None``, counted as ``oversize``): the caller
  reads those frames without the cache, and nothing already held is evicted for it (no thrashing).
- Eviction happens before the new entry is decoded, so the arrays held never exceed the budget, even while a
  miss is being decoded (the decode's own working memory comes on top).
- ``stats()``: hits, misses, evictions, oversize requests, entries and bytes held.

Pure Python and numpy: no Ray, no decoder; what an entry holds is up to ``decode``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CacheKey = tuple[str, str, tuple[int, int]]
"""``(source name, video id, (height, width))``: one video decoded at one output size."""


@dataclass(frozen=True)
class CacheStats:
    """Counters of a ``DecodedFrameCache`` since it was made."""

    hits: int
    misses: int
    evictions: int
    oversize: int
    entries: int
    bytes_held: int


class DecodedFrameCache:
    """Whole decoded videos by ``CacheKey``, at most ``budget_bytes`` of them, least recently used evicted."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 1:
            raise ValueError(f"a frame cache needs a budget of at least 1 byte, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._bytes_held = 0
        self._hits = self._misses = self._evictions = self._oversize = 0

    def fetch(self, key: CacheKey, nbytes: int, decode: Callable[[], np.ndarray]) -> np.ndarray | None:
        """The held frames of ``key``, decoding and keeping them on a miss; ``None`` (nothing decoded) when an
        entry of ``nbytes`` would exceed the whole budget. ``decode`` must return a uint8 array of ``nbytes``."""
        held = self._entries.get(key)
        if held is not None:
            self._entries.move_to_end(key)
            self._hits += 1
            return held
        if nbytes > self.budget_bytes:
            self._oversize += 1
            return None
        self._misses += 1
        while self._bytes_held + nbytes > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes_held -= evicted.nbytes
            self._evictions += 1
        frames = decode()
        if frames.dtype != np.uint8 or frames.nbytes != nbytes:
            raise ValueError(f"frame cache entry {key}: decoded {frames.nbytes} bytes of {frames.dtype}, "
                             f"{nbytes} bytes of uint8 announced")
        frames.flags.writeable = False  # samples index copies out of it; nobody writes into a held video
        self._entries[key] = frames
        self._bytes_held += nbytes
        return frames

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._evictions, self._oversize, len(self._entries),
                          self._bytes_held)
