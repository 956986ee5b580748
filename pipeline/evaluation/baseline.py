"""The physicists' reference: gradient-boosted decision trees (LightGBM, histogram method).

    python -c "import numpy as np; from pipeline.evaluation import baseline; \
from pipeline.core.config import load_config; x=np.random.rand(2000,28).astype('f4'); \
y=(x[:,0]>.5).astype('f4'); print(baseline.fit(x, y, load_config('sample').evaluate, 'low').describe())"

A BDT on the same features is what the deep model has to beat (Baldi et al. 2014 compare
against one): the columns of ``model.features`` (all 28, the 21 low-level or the 7 high-level,
:data:`pipeline.core.schema.FEATURE_SETS`), selected by the baseline itself so callers always
pass full [N, 28] rows. It is trained on ``evaluate.baseline_rows`` rows of the *training* split —
the deep model's own training data — and evaluated on the same test rows, so the two AUCs
in the report are directly comparable. LightGBM bins every feature into a histogram
(``max_bin``) once, which keeps a million-row fit to about a minute on two cores.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core import schema
from pipeline.core.config import EvaluateConfig
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


class BaselineError(PipelineError):
    """The baseline could not be trained (e.g. an empty or one-class sample)."""


@dataclass(frozen=True)
class Baseline:
    """A trained BDT and how it was trained.

    Attributes:
        booster: the ``lightgbm.Booster``.
        train_rows: rows it was trained on.
        trees: boosting rounds.
        fit_seconds: wall time of the fit.
        num_threads: LightGBM threads used for fitting and prediction.
        feature_set: which columns it reads (``all``, ``low``, ``high``).
    """

    booster: Any
    train_rows: int
    trees: int
    fit_seconds: float
    num_threads: int = 1
    feature_set: str = "all"

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Signal probabilities for float32 [N, 28] rows (all features), as float64 [N]."""
        return self.booster.predict(select(features, self.feature_set), num_threads=self.num_threads)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the report."""
        return {"model": "LightGBM gradient-boosted trees (histogram method)",
                "feature_set": self.feature_set, "features": len(schema.FEATURE_SETS[self.feature_set]),
                "train_rows": self.train_rows, "trees": self.trees,
                "fit_seconds": round(self.fit_seconds, 2), "threads": self.num_threads,
                "params": {k: v for k, v in PARAMS.items() if k != "verbosity"}}


# Untuned BDT settings; num_leaves 255 and learning_rate 0.1 are those of LightGBM's own
# HIGGS experiment (docs/Experiments.rst in microsoft/LightGBM).
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.1,
    "num_leaves": 255,
    "min_data_in_leaf": 100,
    "max_bin": 255,
    "feature_fraction": 1.0,
    "verbosity": -1,
    "seed": 0,
    "deterministic": True,
}


def threads(requested: int = 0) -> int:
    """LightGBM threads: ``requested`` if > 0, else one per usable core minus one.

    Leaving a core free matters: LightGBM's OpenMP barriers wait on every thread, so one
    thread descheduled by another busy process stalls them all. On this shared 2-core
    machine 100 trees on 100k rows took 9.7 s with 1 thread and 160 s with 2.
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def select(features: np.ndarray, feature_set: str) -> np.ndarray:
    """The columns of ``feature_set`` from [N, 28] rows (the rows themselves for ``all``).

    Raises:
        BaselineError: the rows do not have 28 columns.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != schema.NUM_FEATURES:
        raise BaselineError(f"the baseline reads rows of {schema.NUM_FEATURES} features, got shape "
                            f"{features.shape}")
    if feature_set == "all":
        return features
    return features[:, list(schema.feature_columns(feature_set))]


def fit(features: np.ndarray, labels: np.ndarray, cfg: EvaluateConfig,
        feature_set: str = "all") -> Baseline:
    """Train the BDT on ``features``/``labels`` with ``cfg.baseline_trees`` rounds.

    Args:
        features: float32 [N, 28] training rows (all features).
        labels: [N] 0/1 labels.
        cfg: the evaluate config (``baseline_trees``).
        feature_set: the columns the BDT reads (``model.features``: ``all``, ``low``, ``high``).

    Returns:
        The trained :class:`Baseline`.

    Raises:
        BaselineError: fewer than 2 rows or only one class.
    """
    import lightgbm as lgb

    labels = np.asarray(labels, np.float32).reshape(-1)
    n = labels.size
    if n < 2 or labels.min() == labels.max():
        raise BaselineError(f"the baseline needs rows of both classes; got {n} rows with "
                            f"{int(labels.sum())} signal — raise evaluate.baseline_rows")
    start = time.perf_counter()
    # Small samples: leaves must not demand more rows than exist.
    params = {**PARAMS, "num_threads": threads(cfg.baseline_threads),
              "min_data_in_leaf": min(PARAMS["min_data_in_leaf"], max(1, n // 50))}
    train_set = lgb.Dataset(select(features, feature_set), label=labels, free_raw_data=True)
    booster = lgb.train(params, train_set, num_boost_round=cfg.baseline_trees)
    seconds = time.perf_counter() - start
    log.info("baseline: %d trees on %d rows (%s features) in %.1f s", cfg.baseline_trees, n,
             feature_set, seconds)
    return Baseline(booster=booster, train_rows=n, trees=cfg.baseline_trees, fit_seconds=seconds,
                    num_threads=params["num_threads"], feature_set=feature_set)
