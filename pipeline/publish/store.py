"""Publish an evaluated run to a local directory or gs:// and move ``latest.json`` to it.

    higgs publish --run runs/try --to runs
    higgs publish --run runs/try --to gs://my-bucket/higgs

Layout (contract): ``OUT/<run_id>/{model/…, report/…, config.yaml, MANIFEST}`` and
``OUT/latest.json``. ``run_id`` is the run directory's name. Every file is copied and then
verified — locally by re-reading size and sha256, on gs:// by comparing the ``md5Hash``
and ``crc32c`` the store reports with the local file — and transient errors (429, 5xx,
dropped connections) are retried with exponential backoff. ``latest.json`` is written
last and only when the run's ``report/blessing.json`` says it is blessed *and* every file
was verified; any failure before that leaves the old pointer as it was and raises
:class:`PublishError` naming the file. Publishing a run into the directory that already
holds it (the local default: runs live in ``runs/<run_id>``, ``publish_to`` is ``runs``)
verifies the files in place and copies nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import checksums, rundir, storage
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

# What a published run holds (contract), relative to the run directory.
PUBLISHED_DIRS: tuple[str, ...] = (rundir.MODEL_DIR, rundir.REPORT_DIR)
PUBLISHED_FILES: tuple[str, ...] = (rundir.CONFIG,)
LATEST_NAME = "latest.json"
MANIFEST_NAME = "MANIFEST"


class PublishError(PipelineError):
    """Publishing stopped; ``latest.json`` was left as it was. The message names the file."""


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did.

    Attributes:
        uri: where the run now lives (``OUT/<run_id>``).
        run_id: the run's name.
        files: number of files published and verified (the MANIFEST not counted).
        latest_moved: True if ``OUT/latest.json`` now points at this run.
    """

    uri: str
    run_id: str
    files: int
    latest_moved: bool


def run_files(run_dir: str | Path) -> list[str]:
    """The files of a run that get published, relative to it, in upload order.

    Args:
        run_dir: a local run directory.

    Returns:
        ``config.yaml`` then every file under ``model/`` and ``report/``, sorted.
    """
    run = Path(run_dir)
    files = [name for name in PUBLISHED_FILES if (run / name).is_file()]
    for sub in PUBLISHED_DIRS:
        if (run / sub).is_dir():
            files += [f"{sub}/{rel}" for rel in storage.list_files(str(run / sub))]
    return files


def read_latest(out: str) -> dict[str, Any] | None:
    """Return ``OUT/latest.json`` as a dict, or None when nothing is published there yet.

    Raises:
        PublishError: the pointer exists but is not valid JSON.
    """
    uri = storage.join(out, LATEST_NAME)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PublishError(f"{uri} is not valid JSON ({exc.msg}); fix or delete it") from None


def published_metrics(out: str) -> dict[str, Any] | None:
    """The ``report/metrics.json`` of the run ``OUT/latest.json`` points at, or None.

    Args:
        out: where published models live (local directory or gs:// prefix).

    Returns:
        The metrics dict with ``run_id`` added, or None when nothing is published.

    Raises:
        PublishError: ``latest.json`` points at a run whose metrics are missing.
    """
    latest = read_latest(out)
    if latest is None:
        return None
    uri = rundir.metrics_path(storage.join(out, latest["run_id"]))
    try:
        published = json.loads(storage.read_text(uri))
    except FileNotFoundError:
        raise PublishError(f"{storage.join(out, LATEST_NAME)} points at run {latest['run_id']!r} "
                           f"but {uri} is missing; republish that run or delete latest.json") from None
    return {**published, "run_id": latest["run_id"]}


def published_dataset(out: str) -> tuple[str, str] | None:
    """The dataset the model published at ``out`` was trained on: ``(data, run_id)``, or None.

    The one place that knows how a published run names its training data, so validation
    (``higgs validate --against OUT``, the flow's validate task) can compare new data with
    it. Today that is the ``data`` location the run's evaluation recorded in
    ``report/metrics.json`` (as given then: a relative path is relative to the working
    directory); when runs carry provenance (the dataset manifest's fingerprint), read the
    location from there instead and check the fingerprint.

    Args:
        out: where published models live (local directory or gs:// prefix).

    Returns:
        ``(dataset location, run id)``, or None when nothing is published at ``out``.

    Raises:
        PublishError: the published run does not record its dataset.
    """
    metrics = published_metrics(out)
    if metrics is None:
        return None
    data = metrics.get("data")
    if not data:
        raise PublishError(f"published run {metrics['run_id']} at {out} does not record the dataset "
                           f"it was trained on ({rundir.METRICS_FILE} has no 'data'); pass the "
                           "baseline explicitly with --baseline DATA")
    return str(data), str(metrics["run_id"])


def _same_place(run: Path, dest: str) -> bool:
    return not storage.is_gcs(dest) and Path(dest).resolve() == run.resolve()


def _read_json(path: Path, what: str, run_dir: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"{path} is missing; run 'higgs evaluate --data DATA --run {run_dir}' "
                           f"before publishing ({what})") from None
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path} is not valid JSON ({exc.msg}); re-run 'higgs evaluate'") from None


def publish(
    run_dir: str,
    to: str,
    retry_timeout: float = 120.0,
    progress: Callable[[str], None] | None = None,
) -> PublishResult:
    """Publish a run's model, report and config to ``to`` and move ``latest.json`` if blessed.

    Args:
        run_dir: a local, evaluated run directory (``RUN/report/blessing.json`` present).
        to: destination root: a local directory or ``gs://bucket/prefix``.
        retry_timeout: total seconds to retry a file's transient upload errors.
        progress: called with each file's relative path once it is verified.

    Returns:
        :class:`PublishResult`.

    Raises:
        PublishError: the run is not evaluated, or a file failed to copy or verify (the
            message names it); ``latest.json`` is unchanged in that case.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise PublishError(f"run directory {run_dir} does not exist; train one with 'higgs train'")
    model_file, blessing_file = Path(rundir.model_path(run)), Path(rundir.blessing_path(run))
    if not model_file.is_file():
        raise PublishError(f"{model_file} is missing; {run_dir} is not a trained run")
    blessing = _read_json(blessing_file, "the blessing decision", run_dir)
    metrics = _read_json(Path(rundir.metrics_path(run)), "the metrics", run_dir)
    if model_file.stat().st_mtime > blessing_file.stat().st_mtime:
        # The blessing was decided for an earlier model (e.g. training resumed afterwards).
        raise PublishError(f"{model_file} changed after {blessing_file} was written; re-run "
                           f"'higgs evaluate --data DATA --run {run_dir}' before publishing")

    # One line, at once: no bucket, no login, no access; an outage is waited out like an upload.
    storage.check_destination(to, what="--to", timeout=min(retry_timeout, 60.0))
    run_id = run.resolve().name
    dest = storage.join(to, run_id)
    in_place = _same_place(run, dest)
    files = run_files(run)
    log.info("publishing %d files of %s to %s%s", len(files), run_id, dest,
             " (in place: verify only)" if in_place else "")

    entries = []
    for rel in files:
        src = run / rel
        try:
            if in_place:
                sums = checksums.file_checksums(src)
            else:
                sums = checksums.upload_file(src, storage.join(dest, rel), retry_timeout=retry_timeout)
        except _failures() as exc:  # any failure of one file ends the publish; say which
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PublishError(f"publishing {rel} of run {run_id} to {dest} failed "
                               f"({type(exc).__name__}: {reason}); latest.json was not changed"
                               ) from exc
        entries.append({"path": rel, "size": sums.size, "sha256": sums.sha256,
                        "md5": sums.md5, "crc32c": sums.crc32c})
        if progress is not None:
            progress(rel)

    manifest = {"run_id": run_id, "files": entries,
                "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    _put_verified_text(json.dumps(manifest, indent=1) + "\n", storage.join(dest, MANIFEST_NAME),
                       retry_timeout)

    blessed = bool(blessing.get("blessed"))
    if blessed:
        uri = dest if storage.is_gcs(dest) else str(Path(dest).resolve())
        latest = {
            "run_id": run_id,
            "uri": uri,
            "auc": metrics.get("auc"),
            "auc_ci95": metrics.get("auc_ci95"),
            "test_rows": metrics.get("test_rows"),
            "files": len(entries),
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        _put_verified_text(json.dumps(latest, indent=1) + "\n", storage.join(to, LATEST_NAME),
                           retry_timeout)
        log.info("latest.json now points at %s", run_id)
    else:
        log.info("run %s is not blessed (%s); latest.json unchanged", run_id,
                 "; ".join(blessing.get("reasons", [])))
    return PublishResult(uri=dest, run_id=run_id, files=len(entries), latest_moved=blessed)


def _failures() -> tuple[type[BaseException], ...]:
    """Errors that mean "this file could not be published" (the rest are bugs)."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    return (OSError, PipelineError, api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError)


def _put_verified_text(text: str, uri: str, retry_timeout: float) -> None:
    """Write a small text file through :func:`checksums.upload_file` (verified, retried)."""
    fd, tmp = tempfile.mkstemp(prefix="higgs-publish-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        try:
            checksums.upload_file(tmp, uri, retry_timeout=retry_timeout)
        except _failures() as exc:
            raise PublishError(f"writing {uri} failed ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    finally:
        os.unlink(tmp)
