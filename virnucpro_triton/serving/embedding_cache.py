"""A bounded, content-addressed cache of pooled embeddings: work not done twice.

Keyed by the embedder's input itself (a frame's nucleotides for `dnabert_s`, its protein for
`esm2`), so an exact duplicate read and a read's reverse complement (the same six frames with F
and R swapped, docs/performance.md) are embedded once. It lives in the embedder entry, one per
instance (one per GPU), so every pipeline instance and any direct client on that GPU share it;
the pipeline runs two instances per GPU and a cache of its own in each would miss half of the
duplicates that arrive in another request.

A hit returns the vector computed for that sequence earlier, in another batch: equal to a fresh
computation up to the last float32 bits that batch composition moves anyway (sequence_embedders.py).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from virnucpro_triton.repository import EMBEDDING_CACHE_PARAMETER

# Bytes an entry costs beyond its key's characters and its vector's data (dict and OrderedDict
# slots, the str and ndarray headers), rounded up from what tracemalloc counts on CPython 3.11.
ENTRY_OVERHEAD = 256


def cache_bytes_of(value: str) -> int:
    """The cache size of an entry's EMBEDDING_CACHE_PARAMETER `value`, in bytes."""
    try:
        size = int(value)
    except ValueError:
        size = -1
    if size < 0:
        raise ValueError(
            f"parameter {EMBEDDING_CACHE_PARAMETER} must be a number of bytes >= 0 (0 = off), "
            f"not {value!r}"
        )
    return size


class EmbeddingCache:
    """Least recently used vectors by sequence, within `max_bytes` (0: nothing is kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes_held = 0
        self.hits = 0  # rows not computed: held already, or a repeat within the same call
        self.misses = 0  # rows computed
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vectors)

    def embed(
        self, sequences: Sequence[str], compute: Callable[[list[str]], np.ndarray]
    ) -> np.ndarray:
        """Vectors of `sequences` in order; those not held are computed in one `compute` call
        of their distinct members. Off (0 bytes), every row goes to `compute` as before."""
        if self.max_bytes == 0 or not sequences:
            return compute(list(sequences))
        held = {s: v for s in dict.fromkeys(sequences) if (v := self._get(s)) is not None}
        wanted = [s for s in dict.fromkeys(sequences) if s not in held]
        if wanted:
            for sequence, vector in zip(wanted, compute(wanted), strict=True):
                held[sequence] = vector
                self._put(sequence, vector)
        self.misses += len(wanted)
        self.hits += len(sequences) - len(wanted)
        return np.stack([held[s] for s in sequences])

    def _get(self, sequence: str) -> np.ndarray | None:
        vector = self._vectors.get(sequence)
        if vector is not None:
            self._vectors.move_to_end(sequence)
        return vector

    def _put(self, sequence: str, vector: np.ndarray) -> None:
        vector = vector.copy()  # not a view: it would keep the whole batch's array alive
        size = _size(sequence, vector)
        if size > self.max_bytes:
            return
        self._vectors[sequence] = vector
        self.bytes_held += size
        while self.bytes_held > self.max_bytes:
            old, old_vector = self._vectors.popitem(last=False)
            self.bytes_held -= _size(old, old_vector)


def _size(sequence: str, vector: np.ndarray) -> int:
    return len(sequence) + vector.nbytes + ENTRY_OVERHEAD


_METRIC = re.compile(
    r'virnucpro_embedding_cache_(hits|misses|bytes)(?:_total)?\{[^}]*model="([^"]+)"[^}]*\} (\S+)'
)


def read_cache_metrics(text: str) -> dict[str, dict[str, float]]:
    """{entry: {"hits": n, "misses": n, "bytes": n}} from a Triton metrics page (/metrics)."""
    found: dict[str, dict[str, float]] = {}
    for match in map(_METRIC.fullmatch, text.splitlines()):
        if match:
            what, model, value = match.groups()
            found.setdefault(model, {})[what] = float(value)
    return found


class CacheMetrics:
    """The cache's counts as Triton custom metrics, on the server's metrics port (/metrics):
    virnucpro_embedding_cache_{hits,misses}_total and _bytes, labelled by entry."""

    def __init__(self, model: str) -> None:
        import triton_python_backend_utils as pb_utils  # only inside a Triton stub

        family = pb_utils.MetricFamily
        # The families must outlive their metrics (Triton refuses to update an orphan).
        self._families = [
            family(name=f"virnucpro_embedding_cache_{name}", description=text, kind=kind)
            for name, text, kind in (
                ("hits_total", "Rows not computed: held, or repeated", family.COUNTER),
                ("misses_total", "Rows computed", family.COUNTER),
                ("bytes", "Bytes held (limit: embedding_cache_bytes)", family.GAUGE),
            )
        ]
        self._hits, self._misses, self._bytes = (
            f.Metric(labels={"model": model}) for f in self._families
        )
        self._reported = (0, 0)

    def report(self, cache: EmbeddingCache) -> None:
        hits, misses = self._reported
        self._hits.increment(cache.hits - hits)
        self._misses.increment(cache.misses - misses)
        self._bytes.set(cache.bytes_held)
        self._reported = (cache.hits, cache.misses)
