"""The published store's layout and how to read it: the one module that knows it.

    higgs publish --run runs/try --to published
    higgs publish --run runs/try --to gs://my-bucket/higgs
    higgs models --to published
    higgs rollback --to published --run 20261121-083000-sample

Layout (contract)::

    OUT/.higgs-store                     marks OUT as a published store (nothing trains under it)
    OUT/<run_id>/MANIFEST                the model's identity: every file's size and checksums,
                                         its AUC, blessing, provenance and who published it
    OUT/<run_id>/{config.yaml, provenance.json, model/…, report/…}
    OUT/latest.json                      the blessed model in service
    OUT/history/<utc>-<run_id>.json      one file per move of latest.json (publish or rollback)

``run_id`` is the run directory's name. Writing it is :mod:`pipeline.publish.store`
(publish) and :mod:`pipeline.publish.latest` (moves of ``latest.json``, rollback). The rules:

* **Immutable.** ``OUT/<run_id>/MANIFEST`` is created once (a create-only write: ``os.link``
  locally, ``ifGenerationMatch=0`` on gs://) *before* any file is copied, and each file is
  created once and checked before it takes its name (a temporary file renamed locally; on
  gs:// the store itself checks the md5/crc32c sent with the bytes). Nothing ever replaces
  a file under a MANIFEST. Publishing a different model under an existing id is refused;
  republishing the identical run verifies what is there and copies only what is missing,
  so a killed publish is finished by the next one (its temporary files are removed then).
  A directory under OUT without a MANIFEST is not a published model and is never written to.
* **Runs apart from the store.** A run inside OUT is not published, and
  :func:`refuse_published` stops training or evaluation into a published model or anywhere
  under a store (the defaults keep runs in ``runs/`` and the store in ``published/``).
* **The report belongs to the model.** Publish refuses a run whose ``report/blessing.json``
  was computed for another ``model.keras`` (sha256) or another dataset (manifest
  fingerprint) than the run's ``provenance.json`` names.
* **latest.json moves by compare-and-swap** (:func:`pipeline.core.cas.update`: a lock
  file and an atomic rename locally, ``ifGenerationMatch`` on gs://). Publish re-reads it
  and applies the blessing rule (:func:`pipeline.evaluation.evaluate.bless`: floor and
  ``max_auc_regression`` as the run was evaluated with) to the model it points at *now*; a
  refused move leaves it byte-identical and says why in one line. A run that was latest
  once does not move it again by being republished; :func:`rollback` moves it on purpose,
  to a published blessed model, through the same compare-and-swap.
* **History.** Each move writes ``OUT/history/<utc>-<run_id>.json`` (time, from, to, AUCs,
  ``user@host``, the command or flow run). One file per move because a gs:// object cannot
  be appended to, and a new file needs no read-modify-write of a shared one. latest.json
  carries its move's record too, so a move whose history file was lost to a kill gets it
  written by the next publish or rollback.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import provenance, rundir, storage
from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline.publish.store")

# What a published run holds (contract), relative to the run directory.
PUBLISHED_DIRS: tuple[str, ...] = (rundir.MODEL_DIR, rundir.REPORT_DIR)
PUBLISHED_FILES: tuple[str, ...] = (rundir.CONFIG, rundir.PROVENANCE)
LATEST_NAME = "latest.json"
MANIFEST_NAME = "MANIFEST"
HISTORY_DIR = "history"
STORE_MARKER = ".higgs-store"


class PublishError(PipelineError):
    """Publishing stopped; ``latest.json`` was left as it was. The message names the file."""


class PublishedLocationError(PipelineError):
    """A step was asked to write into a published model or a published store."""


@dataclass(frozen=True)
class PublishedModel:
    """One published model as ``higgs models`` lists it (read from its MANIFEST)."""

    run_id: str
    uri: str
    auc: float | None
    auc_ci95: list[float] | None
    blessed: bool
    dataset_fingerprint: str | None
    published_at: str
    code: str
    complete: bool
    latest: bool
    manifest: dict[str, Any]


# --- reading the store ----------------------------------------------------------------------


def run_files(run_dir: str | Path) -> list[str]:
    """The files of a run that get published, relative to it, in upload order.

    Args:
        run_dir: a local run directory.

    Returns:
        ``config.yaml``, ``provenance.json``, then every file under ``model/`` and ``report/``,
        sorted.
    """
    run = Path(run_dir)
    files = [name for name in PUBLISHED_FILES if (run / name).is_file()]
    for sub in PUBLISHED_DIRS:
        if (run / sub).is_dir():
            files += [f"{sub}/{rel}" for rel in storage.list_files(str(run / sub))]
    return files


def _parse_latest(uri: str, data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        out = uri.rsplit("/", 1)[0]
        raise PublishError(f"{uri} is not valid JSON ({exc.msg}); point it at a published model with "
                           f"'higgs rollback --to {out} --run ID'") from None


def read_latest(out: str) -> dict[str, Any] | None:
    """Return ``OUT/latest.json`` as a dict, or None when nothing is published there yet.

    Raises:
        PublishError: the pointer exists but is not valid JSON.
    """
    uri = storage.join(out, LATEST_NAME)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        data = None
    return _parse_latest(uri, data)


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
                           f"but {uri} is missing; republish that run or move latest.json with "
                           f"'higgs rollback'") from None
    return {**published, "run_id": latest["run_id"]}


def published_dataset(out: str) -> tuple[str, str] | None:
    """The dataset the model published at ``out`` was trained on: ``(data, run_id)``, or None.

    The one place that knows how a published model names its training data, so validation
    (``higgs validate --against OUT``, the flow's validate task) can compare new data with
    it. The location comes from the model's provenance (its MANIFEST, ``provenance.dataset``:
    as the run was given it, so a relative path is relative to the working directory of the
    run), falling back to the ``data`` its evaluation recorded; the dataset found there must
    still have the fingerprint the model was trained on (a reconverted directory does not).

    Args:
        out: where published models live (local directory or gs:// prefix).

    Returns:
        ``(dataset location, run id)``, or None when nothing is published at ``out``.

    Raises:
        PublishError: the published model does not record its dataset, or the dataset at
            that location is no longer the one it was trained on.
    """
    from pipeline.data import dataset

    metrics = published_metrics(out)
    if metrics is None:
        return None
    run_id = str(metrics["run_id"])
    manifest = read_manifest(out, run_id) or {}
    trained = (manifest.get("provenance") or {}).get("dataset") or {}
    data = trained.get("uri") or metrics.get("data")
    if not data:
        raise PublishError(f"published run {run_id} at {out} does not record the dataset it was "
                           f"trained on (no provenance, {rundir.METRICS_FILE} has no 'data'); pass the "
                           "baseline explicitly with --baseline DATA")
    want = trained.get("fingerprint") or manifest.get("dataset_fingerprint")
    if want:
        try:
            have = dataset.fingerprint(str(data))
        except dataset.DatasetError:
            raise PublishError(f"the dataset published run {run_id} was trained on, {data}, is gone; "
                               "pass the baseline explicitly with --baseline DATA") from None
        if have != want:
            raise PublishError(f"{data} no longer holds the dataset published run {run_id} was trained "
                               f"on (manifest sha256 {have[:12]}, trained on {want[:12]}); pass the "
                               "baseline explicitly with --baseline DATA")
    return str(data), run_id


def read_manifest(out: str, run_id: str) -> dict[str, Any] | None:
    """``OUT/<run_id>/MANIFEST`` as a dict, or None when that id is not published."""
    uri = storage.join(out, run_id, MANIFEST_NAME)
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise PublishError(f"{uri} is not valid JSON ({exc.msg}); the published model {run_id} is "
                           "damaged — restore it from a copy") from None


def read_history(out: str) -> list[dict[str, Any]]:
    """Every recorded move of ``OUT/latest.json``, oldest first (empty when there is none)."""
    root = storage.join(out, HISTORY_DIR)
    if not storage.is_gcs(out) and not Path(root).is_dir():
        return []
    names = [n for n in storage.list_files(root) if n.endswith(".json") and "/" not in n]
    return [json.loads(storage.read_text(storage.join(root, n))) for n in sorted(names)]


def list_models(out: str) -> list[PublishedModel]:
    """The published models under ``out``, oldest first.

    Args:
        out: the store (local directory or gs:// prefix).

    Returns:
        One :class:`PublishedModel` per ``OUT/<run_id>/MANIFEST``; ``complete`` is False while
        files the MANIFEST lists are missing (a publish that was interrupted).
    """
    if not storage.is_gcs(out) and not Path(out).is_dir():
        return []
    files = storage.list_files(out)
    present = set(files)
    latest = read_latest(out)
    models = []
    for rel in files:
        run_id, _, name = rel.partition("/")
        if name != MANIFEST_NAME:
            continue
        manifest = read_manifest(out, run_id) or {}
        missing = [e for e in manifest.get("files", []) if f"{run_id}/{e['path']}" not in present]
        models.append(PublishedModel(
            run_id=run_id, uri=storage.join(out, run_id), auc=manifest.get("auc"),
            auc_ci95=manifest.get("auc_ci95"), blessed=bool(manifest.get("blessed")),
            dataset_fingerprint=manifest.get("dataset_fingerprint"),
            published_at=manifest.get("written_at", ""),
            code=provenance.code_label(manifest.get("provenance")),
            complete=not missing, latest=bool(latest and latest.get("run_id") == run_id), manifest=manifest))
    return sorted(models, key=lambda m: (m.published_at, m.run_id))


def format_models(models: list[PublishedModel], out: str) -> str:
    """``higgs models``' table: id, AUC ± CI, blessed, dataset, code, date, which one is latest."""
    if not models:
        return f"no published models in {out}"
    header = ("run id", "AUC ± 95% CI", "blessed", "dataset", "code", "published (UTC)", "latest")
    rows = []
    for m in models:
        if m.auc is None:
            auc = "—"
        elif m.auc_ci95:
            auc = f"{m.auc:.4f} ± {(m.auc_ci95[1] - m.auc_ci95[0]) / 2:.4f}"
        else:
            auc = f"{m.auc:.4f}"
        rows.append((m.run_id, auc, "yes" if m.blessed else "no", (m.dataset_fingerprint or "—")[:12],
                     m.code, m.published_at.replace("T", " ").split("+")[0] or "—",
                     "← latest" if m.latest else ("incomplete" if not m.complete else "")))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- what must not be written into ----------------------------------------------------------


def _ancestors(location: str) -> list[str]:
    """``location`` and every directory (gs:// prefix) above it, nearest first."""
    if storage.is_gcs(location):
        bucket, name = storage.split_gcs(location)
        parts = [p for p in name.split("/") if p]
        return [f"gs://{bucket}/" + "/".join(parts[:i]) if i else f"gs://{bucket}"
                for i in range(len(parts), -1, -1)]
    path = Path(location).resolve()
    return [str(p) for p in (path, *path.parents)]


def refuse_published(location: str, step: str) -> None:
    """Refuse to write a run into a published model or anywhere inside a published store.

    Args:
        location: the run directory a step is about to write (local or gs://).
        step: what would write it, for the message (``train``, ``evaluate``).

    Raises:
        PublishedLocationError: ``location`` has a MANIFEST, or a directory above it is a
            published store (holds ``.higgs-store``).
    """
    if storage.exists(storage.join(location, MANIFEST_NAME)):
        raise PublishedLocationError(
            f"{location} is a published model (it has a {MANIFEST_NAME}) and published models never "
            f"change; {step} a working run under runs/ instead and publish that")
    for root in _ancestors(location):
        if storage.exists(storage.join(root, STORE_MARKER)):
            raise PublishedLocationError(
                f"{location} is inside the published store {root}; keep working runs apart from "
                f"published models: {step} a run under runs/ (runtime.runs_root), then "
                f"'higgs publish --run RUN --to {root}'")


def _invocation() -> str:
    """The command that is publishing, e.g. ``higgs publish --run runs/a --to published``."""
    return shlex.join([Path(sys.argv[0]).name or "python", *sys.argv[1:]])


def _failures() -> tuple[type[BaseException], ...]:
    """Errors that mean "this file could not be published" (the rest are bugs)."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    return (OSError, PipelineError, api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
