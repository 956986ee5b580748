"""Do the generator's 7 high-level masses hold anything its 21 low-level columns do not?

    .venv/bin/python benchmarks/synth_leak.py                  # 200,000 events, seed 7
    .venv/bin/python benchmarks/synth_leak.py --rows 400000 --trees 300

The paper's question (does a deep net learn from the low-level features what the masses
encode?) only makes sense if the masses are *functions* of the low-level columns. The generator
computes them from its own reconstructed objects, which carry two things the written columns do
not: jet masses (b jets are massive 4-vectors; the file has pT, η, φ only) and the neutrino-pz
constraint with the event's generated W mass instead of a fixed 80.4 GeV
(:mod:`pipeline.data.physics`). This script recomputes the 7 masses from the *written*
low-level columns alone (massless objects, fixed m_W = 80.4 GeV, the same b-tag pairing rule
and top-mass assignment), prints how close they are to the written ones and fits LightGBM on
each set (3/4 of the rows to train, 1/4 to score). If the masses leaked information, ``all
written`` would beat ``low + recomputed high``. Last line: ``key=value`` pairs, ``ratio`` =
AUC(low + recomputed) ÷ AUC(all written) (1.0 = no leak).
"""

from __future__ import annotations

import argparse

import numpy as np


def recomputed_masses(x: np.ndarray, m_w: float = 80.4) -> np.ndarray:
    """The 7 high-level columns (scaled like the file) from the 21 low-level ones of ``x``."""
    from pipeline.core import schema
    from pipeline.data import physics

    names = list(schema.FEATURES)
    div = np.array([physics.COLUMN_DIVISORS[n] for n in names])
    raw = x.astype(np.float64) * div
    raw[:, list(physics.PHI_COLS)] = x[:, list(physics.PHI_COLS)] * physics.PHI_DIVISOR
    for k, c in enumerate(physics.BTAG_COLS):
        raw[:, c] = np.rint(x[:, c] / physics.BTAG_UNIT[k])

    def vec(pt, eta, phi):
        return (pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta))

    n = x.shape[0]
    lep = vec(raw[:, 0], raw[:, 1], raw[:, 2])
    metx, mety = raw[:, 3] * np.cos(raw[:, 4]), raw[:, 3] * np.sin(raw[:, 4])
    jets = [vec(raw[:, 5 + 4 * i], raw[:, 6 + 4 * i], raw[:, 7 + 4 * i]) for i in range(4)]
    level = np.stack([raw[:, 8 + 4 * i] for i in range(4)], axis=1)
    nu = physics._neutrino(lep, metx, mety, np.full(n, m_w))
    order = np.argsort(-level, axis=1, kind="stable")  # columns are pT-ordered: ties by pT
    rows = np.arange(n)[:, None]
    jv = [np.stack([j[c] for j in jets], axis=1)[rows, order] for c in range(4)]
    b1, b2, q1, q2 = (tuple(c[:, i] for c in jv) for i in range(4))
    add, mass = physics._add, physics._mass
    w_had, w_lep = add(q1, q2), add(lep, nu)
    had1, lep2 = mass(add(w_had, b1)), mass(add(w_lep, b2))
    had2, lep1 = mass(add(w_had, b2)), mass(add(w_lep, b1))
    mt = physics.M_T
    first = (had1 - mt) ** 2 + (lep2 - mt) ** 2 <= (had2 - mt) ** 2 + (lep1 - mt) ** 2
    bb = add(b1, b2)
    wbb = add(w_had, bb)
    high = np.stack([mass(w_had), np.where(first, had1, had2), mass(w_lep), np.where(first, lep2, lep1),
                     mass(bb), mass(wbb), mass(add(wbb, w_lep))], axis=1)
    return high / div[21:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trees", type=int, default=200)
    args = parser.parse_args()

    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score

    from pipeline.core import schema
    from pipeline.data import synth

    y, x = synth.generate(args.rows, seed=args.seed)
    low, written = x[:, :21].astype(np.float64), x[:, 21:].astype(np.float64)
    again = recomputed_masses(x)
    print(f"{'mass':8s} {'corr':>7s} {'median |rel diff|':>18s} {'p90':>7s}")
    for k, name in enumerate(schema.FEATURES[21:]):
        rel = np.abs(written[:, k] - again[:, k]) / np.maximum(np.abs(written[:, k]), 1e-9)
        print(f"{name:8s} {np.corrcoef(written[:, k], again[:, k])[0, 1]:7.4f} "
              f"{np.median(rel):18.4f} {np.percentile(rel, 90):7.4f}")

    cut = args.rows * 3 // 4
    aucs = {}
    for label, feats in (("low", low), ("high_written", written), ("high_recomputed", again),
                         ("all_written", np.hstack([low, written])),
                         ("low_plus_recomputed", np.hstack([low, again]))):
        bdt = lgb.LGBMClassifier(n_estimators=args.trees, num_leaves=255, learning_rate=0.1,
                                 min_child_samples=100, verbose=-1, n_jobs=1, random_state=0)
        bdt.fit(feats[:cut], y[:cut])
        aucs[label] = roc_auc_score(y[cut:], bdt.predict_proba(feats[cut:])[:, 1])
        print(f"LightGBM AUC {label:22s} {aucs[label]:.4f}")
    print(" ".join(f"{k}={v:.4f}" for k, v in aucs.items())
          + f" rows={args.rows} ratio={aucs['low_plus_recomputed'] / aucs['all_written']:.4f}")


if __name__ == "__main__":
    main()
