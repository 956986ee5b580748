"""The Prefect flow ``higgs``: ensure source → convert → validate → train → evaluate → publish.

    make run                                              # serve + run higgs/sample locally
    prefect deployment run higgs/sample --watch           # against a running server + serve
    python -c "from flows.higgs import higgs; higgs(preset='sample', overrides=['train.epochs=1'])"

Each task is a thin typed wrapper over one ``pipeline.chain.step_*`` function — the same
functions ``higgs run`` calls — so the flow can do nothing the CLI can't. What the
orchestrator adds:

- **retries only where they help**: the source download and the publish upload retry with
  exponential backoff (only for remote locations — a missing local file fails at once with
  its one-line message); training retries once after a crash (a failed worker) and
  *resumes* from its BackupAndRestore checkpoint because the run directory is fixed before
  the task starts. Other errors a user must fix (:class:`~pipeline.core.errors.PipelineError`)
  are not retried.
- **conversion cache**: the converter itself skips a dataset already built from the same
  source fingerprint and options; the task logs "reused" (no Prefect result cache, which
  would not know when the files on disk change).
- **a data gate**: with a model published at ``publish_to``, the ``validate`` task compares
  the new dataset with that model's (drift per feature overall and per class, label balance,
  schema, sizes) and shows the table as an artifact; anomalies stop the run before training
  (``validate.on_anomaly=fail``, the default) or train a model the blessing refuses (``warn``).
- **artifacts**: a markdown report (AUC, baseline, blessing), a table of rows and AUC per
  split, the data validation table, and a link to the published model.
- **logs**: the library's, Beam's and TensorFlow's Python loggers are attached to the run
  logs (Beam and TensorFlow at WARNING and above, the pipeline at ``runtime.log_level``).
- **failures**: a ``PipelineError`` ends the run ``Failed`` with its one-line message;
  publishing is the last task, so nothing is published from a failed run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff
from pydantic import Field

from pipeline import chain
from pipeline.core import storage
from pipeline.core.config import Config, OnAnomaly, StrategyName, load_config, merge, validate
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.rundir import TrainResult
    from pipeline.data.convert import ConvertResult
    from pipeline.data.dataset import Dataset
    from pipeline.data.source import SourceInfo
    from pipeline.data.validate import ValidationReport
    from pipeline.publish.store import PublishResult

Preset = Literal["sample", "full"]
Runner = Literal["DirectRunner", "DaskRunner", "PrismRunner", "DataflowRunner", "FlinkRunner", "SparkRunner"]

# Python loggers whose records are copied into the flow run's logs, with their minimum level
# (None = the config's runtime.log_level). Beam and TensorFlow log plenty at INFO; their
# warnings and errors are what a person reading the run needs.
LIBRARY_LOGGERS: dict[str, str | None] = {
    "pipeline": None,
    "higgs": None,
    "apache_beam": "WARNING",
    "tensorflow": "WARNING",
}

ARTIFACT_REPORT = "higgs-report"
ARTIFACT_SPLITS = "higgs-metrics"
ARTIFACT_MODEL = "higgs-model"
ARTIFACT_VALIDATION = "higgs-validation"


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (network, storage, a killed worker) but not a PipelineError.

    A PipelineError names something the user has to fix (a missing file, a bad checksum, a
    config value), so retrying it only delays the one-line message. A library may mark a
    PipelineError subclass as worth retrying with a ``transient = True`` attribute.
    """
    try:
        state.result()
    except PipelineError as exc:
        return bool(getattr(exc, "transient", False))
    except Exception:
        return True
    return True


class RemoteIOError(PipelineError):
    """A PipelineError while reading or writing a remote location (https://, gs://).

    The library already retries a dropped transfer; when it still gives up, the network or
    the store may recover later, so the task retries with the orchestrator's longer backoff.
    The message is the library's one line, unchanged.
    """

    transient = True


def is_remote(location: str) -> bool:
    """True for https://, http:// and gs:// locations (where I/O failures can be transient)."""
    return str(location).startswith(("https://", "http://", "gs://"))


@contextmanager
def _remote_failures_retryable(location: str) -> Iterator[None]:
    try:
        yield
    except PipelineError as exc:
        if is_remote(location) and not getattr(exc, "transient", False):
            raise RemoteIOError(str(exc)) from exc
        raise


def _logger() -> Any:
    """The run logger inside a flow or task run; a plain logger when called via ``.fn()``."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("higgs.flow")


def _retry_training(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a crashed training (a failed worker, a lost process) but not a bad config or dataset.

    ``TrainError`` is what the library raises when a worker of the local cluster dies; the
    retry resumes from the run's BackupAndRestore checkpoint.
    """
    from pipeline.training.train import TrainError  # TensorFlow is loaded by now: training ran

    try:
        state.result()
    except TrainError:
        return True
    except PipelineError as exc:
        return bool(getattr(exc, "transient", False))
    except Exception:
        return True
    return True


IO_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),  # 10 s, 20 s, 40 s
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _retry_unless_user_error,
}


@task(name="ensure_source", cache_policy=NO_CACHE, **IO_RETRIES)
def ensure_source(cfg: Config) -> SourceInfo:
    """Locate, download (resume + checksum) or generate the source CSV.gz.

    Returns:
        The source's ``path``, ``uri``, ``bytes`` and ``sha256``.
    """
    with _remote_failures_retryable(cfg.data.source):
        info = chain.step_source(cfg)
    _logger().info("source ready: %s (%s bytes, sha256 %s)", info.path, f"{info.bytes:,}",
                          info.sha256)
    return info


@task(name="convert", cache_policy=NO_CACHE)
def convert(cfg: Config, source_path: str, data: str, beam_args: list[str]) -> ConvertResult:
    """CSV.gz → sharded TFRecords with Apache Beam, reusing an identical earlier conversion.

    Returns:
        The result with ``out``, ``manifest``, ``skipped``.
    """
    result = chain.step_convert(cfg, source_path, data, beam_args)
    rows = result.manifest["rows"]
    what = "reused cached conversion (same source fingerprint and options)" if result.skipped else "converted"
    _logger().info("%s: %s — training %s, validation %s, test %s rows", what, data,
                          f"{rows['training']:,}", f"{rows['validation']:,}", f"{rows['test']:,}")
    return result


@task(name="validate", cache_policy=NO_CACHE)
def validate_data(cfg: Config, data: Dataset, publish_to: str) -> ValidationReport:
    """Compare the dataset with the published model's; stop here on anomalies unless ``warn``.

    The check table is a ``higgs-validation`` artifact of the run whenever a baseline was
    compared (also when the run stops on it).

    Returns:
        The validation report (clean, skipped — nothing published yet —, or anomalies with
        ``validate.on_anomaly=warn``).

    Raises:
        DataAnomalyError: anomalies with ``validate.on_anomaly=fail``; one line naming the worst.
    """
    report = chain.step_validate(cfg, data, publish_to)
    if report.compared:
        create_table_artifact(report.table_rows(), key=ARTIFACT_VALIDATION,
                              description=report.headline())
    _logger().log(logging.INFO if report.ok else logging.WARNING, "%s", report.headline())
    chain.enforce_validation(cfg, report)
    return report


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=_retry_training)
def train(cfg: Config, data: Dataset, run_dir: str) -> TrainResult:
    """Train the wide-and-deep model; a retry resumes from ``run_dir/checkpoints``.

    Returns:
        The chief's result: ``run_dir``, ``model_path``, ``epochs``, ``best_val_auc``, ``history``.
    """
    from prefect.runtime import task_run

    if task_run.get_run_count() > 1:
        _logger().warning("retry %d: resuming training from %s/checkpoints",
                                 task_run.get_run_count() - 1, run_dir)
    result = chain.step_train(cfg, data, run_dir)
    _logger().info("trained %d epochs, best val_auc %.4f, model %s", result.epochs,
                          result.best_val_auc, result.model_path)
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: Config, data: Dataset, run_dir: str, publish_to: str,
             validation: ValidationReport | None = None) -> dict[str, Any]:
    """Exact test AUC, baseline, plots and the blessing → ``run_dir/report/``.

    Returns:
        The metrics dict (``auc``, ``auc_ci95``, ``blessed``, …); a validation with anomalies
        (``warn``) is listed in the report and refuses the blessing.
    """
    metrics = chain.step_evaluate(cfg, data, run_dir, publish_to, validation)
    _logger().info("test AUC %.4f, blessed: %s", metrics["auc"], metrics.get("blessed"))
    return metrics


@task(name="publish", cache_policy=NO_CACHE, **IO_RETRIES)
def publish(run_dir: str, publish_to: str) -> PublishResult:
    """Copy model and report to ``publish_to`` (immutable); ``latest.json`` moves only to a blessed model.

    A retry after a failure midway completes the same publish (the store keeps what was
    verified and copies the rest). The store's history names this flow run as the publisher.

    Returns:
        ``PublishResult`` with ``uri``, ``run_id``, ``files``, ``latest_moved``, ``latest_reason``.
    """
    via = f"prefect flow run {flow_run.get_name()} ({flow_run.get_id()})" if flow_run.get_id() else None
    with _remote_failures_retryable(publish_to):
        result = chain.step_publish(run_dir, publish_to, via=via)
    _logger().info("published %d files to %s; %s", result.files, result.uri, result.latest_reason)
    return result


# Typed flow parameters → the config key each one sets (None keeps the preset's value).
PARAMETER_KEYS: dict[str, tuple[str, str]] = {
    "source": ("data", "source"),
    "data_dir": ("data", "data_root"),
    "runs_root": ("runtime", "runs_root"),
    "publish_to": ("runtime", "publish_to"),
    "runner": ("runtime", "runner"),
    "strategy": ("train", "strategy"),
    "workers": ("train", "workers"),
    "epochs": ("train", "epochs"),
    "on_anomaly": ("validate", "on_anomaly"),
}


def flow_config(preset: str = "sample", overrides: list[str] | None = None, **parameters: Any) -> Config:
    """Resolve the flow's parameters into a config: preset, then ``overrides``, then the typed ones.

    Args:
        preset: named configuration.
        overrides: ``section.key=value`` strings.
        **parameters: flow parameters named in :data:`PARAMETER_KEYS`; ``None`` keeps the
            preset's value.

    Raises:
        ConfigError: (one line) for a bad override or value.
        TypeError: for a parameter name the flow does not have.
    """
    unknown = set(parameters) - set(PARAMETER_KEYS)
    if unknown:
        raise TypeError(f"flow_config() got unknown parameters: {', '.join(sorted(unknown))}")
    explicit: dict[str, dict[str, Any]] = {}
    for name, value in parameters.items():
        if value is not None:
            section, key = PARAMETER_KEYS[name]
            explicit.setdefault(section, {})[key] = value
    return validate(merge(load_config(preset, None, overrides or []), explicit))


@flow(name="higgs", log_prints=True, validate_parameters=True)
def higgs(
    preset: Preset = "sample",
    source: str | None = None,
    data_dir: str | None = None,
    runs_root: str | None = None,
    publish_to: str | None = None,
    runner: Runner | None = None,
    beam_args: list[str] | None = None,
    strategy: StrategyName | None = None,
    workers: Annotated[int, Field(ge=1, le=64)] | None = None,
    epochs: Annotated[int, Field(ge=1, le=10_000)] | None = None,
    on_anomaly: OnAnomaly | None = None,
    overrides: list[str] | None = None,
    run_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] | None = None,
) -> dict[str, Any] | State:
    """Train and publish a HIGGS model: source → convert → validate → train → evaluate → publish.

    Args:
        preset: named configuration; every ``None`` below keeps this preset's value.
        source: HIGGS.csv.gz as a local path, ``gs://`` object or ``https://`` URL; ``""``
            generates a sample (preset ``full`` defaults to the UCI address).
        data_dir: root for sources and converted datasets (local or gs://; default ``data``).
        runs_root: where run directories go (default ``runs``; the run is ``<runs_root>/<run_id>``).
        publish_to: the published store, apart from the runs (local or gs://; default
            ``published``: ``published/<run_id>/``, ``published/latest.json``, ``published/history/``).
        runner: Beam runner for the conversion (default ``DirectRunner``).
        beam_args: extra Beam pipeline options, e.g. ``["--project=p", "--region=europe-west4"]``.
        strategy: tf.distribute strategy (default ``auto``).
        workers: local MultiWorkerMirroredStrategy processes (default 1).
        epochs: training epochs.
        on_anomaly: what data anomalies against the published model's dataset do: ``fail``
            stops the run before training (default), ``warn`` trains but does not bless.
        overrides: ``section.key=value`` config overrides, e.g. ``["model.units=256"]``.
        run_id: the run directory name; default ``YYYYMMDD-HHMMSS-<preset>`` from the flow
            run's scheduled start, so a retried flow run reuses (and resumes) the same run.

    Returns:
        A summary dict (run id, AUC, blessing, report and model locations), or a ``Failed``
        state carrying the one-line reason.
    """
    logger = get_run_logger()
    step = "config"
    try:
        cfg = flow_config(preset, overrides, source=source, data_dir=data_dir, runs_root=runs_root,
                          publish_to=publish_to, runner=runner, strategy=strategy, workers=workers,
                          epochs=epochs, on_anomaly=on_anomaly)
        # Fixed before any task runs: a retried train task (or a retried flow run, which keeps
        # its scheduled start time) finds the same run directory and resumes from its checkpoint.
        paths = chain.default_paths(cfg, run_id=run_id or chain.run_id_for(cfg, _scheduled_start()))
        logger.info("run %s (preset %s): data %s, run dir %s, publish to %s", paths.run_id, cfg.preset,
                    paths.data, paths.run_dir, paths.publish_to)

        with _library_logs(cfg.runtime.log_level):
            step = "ensure_source"
            info = ensure_source(cfg)
            step = "convert"
            converted = convert(cfg, info.path, paths.data, list(beam_args or []))
            data = chain.dataset_of(converted)  # the manifest travels with it: read once
            step = "validate"
            validation = validate_data(cfg, data, paths.publish_to)
            step = "train"
            trained = train(cfg, data, paths.run_dir)
            step = "evaluate"
            metrics = evaluate(cfg, data, paths.run_dir, paths.publish_to, validation)
            step = "publish"
            published = publish(paths.run_dir, paths.publish_to)
    except PipelineError as exc:
        message = f"{step} failed: {exc}"
        logger.error(message)
        return Failed(message=message)

    where = chain.published_locations(published.uri)
    _create_artifacts(paths, converted.manifest, trained.best_val_auc, metrics, published.uri, where)
    summary = {
        "run_id": paths.run_id,
        "auc": metrics["auc"],
        "blessed": metrics.get("blessed"),
        "conversion_reused": converted.skipped,
        "validation": validation.headline(),
        "published": published.uri,
        "latest_moved": published.latest_moved,
        "latest": published.latest_reason,
        **where,
    }
    logger.info("done: AUC %.4f, blessed %s; report %s; model %s", metrics["auc"], metrics.get("blessed"),
                where["report"], where["model"])
    return summary


def _scheduled_start() -> datetime | None:
    """The flow run's scheduled start (stable across retries of the flow run), if running in one."""
    when = flow_run.get_scheduled_start_time()
    return when if isinstance(when, datetime) else None


@contextmanager
def _library_logs(level: str) -> Iterator[None]:
    """Send the library's, Beam's and TensorFlow's log records to this run's logs meanwhile.

    Prefect does the same for ``PREFECT_LOGGING_EXTRA_LOGGERS``, but only when that is set
    before Prefect configures logging; doing it here works for every way the flow is started
    (served, a worker, the test harness, a plain call). Handlers and levels are restored on
    exit, so library code running later in the same process, outside any flow run, does not
    try to send records to the API.
    """
    handlers = logging.getLogger("prefect.extra").handlers
    base = logging.getLevelName(level.upper())
    base = base if isinstance(base, int) else logging.INFO
    saved: list[tuple[logging.Logger, int, list[logging.Handler]]] = []
    for name, floor in LIBRARY_LOGGERS.items():
        logger = logging.getLogger(name)
        added = [h for h in handlers if h not in logger.handlers]
        saved.append((logger, logger.level, added))
        for handler in added:
            logger.addHandler(handler)
        logger.setLevel(base if floor is None else max(base, logging.getLevelName(floor)))
    try:
        yield
    finally:
        for logger, old_level, added in saved:
            for handler in added:
                logger.removeHandler(handler)
            logger.setLevel(old_level)


def model_link(uri: str) -> str:
    """A link people can open: ``file://`` for local paths, the Cloud console for gs://."""
    if storage.is_gcs(uri):
        bucket, name = storage.split_gcs(uri)
        return f"https://console.cloud.google.com/storage/browser/{bucket}/{name}".rstrip("/")
    return Path(uri).resolve().as_uri()


def report_markdown(paths: chain.Paths, metrics: dict[str, Any], where: dict[str, str],
                    report_md: str) -> str:
    """The markdown artifact: headline numbers and locations, then ``report.md`` itself."""
    ci = metrics.get("auc_ci95") or [float("nan"), float("nan")]
    base = chain.baseline_auc(metrics)
    lines = [
        f"# HIGGS run `{paths.run_id}`",
        "",
        "| | |",
        "|---|---|",
        f"| test AUC | **{metrics['auc']:.4f}** (95% CI {ci[0]:.4f}–{ci[1]:.4f}) |",
        f"| baseline AUC (BDT) | {base:.4f} |" if base is not None else "| baseline AUC (BDT) | not run |",
        f"| blessed | **{metrics.get('blessed')}** |",
        f"| data validation | {_validation_cell(metrics.get('data_validation'))} |",
        f"| report | `{where['report']}` |",
        f"| model | `{where['model']}` |",
        "",
        report_md,
    ]
    return "\n".join(lines)


def _validation_cell(validation: dict[str, Any] | None) -> str:
    if not validation or not validation.get("compared"):
        return "not compared (no published model)"
    return ("clean" if validation["ok"] else "**ANOMALIES**") + f": {validation['headline']}"


def _create_artifacts(paths: chain.Paths, manifest: dict[str, Any], best_val_auc: float | None,
                      metrics: dict[str, Any], published_uri: str, where: dict[str, str]) -> None:
    try:
        report_md = storage.read_text(where["report"])
    except FileNotFoundError:
        report_md = "(report.md was not published)"
    create_markdown_artifact(report_markdown(paths, metrics, where, report_md), key=ARTIFACT_REPORT,
                             description=f"HIGGS run {paths.run_id}: AUC, baseline, blessing")
    create_table_artifact(chain.split_table(manifest, metrics, best_val_auc), key=ARTIFACT_SPLITS,
                          description="rows and AUC per split (validation: best epoch; test: final model)")
    create_link_artifact(model_link(where["model"]), link_text=where["model"], key=ARTIFACT_MODEL,
                         description=f"published model of run {paths.run_id} ({published_uri})")
