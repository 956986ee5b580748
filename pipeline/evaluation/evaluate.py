"""Evaluate a trained run on the whole test split and write ``RUN/report/``.

    higgs evaluate --data data/sample --run runs/try
    python -c "from pipeline.core.config import load_config; \
from pipeline.evaluation.evaluate import evaluate; \
print(evaluate(load_config('sample'), 'data/sample', 'runs/try')['auc'])"

One pass over the test shards in batches (memory bounded by the batch, plus one float per
test row for the exact AUC): the deep model's predictions, Keras' 200-threshold streaming
AUC for comparison, and — when ``evaluate.baseline`` is on — the LightGBM baseline's
predictions on the same rows. Then, in ``RUN/report/``:

* ``metrics.json`` (contract: ``auc``, ``auc_ci95``, ``accuracy``, ``log_loss``,
  ``test_rows``; plus ``feature_set`` and ``feature_names`` (the columns both the model and
  the baseline read, ``model.features``), ``keras_auc``, ``keras_auc_diff``,
  ``working_points``, ``baseline``, ``blessed`` and more),
* ``blessing.json`` — the decision against ``evaluate.auc_floor``, the currently
  published model (``OUT/latest.json``) and the data validation, with its reasons; written
  last (``higgs publish`` needs it), and removed first, so a failed re-evaluation leaves no
  stale decision. It and ``metrics.json`` record what was evaluated — ``model_sha256`` (of
  ``model.keras``) and ``dataset_fingerprint`` (sha256 of the dataset's ``manifest.json``) —
  so ``higgs publish`` refuses a report that belongs to another model file or dataset,
* ``report.md`` (with the run's provenance), ``roc.png``, ``scores.png``, ``history.png``;

and ``RUN/model/saved_model/`` is exported if missing, with a reload check on test rows.
:func:`evaluate_run` does the same and also returns the test labels and both classifiers'
scores (``higgs paper`` draws several runs' ROC curves in one plot from them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core import checksums, rundir, schema
from pipeline.core.config import Config, EvaluateConfig, read_config, to_yaml
from pipeline.core.errors import PipelineError
from pipeline.data import dataset, verify
from pipeline.evaluation import export, metrics, report

if TYPE_CHECKING:
    from pipeline.data.validate import ValidationReport

log = logging.getLogger(__name__)

KERAS_AUC_THRESHOLDS = 200  # tf.keras.metrics.AUC's default: what training logs show
RELOAD_CHECK_ROWS = 4096


class EvaluateError(PipelineError):
    """The run or dataset cannot be evaluated; the message says what is missing."""


def read_batches(
    data: str | dataset.Dataset, split: str, cfg: Config, batch_size: int, max_rows: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(features float32 [B, 28], labels float32 [B])`` of one split, once, in order.

    Uses the shared input pipeline (:func:`pipeline.training.inputs.make_dataset` with
    ``training=False``: no shuffle, no repeat, deterministic order, last partial batch kept),
    so evaluation reads records exactly as training does; the deep model and the baseline
    are scored on the same batch at the same time.

    Args:
        data: dataset directory (local or gs://) or an opened dataset.
        split: ``training``, ``validation`` or ``test``.
        cfg: the resolved config (input pipeline settings).
        batch_size: rows per batch.
        max_rows: stop after this many rows (the last batch is cut).
    """
    import tensorflow as tf

    from pipeline.training import inputs

    # One pass: a cache would only hold memory (and warn when the pass stops early).
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cache=False))
    ds = inputs.make_dataset(data, split, cfg, training=False, batch_size=batch_size)
    seen = 0
    it = iter(ds)
    while True:
        try:
            features, labels = next(it)
        except StopIteration:
            return
        except tf.errors.OpError as exc:
            if not verify.is_read_error(exc):
                raise
            # The shards passed the check when the read began: they changed since. Name the shard.
            verify.verify_dataset(data, splits=(split,), use_cache=False)
            raise EvaluateError(f"reading the {split} split of {data} failed ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0]}); check it with 'higgs verify {data}'") from None
        x, y = features.numpy(), labels.numpy().reshape(-1)
        if max_rows is not None and seen + len(y) >= max_rows:
            yield x[:max_rows - seen], y[:max_rows - seen]
            return
        seen += len(y)
        yield x, y


def load_rows(
    data: str | dataset.Dataset, split: str, cfg: Config, max_rows: int, batch_size: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Read the first ``max_rows`` rows of a split into arrays (for the baseline's fit).

    Args:
        data: dataset directory.
        split: the split to read.
        cfg: the resolved config (input pipeline settings).
        max_rows: rows to read (fewer if the split is smaller).
        batch_size: rows per read batch.

    Returns:
        ``(features float32 [N, 28], labels float32 [N])``.

    Raises:
        EvaluateError: the split yields no rows.
    """
    xs, ys = [], []
    for x, y in read_batches(data, split, cfg, batch_size, max_rows=max_rows):
        xs.append(x)
        ys.append(y)
    if not ys:
        raise EvaluateError(f"{data} has no {split} rows to read")
    return np.concatenate(xs), np.concatenate(ys)


def bless(candidate_auc: float, published: dict[str, Any] | None, cfg: EvaluateConfig,
          published_at: str = "", validation: ValidationReport | None = None) -> dict[str, Any]:
    """Decide whether a candidate model may replace the published one.

    Rules: the training data must have passed validation against the published model's data
    (a report with anomalies — kept going by ``validate.on_anomaly=warn`` — refuses the model:
    its test AUC was measured on the same changed data, so it proves nothing); the AUC must
    reach ``cfg.auc_floor``; and if a model is published, the AUC must not be lower than the
    published AUC by more than ``cfg.max_auc_regression`` (a small tolerance so a retrain on
    new data that is statistically equal still ships).

    Args:
        candidate_auc: the candidate's exact test AUC.
        published: the published run's metrics (with ``run_id``) or None.
        cfg: the evaluate config (floor, tolerance).
        published_at: where published models live, for the reasons' wording.
        validation: the data validation report of the dataset (None: not validated).

    Returns:
        ``{"blessed", "reasons", "candidate_auc", "published_auc", "published_run_id",
        "floor", "max_auc_regression", "data_validation"}``.
    """
    reasons = []
    blessed = True
    if validation is not None and not validation.ok:
        blessed = False
        reasons.append(f"data validation failed: {validation.headline()}")
    elif validation is not None and validation.compared:
        reasons.append(f"data validation passed: {validation.headline()}")
    if candidate_auc >= cfg.auc_floor:
        reasons.append(f"AUC {candidate_auc:.4f} reaches the floor {cfg.auc_floor:.4f}")
    else:
        blessed = False
        reasons.append(f"AUC {candidate_auc:.4f} is below the floor {cfg.auc_floor:.4f}")
    published_auc = None
    if published is None:
        reasons.append(f"no model is published{f' at {published_at}' if published_at else ''} "
                       "yet; the floor alone decides")
    else:
        published_auc = float(published["auc"])
        run_id = published.get("run_id", "?")
        delta = candidate_auc - published_auc
        if delta >= -cfg.max_auc_regression:
            reasons.append(f"AUC {candidate_auc:.4f} vs published run {run_id} {published_auc:.4f} "
                           f"({delta:+.4f}) is within the allowed regression {cfg.max_auc_regression}")
        else:
            blessed = False
            reasons.append(f"AUC {candidate_auc:.4f} is worse than published run {run_id} "
                           f"{published_auc:.4f} by {-delta:.4f} (> {cfg.max_auc_regression} allowed)")
    return {"blessed": blessed, "reasons": reasons, "candidate_auc": candidate_auc,
            "published_auc": published_auc,
            "published_run_id": published.get("run_id") if published else None,
            "floor": cfg.auc_floor, "max_auc_regression": cfg.max_auc_regression,
            "data_validation": validation_summary(validation)}


def validation_summary(validation: ValidationReport | None) -> dict[str, Any] | None:
    """What the metrics and the blessing record of a data validation (None: not validated).

    Returns:
        ``{"ok", "compared", "baseline", "baseline_run", "anomalies": [check dicts, worst
        first], "headline"}``.
    """
    if validation is None:
        return None
    return {"ok": validation.ok, "compared": validation.compared, "baseline": validation.baseline,
            "baseline_run": validation.baseline_run,
            "anomalies": [c.to_dict() for c in validation.anomalies],
            "headline": validation.headline()}


def _read_history(run: Path) -> dict[str, list[float]]:
    try:
        history = rundir.read_history(run)
    except json.JSONDecodeError as exc:
        raise EvaluateError(f"{rundir.history_path(run)} is not valid JSON ({exc.msg}); "
                            "re-run training") from None
    if not history:
        log.warning("%s is missing; the report will have no training curves", rundir.history_path(run))
    return history


def _json_ready(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def trained_feature_set(cfg: Config, run: str | Path) -> str:
    """The feature set the run's model was trained on (its ``config.yaml``; else ``cfg``'s).

    The baseline must read the same columns as the model, and a run remembers what it was
    trained with, so ``higgs evaluate`` needs no ``--set model.features=…`` to match it.
    """
    path = Path(rundir.config_path(run))
    if not path.is_file():
        return cfg.model.features
    trained = read_config(path).model.features
    if trained != cfg.model.features:
        log.info("%s was trained on the %r feature set; the baseline uses it too (config says %r)",
                 run, trained, cfg.model.features)
    return trained


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the metrics written to ``metrics.json`` and the scores behind them.

    Attributes:
        metrics: the ``metrics.json`` content.
        labels: float32 [test_rows] 0/1 labels, in the test split's file order.
        deep: float32 [test_rows] the deep model's signal probabilities.
        baseline: float64 [test_rows] the BDT's, or None with ``evaluate.baseline`` off.
    """

    metrics: dict[str, Any]
    labels: np.ndarray
    deep: np.ndarray
    baseline: np.ndarray | None


def evaluate(cfg: Config, data: str | dataset.Dataset, run_dir: str,
             published_metrics: dict[str, Any] | None = None, published_at: str = "",
             validation: ValidationReport | None = None) -> dict[str, Any]:
    """Evaluate ``RUN/model/model.keras`` on every test row and write ``RUN/report/``.

    Args:
        cfg: the resolved config (``evaluate`` section: batch size, baseline, floor, ...;
            the baseline reads the feature set the run was trained on, :func:`trained_feature_set`).
        data: the converted dataset (``DATA/manifest.json`` and shards).
        run_dir: the trained run directory.
        published_metrics: the metrics of the model published now (with ``run_id``), to bless
            against; None when nothing is published
            (:func:`pipeline.publish.store.published_metrics` reads them).
        published_at: where published models live, for the blessing's wording.
        validation: the data validation of ``data`` against the published model's dataset;
            anomalies refuse the blessing and are listed in the report.

    Returns:
        The metrics dict also written to ``RUN/report/metrics.json``.

    Raises:
        EvaluateError: missing model, empty or inconsistent test split.
        pipeline.data.dataset.DatasetError: ``data`` is not a dataset.
    """
    return evaluate_run(cfg, data, run_dir, published_metrics, published_at, validation).metrics


def evaluate_run(cfg: Config, data: str | dataset.Dataset, run_dir: str,
                 published_metrics: dict[str, Any] | None = None, published_at: str = "",
                 validation: ValidationReport | None = None) -> Evaluation:
    """:func:`evaluate`, also returning the test labels and both classifiers' scores.

    Args:
        cfg: the resolved config (``evaluate`` section: batch size, baseline, floor, ...).
        data: the converted dataset (``DATA/manifest.json`` and shards).
        run_dir: the trained run directory.
        published_metrics: the metrics of the model published now (with ``run_id``), to bless
            against; None when nothing is published
            (:func:`pipeline.publish.store.published_metrics` reads them).
        published_at: where published models live, for the blessing's wording.
        validation: the data validation of ``data`` (see :func:`evaluate`).

    Returns:
        The :class:`Evaluation` (its ``metrics`` are also in ``RUN/report/metrics.json``).

    Raises:
        EvaluateError: missing model, empty or inconsistent test split.
        pipeline.data.dataset.DatasetError: ``data`` is not a dataset.
        pipeline.data.verify.IntegrityError: a test (or baseline training) shard is missing,
            short or corrupt (checked before anything is written).
    """
    from pipeline.core.tfk import keras

    ecfg = cfg.evaluate
    run = Path(run_dir)
    model_path = Path(rundir.model_path(run))
    if not model_path.is_file():
        raise EvaluateError(f"{model_path} is missing; train first with "
                            f"'higgs train --data {data} --out {run_dir}'")
    data = dataset.open_dataset(data)
    manifest = data.manifest
    # A missing, short or corrupt shard ends here in one line, before anything is written.
    verify.verify_dataset(data, splits=("training", "test") if ecfg.baseline else ("test",))
    test_rows = data.rows("test")
    # What this report is about: publish compares these with the files it publishes.
    evaluated = {"model_sha256": checksums.file_sha256(model_path),
                 "dataset_fingerprint": dataset.fingerprint(data)}
    out_dir = Path(rundir.report_dir(run))
    out_dir.mkdir(parents=True, exist_ok=True)
    # blessing.json is written last and publish requires it: remove an old one first, so a
    # re-evaluation that fails midway cannot leave a stale "blessed" beside a new model.
    Path(rundir.blessing_path(run)).unlink(missing_ok=True)

    features = trained_feature_set(cfg, run)
    model = export.load_model(model_path)
    bdt = None
    if ecfg.baseline:
        start = time.perf_counter()
        x_train, y_train = load_rows(data, "training", cfg, ecfg.baseline_rows)
        log.info("baseline: read %d training rows in %.1f s", len(y_train), time.perf_counter() - start)
        from pipeline.evaluation import baseline

        bdt = baseline.fit(x_train, y_train, ecfg, feature_set=features)
        del x_train, y_train

    # One pass over the test split: bounded memory, one float per row kept per classifier.
    labels = np.empty(test_rows, np.float32)
    deep = np.empty(test_rows, np.float32)
    bdt_scores = np.empty(test_rows, np.float64) if bdt else None
    keras_auc = keras.metrics.AUC(num_thresholds=KERAS_AUC_THRESHOLDS)
    check_rows: np.ndarray | None = None
    start, n = time.perf_counter(), 0
    for x, y in read_batches(data, "test", cfg, ecfg.batch_size):
        if n + len(y) > test_rows:
            raise EvaluateError(f"{data}: test shards hold more rows than the manifest's "
                                f"{test_rows}; rebuild the dataset with 'higgs convert --overwrite'")
        p = np.asarray(model.predict_on_batch(x), np.float32).reshape(-1)
        keras_auc.update_state(y, p)
        labels[n:n + len(y)], deep[n:n + len(y)] = y, p
        if bdt_scores is not None:
            bdt_scores[n:n + len(y)] = bdt.predict(x)
        if check_rows is None:
            check_rows = x[:RELOAD_CHECK_ROWS].copy()
        n += len(y)
    predict_seconds = time.perf_counter() - start
    if n != test_rows:
        raise EvaluateError(f"{data}: read {n} test rows but the manifest says {test_rows}; "
                            "the dataset is incomplete — rebuild it with 'higgs convert --overwrite'")
    log.info("predicted %d test rows in %.1f s", n, predict_seconds)

    result: dict[str, Any] = metrics.summary(labels, deep, bootstrap=ecfg.bootstrap)
    result["test_rows"] = result.pop("rows")
    result["feature_set"] = features
    result["feature_names"] = list(schema.FEATURE_SETS[features])
    result["keras_auc"] = float(keras_auc.result().numpy())
    result["keras_auc_diff"] = result["auc"] - result["keras_auc"]
    result["predict_seconds"] = round(predict_seconds, 2)
    if bdt is not None:
        base = metrics.summary(labels, bdt_scores)
        base.pop("rows"), base.pop("signal_rows")
        result["baseline"] = {**base, "description": bdt.describe()}
    else:
        result["baseline"] = None

    result["export"] = export.export_run(run, features=check_rows, model=model)
    blessing = {**bless(result["auc"], published_metrics, ecfg, published_at=published_at,
                        validation=validation), **evaluated}
    result["blessed"] = blessing["blessed"]
    result["data_validation"] = blessing["data_validation"]
    result["published_auc"] = blessing["published_auc"]
    result["run_id"] = run.resolve().name
    result["data"] = data.uri
    result.update(evaluated)

    result = _json_ready(result)
    Path(rundir.metrics_path(run)).write_text(json.dumps(result, indent=1) + "\n")

    scores = {"deep model": deep}
    if bdt_scores is not None:
        scores["BDT baseline"] = bdt_scores
    history = _read_history(run)
    report.plot_roc(out_dir / report.ROC_PNG, labels, scores)
    report.plot_scores(out_dir / report.SCORES_PNG, labels, scores)
    report.plot_history(out_dir / report.HISTORY_PNG, history)
    config_path = Path(rundir.config_path(run))
    config_yaml = config_path.read_text() if config_path.is_file() else to_yaml(cfg)
    report.write_markdown(Path(rundir.report_path(run)), run_dir=str(run), data=data.uri, manifest=manifest,
                          config_yaml=config_yaml, history=history, metrics_dict=result,
                          blessing=blessing, provenance=rundir.read_provenance(run))
    Path(rundir.blessing_path(run)).write_text(json.dumps(blessing, indent=1) + "\n")
    log.info("wrote %s (AUC %.4f on %s features, blessed %s)", out_dir, result["auc"], features,
             result["blessed"])
    return Evaluation(metrics=result, labels=labels, deep=deep, baseline=bdt_scores)
