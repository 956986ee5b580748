"""The whole chain in one process: source → convert → validate → train → evaluate → publish.

    higgs run --preset sample
    python -c "from pipeline.core.config import load_config; from pipeline.chain import run_chain; \
print(run_chain(load_config('sample')).summary())"

This module is the single definition of the chain. ``higgs run`` calls :func:`run_chain`,
and the Prefect flow ``higgs`` (``flows/higgs.py``) wraps each ``step_*`` function below in
a task, so the CLI and the flow run exactly the same code with the same default locations
(:func:`default_paths`). Each step is one call into the library; nothing here knows about
Prefect.

Default locations (all overridable):

- sources and converted datasets under ``cfg.data.data_root`` (``data/``), the dataset
  directory named after the source (``data/higgs-synth-uci-r220000-s1``, ``data/higgs`` for
  the UCI ``higgs.zip``, ``data/HIGGS`` for ``HIGGS.csv.gz``);
- the run under ``cfg.runtime.runs_root`` (``runs/<run_id>``, run id
  ``20261121-083000-sample``): the working directory training and evaluation write;
- published to ``cfg.runtime.publish_to`` (``published/<run_id>``, immutable once published;
  ``published/latest.json`` moves only to a blessed model, ``published/history/`` records
  each move). The two roots are kept apart: publish refuses a run inside its store, and
  training or evaluation refuse a published model or a directory inside a store.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pipeline.core import rundir, storage
from pipeline.core.config import Config

if TYPE_CHECKING:
    from pipeline.core.rundir import TrainResult
    from pipeline.data.convert import ConvertResult
    from pipeline.data.dataset import Dataset
    from pipeline.data.source import SourceInfo
    from pipeline.data.validate import ValidationReport
    from pipeline.publish.store import PublishResult

log = logging.getLogger(__name__)

STEPS = ("source", "convert", "validate", "train", "evaluate", "publish")
_SOURCE_SUFFIXES = (".csv.gz", ".csv", ".gz", ".zip")


@dataclass(frozen=True)
class Paths:
    """Where one run of the chain reads and writes.

    Attributes:
        run_id: ``YYYYMMDD-HHMMSS-<preset>`` (UTC), the name of the run directory.
        data: the converted dataset directory (local or gs://).
        run_dir: the run directory (checkpoints, model, report).
        publish_to: where the model and report are published (local or gs://).
    """

    run_id: str
    data: str
    run_dir: str
    publish_to: str


def run_id_for(cfg: Config, when: datetime | None = None) -> str:
    """Return the run id ``YYYYMMDD-HHMMSS-<preset>`` for a run started at ``when`` (UTC).

    Args:
        cfg: the resolved config (its preset names the run).
        when: start time; naive values are taken as UTC; default now.
    """
    when = when or datetime.now(UTC)
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return f"{when:%Y%m%d-%H%M%S}-{cfg.preset}"


def dataset_name(cfg: Config) -> str:
    """Name the dataset directory after its source, so different sources never share one.

    A generated sample is ``higgs-synth-uci-r<rows>-s<seed>``; a file is named by its basename
    without ``.csv.gz``/``.csv``/``.zip`` (``HIGGS``, ``higgs``). Presets convert with different
    shard layouts, and the converter refuses to overwrite a dataset built with other options, so
    a preset other than the source's natural one (``sample`` for generated data, ``full`` for a
    file) adds its name: ``HIGGS-sample``.
    """
    source = cfg.data.source.strip()
    if not source:
        name = f"higgs-synth-uci-r{cfg.data.synth_rows}-s{cfg.data.synth_seed}"
        return name if cfg.preset == "sample" else f"{name}-{cfg.preset}"
    name = PurePosixPath(source.split("?", 1)[0].rstrip("/")).name
    for suffix in _SOURCE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    # Keep directory names portable (local and gs://): letters, digits, - _ . only.
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "source"
    return name if cfg.preset == "full" else f"{name}-{cfg.preset}"


def default_paths(
    cfg: Config,
    *,
    data: str | None = None,
    run_dir: str | None = None,
    publish_to: str | None = None,
    run_id: str | None = None,
    when: datetime | None = None,
) -> Paths:
    """Resolve the chain's locations; explicit arguments win over the config's defaults.

    Args:
        cfg: the resolved config.
        data: dataset directory (default ``<data_root>/<dataset_name(cfg)>``).
        run_dir: run directory (default ``<runs_root>/<run_id>``).
        publish_to: publish target (default ``cfg.runtime.publish_to``).
        run_id: explicit run id (default from ``run_dir``'s name or :func:`run_id_for`).
        when: start time used for a generated run id.

    Returns:
        The :class:`Paths` of this run.
    """
    if run_dir:
        run_id = run_id or PurePosixPath(str(run_dir).rstrip("/")).name
    else:
        run_id = run_id or run_id_for(cfg, when)
        run_dir = storage.join(cfg.runtime.runs_root, run_id)
    return Paths(
        run_id=run_id,
        data=data or storage.join(cfg.data.data_root, dataset_name(cfg)),
        run_dir=str(run_dir),
        publish_to=publish_to or cfg.runtime.publish_to,
    )


def beam_options(cfg: Config, beam_args: Sequence[str] = ()) -> list[str]:
    """Return the Beam pipeline options: ``--runner`` from the config unless given explicitly.

    Args:
        cfg: the resolved config (``runtime.runner``, ``runtime.direct_num_workers``).
        beam_args: extra Beam options (``--project=…``, ``--region=…``, …), passed through.
    """
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.insert(0, f"--runner={cfg.runtime.runner}")
    runner = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), cfg.runtime.runner)
    if runner == "DataflowRunner" and cfg.runtime.gcp_project:
        # Project, region, locations, machines and worker packaging come from runtime.*;
        # explicit arguments are appended last and win. Without runtime.gcp_project the
        # caller's Beam options pass through untouched.
        from pipeline.cloud import dataflow

        return dataflow.dataflow_args(cfg, extra=[a for a in args if not a.startswith("--runner")])
    if runner == "DirectRunner" and not any(a.startswith("--direct_num_workers") for a in args):
        args.append(f"--direct_num_workers={cfg.runtime.direct_num_workers}")
    return args


# --- the steps: one library call each; the flow's tasks call exactly these ----------------


def step_source(cfg: Config) -> SourceInfo:
    """Locate, download (resume + checksum) or generate the source file.

    Returns:
        The source's ``path``, ``uri``, ``bytes`` and ``sha256``.
    """
    from pipeline.data import source

    return source.ensure_source(cfg.data)


def step_convert(cfg: Config, source_path: str, data: str, beam_args: Sequence[str] = ()) -> ConvertResult:
    """Convert the source CSV.gz to the sharded TFRecord dataset at ``data`` with Beam.

    The converter is its own cache: a dataset already built from the same source
    fingerprint and options is reused (``result.skipped``), so a rerun or the weekly
    retraining skips the conversion when the source is unchanged.

    Returns:
        The result (``out``, ``manifest``, ``skipped``); :func:`dataset_of` turns it into the
        opened dataset the later steps take, so the manifest is read once.
    """
    from pipeline.data import convert

    if cfg.runtime.presplit_parts > 0 and not any(c in source_path for c in "*?["):
        # One .gz is read by one worker; parts let Dataflow parse/encode/write in parallel.
        from pipeline.data import presplit

        parts_at = presplit.parts_location(cfg.runtime.temp_location, cfg.data.data_root, source_path)
        source_path = presplit.presplit(source_path, parts_at, cfg.runtime.presplit_parts).glob
        log.info("source split into %d parts: %s", cfg.runtime.presplit_parts, source_path)
    result = convert.convert(source_path, data, cfg.data, beam_args=beam_options(cfg, beam_args))
    if result.skipped:
        log.info("conversion reused: %s was already built from this source and options", data)
    return result


def step_validate(cfg: Config, data: str | Dataset, publish_to: str, baseline: str | None = None,
                  require_baseline: bool = False) -> ValidationReport:
    """Compare ``data`` with the published model's dataset (or ``baseline``); write ``DATA/validation.json``.

    Anomalies are returned, not raised: :func:`enforce_validation` decides what they mean.

    Args:
        cfg: the resolved config (``validate`` thresholds).
        data: the dataset just converted.
        publish_to: where published models live; the baseline is the dataset the model
            ``latest.json`` points at was trained on.
        baseline: an explicit baseline dataset instead.
        require_baseline: fail when nothing is published (``higgs validate``); otherwise the
            validation is recorded as skipped (the first run has nothing to compare with).

    Returns:
        The report (``ok``, ``anomalies``, ``headline()``, ``table_rows()``).

    Raises:
        ValidationError: nothing to compare with although required, or an unreadable baseline.
    """
    from pipeline.data import validate
    from pipeline.publish import store

    run_id = None
    if baseline is None:
        found = store.published_dataset(publish_to)
        if found is None:
            if require_baseline:
                raise validate.ValidationError(
                    f"no model is published at {publish_to} (no {store.LATEST_NAME}) to compare "
                    f"{data} with; pass --baseline DATA or --against OUT")
            return validate.skip(data, f"no model is published at {publish_to} yet: nothing to compare "
                                       "with", cfg.validate)
        baseline, run_id = found
    return validate.validate(data, baseline, cfg.validate, baseline_run=run_id)


def enforce_validation(cfg: Config, report: ValidationReport) -> None:
    """Stop before training on anomalies (``validate.on_anomaly=fail``), or let them through (``warn``).

    Raises:
        DataAnomalyError: one line naming the worst anomaly.
    """
    from pipeline.data import validate

    validate.enforce(report, cfg.validate.on_anomaly)


def dataset_of(conversion: ConvertResult) -> Dataset:
    """The converted dataset with the manifest the conversion returned (no second read)."""
    from pipeline.data.dataset import Dataset

    return Dataset(conversion.out, conversion.manifest)


def step_train(cfg: Config, data: str | Dataset, run_dir: str) -> TrainResult:
    """Train into ``run_dir`` on the configured backend; a repeated call resumes from its checkpoint.

    Returns:
        The chief's result (``run_dir``, ``model_path``, ``epochs``, ``best_val_auc``, ``history``).
    """
    from pipeline import backends

    return backends.train(cfg, data, run_dir)


def step_evaluate(cfg: Config, data: str | Dataset, run_dir: str, publish_to: str,
                  validation: ValidationReport | None = None) -> dict[str, Any]:
    """Evaluate on the test split, write ``RUN/report/`` and decide the blessing.

    The blessing compares against the model currently published at ``publish_to`` (publish
    applies the rule again against what is published then), and refuses a model trained on
    data with validation anomalies (``validate.on_anomaly=warn``). A published model is never
    re-evaluated in place: its report is part of what was published.

    Args:
        cfg: the resolved config.
        data: the dataset.
        run_dir: the trained run.
        publish_to: where published models live.
        validation: the ``ValidationReport`` of ``data`` (None: not validated).

    Returns:
        The metrics dict (``auc``, ``auc_ci95``, ``blessed``, …) also in ``RUN/report/metrics.json``.

    Raises:
        pipeline.publish.store.PublishedLocationError: ``run_dir`` is a published model or
            inside a published store.
    """
    from pipeline.evaluation import evaluate
    from pipeline.publish import store

    store.refuse_published(run_dir, "evaluate")
    return evaluate.evaluate(cfg, data, run_dir, published_metrics=store.published_metrics(publish_to),
                             published_at=publish_to, validation=validation)


def step_publish(run_dir: str, publish_to: str, via: str | None = None) -> PublishResult:
    """Publish model and report (immutable); ``latest.json`` moves only to a blessed run.

    Args:
        run_dir: the evaluated run.
        publish_to: the published store.
        via: what is publishing, for the store's history (default: this command line).

    Returns:
        What was published (``uri``, ``run_id``, ``files``, ``latest_moved``, ``latest_reason``).
    """
    from pipeline.publish import store as publish

    return publish.publish(run_dir, publish_to, via=via)


# --- presentation shared by `higgs run` and the flow's artifacts ---------------------------


def split_table(manifest: dict[str, Any], metrics: dict[str, Any], best_val_auc: float | None) -> list[
        dict[str, Any]]:
    """Rows per split (training / validation / test) with the AUCs known for each.

    Args:
        manifest: the dataset manifest (``rows`` per split).
        metrics: the evaluation metrics (test AUC, its interval and the baseline's AUC).
        best_val_auc: the best validation AUC seen in training (``None`` if unknown).

    Returns:
        One dict per split: ``split``, ``rows``, ``model_auc``, ``auc_ci95``, ``baseline_auc``
        (``None`` where not measured: training is not scored, validation only by training).
    """
    known = {
        "validation": {"model_auc": best_val_auc},
        "test": {"model_auc": metrics.get("auc"), "auc_ci95": metrics.get("auc_ci95"),
                 "baseline_auc": baseline_auc(metrics)},
    }
    rows = []
    for split in ("training", "validation", "test"):
        aucs = known.get(split, {})
        ci = aucs.get("auc_ci95")
        rows.append({
            "split": split,
            "rows": int(manifest.get("rows", {}).get(split, 0)),
            "model_auc": _round(aucs.get("model_auc")),
            "auc_ci95": [_round(v) for v in ci] if ci else None,
            "baseline_auc": _round(aucs.get("baseline_auc")),
        })
    return rows


def baseline_auc(metrics: dict[str, Any]) -> float | None:
    """The BDT baseline's test AUC from the metrics (``None`` when no baseline ran)."""
    base = metrics.get("baseline")
    return base.get("auc") if base else None


def published_locations(publish_uri: str) -> dict[str, str]:
    """Return where the published report and model are, for people to open."""
    return {"report": rundir.report_path(publish_uri), "model": rundir.model_dir(publish_uri)}


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 5)


@dataclass
class ChainResult:
    """Everything one run of the chain produced, plus wall seconds per step."""

    paths: Paths
    source: SourceInfo | None = None
    conversion: ConvertResult | None = None
    validation: ValidationReport | None = None
    training: TrainResult | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    published: PublishResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for people: where report and model are, AUC, blessing, step times."""
        where = published_locations(self.published.uri if self.published else self.paths.run_dir)
        auc = self.metrics.get("auc")
        ci = self.metrics.get("auc_ci95") or [None, None]
        base = baseline_auc(self.metrics)
        head = f"run {self.paths.run_id}: AUC {auc:.4f}"
        if ci[0] is not None:
            head += f" (95% CI {ci[0]:.4f}–{ci[1]:.4f})"
        if base is not None:
            head += f", baseline {base:.4f}"
        lines = [
            head + f", blessed: {self.metrics.get('blessed')}",
            f"  report: {where['report']}",
            f"  model:  {where['model']}",
        ]
        if self.published is not None:
            lines.append(f"  latest: {storage.join(self.paths.publish_to, 'latest.json')}: "
                         f"{self.published.latest_reason}")
        if self.validation is not None:
            lines.append(f"  checks: {self.validation.headline()}")
        if self.conversion is not None and self.conversion.skipped:
            lines.append(f"  data:   {self.paths.data} (reused: same source and options)")
        else:
            lines.append(f"  data:   {self.paths.data}")
        times = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        lines.append(f"  time:   {times} (total {sum(self.seconds.values()):.1f}s)")
        return "\n".join(lines)


def run_chain(
    cfg: Config,
    data: str | None = None,
    run_dir: str | None = None,
    publish_to: str | None = None,
    beam_args: Sequence[str] = (),
) -> ChainResult:
    """Run source → convert → validate → train → evaluate → publish in this process.

    Publishing is the last step, so a failure anywhere before it publishes nothing. With a
    model published at ``publish_to``, the new dataset is validated against that model's
    dataset; anomalies stop the chain before training (``validate.on_anomaly=fail``) or
    train a model that is not blessed (``warn``).

    Args:
        cfg: the resolved config.
        data: dataset directory (default from :func:`default_paths`).
        run_dir: run directory (default ``<runs_root>/<run_id>``); reusing one resumes training.
        publish_to: publish target (default ``cfg.runtime.publish_to``).
        beam_args: extra Beam pipeline options for the conversion.

    Returns:
        The :class:`ChainResult`; ``.summary()`` is what ``higgs run`` prints.

    Raises:
        PipelineError: from whichever step failed, one line naming the thing and the fix
            (``DataAnomalyError`` for anomalies with ``validate.on_anomaly=fail``).
    """
    paths = default_paths(cfg, data=data, run_dir=run_dir, publish_to=publish_to)
    result = ChainResult(paths=paths)
    log.info("run %s: data %s, run dir %s, publish to %s", paths.run_id, paths.data, paths.run_dir,
             paths.publish_to)

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        value = fn(*args)
        result.seconds[name] = time.perf_counter() - start
        log.info("step %s done in %.1fs", name, result.seconds[name])
        return value

    result.source = timed("source", step_source, cfg)
    result.conversion = timed("convert", step_convert, cfg, result.source.path, paths.data, beam_args)
    data = dataset_of(result.conversion)  # the manifest travels with it: read once
    result.validation = timed("validate", step_validate, cfg, data, paths.publish_to)
    enforce_validation(cfg, result.validation)
    result.training = timed("train", step_train, cfg, data, paths.run_dir)
    result.metrics = timed("evaluate", step_evaluate, cfg, data, paths.run_dir, paths.publish_to,
                           result.validation)
    result.published = timed("publish", step_publish, paths.run_dir, paths.publish_to)
    return result
