"""The human side of an evaluation: ``report.md`` and PNG plots in ``RUN/report/``.

    higgs evaluate --data data/sample --run runs/try   # writes report.md, roc.png, ...

Plots are drawn on bare ``matplotlib.figure.Figure`` objects with the Agg canvas, so no
global backend is chosen and nothing opens a window (works on headless workers):

* ``roc.png`` — signal efficiency vs background rejection (linear) and vs 1/background
  efficiency (log), deep model and BDT baseline;
* ``scores.png`` — signal and background score distributions of each classifier;
* ``history.png`` — loss, AUC and learning rate per epoch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import provenance as provenance_lib
from pipeline.evaluation import metrics

ROC_PNG, SCORES_PNG, HISTORY_PNG = "roc.png", "scores.png", "history.png"
DPI = 110


def _figure(ncols: int, width: float = 5.2, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Keep ~2·points ROC points, dense both linearly and at tiny background efficiency."""
    if fpr.size <= 2 * points:
        return fpr, tpr
    linear = np.linspace(0, fpr.size - 1, points).astype(int)
    logspaced = np.searchsorted(fpr, np.geomspace(max(fpr[1], 1e-7), 1.0, points))
    keep = np.unique(np.clip(np.r_[linear, logspaced, fpr.size - 1], 0, fpr.size - 1))
    return fpr[keep], tpr[keep]


def plot_roc(path: str | Path, labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> Path:
    """Write the ROC plot of one or more classifiers on the same rows.

    Args:
        path: PNG file to write.
        labels: 0/1 test labels.
        scores: classifier name → scores on the same rows (e.g. deep model, BDT).

    Returns:
        The PNG path.
    """
    fig, (lin, log) = _figure(2)
    for name, s in scores.items():
        fpr, tpr, _ = metrics.roc_curve(labels, s)
        auc = metrics.roc_auc(labels, s)
        fpr, tpr = _thin_roc(fpr, tpr)
        lin.plot(tpr, 1.0 - fpr, label=f"{name} (AUC {auc:.4f})")
        with np.errstate(divide="ignore"):
            inv = 1.0 / fpr
        ok = np.isfinite(inv)
        log.plot(tpr[ok], inv[ok], label=name)
    lin.plot([0, 1], [1, 0], ":", color="grey", label="random")
    log.plot(np.linspace(0.01, 1, 100), 1 / np.linspace(0.01, 1, 100), ":", color="grey", label="random")
    lin.set(title="ROC curve (test split)", xlabel="signal efficiency ε_S (fraction)",
            ylabel="background rejection 1 − ε_B (fraction)", xlim=(0, 1), ylim=(0, 1.01))
    log.set(title="Background rejection factor", xlabel="signal efficiency ε_S (fraction)",
            ylabel="1 / ε_B (background events per one passing)", yscale="log", xlim=(0, 1))
    for ax in (lin, log):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left" if ax is lin else "upper right", fontsize="small")
    fig.savefig(path, dpi=DPI)
    return Path(path)


def plot_scores(path: str | Path, labels: np.ndarray, scores: Mapping[str, np.ndarray],
                bins: int = 50) -> Path:
    """Write signal vs background distributions of each classifier's output.

    Args:
        path: PNG file to write.
        labels: 0/1 test labels.
        scores: classifier name → predicted signal probabilities on the same rows.
        bins: histogram bins over [0, 1].

    Returns:
        The PNG path.
    """
    y = np.asarray(labels).reshape(-1) > 0.5
    fig, axes = _figure(len(scores))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, (name, s) in zip(axes, scores.items(), strict=True):
        s = np.asarray(s).reshape(-1)
        for mask, label, color in ((y, "signal", "tab:red"), (~y, "background", "tab:blue")):
            ax.hist(s[mask], bins=edges, density=True, histtype="step", lw=1.6, color=color,
                    label=f"{label} ({int(mask.sum()):,} events)")
        ax.set(title=f"Score distribution — {name}", xlabel="predicted signal probability",
               ylabel="probability density (1 / unit score)", xlim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI)
    return Path(path)


def plot_history(path: str | Path, history: Mapping[str, Sequence[float]]) -> Path:
    """Write training curves: loss, AUC and learning rate per epoch.

    Args:
        path: PNG file to write.
        history: ``RUN/history.json`` — lists keyed ``epoch``, ``loss``, ``val_loss``,
            ``auc``, ``val_auc``, ``lr`` (missing keys are skipped).

    Returns:
        The PNG path.
    """
    from matplotlib.ticker import MaxNLocator

    n = max((len(v) for v in history.values() if isinstance(v, Sequence)), default=0)
    epochs = list(history.get("epoch") or range(n))
    epochs = [e + 1 for e in epochs] if epochs and min(epochs) == 0 else epochs
    fig, (loss_ax, auc_ax, lr_ax) = _figure(3, width=4.4)
    for ax, keys, title, ylabel in (
        (loss_ax, ("loss", "val_loss"), "Loss", "binary cross-entropy (nats per event)"),
        (auc_ax, ("auc", "val_auc"), "AUC (Keras, 200 thresholds)", "ROC AUC (fraction)"),
        (lr_ax, ("lr",), "Learning rate", "learning rate (dimensionless)"),
    ):
        for key in keys:
            values = history.get(key)
            if values:
                ax.plot(epochs[:len(values)], values, marker="o", ms=3,
                        label="validation" if key.startswith("val_") else "training")
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax is lr_ax and history.get("lr"):
            ax.set_yscale("log")
        elif ax.lines:
            ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI)
    return Path(path)


# --- report.md -----------------------------------------------------------------------------


def _f(x: Any, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def _level(fraction: str) -> str:
    """'0.999' → '99.9%' (working-point names, without trailing zeros)."""
    return f"{100 * float(fraction):g}%"


def _method(m: Mapping[str, Any]) -> str:
    return {"delong": "DeLong"}.get(m.get("auc_ci_method", "delong"), str(m.get("auc_ci_method")))


def _config_section(config_yaml: str) -> list[str]:
    """Key settings as a table, the whole resolved config folded below it."""
    import yaml

    cfg = yaml.safe_load(config_yaml) or {}
    keys = {"model": ("features", "blocks", "units", "activation", "dropout", "batch_norm", "wide"),
            "train": ("epochs", "batch_size_per_replica", "optimizer", "learning_rate", "schedule",
                      "strategy", "workers", "mixed_precision"),
            "evaluate": ("batch_size", "auc_floor", "max_auc_regression", "baseline",
                         "baseline_rows", "baseline_trees", "bootstrap")}
    lines = ["## Configuration", "", f"Preset `{cfg.get('preset', '?')}`.", "",
             "| section | setting | value |", "|---|---|---|"]
    for section, names in keys.items():
        for name in names:
            if name in (cfg.get(section) or {}):
                lines.append(f"| {section} | {name} | `{cfg[section][name]}` |")
    return [*lines, "", "<details><summary>Full resolved config (config.yaml)</summary>", "",
            "```yaml", config_yaml.rstrip(), "```", "", "</details>", ""]


def _metrics_table(m: Mapping[str, Any]) -> list[str]:
    base = m.get("baseline") or {}
    bdt_name = "BDT baseline" if base else "BDT baseline (off)"
    ci = m["auc_ci95"]
    bci = base.get("auc_ci95")
    rows = [
        f"| metric (test split, {m['test_rows']:,} rows) | deep model | {bdt_name} |",
        "|---|---:|---:|",
        f"| ROC AUC (exact, all rows) | **{_f(m['auc'])}** | {_f(base.get('auc'))} |",
        f"| AUC 95% interval ({_method(m)}) | {_f(ci[0])} – {_f(ci[1])} | "
        f"{f'{_f(bci[0])} – {_f(bci[1])}' if bci else '—'} |",
    ]
    if m.get("auc_ci95_bootstrap"):
        b = m["auc_ci95_bootstrap"]
        rows.append(f"| AUC 95% interval (bootstrap) | {_f(b[0])} – {_f(b[1])} | — |")
    rows += [
        f"| Keras AUC estimate (200 thresholds) | {_f(m.get('keras_auc'))} | — |",
        f"| exact − Keras estimate | {_f(m.get('keras_auc_diff'), 6)} | — |",
        f"| accuracy at 0.5 | {_pct(m['accuracy'])} | {_pct(base.get('accuracy'))} |",
        f"| log loss | {_f(m['log_loss'])} | {_f(base.get('log_loss'))} |",
    ]
    wp, bwp = m["working_points"], base.get("working_points") or {}
    for key, values in wp["signal_efficiency_at_background_rejection"].items():
        other = (bwp.get("signal_efficiency_at_background_rejection") or {}).get(key)
        rows.append(f"| signal efficiency at {_level(key)} background rejection | "
                    f"{_pct(values)} | {_pct(other)} |")
    for key, values in wp["background_rejection_at_signal_efficiency"].items():
        other = (bwp.get("background_rejection_at_signal_efficiency") or {}).get(key)
        rows.append(f"| background rejection at {_level(key)} signal efficiency | "
                    f"{_pct(values)} | {_pct(other)} |")
    return rows


# How report.md names each feature set (pipeline.core.schema.FEATURE_SETS), as in Baldi et al. 2014.
FEATURE_SET_TITLES = {"low": "low-level", "high": "high-level", "all": "complete"}


def feature_set_line(m: Mapping[str, Any]) -> str:
    """One sentence naming the feature set both classifiers read (from ``metrics.json``)."""
    name = m.get("feature_set", "all")
    names = m.get("feature_names") or []
    title = FEATURE_SET_TITLES.get(name, name)
    if name == "all":
        return f"Features: **{title}** (`model.features=all`, all {len(names) or 28} columns)."
    return (f"Features: **{title}** (`model.features={name}`, {len(names)} of 28 columns: "
            f"{', '.join(f'`{n}`' for n in names)}); the model selects them inside its graph "
            "and still serves [None, 28] rows, and the BDT baseline reads the same columns.")
def _provenance_section(provenance: Mapping[str, Any] | None, m: Mapping[str, Any]) -> list[str]:
    lines = ["## Provenance", ""]
    if not provenance:
        return [*lines, "This run has no `provenance.json` (trained before provenance was recorded); "
                        "`higgs publish` refuses it — retrain it.", ""]
    p = provenance
    package = (p.get("code") or {}).get("package_version") or "—"
    packages = ", ".join(f"{k} {v or '—'}" for k, v in (p.get("packages") or {}).items())
    trained = p.get("dataset") or {}
    evaluated_on = m.get("dataset_fingerprint")
    same = ("the same dataset" if trained.get("fingerprint") == evaluated_on
            else "**a different dataset** (publish refuses it)")
    lines += [
        "| | |", "|---|---|",
        f"| code | `{provenance_lib.code_label(p)}` (package {package}) |",
        f"| packages | {packages} |",
        f"| dataset trained on | `{trained.get('fingerprint') or '—'}` ({trained.get('uri', '—')}) |",
        f"| dataset evaluated on | `{evaluated_on or '—'}` ({same}) |",
        f"| model.keras sha256 | `{m.get('model_sha256') or '—'}` |",
        f"| config sha256 | `{p.get('config_sha256', '—')}` (preset {p.get('preset', '—')}) |",
        f"| strategy | {p.get('strategy', '—')}, {p.get('replicas', '—')} replica(s), "
        f"{p.get('workers', '—')} worker(s) |",
        f"| trained | {p.get('created_at', '—')} by {p.get('user', '—')} on {p.get('host', '—')} |",
        "",
    ]
    return lines


def _data_section(data: str, manifest: Mapping[str, Any]) -> list[str]:
    rows = manifest.get("rows", {})
    src = manifest.get("source") or {}
    checksum = src.get("sha256") or src.get("crc32c") or "—"
    lines = [
        "## Data", "",
        f"- dataset: `{data}`",
        f"- source: `{src.get('uri', '—')}` ({src.get('bytes', 0):,} bytes, checksum `{checksum}`)",
        f"- bad rows dropped by the converter: {manifest.get('bad_rows', 0):,}{_by_kind(manifest)}",
        "",
        "| split | rows | signal fraction | shards |", "|---|---:|---:|---:|",
    ]
    fractions = manifest.get("signal_fraction") or {}
    for split, n in rows.items():
        frac = fractions.get(split) if isinstance(fractions, Mapping) else None
        lines.append(f"| {split} | {int(n):,} | {_pct(frac, 1) if frac is not None else '—'} | "
                     f"{len(manifest.get('shards', {}).get(split, []))} |")
    stats = _feature_stats(manifest)
    if stats:
        cols = [c for c in ("mean", "std", "min", "max") if any(c in s for s in stats.values())]
        lines += ["", "<details><summary>Per-feature statistics</summary>", "",
                  "| feature | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for name, s in stats.items():
            lines.append(f"| {name} | " + " | ".join(_f(s.get(c)) for c in cols) + " |")
        lines += ["", "</details>"]
    return [*lines, ""]


def _by_kind(manifest: Mapping[str, Any]) -> str:
    kinds = manifest.get("bad_rows_by_kind")
    if not isinstance(kinds, Mapping) or not any(kinds.values()):
        return ""
    return " (" + ", ".join(f"{k}: {v:,}" for k, v in kinds.items() if v) + ")"


def _feature_stats(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-feature stats from the manifest, whichever of the common shapes it uses."""
    for key in ("feature_stats", "stats", "statistics"):
        value = manifest.get(key)
        if isinstance(value, Mapping):
            if isinstance(value.get("features"), Mapping):
                value = value["features"]
            elif isinstance(value.get("training"), Mapping):
                value = value["training"]
            if all(isinstance(v, Mapping) for v in value.values()):
                return {str(k): dict(v) for k, v in value.items()}
            # Column-wise layout: {"mean": [28 values], "std": [...]}.
            if all(isinstance(v, list) for v in value.values()):
                names = manifest.get("features", [])
                return {n: {k: v[i] for k, v in value.items() if i < len(v)}
                        for i, n in enumerate(names)}
    return {}


def _validation_section(validation: Mapping[str, Any] | None) -> list[str]:
    """The data validation's anomalies (none: one line), from ``blessing["data_validation"]``."""
    if not validation or not validation.get("compared"):
        return []
    lines = ["## Data validation", "", validation["headline"], ""]
    anomalies = validation.get("anomalies") or []
    if anomalies:
        lines += ["| feature | statistic | scope | value | threshold | status |",
                  "|---|---|---|---:|---:|---|"]
        lines += [f"| {a['feature']} | {a['statistic']} | {a['scope'] or '—'} | {_f(a['value'])} | "
                  f"{_f(a['threshold'])} | {a['status']} |" for a in anomalies]
        lines.append("")
    return lines


def _history_section(history: Mapping[str, Sequence[float]]) -> list[str]:
    # weight_norm: total Frobenius norm of the kernels (pipeline.training.optim.WeightNormCallback).
    keys = [k for k in ("loss", "val_loss", "auc", "val_auc", "accuracy", "val_accuracy", "lr", "weight_norm")
            if history.get(k)]
    if not keys:
        return ["## Training history", "", "No history.json in the run directory.", ""]
    n = max(len(history[k]) for k in keys)
    epochs = list(history.get("epoch") or range(n))
    lines = ["## Training history", "", f"![training curves]({HISTORY_PNG})", "",
             "| epoch | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for i in range(n):
        cells = [_f(float(history[k][i]), 6 if k == "lr" else 4) if i < len(history[k]) else "—"
                 for k in keys]
        epoch = epochs[i] + 1 if epochs and min(epochs) == 0 else epochs[i]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_markdown(
    path: str | Path,
    *,
    run_dir: str,
    data: str,
    manifest: Mapping[str, Any],
    config_yaml: str,
    history: Mapping[str, Sequence[float]],
    metrics_dict: Mapping[str, Any],
    blessing: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.md``: data, configuration, history, metrics, baseline, blessing, provenance.

    Args:
        path: the markdown file to write.
        run_dir: the run directory (for the title).
        data: the dataset location.
        manifest: the dataset manifest.
        config_yaml: the resolved config as YAML text.
        history: the training history (lists per key).
        metrics_dict: the ``metrics.json`` content.
        blessing: the ``blessing.json`` content.
        provenance: the run's ``provenance.json`` (None for a run trained without one).

    Returns:
        The markdown path.
    """
    m = metrics_dict
    decision = "**BLESSED**" if blessing["blessed"] else "**NOT blessed**"
    base = m.get("baseline")
    lines = [
        f"# HIGGS run report — `{Path(run_dir).name}`", "",
        f"Evaluated {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} on "
        f"{m['test_rows']:,} test rows. Blessing: {decision}.", "",
        feature_set_line(m), "",
        *_data_section(data, manifest),
        *_config_section(config_yaml),
        *_history_section(history),
        "## Metrics: deep model vs BDT baseline", "",
        *_metrics_table(m), "",
    ]
    background = m["test_rows"] - m.get("signal_rows", 0)
    tightest = max((float(k) for k in m["working_points"]["signal_efficiency_at_background_rejection"]),
                   default=0.0)
    passing = background * (1.0 - tightest)
    if m.get("signal_rows") is not None and passing < 100:
        lines += [f"Note: at {_level(str(tightest))} background rejection only ~{passing:.0f} of the "
                  f"{background:,} background test events pass, so that working point is "
                  f"statistically loose (relative error ~{1 / max(passing, 1) ** 0.5:.0%}).", ""]
    if base:
        lines += [f"Baseline: {base['description']['model']}, {base['description']['trees']} trees "
                  f"trained on {base['description']['train_rows']:,} training rows in "
                  f"{base['description']['fit_seconds']:.1f} s. Deep − BDT AUC: "
                  f"{m['auc'] - base['auc']:+.4f}.", ""]
    lines += [
        "The exact AUC ranks every test row (ties count one half); its 95% interval is "
        "DeLong's (Sun & Xu 2014 fast algorithm), two-sided normal. "
        "Keras' streaming AUC bins scores into 200 thresholds and is shown for comparison.", "",
        f"![ROC curve]({ROC_PNG})", "", f"![score distributions]({SCORES_PNG})", "",
        "## Blessing", "",
        f"Decision: {decision} (candidate AUC {_f(blessing.get('candidate_auc'))}, published AUC "
        f"{_f(blessing.get('published_auc'))}, floor {_f(blessing.get('floor'))}).", "",
        *[f"- {r}" for r in blessing.get("reasons", [])], "",
        *_validation_section(blessing.get("data_validation")),
    ]
    export = m.get("export")
    if export:
        lines += ["## Export", "",
                  f"SavedModel `{export['path']}` (serving signature `serving_default`: "
                  "`features` float32 [None, 28] → `probability` float32 [None, 1]); reload check "
                  f"on {export['reload_rows']:,} test rows: max |difference| "
                  f"{export['reload_max_abs_diff']:.2e}.", ""]
    lines += _provenance_section(provenance, m)
    Path(path).write_text("\n".join(lines))
    return Path(path)
