"""Measure the validation statistics on clean pairs and on injected changes, against the thresholds.

    .venv/bin/python benchmarks/validate_thresholds.py                        # 20k and 220k rows, 5 pairs
    .venv/bin/python benchmarks/validate_thresholds.py --rows 20000 --pairs 3

For each size, writes generated samples with seeds 1…2·pairs (``pipeline.data.synth``),
converts them with the real converter and validates seed 2k against seed 2k−1
(``pipeline.data.validate``): the largest value of every statistic over the pairs is the
clean-pair noise the thresholds (``validate.*``, pipeline/core/config_tree.py) must sit above.
Then the seed-1 sample with each injected change (``pipeline.data.variants``) is converted and
validated against it: every change must raise its anomaly.

Prints a table per size and, as its last line, ``key=value`` pairs with ``ratio=`` = the
smallest threshold / largest-clean-value over the statistics (the margin; > 1 means no clean
pair comes near a threshold). Statistics are not timings: the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

STATISTICS = ("psi", "mean_shift", "signal_fraction_shift", "rows_factor", "bad_row_rate_increase")
CHANGES = {
    "lepton_pT x1.3": {"rescale_by": ("lepton_pT", 1.3)},
    "m_bb permuted": {"permute_feature": "m_bb"},
    "signal fraction 0.40": {"signal_fraction": 0.40},
    "lepton_phi dropped, rest shifted": {"shift_feature": "lepton_phi"},
}


def _convert(source: Path, out: Path) -> str:
    from pipeline.core.config import load_config
    from pipeline.data import convert

    convert.convert(str(source), str(out), load_config("sample").data)
    return str(out)


def _clean_maxima(rows: int, pairs: int, work: Path) -> dict[str, tuple[float, str]]:
    """Largest value of each statistic (per scope for psi/mean_shift) over the clean pairs."""
    from pipeline.core.config import ValidateConfig
    from pipeline.data import synth, validate

    worst: dict[str, tuple[float, str]] = {}
    for k in range(pairs):
        a, b = 2 * k + 1, 2 * k + 2
        data = {}
        for seed in (a, b):
            src = work / f"r{rows}-s{seed}.csv.gz"
            synth.write_csv(src, rows=rows, seed=seed)
            data[seed] = _convert(src, work / f"r{rows}-s{seed}")
        report = validate.validate(data[b], data[a], ValidateConfig())
        for check in report.checks:
            if check.statistic not in STATISTICS:
                continue
            key = f"{check.statistic} ({check.scope})" if check.statistic in ("psi", "mean_shift") \
                else check.statistic
            if key not in worst or check.value > worst[key][0]:
                worst[key] = (check.value, f"{check.feature} seeds {b}/{a}")
    return worst


def _changes(rows: int, work: Path) -> list[tuple[str, str, int]]:
    """(change, worst anomaly, number of anomalies) for each injected change of seed 1."""
    from pipeline.core.config import ValidateConfig
    from pipeline.data import validate, variants

    base_src = work / f"r{rows}-s1.csv.gz"
    base = str(work / f"r{rows}-s1")
    out = []
    for i, (name, change) in enumerate(CHANGES.items()):
        src = work / f"r{rows}-change{i}.csv.gz"
        variants.make(base_src, src, **change)
        report = validate.validate(_convert(src, work / f"r{rows}-change{i}"), base, ValidateConfig())
        worst = report.worst
        out.append((name, worst.describe() if worst else "none (missed!)", len(report.anomalies)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 220_000])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args(argv)

    from pipeline.core.config import ValidateConfig

    cfg = ValidateConfig()
    thresholds = {"psi": cfg.max_psi, "mean_shift": cfg.max_mean_shift,
                  "signal_fraction_shift": cfg.max_signal_fraction_shift,
                  "rows_factor": cfg.max_rows_factor,
                  "bad_row_rate_increase": cfg.max_bad_row_rate_increase}
    margins: dict[str, float] = {}
    missed = 0
    with tempfile.TemporaryDirectory(prefix="higgs-validate-") as tmp:
        for rows in args.rows:
            work = Path(tmp) / f"r{rows}"
            work.mkdir()
            worst = _clean_maxima(rows, args.pairs, work)
            print(f"\n{rows:,} rows ({rows - 2 * (rows // 22):,} training), {args.pairs} clean seed pairs:")
            print(f"  {'statistic':34s} {'max clean':>10s} {'threshold':>10s} {'margin':>7s}  where")
            for key, (value, where) in sorted(worst.items()):
                threshold = thresholds[key.split(" ")[0]]
                margin = threshold / value if value > 0 else float("inf")
                if key not in ("rows_factor", "bad_row_rate_increase"):
                    margins[f"{key}@{rows}"] = margin
                print(f"  {key:34s} {value:10.5f} {threshold:10.4g} {margin:7.1f}  {where}")
            print(f"  injected changes of seed 1 ({rows:,} rows):")
            for name, anomaly, count in _changes(rows, work):
                missed += anomaly.startswith("none")
                print(f"  {name:34s} {count:4d} anomalies, worst: {anomaly}")
    smallest = min(margins, key=margins.get)
    fields = {"sizes": ",".join(map(str, args.rows)), "pairs": args.pairs,
              "max_psi": cfg.max_psi, "max_mean_shift": cfg.max_mean_shift,
              "max_signal_fraction_shift": cfg.max_signal_fraction_shift,
              "tightest": smallest.replace(" ", ""), "changes_missed": missed,
              "ratio": round(margins[smallest], 2)}
    print(" ".join(f"{k}={v}" for k, v in fields.items()))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
