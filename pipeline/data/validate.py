"""Compare a dataset with a baseline dataset: schema, sizes, label balance and drift per feature.

    higgs validate --data data/new --baseline data/old       # explicit baseline dataset
    higgs validate --data data/new --against runs            # the published model's dataset
    python -c "from pipeline.core.config import ValidateConfig; from pipeline.data import validate; \
print(validate.validate('data/new', 'data/old', ValidateConfig()).table_text())"

Both datasets carry their statistics in ``manifest.json`` (written by the converter in the same
pass as the records, :mod:`pipeline.data.stats`), so nothing but the two manifests is read.
Every check compares one number with one threshold from the ``validate`` config section and is
an anomaly when the value is above it:

=========================== ============================================================
``schema``                   features (names, order), label and record layout differ (0)
``statistics``               the two datasets have no comparable histograms (0)
``rows_factor``              training rows grew or shrank by more than ``max_rows_factor``
``signal_fraction_shift``    |training signal fraction − baseline's| > ``max_signal_fraction_shift``
``bad_row_rate_increase``    bad rows per source row, increase over the baseline's
``psi``                      population stability index of a feature's histogram > ``max_psi``
``mean_shift``               |mean − baseline mean| / baseline std > ``max_mean_shift``
=========================== ============================================================

``psi`` and ``mean_shift`` are computed on the training split for every feature, overall and
per class (``signal`` / ``background``): a feature whose relation to the label changed (its
values permuted against the labels, say) keeps its overall histogram, but not the per-class
ones. The thresholds and the clean-pair statistics they were chosen from are in
``docs/validate.md``.

:func:`validate` writes ``DATA/validation.json`` (every check, the thresholds, both datasets'
identities) and returns a :class:`ValidationReport`; :func:`enforce` turns its anomalies into
one :class:`DataAnomalyError` line naming the worst one. Finding the published model's dataset
is the caller's job (``pipeline.chain.step_validate``), so this module knows nothing of runs.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.core import schema, storage
from pipeline.core.config import ValidateConfig
from pipeline.core.errors import PipelineError
from pipeline.data import dataset, stats

log = logging.getLogger(__name__)

SPLIT = "training"  # the split compared: what the model learns from
DATASET = "dataset"  # the "feature" of whole-dataset checks
PSEUDO_COUNT = 0.5  # added to every histogram bin before the PSI (empty bins stay finite)


class ValidationError(PipelineError):
    """The datasets cannot be compared at all (a baseline that is missing or not a dataset)."""


class DataAnomalyError(PipelineError):
    """The dataset differs from its baseline beyond a threshold; the message names the worst check."""


@dataclass(frozen=True)
class Check:
    """One statistic of the dataset against its baseline.

    Attributes:
        feature: a feature name, or ``"dataset"`` for a whole-dataset check.
        statistic: ``schema``, ``statistics``, ``rows_factor``, ``signal_fraction_shift``,
            ``bad_row_rate_increase``, ``psi`` or ``mean_shift``.
        scope: ``overall`` / ``signal`` / ``background`` for per-feature checks, the split for
            split checks, ``""`` otherwise.
        value: the measured value.
        threshold: the largest value that is not an anomaly.
        detail: what was compared, for people.
    """

    feature: str
    statistic: str
    scope: str
    value: float
    threshold: float
    detail: str = ""

    @property
    def anomaly(self) -> bool:
        """True when the value is above its threshold."""
        return self.value > self.threshold

    @property
    def severity(self) -> float:
        """How far over (or under) the threshold: value / threshold (inf over a zero threshold)."""
        if self.threshold > 0:
            return self.value / self.threshold
        return math.inf if self.value > 0 else 0.0

    def describe(self) -> str:
        """``lepton_pT psi (signal) 0.712 > 0.05`` — one check in a few words."""
        scope = f" ({self.scope})" if self.scope else ""
        sign = ">" if self.anomaly else "<="
        name = "" if self.feature == DATASET else f"{self.feature} "
        text = f"{name}{self.statistic}{scope} {_num(self.value)} {sign} {_num(self.threshold)}"
        return f"{text}: {self.detail}" if self.detail and self.feature == DATASET else text

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON-ready values, with its status."""
        return {**asdict(self), "status": "ANOMALY" if self.anomaly else "OK"}


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of comparing one dataset with its baseline.

    Attributes:
        data: the validated dataset.
        baseline: the baseline dataset (``None`` when there was nothing to compare with).
        baseline_run: the published run whose dataset the baseline is, if it was found that way.
        checks: every check, dataset checks first.
        skipped: why nothing was compared (empty when a comparison ran).
        thresholds: the ``validate`` config used.
    """

    data: str
    baseline: str | None
    baseline_run: str | None = None
    checks: tuple[Check, ...] = ()
    skipped: str = ""
    thresholds: dict[str, Any] = field(default_factory=dict)

    @property
    def compared(self) -> bool:
        """True when a baseline was compared (False: skipped)."""
        return self.baseline is not None

    @property
    def anomalies(self) -> list[Check]:
        """The checks above their threshold, worst first."""
        return sorted((c for c in self.checks if c.anomaly), key=lambda c: -c.severity)

    @property
    def ok(self) -> bool:
        """True when no check is an anomaly (also when skipped)."""
        return not self.anomalies

    @property
    def worst(self) -> Check | None:
        """The anomaly furthest over its threshold, or None."""
        anomalies = self.anomalies
        return anomalies[0] if anomalies else None

    def against(self) -> str:
        """``data/old (published run R)`` — what the dataset was compared with."""
        run = f" (published run {self.baseline_run})" if self.baseline_run else ""
        return f"{self.baseline}{run}"

    def headline(self) -> str:
        """One line: clean, skipped, or how many anomalies and the worst one."""
        if not self.compared:
            return f"validation of {self.data} skipped: {self.skipped}"
        if self.ok:
            return (f"{self.data} matches {self.against()}: {len(self.checks)} checks, "
                    "no anomaly")
        anomalies = self.anomalies
        more = f" (+{len(anomalies) - 1} more)" if len(anomalies) > 1 else ""
        return (f"{len(anomalies)} data anomal{'y' if len(anomalies) == 1 else 'ies'} in {self.data} "
                f"against {self.against()}; worst: {anomalies[0].describe()}{more}; "
                f"see {dataset.validation_uri(self.data)}")

    def table_rows(self, compact: bool = False) -> list[dict[str, Any]]:
        """The checks as rows ``feature, statistic, scope, value, threshold, status``.

        Args:
            compact: keep the dataset checks, every anomaly and, per feature and statistic,
                only the scope nearest its threshold (what a terminal shows).
        """
        checks: Sequence[Check] = self.checks
        if compact:
            keep: dict[tuple[str, str], Check] = {}
            chosen = []
            for check in self.checks:
                if check.feature == DATASET or check.anomaly:
                    chosen.append(check)
                    continue
                key = (check.feature, check.statistic)
                if key not in keep or check.severity > keep[key].severity:
                    keep[key] = check
            flagged = {(c.feature, c.statistic) for c in chosen}
            chosen += [c for k, c in keep.items() if k not in flagged]
            order = {id(c): i for i, c in enumerate(self.checks)}
            checks = sorted(chosen, key=lambda c: order[id(c)])
        return [{"feature": c.feature, "statistic": c.statistic, "scope": c.scope,
                 "value": _round(c.value), "threshold": _round(c.threshold),
                 "status": "ANOMALY" if c.anomaly else "OK"} for c in checks]

    def table_text(self, compact: bool = True) -> str:
        """The table as aligned text, then the headline."""
        if not self.compared:
            return self.headline()
        rows = self.table_rows(compact=compact)
        head = ("feature", "statistic", "scope", "value", "threshold", "status")
        cells = [head] + [(r["feature"], r["statistic"], r["scope"] or "-", _num(r["value"]),
                           _num(r["threshold"]), r["status"]) for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
        lines = []
        for row in cells:
            left = [row[i].ljust(widths[i]) for i in range(3)]
            right = [row[i].rjust(widths[i]) for i in (3, 4)]
            lines.append("  ".join([*left, *right, row[5]]))
        if compact and len(rows) < len(self.checks):
            lines.append(f"({len(self.checks)} checks; per feature the scope nearest its threshold "
                         f"is shown, all are in {dataset.validation_uri(self.data)})")
        return "\n".join([*lines, self.headline()])

    def to_dict(self) -> dict[str, Any]:
        """What ``DATA/validation.json`` holds."""
        worst = self.worst
        return {
            "data": self.data,
            "baseline": self.baseline,
            "baseline_run": self.baseline_run,
            "split": SPLIT,
            "skipped": self.skipped or None,
            "ok": self.ok,
            "anomalies": len(self.anomalies),
            "worst": worst.to_dict() if worst else None,
            "headline": self.headline(),
            "thresholds": self.thresholds,
            "checks": [c.to_dict() for c in self.checks],
        }


# --- the comparison -----------------------------------------------------------------------


def psi(counts: Sequence[int] | np.ndarray, baseline: Sequence[int] | np.ndarray) -> float:
    """Population stability index of two histograms on the same bins.

    ``sum((p - q) * ln(p / q))`` over bins, with :data:`PSEUDO_COUNT` added to every bin of
    both (so an empty bin gives a finite value). 0 for equal shapes; ~0.1 is commonly read as
    a moderate shift, 0.25 as a large one.

    Args:
        counts: bin counts of the dataset.
        baseline: bin counts of the baseline, same length.

    Returns:
        The PSI (>= 0).
    """
    a = np.asarray(counts, np.float64) + PSEUDO_COUNT
    b = np.asarray(baseline, np.float64) + PSEUDO_COUNT
    p, q = a / a.sum(), b / b.sum()
    return float(np.sum((p - q) * np.log(p / q)))


def mean_shift(mean: float, base_mean: float, base_std: float) -> float:
    """``|mean - base_mean|`` in baseline standard deviations (a constant baseline: any change is huge)."""
    scale = base_std if base_std > 0 else 1e-12 * max(1.0, abs(base_mean))
    return abs(mean - base_mean) / scale


def compare(manifest: Mapping[str, Any], baseline: Mapping[str, Any], cfg: ValidateConfig) -> list[Check]:
    """Every check of a dataset's manifest against its baseline's.

    Args:
        manifest: the dataset's ``manifest.json``.
        baseline: the baseline dataset's ``manifest.json``.
        cfg: the thresholds.

    Returns:
        The checks: dataset checks (schema, statistics, rows, signal fraction, bad rows), then
        per feature ``psi`` and ``mean_shift`` for each scope.
    """
    checks = [_schema_check(manifest, baseline)]
    rows, base_rows = int(manifest["rows"][SPLIT]), int(baseline["rows"][SPLIT])
    factor = max(rows / base_rows, base_rows / rows) if rows and base_rows else math.inf
    checks.append(Check(DATASET, "rows_factor", SPLIT, factor, cfg.max_rows_factor,
                        f"{rows:,} rows vs {base_rows:,}"))
    fraction, base_fraction = _signal_fraction(manifest), _signal_fraction(baseline)
    checks.append(Check(DATASET, "signal_fraction_shift", SPLIT, abs(fraction - base_fraction),
                        cfg.max_signal_fraction_shift,
                        f"signal fraction {fraction:.4f} vs {base_fraction:.4f}"))
    rate, base_rate = _bad_row_rate(manifest), _bad_row_rate(baseline)
    checks.append(Check(DATASET, "bad_row_rate_increase", "", rate - base_rate,
                        cfg.max_bad_row_rate_increase, f"bad-row rate {rate:.6f} vs {base_rate:.6f}"))

    incompatible = _statistics_problem(manifest, baseline)
    if incompatible:
        checks.append(Check(DATASET, "statistics", "", 1.0, 0.0, incompatible))
        return checks
    checks.append(Check(DATASET, "statistics", "", 0.0, 0.0, "histograms on the same fixed edges"))
    new, base = manifest["statistics"]["splits"][SPLIT], baseline["statistics"]["splits"][SPLIT]
    names = [n for n in schema.FEATURES if n in manifest["features"] and n in baseline["features"]]
    for name in names:
        for scope in stats.SCOPES:
            mine, theirs = new[scope][name], base[scope][name]
            if not mine["count"] or not theirs["count"]:
                continue  # a class with no rows: the signal fraction check already says so
            checks.append(Check(name, "psi", scope, psi(mine["histogram"], theirs["histogram"]),
                                cfg.max_psi))
        for scope in stats.SCOPES:
            mine, theirs = new[scope][name], base[scope][name]
            if not mine["count"] or not theirs["count"]:
                continue
            checks.append(Check(name, "mean_shift", scope,
                                mean_shift(mine["mean"], theirs["mean"], theirs["std"]),
                                cfg.max_mean_shift,
                                f"mean {mine['mean']:.5g} vs {theirs['mean']:.5g} "
                                f"(baseline std {theirs['std']:.5g})"))
    return checks


def _schema_check(manifest: Mapping[str, Any], baseline: Mapping[str, Any]) -> Check:
    problems = []
    for who, m in (("dataset", manifest), ("baseline", baseline)):
        features = list(m.get("features", []))
        missing = [f for f in schema.FEATURES if f not in features]
        extra = [f for f in features if f not in schema.FEATURES]
        if missing:
            problems.append(f"{who} lacks {', '.join(missing)}")
        if extra:
            problems.append(f"{who} has unknown columns {', '.join(extra)}")
        if not missing and not extra and tuple(features) != schema.FEATURES:
            problems.append(f"{who} lists the features in another order")
        if m.get("label", schema.LABEL_KEY) != schema.LABEL_KEY:
            problems.append(f"{who} labels by {m.get('label')!r}, not {schema.LABEL_KEY!r}")
    layout = [(m.get("record") or {}).get("example_bytes") for m in (manifest, baseline)]
    if layout[0] != layout[1]:
        problems.append(f"record layouts differ ({layout[0]} vs {layout[1]} bytes per example)")
    detail = "; ".join(problems) or (f"{len(schema.CSV_COLUMNS)} columns: {schema.LABEL_KEY} + "
                                     f"{schema.NUM_FEATURES} features in the UCI order")
    return Check(DATASET, "schema", "", float(len(problems)), 0.0, detail)


def _signal_fraction(manifest: Mapping[str, Any]) -> float:
    value = (manifest.get("signal_fraction") or {}).get(SPLIT)
    return float(value) if value is not None else math.nan


def _bad_row_rate(manifest: Mapping[str, Any]) -> float:
    source_rows = (manifest.get("split") or {}).get("source_rows") or sum(manifest["rows"].values())
    return int(manifest.get("bad_rows", 0)) / max(1, int(source_rows))


def _statistics_problem(manifest: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    """Why the two manifests' histograms cannot be compared ('' when they can)."""
    for who, m in (("the dataset", manifest), ("the baseline", baseline)):
        st = m.get("statistics")
        if not isinstance(st, Mapping) or st.get("version") != stats.STATISTICS_VERSION:
            version = m.get("converter_version", "?")
            return (f"{who} has no version-{stats.STATISTICS_VERSION} histograms (converter "
                    f"{version}); rebuild it with 'higgs convert --overwrite'")
        if SPLIT not in st.get("splits", {}):
            return f"{who} has no {SPLIT} statistics; rebuild it with 'higgs convert --overwrite'"
    if manifest["statistics"].get("edges") != baseline["statistics"].get("edges"):
        return ("the two datasets' histograms use different bin edges; rebuild the older one with "
                "'higgs convert --overwrite'")
    return ""


# --- reading, writing, enforcing -----------------------------------------------------------


def validate(data: str | dataset.Dataset, baseline: str, cfg: ValidateConfig,
             baseline_run: str | None = None) -> ValidationReport:
    """Compare a dataset with a baseline dataset and write ``DATA/validation.json``.

    Args:
        data: the dataset to check (local or gs://, or an opened ``Dataset``).
        baseline: the dataset to compare with (e.g. the published model's).
        cfg: the ``validate`` thresholds.
        baseline_run: the published run the baseline belongs to (for the messages).

    Returns:
        The :class:`ValidationReport` (anomalies are data, not exceptions; see :func:`enforce`).

    Raises:
        ValidationError: the baseline is not a dataset.
        pipeline.data.dataset.DatasetError: ``data`` is not a dataset.
    """
    ds = dataset.open_dataset(data)
    try:
        base = dataset.load_manifest(baseline, check_features=False)
    except dataset.DatasetError as exc:
        whose = f"published run {baseline_run}'s training data " if baseline_run else "baseline "
        raise ValidationError(f"{whose}{baseline} cannot be read ({exc}); pass an existing "
                              "dataset with --baseline DATA") from None
    report = ValidationReport(data=ds.uri, baseline=baseline, baseline_run=baseline_run,
                              checks=tuple(compare(ds.manifest, base, cfg)), thresholds=asdict(cfg))
    _write(report, ds.manifest, base)
    log.log(logging.INFO if report.ok else logging.WARNING, "%s", report.headline())
    return report


def skip(data: str | dataset.Dataset, reason: str, cfg: ValidateConfig) -> ValidationReport:
    """Record that ``data`` had nothing to be compared with (``validation.json`` says why).

    Args:
        data: the dataset.
        reason: why there is no baseline, for people.
        cfg: the thresholds that would have applied.

    Returns:
        A report with no checks (``ok``, not ``compared``).
    """
    ds = dataset.open_dataset(data)
    report = ValidationReport(data=ds.uri, baseline=None, skipped=reason, thresholds=asdict(cfg))
    _write(report, ds.manifest, None)
    log.info("%s", report.headline())
    return report


def enforce(report: ValidationReport, on_anomaly: str) -> None:
    """Stop on anomalies (``fail``) or let them pass with a warning (``warn``).

    Args:
        report: a validation report.
        on_anomaly: ``fail`` or ``warn`` (``validate.on_anomaly``).

    Raises:
        DataAnomalyError: ``fail`` and at least one anomaly; the message is the headline.
    """
    if report.ok:
        return
    if on_anomaly == "fail":
        raise DataAnomalyError(f"{report.headline()} (validate.on_anomaly=warn trains anyway, "
                               "unblessed)")
    log.warning("validate.on_anomaly=warn: training despite %s", report.headline())


def read_report(data: str) -> dict[str, Any] | None:
    """``DATA/validation.json`` as a dict, or None when the dataset was never validated."""
    uri = dataset.validation_uri(data)
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return None


def _identity(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if manifest is None:
        return None
    source = manifest.get("source") or {}
    keys = ("uri", "bytes", "sha256", "crc32c", "parts_sha256")
    return {"source": {k: source[k] for k in keys if k in source}, "created": manifest.get("created"),
            "rows": manifest.get("rows")}


def _write(report: ValidationReport, manifest: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> None:
    body = {**report.to_dict(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "dataset": _identity(manifest), "baseline_dataset": _identity(baseline)}
    storage.write_text(dataset.validation_uri(report.data), json.dumps(body, indent=1) + "\n")


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"
