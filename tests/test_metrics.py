"""pipeline.evaluation.metrics against scikit-learn, hand-computed cases and analytic distributions."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline.evaluation import metrics

PHI = NormalDist()


def _gaussian(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Background ~ N(0, 1), signal ~ N(shift, 1), n of each."""
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0.0, 1.0, n), rng.normal(shift, 1.0, n)]
    labels = np.r_[np.zeros(n), np.ones(n)]
    return labels, scores


def _delong_quadratic(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """DeLong's variance straight from its definition (O(n_pos · n_neg)) as a reference."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    return float(psi.mean()), float(np.sqrt(var))


def test_hand_computed_auc_with_ties() -> None:
    # Positive/negative pairs: 0.4 beats 0.1, ties 0.4, loses to 0.8 (1.5); 0.8 beats 0.1
    # and 0.4, ties 0.8 (2.5); 0.9 beats all three (3) → 7 of 9 pairs.
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.9])
    assert metrics.roc_auc(labels, scores) == pytest.approx(7 / 9, abs=1e-15)
    assert metrics.midranks(np.array([10, 20, 20, 30])).tolist() == [1.0, 2.5, 2.5, 4.0]


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_on_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 5000))
    labels = rng.integers(0, 2, n)
    # Rounded scores give many ties; float32 rounding is what a model outputs.
    scores = np.round(rng.random(n) + 0.3 * labels, int(rng.integers(1, 4))).astype(np.float32)
    assert metrics.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_rejects_one_class_and_nan() -> None:
    with pytest.raises(metrics.MetricsError, match="both classes"):
        metrics.roc_auc(np.ones(5), np.arange(5.0))
    with pytest.raises(metrics.MetricsError, match="NaN"):
        metrics.roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_delong_matches_quadratic_definition() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 700)
    scores = np.round(rng.normal(size=700) + 0.8 * labels, 1)  # ties included
    fast = metrics.delong_interval(labels, scores)
    auc, std = _delong_quadratic(labels, scores)
    assert fast.auc == pytest.approx(auc, abs=1e-12)
    assert fast.std == pytest.approx(std, rel=1e-9)
    assert fast.method == "delong"


def test_interval_brackets_estimate_and_narrows_with_rows() -> None:
    widths = []
    for n in (500, 5_000, 50_000):
        labels, scores = _gaussian(n, 1.0, seed=n)
        ci = metrics.delong_interval(labels, scores)
        assert ci.low < ci.auc < ci.high
        widths.append(ci.high - ci.low)
        # The analytic AUC Φ(shift/√2) lies within the 95% interval (fixed seeds).
        assert ci.low < PHI.cdf(1.0 / np.sqrt(2)) < ci.high
    # Width shrinks like 1/√n: 10× rows → ~3.16× narrower.
    assert widths[0] / widths[1] == pytest.approx(np.sqrt(10), rel=0.15)
    assert widths[1] / widths[2] == pytest.approx(np.sqrt(10), rel=0.15)


def test_bootstrap_interval_agrees_with_delong() -> None:
    labels, scores = _gaussian(2_000, 1.0, seed=7)
    delong = metrics.delong_interval(labels, scores)
    boot = metrics.bootstrap_interval(labels, scores, resamples=300, seed=1)
    assert boot.low < boot.auc < boot.high
    assert boot.auc == delong.auc
    assert boot.std == pytest.approx(delong.std, rel=0.2)


def test_roc_curve_matches_sklearn() -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 1000)
    scores = np.round(rng.random(1000) + 0.5 * labels, 2)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert thr[0] == np.inf and fpr[-1] == 1.0 and tpr[-1] == 1.0


def test_working_points_on_gaussian_scores() -> None:
    shift = 1.5
    labels, scores = _gaussian(200_000, shift, seed=5)
    wp = metrics.working_points(labels, scores)
    for key, measured in wp["signal_efficiency_at_background_rejection"].items():
        cut = PHI.inv_cdf(float(key))  # background passes with probability 1 - rejection
        assert measured == pytest.approx(1.0 - PHI.cdf(cut - shift), abs=0.01), key
    for key, measured in wp["background_rejection_at_signal_efficiency"].items():
        cut = shift + PHI.inv_cdf(1.0 - float(key))  # signal passes with probability eff
        assert measured == pytest.approx(PHI.cdf(cut), abs=0.005), key
    assert set(wp["signal_efficiency_at_background_rejection"]) == {"0.9", "0.99", "0.999"}
    assert set(wp["background_rejection_at_signal_efficiency"]) == {"0.3", "0.5", "0.7"}


def test_working_points_on_hand_computed_case() -> None:
    # Background 0..9 (scores 0.0..0.9), signal scores 0.55 and 0.95 (two rows).
    labels = np.r_[np.zeros(10), np.ones(2)]
    scores = np.r_[np.arange(10) / 10, 0.55, 0.95]
    wp = metrics.working_points(labels, scores, rejections=(0.9,), efficiencies=(0.5, 1.0))
    # Cut at 0.95 keeps 0 background and half the signal; lowering it to 0.9 lets in one
    # background event (10%) — exactly 90% rejection — still half the signal.
    assert wp["signal_efficiency_at_background_rejection"]["0.9"] == pytest.approx(0.5)
    assert wp["background_rejection_at_signal_efficiency"]["0.5"] == pytest.approx(1.0)
    # All signal needs the cut at 0.55, which passes 4 of 10 background rows.
    assert wp["background_rejection_at_signal_efficiency"]["1"] == pytest.approx(0.6)


def test_accuracy_and_log_loss() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 1000)
    probs = np.clip(rng.random(1000) * 0.6 + 0.4 * labels, 0, 1)
    probs[:3] = [0.0, 1.0, 0.5]  # extremes must not give inf
    assert metrics.accuracy(labels, probs) == pytest.approx(np.mean((probs >= 0.5) == labels))
    expected = sk_log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7))
    assert metrics.log_loss(labels, probs) == pytest.approx(expected, rel=1e-9)


def test_summary_is_json_ready() -> None:
    import json

    labels, scores = _gaussian(1000, 1.0, seed=9)
    probs = 1 / (1 + np.exp(-scores))
    out = metrics.summary(labels, probs, bootstrap=20)
    again = json.loads(json.dumps(out))
    assert again["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert again["auc_ci95"][0] < again["auc"] < again["auc_ci95"][1]
    assert again["rows"] == 2000 and again["signal_rows"] == 1000
    assert len(again["auc_ci95_bootstrap"]) == 2
