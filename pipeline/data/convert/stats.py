"""Mergeable per-feature statistics of converted rows (the manifest's ``feature_stats``).

    .venv/bin/pytest tests/test_convert.py -q -k statistics

Each parsed block is summarised once, where it is parsed (:func:`summarise`); a split's
statistics merge the summaries of its whole pieces (Chan et al.), so only the pieces a split
boundary cuts are decoded again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core import schema


class Moments:
    """Mergeable per-feature count/mean/M2/min/max (Chan et al.), float64."""

    def __init__(self, width: int = schema.NUM_FEATURES):
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)

    def add(self, x: np.ndarray) -> None:
        """Fold in the rows of ``x`` (float32 [n, width])."""
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
        """Fold in another set of moments (of disjoint rows)."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.n / n
        self.m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / n
        self.n = n
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what travels between Beam steps)."""
        return {"n": self.n, "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "min": self.min.tolist(), "max": self.max.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Moments:
        """Inverse of :meth:`to_dict`."""
        m = cls(len(d["mean"]))
        m.n = d["n"]
        m.mean, m.m2 = np.asarray(d["mean"]), np.asarray(d["m2"])
        m.min, m.max = np.asarray(d["min"]), np.asarray(d["max"])
        return m


def summarise(labels: np.ndarray, features: np.ndarray) -> dict[str, Any]:
    """Summarise one block of good rows.

    Args:
        labels: float32 [k] (0.0/1.0).
        features: float32 [k, 28].

    Returns:
        ``{"signal": number of label-1 rows, "moments": Moments(features).to_dict()}``.
    """
    moments = Moments()
    moments.add(features)
    return {"signal": int((labels == 1).sum()), "moments": moments.to_dict()}


def feature_stats(moments: Moments) -> dict[str, dict[str, float]]:
    """Per-feature ``count/mean/std/min/max`` for the manifest, keyed by feature name.

    Args:
        moments: the training split's moments.

    Returns:
        ``{feature name: {"count", "mean", "std", "min", "max"}}`` (population std).
    """
    std = np.sqrt(moments.m2 / max(1, moments.n))
    return {name: {"count": moments.n, "mean": float(moments.mean[j]), "std": float(std[j]),
                   "min": float(moments.min[j]), "max": float(moments.max[j])}
            for j, name in enumerate(schema.FEATURES)}
