"""Publish a run into the published store: immutable, verified, then maybe move ``latest.json``.

    higgs publish --run runs/try --to published
    higgs publish --run runs/try --to gs://my-bucket/higgs
    higgs models --to published
    higgs rollback --to published --run 20261121-083000-sample

The store's layout and rules are in :mod:`pipeline.publish.layout`; moves of ``latest.json``
(compare-and-swap, history, rollback) in :mod:`pipeline.publish.latest`. This module copies a
run in: ``OUT/<run_id>/MANIFEST`` is claimed create-only before any file is copied, each file is
created once and verified, a different model under an existing id is refused, and a killed
publish is completed by the next one. Callers use this module; it re-exports the readers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import checksums, provenance, rundir, storage
from pipeline.publish.latest import publish_latest, rollback
from pipeline.publish.layout import (
    HISTORY_DIR,
    LATEST_NAME,
    MANIFEST_NAME,
    PUBLISHED_DIRS,
    PUBLISHED_FILES,
    STORE_MARKER,
    PublishedLocationError,
    PublishedModel,
    PublishError,
    _failures,
    _invocation,
    _one_line,
    format_models,
    list_models,
    published_dataset,
    published_metrics,
    read_history,
    read_latest,
    read_manifest,
    refuse_published,
    run_files,
)

__all__ = [
    "HISTORY_DIR", "LATEST_NAME", "MANIFEST_NAME", "PUBLISHED_DIRS", "PUBLISHED_FILES", "STORE_MARKER",
    "PublishError", "PublishResult", "PublishedLocationError", "PublishedModel", "format_models",
    "list_models", "publish", "published_dataset", "published_metrics", "read_history", "read_latest",
    "read_manifest", "refuse_published", "rollback", "run_files",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did.

    Attributes:
        uri: where the run now lives (``OUT/<run_id>``).
        run_id: the run's name.
        files: number of files published and verified (the MANIFEST not counted).
        latest_moved: True if this publish moved ``OUT/latest.json`` to this run.
        latest_reason: one line saying why latest.json moved or did not.
        copied: files copied by this call (0 when republishing a complete, identical run).
    """

    uri: str
    run_id: str
    files: int
    latest_moved: bool
    latest_reason: str = ""
    copied: int = 0


def _read_json(path: Path, what: str, run_dir: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"{path} is missing; run 'higgs evaluate --data DATA --run {run_dir}' "
                           f"before publishing ({what})") from None
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path} is not valid JSON ({exc.msg}); re-run 'higgs evaluate'") from None


def _checksums(entry: dict[str, Any]) -> checksums.Checksums:
    return checksums.Checksums(entry["size"], entry["sha256"], entry["md5"], entry["crc32c"])


def _first_difference(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str | None:
    """The first path whose content differs between two MANIFEST file lists (None: identical).

    ``model/model.keras`` is compared first: when the model differs, that is what to name.
    """
    mine = {e["path"]: (e["size"], e["sha256"]) for e in ours}
    other = {e["path"]: (e["size"], e["sha256"]) for e in theirs}
    model = f"{rundir.MODEL_DIR}/{rundir.MODEL_FILE}"
    for path in sorted(mine.keys() | other.keys(), key=lambda p: (p != model, p)):
        if mine.get(path) != other.get(path):
            return path
    return None


def _check_report_matches(run_dir: str, blessing: dict[str, Any], prov: dict[str, Any] | None,
                          model_sha256: str) -> None:
    """Refuse a report computed for another model file or dataset than the run's own."""
    if prov is None:
        raise PublishError(f"{rundir.provenance_path(run_dir)} is missing: the run was trained before "
                           "provenance was recorded; retrain it with 'higgs train' to publish it")
    if not blessing.get("model_sha256") or not blessing.get("dataset_fingerprint"):
        raise PublishError(f"{rundir.blessing_path(run_dir)} does not say which model and dataset it "
                           f"judged; re-run 'higgs evaluate --data DATA --run {run_dir}'")
    if blessing["model_sha256"] != model_sha256:
        raise PublishError(
            f"{rundir.model_path(run_dir)} is not the model its report judged (sha256 "
            f"{model_sha256[:12]}… vs {blessing['model_sha256'][:12]}… in blessing.json; trained again "
            f"since?); re-run 'higgs evaluate --data DATA --run {run_dir}'")
    trained_on = (prov.get("dataset") or {}).get("fingerprint")
    if blessing["dataset_fingerprint"] != trained_on:
        data = (prov.get("dataset") or {}).get("uri", "DATA")
        raise PublishError(
            f"the report of {run_dir} was computed on another dataset (manifest fingerprint "
            f"{blessing['dataset_fingerprint'][:12]}…) than the model was trained on "
            f"({str(trained_on)[:12]}…, {data}); re-run 'higgs evaluate --data {data} --run {run_dir}'")


def _inside(run: Path, out: str) -> bool:
    if storage.is_gcs(out):
        return False
    root, run = Path(out).resolve(), run.resolve()
    return run == root or root in run.parents


def publish(
    run_dir: str,
    to: str,
    retry_timeout: float = 120.0,
    progress: Callable[[str], None] | None = None,
    via: str | None = None,
) -> PublishResult:
    """Publish a run's model, report, config and provenance to ``to``; maybe move ``latest.json``.

    Args:
        run_dir: a local, evaluated run directory (``RUN/report/blessing.json`` present).
        to: the store: a local directory or ``gs://bucket/prefix``, never one holding the run.
        retry_timeout: total seconds to retry a file's transient upload errors.
        progress: called with each file's relative path once it is verified in the store.
        via: what is publishing, for the history (default: this process's command line; the
            Prefect flow passes its flow run).

    Returns:
        :class:`PublishResult`; ``latest_reason`` says why latest.json moved or not.

    Raises:
        PublishError: the run is not evaluated or its report belongs to another model or
            dataset; ``OUT/<run_id>`` holds a different model; a file failed to copy or
            verify (the message names it). ``latest.json`` is unchanged in every case.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise PublishError(f"run directory {run_dir} does not exist; train one with 'higgs train'")
    model_file = Path(rundir.model_path(run))
    if not model_file.is_file():
        raise PublishError(f"{model_file} is missing; {run_dir} is not a trained run")
    blessing = _read_json(Path(rundir.blessing_path(run)), "the blessing decision", run_dir)
    metrics = _read_json(Path(rundir.metrics_path(run)), "the metrics", run_dir)
    if _inside(run, to):
        raise PublishError(f"{run_dir} is inside the publish destination {to}; keep working runs and "
                           f"published models apart: publish to another directory (default published/)")
    try:
        prov = rundir.read_provenance(run)
    except rundir.RunDirError as exc:
        raise PublishError(str(exc)) from None

    # One line, at once: no bucket, no login, no access; an outage is waited out like an upload.
    storage.check_destination(to, what="--to", timeout=min(retry_timeout, 60.0))
    run_id = run.resolve().name
    dest = storage.join(to, run_id)
    via = via or _invocation()
    files = run_files(run)
    entries = []
    for rel in files:
        sums = checksums.file_checksums(run / rel)
        entries.append({"path": rel, "size": sums.size, "sha256": sums.sha256, "md5": sums.md5,
                        "crc32c": sums.crc32c})
    model_sha = next(e["sha256"] for e in entries if e["path"] == f"{rundir.MODEL_DIR}/{rundir.MODEL_FILE}")
    _check_report_matches(run_dir, blessing, prov, model_sha)

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    manifest = {
        "run_id": run_id, "files": entries, "written_at": now,
        "published_by": provenance.actor(), "via": via,
        "auc": metrics.get("auc"), "auc_ci95": metrics.get("auc_ci95"), "test_rows": metrics.get("test_rows"),
        "blessed": bool(blessing.get("blessed")), "blessing_reasons": blessing.get("reasons", []),
        "model_sha256": model_sha, "dataset_fingerprint": blessing["dataset_fingerprint"],
        "provenance": prov,
    }
    claimed = _claim(to, dest, manifest)
    log.info("publishing %d files of %s to %s%s", len(entries), run_id, dest,
             "" if claimed is manifest else " (already published: verifying, completing)")
    copied = _copy_files(run, dest, run_id, entries, retry_timeout, progress)

    if not manifest["blessed"]:
        reason = "run is not blessed (" + "; ".join(blessing.get("reasons", [])) + "); latest.json unchanged"
        log.info("%s: %s", run_id, reason)
        return PublishResult(dest, run_id, len(entries), False, reason, copied)
    moved, reason = publish_latest(to, claimed, blessing, via)
    return PublishResult(dest, run_id, len(entries), moved, reason, copied)


def _claim(to: str, dest: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create ``dest/MANIFEST`` (create-only), or accept an identical one; return the one in force.

    Raises:
        PublishError: ``dest`` holds another model, or files but no MANIFEST.
    """
    manifest_uri = storage.join(dest, MANIFEST_NAME)
    run_id = manifest["run_id"]
    try:
        # One look (a MANIFEST claimed meanwhile is in it); a killed writer's temporary file
        # does not make the directory foreign (the next write of that name removes it).
        present = [f for f in storage.list_files(dest) if not storage.is_temp_name(f)]
        existing = read_manifest(to, run_id) if MANIFEST_NAME in present else None
        if existing is None:
            if present:
                raise PublishError(
                    f"{dest} exists but is not a published model (no {MANIFEST_NAME}); nothing is "
                    f"written into it — move it away, or publish under another run name")
            _mark_store(to, manifest["written_at"])
            try:
                storage.write_text(manifest_uri, json.dumps(manifest, indent=1) + "\n", create_only=True)
                return manifest
            except storage.ExistsError:  # another publisher claimed the id a moment ago
                existing = read_manifest(to, run_id)
    except PublishError:
        raise
    except _failures() as exc:
        raise PublishError(f"claiming {manifest_uri} failed ({_one_line(exc)}); latest.json was not "
                           "changed") from exc
    differs = _first_difference(manifest["files"], existing["files"])
    if differs is not None:
        raise PublishError(
            f"{dest} is already published with different contents ({differs} differs); a published "
            f"model never changes — train into a new run directory (its name is the id) and publish that")
    return existing


def _mark_store(out: str, since: str) -> None:
    """Create ``OUT/.higgs-store`` once: it tells training and evaluation to keep out."""
    marker = storage.join(out, STORE_MARKER)
    if storage.exists(marker):
        return
    with contextlib.suppress(storage.ExistsError):  # another publisher made it meanwhile
        storage.write_text(marker, json.dumps({"kind": "higgs published models", "since": since}) + "\n",
                           create_only=True)


def _copy_files(run: Path, dest: str, run_id: str, entries: list[dict[str, Any]], retry_timeout: float,
                progress: Callable[[str], None] | None) -> int:
    """Create every file the MANIFEST lists that is not in the store yet; verify the others."""
    copied = 0
    for entry in entries:
        rel = entry["path"]
        target = storage.join(dest, rel)
        want = _checksums(entry)
        try:
            stored = checksums.stored_checksums(target)
            if stored is None:
                try:
                    checksums.upload_file(run / rel, target, retry_timeout=retry_timeout, create_only=True,
                                        expect=want)
                    copied += 1
                except storage.ExistsError:  # a concurrent publisher of the same run was first
                    stored = checksums.stored_checksums(target)
        except _failures() as exc:  # any failure of one file ends the publish; say which
            raise PublishError(f"publishing {rel} of run {run_id} to {dest} failed ({_one_line(exc)}); "
                               "latest.json was not changed") from exc
        if stored is not None and not stored.same_bytes(want):
            raise PublishError(f"{target} differs from its {MANIFEST_NAME}: the published model is "
                               "damaged; restore it from a copy (nothing was overwritten)")
        if progress is not None:
            progress(rel)
    return copied
