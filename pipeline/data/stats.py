"""Dataset statistics that two datasets can be compared by: moments and fixed-edge histograms.

    python -c "from pipeline.data import stats, synth; y, x = synth.generate(10000, seed=1); \
s = stats.SplitStats(); s.add(y, x); print(s.describe()['signal']['m_bb']['histogram'])"

The manifest's ``statistics`` section is defined here, between its writer and its reader
(like :mod:`pipeline.data.records` for the record bytes): the converter
(:mod:`pipeline.data.convert.stats`) keeps one :class:`SplitStats` per block of rows it parses
— in the same pass, vectorised numpy — and merges them per split, so statistics never need a
second read of the data; :mod:`pipeline.data.validate` compares two manifests. No Beam here.
The accumulator is pure and mergeable in any order and grouping (a block, a shard, a worker's
share), which is all a parallel converter needs. For each class (background = label 0, signal
= label 1) it holds, per feature:

* count, mean, M2 (sum of squared deviations), min and max, merged exactly (Chan et al.);
* a histogram on **fixed bin edges** that depend only on the feature's kind
  (:data:`pipeline.core.schema.FEATURE_KINDS`), never on the data, so the histograms of any two
  datasets line up bin for bin. The overall statistics are the two classes merged.

Bins (:data:`BINNING`; bin 0 is everything below the first edge, the last bin everything at or
above the last edge, so every value is counted):

* ``energy`` (pT, missing energy, masses; >= 0, mean ~1): 4 bins per octave from 2^-5 to 2^4,
  edges ``2^e · {1, 1.25, 1.5, 1.75}`` — read straight from the float32 bit pattern (exponent
  and the top two mantissa bits), exact and without a logarithm;
* ``eta`` [-3, 3], ``phi`` [-2, 2], ``btag`` [-0.125, 3.375] (the tag levels fall mid-bin):
  width 0.25.

:func:`dataset_statistics` assembles the manifest's ``statistics`` section from the per-split
accumulators; :mod:`pipeline.data.validate` compares two of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core import schema

STATISTICS_VERSION = 1
CLASSES: tuple[str, ...] = ("background", "signal")  # index = label
SCOPES: tuple[str, ...] = ("overall", "signal", "background")

_OCTAVE_BINS = 4  # energy bins per octave: the top two mantissa bits
_ENERGY_EXP = (-5, 4)  # 2^-5 = 0.03125 ... 2^4 = 16
_WIDTH = 0.25  # linear kinds
_GRID = 8  # every linear edge is a multiple of 1/8 (a power of two: x * 8 is exact)
# kind → ("octave", lowest exponent, highest exponent) or ("linear", lo, hi)
BINNING: dict[str, tuple[str, float, float]] = {
    "energy": ("octave", *_ENERGY_EXP),
    "eta": ("linear", -3.0, 3.0),
    "phi": ("linear", -2.0, 2.0),
    "btag": ("linear", -0.125, 3.375),
}
_MANTISSA_SHIFT = 23 - 2  # keep sign, exponent and 2 mantissa bits of a float32


def _regular_bins(kind: str) -> int:
    scale, lo, hi = BINNING[kind]
    if scale == "octave":
        return int(hi - lo) * _OCTAVE_BINS
    return round((hi - lo) / _WIDTH)


def bin_edges(kind: str) -> np.ndarray:
    """The fixed edges of one kind's histogram (float64, increasing).

    Args:
        kind: a value of :data:`pipeline.core.schema.FEATURE_KINDS`.

    Returns:
        ``k + 1`` edges of the ``k`` regular bins; the histogram has ``k + 2`` bins (below
        the first edge, the regular bins, at or above the last edge).
    """
    scale, lo, hi = BINNING[kind]
    if scale == "octave":
        octaves = np.arange(int(lo), int(hi), dtype=np.float64)
        steps = 1.0 + np.arange(_OCTAVE_BINS) / _OCTAVE_BINS
        return np.append((2.0 ** octaves[:, None] * steps[None, :]).ravel(), 2.0 ** hi)
    return lo + _WIDTH * np.arange(_regular_bins(kind) + 1, dtype=np.float64)


_KINDS = [schema.FEATURE_KINDS[name] for name in schema.FEATURES]
_BINS = np.array([_regular_bins(k) + 2 for k in _KINDS])  # per feature, with under/overflow
_OFFSETS = np.concatenate([[0], np.cumsum(_BINS)[:-1]])
TOTAL_BINS = int(_BINS.sum())
_ENERGY_BASE = int(np.array([2.0 ** _ENERGY_EXP[0]], np.float32).view(np.int32)[0] >> _MANTISSA_SHIFT)


def _bin_index(column: np.ndarray, j: int) -> np.ndarray:
    """Histogram bin (0 … bins-1) of every value of feature ``j`` (float32, contiguous)."""
    kind = _KINDS[j]
    scale, lo, _ = BINNING[kind]
    if scale == "octave":
        # For float32 >= 0 the bit pattern is monotonic in the value; negative values have
        # the sign bit set, so they come out negative and land in the underflow bin.
        index = column.view(np.int32) >> _MANTISSA_SHIFT
        index -= _ENERGY_BASE - 1
    else:
        # Whole multiples of 1/8 only (every edge is one): exact float32 integer arithmetic,
        # so a value exactly on an edge always lands in the bin above it.
        t = column * np.float32(_GRID)
        np.floor(t, out=t)
        t -= np.float32(lo * _GRID)
        t *= np.float32(1 / (_WIDTH * _GRID))
        np.floor(t, out=t)
        t += 1
        np.clip(t, 0, _BINS[j] - 1, out=t)
        index = t.astype(np.int32)
    np.clip(index, 0, _BINS[j] - 1, out=index)
    return index


def _histograms(labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """int64 [2, TOTAL_BINS]: per class, every feature's bins laid end to end."""
    columns = np.ascontiguousarray(features.T)  # one copy; every column then fits in cache
    label = labels.astype(np.int32)
    out = np.empty(2 * TOTAL_BINS, np.int64)
    for j in range(schema.NUM_FEATURES):
        index = _bin_index(columns[j], j)
        index <<= 1  # interleave the class: bin*2 + label
        index += label
        start = 2 * int(_OFFSETS[j])
        out[start:start + 2 * int(_BINS[j])] = np.bincount(index, minlength=2 * int(_BINS[j]))
    return out.reshape(-1, 2).T


class Moments:
    """Mergeable per-feature count/mean/M2/min/max (Chan et al.), float64."""

    def __init__(self, width: int = schema.NUM_FEATURES):
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)

    def add(self, x: np.ndarray) -> None:
        """Add the rows of a float32 [n, width] block."""
        if x.shape[0] == 0:
            return
        other = Moments(x.shape[1])
        other.n = x.shape[0]
        # float64 accumulators over the float32 block, without a float64 copy of it; the
        # deviations from the float32-rounded mean are corrected exactly for the rounding.
        other.mean = x.mean(axis=0, dtype=np.float64)
        mean32 = other.mean.astype(x.dtype)
        dev = x - mean32
        np.square(dev, out=dev)
        shift = other.mean - mean32.astype(np.float64)
        other.m2 = np.maximum(dev.sum(axis=0, dtype=np.float64) - other.n * shift**2, 0.0)
        other.min = x.min(axis=0).astype(np.float64)
        other.max = x.max(axis=0).astype(np.float64)
        self.merge(other)

    def merge(self, other: Moments) -> None:
        """Add another accumulator's rows."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.n / n
        self.m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / n
        self.n = n
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    def std(self) -> np.ndarray:
        """Population standard deviation per feature."""
        return np.sqrt(self.m2 / max(1, self.n))

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (JSON and pickle friendly)."""
        return {"n": self.n, "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "min": self.min.tolist(), "max": self.max.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Moments:
        """Rebuild from :meth:`to_dict`."""
        m = cls(len(d["mean"]))
        m.n = d["n"]
        m.mean, m.m2 = np.asarray(d["mean"], np.float64), np.asarray(d["m2"], np.float64)
        m.min, m.max = np.asarray(d["min"], np.float64), np.asarray(d["max"], np.float64)
        return m


class SplitStats:
    """Statistics of a set of rows, per class: :class:`Moments` and fixed-edge histograms.

    ``add`` a block, ``merge`` another accumulator (any order, any grouping gives the same
    counts and, up to float rounding, the same moments); ``to_dict``/``from_dict`` carry it
    between pipeline steps or workers; ``describe`` gives the manifest's layout.
    """

    def __init__(self) -> None:
        self.classes = (Moments(), Moments())  # index = label: background, signal
        self.histograms = np.zeros((2, TOTAL_BINS), np.int64)

    @property
    def rows(self) -> int:
        """Rows added so far."""
        return self.classes[0].n + self.classes[1].n

    @property
    def signal(self) -> int:
        """Signal rows (label 1) added so far."""
        return self.classes[1].n

    def add(self, labels: np.ndarray, features: np.ndarray) -> None:
        """Add a block of good rows.

        Args:
            labels: float32 [n] of 0.0 / 1.0.
            features: float32 [n, 28].
        """
        if labels.shape[0] == 0:
            return
        signal = labels == 1
        self.classes[1].add(features[signal])
        self.classes[0].add(features[~signal])
        self.histograms += _histograms(labels, features)

    def merge(self, other: SplitStats) -> None:
        """Add another accumulator's rows."""
        for mine, theirs in zip(self.classes, other.classes, strict=True):
            mine.merge(theirs)
        self.histograms += other.histograms

    def overall(self) -> Moments:
        """The moments of all rows (the two classes merged)."""
        merged = Moments()
        for moments in self.classes:
            merged.merge(moments)
        return merged

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (JSON and pickle friendly)."""
        return {"classes": [m.to_dict() for m in self.classes],
                "histograms": self.histograms.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitStats:
        """Rebuild from :meth:`to_dict`."""
        out = cls()
        out.classes = tuple(Moments.from_dict(m) for m in d["classes"])  # type: ignore[assignment]
        out.histograms = np.asarray(d["histograms"], np.int64).reshape(2, TOTAL_BINS)
        return out

    def describe(self) -> dict[str, Any]:
        """The manifest layout of one split.

        Returns:
            ``{"rows", "signal", "signal_fraction", "overall" | "signal" | "background":
            {feature: {"count", "mean", "std", "min", "max", "histogram": [counts]}}}``
            (min/max are ``None`` for a class with no rows).
        """
        scopes = {"overall": (self.overall(), self.histograms.sum(axis=0)),
                  "signal": (self.classes[1], self.histograms[1]),
                  "background": (self.classes[0], self.histograms[0])}
        out: dict[str, Any] = {"rows": self.rows, "signal": self.signal,
                               "signal_fraction": self.signal / self.rows if self.rows else None}
        for scope, (moments, counts) in scopes.items():
            std = moments.std()
            out[scope] = {
                name: {"count": moments.n, "mean": float(moments.mean[j]), "std": float(std[j]),
                       "min": float(moments.min[j]) if moments.n else None,
                       "max": float(moments.max[j]) if moments.n else None,
                       "histogram": counts[_OFFSETS[j]:_OFFSETS[j] + _BINS[j]].tolist()}
                for j, name in enumerate(schema.FEATURES)}
        return out


def dataset_statistics(splits: dict[str, SplitStats], bad_rows: int, source_rows: int) -> dict[str, Any]:
    """The manifest's ``statistics`` section.

    Args:
        splits: one accumulator per split name.
        bad_rows: rows the converter skipped.
        source_rows: lines of the source (good and bad).

    Returns:
        ``{"version", "binning", "edges": {feature: [...]}, "bad_rows", "source_rows",
        "bad_row_rate", "splits": {split: SplitStats.describe()}}``.
    """
    return {
        "version": STATISTICS_VERSION,
        "binning": "fixed per feature kind (pipeline.data.stats.BINNING); bin 0 counts values "
                   "below edges[0], bin i values in [edges[i-1], edges[i]), the last bin values "
                   ">= edges[-1]",
        "edges": {name: bin_edges(schema.FEATURE_KINDS[name]).tolist() for name in schema.FEATURES},
        "bad_rows": bad_rows,
        "source_rows": source_rows,
        "bad_row_rate": bad_rows / source_rows if source_rows else 0.0,
        "splits": {split: s.describe() for split, s in splits.items()},
    }
