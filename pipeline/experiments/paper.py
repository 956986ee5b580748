"""The paper's experiment as one run: Table 1 of Baldi, Sadowski & Whiteson (2014).

    higgs paper --preset paper                                  # generated data, CPU-sized
    higgs paper --preset full --data data/HIGGS --out runs/table1  # the real file, an accelerator
    python -c "from pipeline.core.config import load_config; from pipeline.experiments import paper; \
print(paper.run_paper(load_config('paper')).markdown)"

*Searching for exotic particles in high-energy physics with deep learning* (Nature
Communications 5:4308) asks whether a deep network learns from the 21 low-level detector
features what physicists encode in the 7 high-level masses. Its Table 1 compares a boosted
decision tree and a deep network on the low-level, high-level and complete feature sets.
:func:`run_paper` repeats that comparison on one converted dataset with the pipeline's own
steps: for each feature set (``model.features`` = ``low``, ``high``, ``all``) it trains the deep
model (:func:`pipeline.backends.train`, or the trainer the caller passes) and evaluates it with
:func:`pipeline.evaluation.evaluate.evaluate_run`, which fits the LightGBM baseline on the same
columns and scores both on every test row. Then it writes the table: AUC with its DeLong 95 %
interval per (model, feature set), the paper's published figures beside ours, three checks of the
paper's pattern, and the six ROC curves in one plot.

The output directory (this module owns its layout)::

    OUT/config.yaml        the resolved base config (each run's own config.yaml adds its feature set)
    OUT/low/ OUT/high/ OUT/all/
                           one run directory per feature set (the run-directory contract:
                           model/, report/metrics.json, report/report.md, ...)
    OUT/table.json         the six AUCs with intervals, the paper's figures, the pattern checks
    OUT/table.md           the report shaped like Table 1
    OUT/roc.png            the six ROC curves on the same test rows

The table files are removed when a run starts and written only when all six models are
evaluated, so a failed run never leaves a table that mixes old and new numbers. A run
directory that already holds a finished training with the identical config is evaluated again
without retraining (re-running after a failure resumes where it stopped).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import rundir, schema, storage
from pipeline.core.config import Config, to_yaml, write_config
from pipeline.core.errors import PipelineError
from pipeline.core.rundir import TrainResult

log = logging.getLogger(__name__)

# Table 1's column order and titles (low-level, high-level, complete).
FEATURE_SETS: tuple[str, ...] = ("low", "high", "all")
TITLES = {"low": "low-level", "high": "high-level", "all": "complete"}
MODELS: tuple[str, ...] = ("bdt", "deep")
MODEL_TITLES = {"bdt": "BDT (LightGBM)", "deep": "deep network (wide & deep)"}

# The AUCs of Table 1 of the paper on the real HIGGS file: boosted decision trees (BDT), a
# shallow network (NN, one hidden layer) and the deep network (DN, 5 layers of 300 units), as
# they are usually cited (the paper's text could not be re-checked here). The
# shallow network is shown for context only: this run trains no shallow network.
PAPER_AUC: dict[str, dict[str, float]] = {
    "bdt": {"low": 0.73, "high": 0.78, "all": 0.81},
    "nn": {"low": 0.733, "high": 0.777, "all": 0.816},
    "deep": {"low": 0.880, "high": 0.800, "all": 0.885},
}
PAPER = "Baldi, Sadowski & Whiteson, Nature Communications 5:4308 (2014), Table 1"

CONFIG_FILE, TABLE_JSON, TABLE_MD, ROC_PNG = "config.yaml", "table.json", "table.md", "roc.png"

Trainer = Callable[[Config, str, str], TrainResult]


class PaperError(PipelineError):
    """The experiment cannot run (bad output location, inconsistent runs); one line with the fix."""


def run_dir(out: str | Path, feature_set: str) -> str:
    """``OUT/<feature_set>``: the run directory of one feature set."""
    return storage.join(str(out), feature_set)


def table_paths(out: str | Path) -> dict[str, str]:
    """Where the table files go: ``{"json": OUT/table.json, "md": OUT/table.md, "roc": OUT/roc.png}``."""
    return {"json": storage.join(str(out), TABLE_JSON), "md": storage.join(str(out), TABLE_MD),
            "roc": storage.join(str(out), ROC_PNG)}


def default_out(cfg: Config) -> str:
    """``<runs_root>/paper-<YYYYMMDD-HHMMSS>-<preset>`` (UTC now)."""
    from pipeline import chain

    return storage.join(cfg.runtime.runs_root, f"paper-{chain.run_id_for(cfg)}")


def feature_set_config(cfg: Config, feature_set: str) -> Config:
    """``cfg`` with ``model.features = feature_set`` and the BDT baseline on.

    Raises:
        PaperError: an unknown feature set.
    """
    if feature_set not in schema.FEATURE_SETS:
        raise PaperError(f"unknown feature set {feature_set!r}; choose from {', '.join(FEATURE_SETS)}")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, features=feature_set),
                               evaluate=dataclasses.replace(cfg.evaluate, baseline=True))


@dataclass
class SetResult:
    """One feature set's deep model and BDT, evaluated on the test split.

    Attributes:
        feature_set: ``low``, ``high`` or ``all``.
        run_dir: its run directory.
        metrics: its ``metrics.json`` (deep model; the BDT under ``baseline``).
        labels: test labels (float32 [test_rows]).
        scores: ``{"deep": ..., "bdt": ...}`` signal scores on the same rows.
        train_seconds: wall time of training (0 when a finished run was reused).
        evaluate_seconds: wall time of evaluation (BDT fit included).
        reused: True when the trained model was found finished and not trained again.
    """

    feature_set: str
    run_dir: str
    metrics: dict[str, Any]
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    train_seconds: float = 0.0
    evaluate_seconds: float = 0.0
    reused: bool = False


@dataclass
class PaperTable:
    """What :func:`write_table` wrote.

    Attributes:
        out: the output directory.
        table: the ``table.json`` content.
        markdown: the ``table.md`` text.
        paths: ``{"json", "md", "roc"}`` file locations.
    """

    out: str
    table: dict[str, Any]
    markdown: str
    paths: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for people: the six AUCs beside the paper's and where the files are."""
        lines = [f"{'':28s}" + "".join(f"{TITLES[s]:>22s}" for s in FEATURE_SETS)]
        for model in MODELS:
            cells = []
            for s in FEATURE_SETS:
                e = entry(self.table, model, s)
                cells.append(f"{e['auc']:.4f} (paper {e['paper_auc']:.3f})")
            lines.append(f"{MODEL_TITLES[model]:28s}" + "".join(f"{c:>22s}" for c in cells))
        lines += [f"  {c['check']}: {'yes' if c['holds'] else 'no'} ({c['ours']})"
                  for c in self.table["pattern"]]
        lines.append(f"wrote {self.paths['md']}, {self.paths['roc']}, {self.paths['json']}")
        return "\n".join(lines)


def entry(table: Mapping[str, Any], model: str, feature_set: str) -> dict[str, Any]:
    """The ``table.json`` entry of one (model, feature set).

    Raises:
        KeyError: no such entry.
    """
    for e in table["entries"]:
        if e["model"] == model and e["feature_set"] == feature_set:
            return e
    raise KeyError(f"no entry for {model}/{feature_set}")


# --- the run -----------------------------------------------------------------------------------


def prepare_data(cfg: Config, data: str | None = None, beam_args: Sequence[str] = ()) -> str:
    """Return a converted dataset: ``data`` if given, else the config's source converted.

    Without ``data`` this is the chain's source and convert steps (download or generate, then
    the Beam conversion, reused when already built from the same source and options).

    Args:
        cfg: the resolved config (``data`` section).
        data: an existing dataset directory (local or gs://), used as is.
        beam_args: extra Beam options for the conversion.

    Returns:
        The dataset directory.
    """
    from pipeline import chain
    from pipeline.data import dataset

    if data:
        dataset.load_manifest(data)  # fail on a bad path before any training
        return data
    path = chain.default_paths(cfg).data
    source = chain.step_source(cfg)
    chain.step_convert(cfg, source.path, path, beam_args)
    return path


def run_feature_set(cfg: Config, data: str, out: str, feature_set: str,
                    train: Trainer | None = None) -> SetResult:
    """Train and evaluate the deep model and the BDT on one feature set.

    Args:
        cfg: the resolved base config (its ``model.features`` is replaced).
        data: the converted dataset.
        out: the experiment's output directory (the run goes to ``OUT/<feature_set>``).
        feature_set: ``low``, ``high`` or ``all``.
        train: the trainer ``(cfg, data, run_dir) -> TrainResult``; default
            :func:`pipeline.backends.train` (in-process, a local cluster or Vertex AI, as the
            config says).

    Returns:
        The :class:`SetResult` with both classifiers' scores on the test split.
    """
    from pipeline.evaluation import evaluate

    fs_cfg = feature_set_config(cfg, feature_set)
    run = run_dir(out, feature_set)
    reused = finished(run, fs_cfg)
    start = time.perf_counter()
    if reused:
        log.info("paper: %s features — %s already holds this training; evaluating it again", feature_set, run)
    else:
        if train is None:
            from pipeline import backends

            train = backends.train
        log.info("paper: %s features — training into %s", feature_set, run)
        train(fs_cfg, data, run)
    train_seconds = 0.0 if reused else time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate.evaluate_run(fs_cfg, data, run)
    if result.metrics.get("feature_set") != feature_set:
        raise PaperError(f"{run} was trained on the {result.metrics.get('feature_set')!r} feature set, "
                         f"not {feature_set!r}; delete it and run 'higgs paper' again")
    evaluate_seconds = time.perf_counter() - start
    log.info("paper: %s features — deep AUC %.4f, BDT AUC %.4f", feature_set, result.metrics["auc"],
             result.metrics["baseline"]["auc"])
    return SetResult(feature_set=feature_set, run_dir=run, metrics=result.metrics, labels=result.labels,
                     scores={"deep": result.deep, "bdt": result.baseline}, train_seconds=train_seconds,
                     evaluate_seconds=evaluate_seconds, reused=reused)


def finished(run: str, cfg: Config) -> bool:
    """True when ``run`` holds a completed training of exactly ``cfg``.

    Completed: ``model/model.keras`` exists and no BackupAndRestore backup is left (Keras
    deletes its files when ``fit`` ends, an interrupted run keeps them); exactly:
    ``config.yaml`` is ``cfg``'s YAML.
    """
    config = Path(rundir.config_path(run))
    backup = Path(rundir.backup_dir(run))
    interrupted = backup.is_dir() and any(p.is_file() for p in backup.rglob("*"))
    return (Path(rundir.model_path(run)).is_file() and not interrupted
            and config.is_file() and config.read_text() == to_yaml(cfg))


def run_paper(cfg: Config, data: str | None = None, out: str | None = None, *,
              train: Trainer | None = None, beam_args: Sequence[str] = (),
              feature_sets: Sequence[str] = FEATURE_SETS) -> PaperTable:
    """Run the whole experiment: the dataset, three trainings and evaluations, the table.

    Args:
        cfg: the resolved config (e.g. the ``paper`` preset on generated data, ``full`` on the
            real file).
        data: a converted dataset; default: the config's source, converted (:func:`prepare_data`).
        out: local output directory; default :func:`default_out`.
        train: the trainer (default :func:`pipeline.backends.train`).
        beam_args: extra Beam options when the data is converted here.
        feature_sets: the columns of the table (default all three, in the paper's order).

    Returns:
        The :class:`PaperTable` written to ``out``.

    Raises:
        PaperError: ``out`` is remote, or the runs do not share their test rows.
        PipelineError: from whichever step failed (nothing of the table is written then).
    """
    out = begin(cfg, out)
    data = prepare_data(cfg, data, beam_args)
    results = [run_feature_set(cfg, data, out, s, train) for s in feature_sets]
    return write_table(cfg, data, out, results)


def begin(cfg: Config, out: str | None = None) -> str:
    """Check the output directory, remove an earlier table from it and write ``OUT/config.yaml``.

    Args:
        cfg: the resolved base config.
        out: the output directory (default :func:`default_out`).

    Returns:
        The output directory.

    Raises:
        PaperError: ``out`` is remote or a file.
    """
    out = out or default_out(cfg)
    check_out(out)
    for path in table_paths(out).values():  # a failed run must not leave the previous run's table
        Path(path).unlink(missing_ok=True)
    write_config(cfg, storage.join(out, CONFIG_FILE))
    return out


def check_out(out: str) -> None:
    """Fail in one line unless ``out`` is a usable local directory.

    Raises:
        PaperError: ``out`` is a remote location or an existing file.
    """
    if "://" in out:
        raise PaperError(f"output directory {out} must be a local path (training writes run "
                         "directories there); 'higgs publish' copies a run to gs:// afterwards")
    if Path(out).exists() and not Path(out).is_dir():
        raise PaperError(f"output {out} is a file, not a directory; choose another --out")


# --- the table ---------------------------------------------------------------------------------


def build_table(cfg: Config, data: str, results: Sequence[SetResult]) -> dict[str, Any]:
    """The ``table.json`` content from the evaluated feature sets.

    Args:
        cfg: the base config.
        data: the dataset.
        results: one :class:`SetResult` per feature set.

    Returns:
        ``{"paper", "data", "preset", "test_rows", "entries": [...], "pattern": [...], ...}``;
        each entry has ``model``, ``feature_set``, ``auc``, ``auc_ci95``, ``paper_auc``,
        ``run_dir``.

    Raises:
        PaperError: the runs were not scored on the same test rows.
    """
    first = results[0]
    for r in results[1:]:
        if r.labels.shape != first.labels.shape or not np.array_equal(r.labels, first.labels):
            raise PaperError(f"{r.run_dir} and {first.run_dir} were scored on different test rows; "
                             "run all feature sets on one dataset")
    entries = []
    for r in results:
        base = r.metrics["baseline"]
        for model, m in (("bdt", base), ("deep", r.metrics)):
            entries.append({
                "model": model, "feature_set": r.feature_set,
                "features": len(schema.FEATURE_SETS[r.feature_set]),
                "auc": m["auc"], "auc_ci95": m["auc_ci95"], "auc_std": m.get("auc_std"),
                "paper_auc": PAPER_AUC[model][r.feature_set],
                "run_dir": r.run_dir,
            })
    table: dict[str, Any] = {
        "paper": PAPER, "paper_auc": PAPER_AUC,
        "data": data, "preset": cfg.preset,
        "test_rows": int(first.labels.size), "signal_rows": int((first.labels > 0.5).sum()),
        "model": {k: getattr(cfg.model, k) for k in ("blocks", "units", "dropout", "wide")},
        "train": {k: getattr(cfg.train, k) for k in ("epochs", "batch_size_per_replica", "optimizer",
                                                     "learning_rate", "schedule")},
        "baseline": {k: v for k, v in first.metrics["baseline"]["description"].items()
                     if k not in ("feature_set", "features")},
        "entries": entries,
        "seconds": {r.feature_set: {"train": round(r.train_seconds, 1),
                                    "evaluate": round(r.evaluate_seconds, 1), "reused": r.reused}
                    for r in results},
    }
    table["pattern"] = pattern_checks(table)
    return table


def pattern_checks(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's pattern, checked on our AUCs (only where the needed feature sets ran).

    1. *deep(low) well above BDT(low)*: the deep model's interval lies above the BDT's;
    2. *deep(all) ≥ BDT(all)*: the deep model is not significantly below (its upper bound
       reaches the BDT's AUC);
    3. *deep(low) approaching deep(all)*: the deep model on the low-level features recovers at
       least 90 % of the AUC the complete set gains over BDT(low) — ``(deep(low) − BDT(low)) /
       (deep(all) − BDT(low))``; the paper's figures give 97 %.

    Returns:
        One dict per check: ``check``, ``holds``, ``ours`` (text), ``paper`` (text), ``value``.
    """
    have = {(e["model"], e["feature_set"]): e for e in table["entries"]}
    paper = {(m, s): PAPER_AUC[m][s] for m in MODELS for s in FEATURE_SETS}
    checks = []
    for fs, name in (("low", "deep(low) well above BDT(low)"), ("all", "deep(all) >= BDT(all)")):
        if ("deep", fs) not in have or ("bdt", fs) not in have:
            continue
        d, b = have[("deep", fs)], have[("bdt", fs)]
        holds = d["auc_ci95"][0] > b["auc_ci95"][1] if fs == "low" else d["auc_ci95"][1] >= b["auc"]
        checks.append({"check": name, "holds": bool(holds), "value": d["auc"] - b["auc"],
                       "ours": f"{d['auc'] - b['auc']:+.4f}",
                       "paper": f"{paper[('deep', fs)] - paper[('bdt', fs)]:+.3f}"})
    if {("deep", "low"), ("deep", "all"), ("bdt", "low")} <= set(have):
        dl, da, bl = (have[k]["auc"] for k in (("deep", "low"), ("deep", "all"), ("bdt", "low")))
        recovered = (dl - bl) / (da - bl) if da > bl else float("nan")
        pl, pa, pb = paper[("deep", "low")], paper[("deep", "all")], paper[("bdt", "low")]
        checks.append({"check": "deep(low) approaching deep(all)", "holds": bool(recovered >= 0.9),
                       "value": recovered,
                       "ours": f"gap {da - dl:.4f}, " + (f"{recovered:.0%} of the complete set's gain "
                                                         "recovered" if np.isfinite(recovered) else
                                                         "deep(all) does not beat BDT(low)"),
                       "paper": f"gap {pa - pl:.3f}, {(pl - pb) / (pa - pb):.0%} recovered"})
    return checks


def write_table(cfg: Config, data: str, out: str, results: Sequence[SetResult]) -> PaperTable:
    """Write ``table.json``, ``table.md`` and ``roc.png`` (each atomically) for evaluated results.

    Args:
        cfg: the base config.
        data: the dataset.
        out: the output directory.
        results: one :class:`SetResult` per feature set, all on the same test rows.

    Returns:
        The :class:`PaperTable`.
    """
    from pipeline.evaluation import report

    table = build_table(cfg, data, results)
    paths = table_paths(out)
    scores = {f"{MODEL_TITLES[m].split(' (')[0]}, {TITLES[r.feature_set]}": r.scores[m]
              for m in ("deep", "bdt") for r in results}
    tmp_png = f"{paths['roc']}.tmp-{os.getpid()}.png"
    report.plot_roc(tmp_png, results[0].labels, scores)
    os.replace(tmp_png, paths["roc"])
    markdown = table_markdown(table, out)
    _write_atomic(paths["json"], json.dumps(_json_ready(table), indent=1) + "\n")
    _write_atomic(paths["md"], markdown)  # last: its presence means the table is complete
    log.info("paper: wrote %s", paths["md"])
    return PaperTable(out=out, table=table, markdown=markdown, paths=paths)


def table_markdown(table: Mapping[str, Any], out: str) -> str:
    """The report shaped like Table 1: ours with intervals beside the paper's, checks, ROC plot."""
    sets = [s for s in FEATURE_SETS if any(e["feature_set"] == s for e in table["entries"])]
    head = "| technique | " + " | ".join(f"{TITLES[s]} ({len(schema.FEATURE_SETS[s])})" for s in sets) + " |"
    lines = [
        f"# Table 1 on `{table['data']}`", "",
        f"The comparison of {table['paper']}: AUC on every test row ({table['test_rows']:,} events, "
        f"{table['signal_rows']:,} signal) with its DeLong 95 % interval, ours beside the paper's "
        "(which are on the real HIGGS file).", "",
        head, "|---|" + "---:|" * len(sets),
    ]
    for model, paper_name in (("bdt", "BDT"), ("deep", "DN")):
        cells = []
        for s in sets:
            e = entry(table, model, s)
            lo, hi = e["auc_ci95"]
            cells.append(f"**{e['auc']:.4f}** ({lo:.4f}–{hi:.4f})")
        lines.append(f"| {MODEL_TITLES[model]}, this run | " + " | ".join(cells) + " |")
        paper_cells = " | ".join(f"{PAPER_AUC[model][s]:.3f}" for s in sets)
        lines.append(f"| {paper_name}, paper | {paper_cells} |")
    lines.append("| shallow NN, paper (not trained here) | "
                 + " | ".join(f"{PAPER_AUC['nn'][s]:.3f}" for s in sets) + " |")
    lines += ["", "## The paper's pattern", "", "| check | holds | this run | paper |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {'yes' if c['holds'] else '**no**'} | {c['ours']} | {c['paper']} |"
              for c in table["pattern"]]
    base = table["baseline"]
    m, t = table["model"], table["train"]
    lines += [
        "", "Checks: (1) the deep model's interval lies above the BDT's; (2) the deep model's upper "
        "bound reaches the BDT's AUC; (3) (deep(low) − BDT(low)) / (deep(all) − BDT(low)) ≥ 90 %.", "",
        "## Setup", "",
        f"- preset `{table['preset']}`; deep model: {m['blocks']} blocks × {m['units']} units, dropout "
        f"{m['dropout']}, wide part {'on' if m['wide'] else 'off'}; {t['epochs']} epochs of batch "
        f"{t['batch_size_per_replica']} per replica, {t['optimizer']} at {t['learning_rate']:g} "
        f"({t['schedule']} schedule)",
        f"- BDT: {base.get('model')}, {base.get('trees')} trees on {base.get('train_rows', 0):,} "
        f"training rows (params {base.get('params')})",
        "- both read the same columns per feature set (`model.features`); the deep model selects them "
        "inside its graph, so each SavedModel still serves [None, 28] rows",
        "", "| feature set | run | training | evaluation (incl. BDT fit) |", "|---|---|---:|---:|",
    ]
    for s in sets:
        sec = table["seconds"][s]
        run = entry(table, "deep", s)["run_dir"]
        rel = os.path.relpath(run, out) if not storage.is_gcs(run) else run
        train = "reused" if sec["reused"] else f"{sec['train']:.0f} s"
        lines.append(f"| {TITLES[s]} | [`{rel}/`]({rel}/report/report.md) | {train} | "
                     f"{sec['evaluate']:.0f} s |")
    lines += ["", f"![ROC curves of the six models]({ROC_PNG})", ""]
    return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
