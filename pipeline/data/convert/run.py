"""``convert()``: check the source, run the ``CsvToTFRecords`` pipeline, publish the dataset.

    higgs convert --source data/sources/sample.csv.gz --out data/sample   # the CLI calls convert()

The driver only wires labelled steps: preflight (:mod:`.preflight`), reuse check and
staging (:mod:`.stage`), the runner (:mod:`.engine`), the Beam pipeline
(:mod:`.transforms`), publish (:mod:`.stage`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from pipeline.core import locks, progress, storage
from pipeline.core.config import DataConfig
from pipeline.core.storage import Files
from pipeline.data import dataset
from pipeline.data.convert import engine, preflight, stage, transforms
from pipeline.data.convert.errors import ConvertError, DropMarked, error_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` did.

    Attributes:
        out: the dataset directory (local path or gs://).
        manifest: the dataset's manifest (the existing one when ``skipped``).
        skipped: True when the dataset was already complete for this source and options.
        metrics: Beam counters of the run (``rows_read``, ``bad_rows_<kind>`` …); empty when
            skipped.
    """

    out: str
    manifest: dict[str, Any]
    skipped: bool
    metrics: dict[str, int] = field(default_factory=dict)


def _metrics(result: Any) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(transforms.METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):  # some runners do not report metrics
        return out
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def _interrupted(exc: BaseException) -> bool:
    """True when ``exc`` is a runner's wrapping of a KeyboardInterrupt raised in a DoFn."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt) or str(seen).startswith("KeyboardInterrupt"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def convert(source: str, out: str, data_cfg: DataConfig, beam_args: Sequence[str] = (),
            overwrite: bool = False, wait: float = 0.0) -> ConvertResult:
    """Convert a HIGGS CSV(.gz) source into a sharded TFRecord dataset with a Beam pipeline.

    Args:
        source: local path or ``gs://`` URI of ``HIGGS.csv.gz`` (or plain ``.csv``), or a glob
            of parts (``gs://b/parts/part-*.csv.gz``) read in name order.
        out: dataset directory DATA (local or ``gs://``).
        data_cfg: split sizes, shard counts, ``block_rows`` and ``max_bad_rows``.
        beam_args: Beam pipeline options (``--runner``, ``--direct_num_workers``,
            ``--project`` …), passed on; :mod:`.engine` picks the runner (in-process
            ``FnApiRunner`` by default, a local Dask cluster for ``DaskRunner``) and adds
            what it needs. ``--no_auth`` makes gs:// access anonymous.
        overwrite: rebuild even if DATA already holds a complete dataset (only the files its
            manifest lists are replaced).
        wait: seconds to wait while another conversion holds DATA's lock (0 = refuse at once);
            after the wait, a dataset the other run finished for the same source is reused.

    Returns:
        :class:`ConvertResult`; ``skipped`` when DATA was already complete for the same source
        fingerprint and output options.

    Raises:
        ConvertError: missing/empty/corrupt source, a header line, too many bad rows, a DATA
            holding another dataset (without ``overwrite``) or files the converter did not
            write, another conversion into DATA, or a failed pipeline step.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    started = time.monotonic()
    beam_args = list(beam_args)
    options = PipelineOptions(beam_args)
    files = Files(anonymous=bool(options.view_as(GoogleCloudOptions).no_auth))
    parts = preflight.expand_source(files, source)
    line_bytes = max(preflight.check_part(files, p) for p in parts)
    storage.check_destination(out, files, what="--out")
    created = not storage.is_gcs(out) and not os.path.exists(out)
    try:
        lock = locks.hold(storage.join(out, stage.LOCK_FILE), "convert", wait=wait,
                          busy_hint="wait for it (higgs convert --wait SECONDS) or choose another --out")
    except locks.LockError as exc:
        raise ConvertError(str(exc)) from None
    try:
        return _convert_locked(source, out, data_cfg, beam_args, overwrite, files, parts, line_bytes,
                               started, lock)
    finally:
        lock.release()
        if created:  # a failed first conversion leaves no directory behind
            with contextlib.suppress(OSError):
                os.rmdir(out)


def _convert_locked(source: str, out: str, data_cfg: DataConfig, beam_args: list[str], overwrite: bool,
                    files: Files, parts: list[str], line_bytes: int, started: float,
                    lock: locks.Lock) -> ConvertResult:
    """The conversion proper, while this process holds DATA's lock (see :func:`convert`)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    wanted = stage.output_options(data_cfg)
    if overwrite or not files.exists(dataset.manifest_uri(out)):
        stage.check_foreign(files, out)
        # Nothing to compare with: hash the source (sha256 of a local file, ~0.3 s per 260 MB,
        # GIL released) while it is converted instead of before.
        hasher = ThreadPoolExecutor(1, thread_name_prefix="fingerprint")
        fingerprinting = hasher.submit(stage.source_fingerprint, parts, source)
    else:
        fingerprinting = None
        fingerprint = stage.source_fingerprint(parts, source)
        existing = stage.existing_dataset(files, out, fingerprint, wanted, overwrite)
        if existing is not None:
            return ConvertResult(out, existing, True)
        stage.check_foreign(files, out)  # converting after all: nothing foreign may be in DATA
        hasher = ThreadPoolExecutor(1, thread_name_prefix="fingerprint")

    staging = stage.staging_dir(out)
    block_bytes = int(min(256 << 20, max(64 << 10, data_cfg.block_rows * line_bytes)))
    cfg = {"validation_rows": data_cfg.validation_rows, "test_rows": data_cfg.test_rows,
           "shards": wanted["shards"]}
    total_bytes = sum(files.size(p) for p in parts)
    beam_log, drop = logging.getLogger("apache_beam.runners.common"), DropMarked()
    beam_log.addFilter(drop)
    try:
        with engine.engine(beam_args, data_cfg.dask_workers, data_cfg.convert_threads) as run:
            p = beam.Pipeline(runner=run.runner, options=PipelineOptions(run.args))
            try:
                with p:
                    _ = (p
                         | "Parts" >> beam.Create(list(enumerate(parts)))
                         | "CsvToTFRecords" >> transforms.CsvToTFRecords(
                             staging, block_bytes, cfg, files, spread_parts=len(parts) > 1,
                             threads=run.threads, total_bytes=total_bytes))
            finally:
                run.finished(getattr(p, "result", None))
        if fingerprinting is not None:
            fingerprint = fingerprinting.result()
        metrics = _metrics(p.result)
        progress.close_shared(staging)  # in-process runners: the closing line
        result = json.loads(files.read_bytes(storage.join(staging, stage.RESULT_FILE)))
        lock.check()  # a writer that lost its lock must not publish over the new holder's work
        manifest = stage.publish(files, out, staging, result, fingerprint, data_cfg, beam_args,
                                 block_bytes, wanted, time.monotonic() - started)
    except BaseException as exc:  # an interrupt (Ctrl-C) too: nothing partial stays behind
        progress.close_shared(staging, ok=False)
        stage.discard(files, staging)
        if isinstance(exc, locks.LockError):
            raise ConvertError(str(exc)) from None
        if isinstance(exc, Exception) and _interrupted(exc):
            raise KeyboardInterrupt from None  # Beam re-raises a Ctrl-C in a DoFn as RuntimeError
        line = error_line(exc) if isinstance(exc, Exception) else None  # marked in a DoFn
        if line is not None:
            raise ConvertError(line) from None
        raise
    finally:
        hasher.shutdown(wait=True)
        beam_log.removeFilter(drop)
    return ConvertResult(out, manifest, False, metrics)
