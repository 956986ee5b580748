"""The converter's statistics: a summary per parsed block, merged per split into the manifest.

    .venv/bin/pytest tests/test_convert.py -q -k statistics

Each parsed block is summarised once, where it is parsed (:func:`summarise`, in the read
step's helper thread): a :class:`pipeline.data.stats.SplitStats` — per class moments and
fixed-edge histograms of every feature. A split's statistics merge the summaries of its whole
pieces, so only the pieces a split boundary cuts are decoded again; nothing reads the source
twice. :func:`manifest_statistics` gives the manifest's ``feature_stats`` (training split,
count/mean/std/min/max) and ``statistics`` (every split, overall and per class, histograms,
signal fraction, bad-row rate; the layout is :mod:`pipeline.data.stats`'s).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core import schema
from pipeline.data.stats import Moments, SplitStats, dataset_statistics

__all__ = ["Moments", "SplitStats", "feature_stats", "manifest_statistics", "summarise"]


def summarise(labels: np.ndarray, features: np.ndarray) -> dict[str, Any]:
    """Summarise one block of good rows.

    Args:
        labels: float32 [k] (0.0/1.0).
        features: float32 [k, 28].

    Returns:
        ``{"signal": number of label-1 rows, "stats": SplitStats of the block, as a dict}``.
    """
    block = SplitStats()
    block.add(labels, features)
    return {"signal": block.signal, "stats": block.to_dict()}


def feature_stats(moments: Moments) -> dict[str, dict[str, float]]:
    """Per-feature ``count/mean/std/min/max`` for the manifest, keyed by feature name.

    Args:
        moments: the training split's moments (all rows).

    Returns:
        ``{feature name: {"count", "mean", "std", "min", "max"}}`` (population std).
    """
    std = moments.std()
    return {name: {"count": moments.n, "mean": float(moments.mean[j]), "std": float(std[j]),
                   "min": float(moments.min[j]), "max": float(moments.max[j])}
            for j, name in enumerate(schema.FEATURES)}


def manifest_statistics(splits: dict[str, dict[str, Any]], bad_rows: int,
                        source_rows: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's ``feature_stats`` and ``statistics`` from the per-split results.

    Args:
        splits: split name → ``SplitStats.to_dict()`` of all its rows.
        bad_rows: rows the converter skipped.
        source_rows: lines of the source.

    Returns:
        ``(feature_stats, statistics)``.
    """
    merged = {split: SplitStats.from_dict(d) for split, d in splits.items()}
    return (feature_stats(merged["training"].overall()),
            dataset_statistics(merged, bad_rows, source_rows))
