"""Exact AUC + DeLong interval on a full HIGGS test split's worth of rows vs scikit-learn.

    .venv/bin/python benchmarks/bench_metrics.py [--rows 500000] [--repeats 3]

The evaluation computes the exact AUC, its DeLong interval and the working points on all
500,000 test rows; this measures that cost against scikit-learn's ``roc_auc_score`` (which
gives the AUC alone) on the same float32 scores. Last line: ``key=value`` pairs with
``ratio`` = sklearn AUC time / project AUC time (like for like; > 1 = project faster) and
the time of the whole set (AUC + DeLong interval + working points). The machine is shared
with other jobs: compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from pipeline.evaluation import metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, args.rows).astype(np.float32)
    scores = (1 / (1 + np.exp(-(rng.normal(size=args.rows) + labels)))).astype(np.float32)

    assert abs(metrics.roc_auc(labels, scores) - roc_auc_score(labels, scores)) < 1e-9
    sk = best_of(args.repeats, lambda: roc_auc_score(labels, scores))
    auc = best_of(args.repeats, lambda: metrics.roc_auc(labels, scores))
    full = best_of(args.repeats, lambda: (metrics.delong_interval(labels, scores),
                                          metrics.working_points(labels, scores)))
    print(f"rows={args.rows} sklearn_auc_s={sk:.3f} project_auc_s={auc:.3f} "
          f"project_auc_delong_wp_s={full:.3f} ratio={sk / auc:.2f}")


if __name__ == "__main__":
    main()
