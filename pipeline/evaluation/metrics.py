"""Exact classifier metrics over every test row, in pure numpy.

    python -c "import numpy as np; from pipeline.evaluation import metrics; y=np.r_[0,0,1,1]; \
print(metrics.roc_auc(y, np.r_[.1,.4,.35,.8]))"

* :func:`roc_auc` — the exact ROC AUC from ranks (ties count one half via midranks),
  O(n log n); it equals scikit-learn's ``roc_auc_score``. Keras' streaming ``AUC`` only
  approximates it with 200 thresholds, which is why both are reported.
* :func:`delong_interval` — the DeLong et al. (1988) variance of the AUC computed with the
  fast O(n log n) algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21:1389),
  and the normal 95% interval from it. :func:`bootstrap_interval` is the percentile
  alternative (slower, optional).
* :func:`working_points` — what physicists quote: signal efficiency at a fixed background
  rejection and background rejection at a fixed signal efficiency, read off the ROC
  curve with linear interpolation between its points.
* :func:`accuracy` at a 0.5 threshold and :func:`log_loss` with clipped probabilities.

Labels are 1 = signal, 0 = background; scores are "signal-likeness" (higher = more signal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import PipelineError

# The working points reported by default (fractions, not percent).
BACKGROUND_REJECTIONS: tuple[float, ...] = (0.90, 0.99, 0.999)
SIGNAL_EFFICIENCIES: tuple[float, ...] = (0.30, 0.50, 0.70)
Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


class MetricsError(PipelineError, ValueError):
    """Inputs that admit no AUC (one class only, mismatched lengths, NaN scores)."""


@dataclass(frozen=True)
class AucInterval:
    """An AUC estimate with its 95% interval.

    Attributes:
        auc: the exact AUC.
        low, high: the interval bounds, clipped to [0, 1].
        std: the standard error of the AUC (DeLong) or of the bootstrap replicas.
        method: ``"delong"`` or ``"bootstrap"``.
    """

    auc: float
    low: float
    high: float
    std: float
    method: str


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise MetricsError(f"labels ({y.size}) and scores ({s.size}) have different lengths")
    if not np.all(np.isfinite(s)):
        raise MetricsError(f"{int(np.sum(~np.isfinite(s)))} scores are NaN or infinite; "
                           "the model diverged — retrain with a lower learning rate")
    y = y > 0.5
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise MetricsError(f"AUC needs both classes; got {n_pos} signal of {y.size} rows")
    return y, s


def midranks(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks of ``values`` where tied values share their average rank.

    Args:
        values: 1-d array.

    Returns:
        float64 array of the same length (e.g. ``[10, 20, 20, 30] -> [1, 2.5, 2.5, 4]``).
    """
    values = np.asarray(values).reshape(-1)
    n = values.size
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    # Mean of 1-based positions start+1 .. end is (start + 1 + end) / 2.
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC over all rows (Mann–Whitney U / (n_pos · n_neg)), ties counted half.

    Args:
        labels: 0/1 (or bool / float) array, 1 = signal.
        scores: predicted signal probabilities or any monotone score.

    Returns:
        The AUC in [0, 1].

    Raises:
        MetricsError: only one class present, length mismatch or non-finite scores.
    """
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    rank_sum = float(midranks(s)[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def delong_interval(labels: np.ndarray, scores: np.ndarray, z: float = Z_95) -> AucInterval:
    """AUC with the DeLong standard error (fast algorithm of Sun & Xu 2014).

    The structural components are V10_i (share of negatives ranked below positive i) and
    V01_j (share of positives ranked above negative j); with midranks of the positives
    among themselves (Tx), negatives among themselves (Ty) and of everything (Tz):
    ``V10 = (Tz[pos] - Tx) / n_neg`` and ``V01 = 1 - (Tz[neg] - Ty) / n_pos``;
    ``Var(AUC) = var(V10) / n_pos + var(V01) / n_neg``.

    Args:
        labels: 0/1 array, 1 = signal.
        scores: scores, higher = more signal-like.
        z: normal quantile of the interval (default 95% two-sided).

    Returns:
        :class:`AucInterval` with method ``"delong"``; the interval is ``auc ± z·std``
        clipped to [0, 1].
    """
    y, s = _check(labels, scores)
    pos, neg = s[y], s[~y]
    m, n = pos.size, neg.size
    tz = midranks(np.concatenate([pos, neg]))
    tx, ty = midranks(pos), midranks(neg)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    auc = float(v10.mean())
    # ddof=1 as in DeLong's estimator; a class of one row has no spread to estimate.
    s10 = float(v10.var(ddof=1)) if m > 1 else 0.0
    s01 = float(v01.var(ddof=1)) if n > 1 else 0.0
    std = math.sqrt(max(s10 / m + s01 / n, 0.0))
    return AucInterval(auc, max(0.0, auc - z * std), min(1.0, auc + z * std), std, "delong")


def bootstrap_interval(
    labels: np.ndarray, scores: np.ndarray, resamples: int, seed: int = 0, level: float = 0.95
) -> AucInterval:
    """AUC with a percentile bootstrap interval (rows resampled within each class).

    Resampling within each class keeps both classes present in every replica.

    Args:
        labels: 0/1 array, 1 = signal.
        scores: scores, higher = more signal-like.
        resamples: number of bootstrap replicas (each costs one O(n log n) AUC).
        seed: random seed, for a reproducible interval.
        level: coverage of the interval.

    Returns:
        :class:`AucInterval` with method ``"bootstrap"``.
    """
    y, s = _check(labels, scores)
    if resamples < 2:
        raise MetricsError(f"bootstrap needs at least 2 resamples, got {resamples}")
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    labels_b = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    replicas = np.empty(resamples)
    for i in range(resamples):
        sample = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        replicas[i] = roc_auc(labels_b, sample)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(replicas, [alpha, 1.0 - alpha])
    return AucInterval(roc_auc(y, s), float(low), float(high), float(replicas.std(ddof=1)),
                       "bootstrap")


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve at every distinct score (selection rule: ``score >= threshold``).

    Args:
        labels: 0/1 array, 1 = signal.
        scores: scores, higher = more signal-like.

    Returns:
        ``(fpr, tpr, thresholds)``: background efficiency, signal efficiency and the
        threshold at each point, starting at (0, 0) with threshold +inf and ending at (1, 1).
    """
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of equal scores: all tied rows pass or fail together.
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, s_sorted[last]]


def _tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest signal efficiency reachable with background efficiency <= target."""
    i = int(np.searchsorted(fpr, target, side="right")) - 1  # last point with fpr <= target
    if i >= fpr.size - 1:
        return float(tpr[-1])
    # Linear interpolation towards the next point (randomised selection between two cuts).
    f0, f1, t0, t1 = fpr[i], fpr[i + 1], tpr[i], tpr[i + 1]
    return float(t0 + (t1 - t0) * (target - f0) / (f1 - f0)) if f1 > f0 else float(t0)


def _fpr_at_tpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Lowest background efficiency that keeps signal efficiency >= target."""
    i = int(np.searchsorted(tpr, target, side="left"))  # first point with tpr >= target
    if i == 0:
        return float(fpr[0])
    f0, f1, t0, t1 = fpr[i - 1], fpr[i], tpr[i - 1], tpr[i]
    return float(f0 + (f1 - f0) * (target - t0) / (t1 - t0)) if t1 > t0 else float(f1)


def working_points(
    labels: np.ndarray,
    scores: np.ndarray,
    rejections: Sequence[float] = BACKGROUND_REJECTIONS,
    efficiencies: Sequence[float] = SIGNAL_EFFICIENCIES,
) -> dict[str, dict[str, float]]:
    """Signal efficiency at fixed background rejection and the reverse.

    Background rejection is the fraction of background removed (1 − background
    efficiency); at 99.9% rejection only 1 background event in 1000 passes.

    Args:
        labels: 0/1 array, 1 = signal.
        scores: scores, higher = more signal-like.
        rejections: background rejections (fractions) to report signal efficiency at.
        efficiencies: signal efficiencies (fractions) to report background rejection at.

    Returns:
        ``{"signal_efficiency_at_background_rejection": {"0.9": eff, ...},
        "background_rejection_at_signal_efficiency": {"0.3": rej, ...}}`` with keys as
        the fraction's string form.
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "signal_efficiency_at_background_rejection": {
            f"{r:g}": _tpr_at_fpr(fpr, tpr, 1.0 - r) for r in rejections
        },
        "background_rejection_at_signal_efficiency": {
            f"{e:g}": 1.0 - _fpr_at_tpr(fpr, tpr, e) for e in efficiencies
        },
    }


def accuracy(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of rows classified correctly with ``probability >= threshold`` as signal.

    Args:
        labels: 0/1 array, 1 = signal.
        probabilities: predicted signal probabilities.
        threshold: the cut; rows at or above it count as signal.

    Returns:
        The accuracy in [0, 1].
    """
    y = np.asarray(labels).reshape(-1) > 0.5
    p = np.asarray(probabilities).reshape(-1)
    return float(np.mean((p >= threshold) == y))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats per event.

    Args:
        labels: 0/1 array, 1 = signal.
        probabilities: predicted signal probabilities.
        eps: probabilities are clipped to [eps, 1 − eps] (Keras' epsilon), so a confident
            wrong answer costs ~16 nats instead of infinity.

    Returns:
        The mean log loss.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def summary(
    labels: np.ndarray, probabilities: np.ndarray, bootstrap: int = 0, seed: int = 0
) -> dict[str, object]:
    """All metrics of one classifier on one set of rows, JSON-ready.

    Args:
        labels: 0/1 array, 1 = signal.
        probabilities: predicted signal probabilities.
        bootstrap: if > 0, also compute a bootstrap interval with that many resamples.
        seed: bootstrap seed.

    Returns:
        ``{"auc", "auc_ci95", "auc_std", "auc_ci_method", "accuracy", "log_loss",
        "rows", "signal_rows", "working_points"}`` (plus ``"auc_ci95_bootstrap"`` when
        ``bootstrap > 0``).
    """
    interval = delong_interval(labels, probabilities)
    y = np.asarray(labels).reshape(-1) > 0.5
    out: dict[str, object] = {
        "auc": interval.auc,
        "auc_ci95": [interval.low, interval.high],
        "auc_std": interval.std,
        "auc_ci_method": "delong",
        "accuracy": accuracy(y, probabilities),
        "log_loss": log_loss(y, probabilities),
        "rows": int(y.size),
        "signal_rows": int(y.sum()),
        "working_points": working_points(y, probabilities),
    }
    if bootstrap > 0:
        boot = bootstrap_interval(y, probabilities, bootstrap, seed=seed)
        out["auc_ci95_bootstrap"] = [boot.low, boot.high]
    return out
