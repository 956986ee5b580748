"""The published store: immutable published models, ``latest.json`` and the history of its moves.

    higgs publish --run runs/try --to published
    higgs publish --run runs/try --to gs://my-bucket/higgs
    higgs models --to published
    higgs rollback --to published --run 20261121-083000-sample

Layout (contract; this is the one module that knows it)::

    OUT/.higgs-store                     marks OUT as a published store (nothing trains under it)
    OUT/<run_id>/MANIFEST                the model's identity: every file's size and checksums,
                                         its AUC, blessing, provenance and who published it
    OUT/<run_id>/{config.yaml, provenance.json, model/…, report/…}
    OUT/latest.json                      the blessed model in service
    OUT/history/<utc>-<run_id>.json      one file per move of latest.json (publish or rollback)

``run_id`` is the run directory's name. The rules:

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
* **latest.json moves by compare-and-swap** (:func:`pipeline.core.storage.update`: a lock
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

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import provenance, rundir, storage
from pipeline.core.config import EvaluateConfig
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

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


# --- publish --------------------------------------------------------------------------------


def _read_json(path: Path, what: str, run_dir: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"{path} is missing; run 'higgs evaluate --data DATA --run {run_dir}' "
                           f"before publishing ({what})") from None
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path} is not valid JSON ({exc.msg}); re-run 'higgs evaluate'") from None


def _invocation() -> str:
    """The command that is publishing, e.g. ``higgs publish --run runs/a --to published``."""
    return shlex.join([Path(sys.argv[0]).name or "python", *sys.argv[1:]])


def _checksums(entry: dict[str, Any]) -> storage.Checksums:
    return storage.Checksums(entry["size"], entry["sha256"], entry["md5"], entry["crc32c"])


def _first_difference(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str | None:
    """The first path whose content differs between two MANIFEST file lists (None: identical)."""
    mine = {e["path"]: (e["size"], e["sha256"]) for e in ours}
    other = {e["path"]: (e["size"], e["sha256"]) for e in theirs}
    for path in sorted(mine.keys() | other.keys()):
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

    run_id = run.resolve().name
    dest = storage.join(to, run_id)
    via = via or _invocation()
    files = run_files(run)
    entries = []
    for rel in files:
        sums = storage.file_checksums(run / rel)
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
    moved, reason = _publish_latest(to, claimed, blessing, via)
    return PublishResult(dest, run_id, len(entries), moved, reason, copied)


def _failures() -> tuple[type[BaseException], ...]:
    """Errors that mean "this file could not be published" (the rest are bugs)."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    return (OSError, PipelineError, api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


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
            stored = storage.stored_checksums(target)
            if stored is None:
                try:
                    storage.upload_file(run / rel, target, retry_timeout=retry_timeout, create_only=True,
                                        expect=want)
                    copied += 1
                except storage.ExistsError:  # a concurrent publisher of the same run was first
                    stored = storage.stored_checksums(target)
        except _failures() as exc:  # any failure of one file ends the publish; say which
            raise PublishError(f"publishing {rel} of run {run_id} to {dest} failed ({_one_line(exc)}); "
                               "latest.json was not changed") from exc
        if stored is not None and not stored.same_bytes(want):
            raise PublishError(f"{target} differs from its {MANIFEST_NAME}: the published model is "
                               "damaged; restore it from a copy (nothing was overwritten)")
        if progress is not None:
            progress(rel)
    return copied


# --- latest.json ------------------------------------------------------------------------------


def _history_name(at: dt.datetime, run_id: str) -> str:
    return f"{HISTORY_DIR}/{at:%Y%m%dT%H%M%S%fZ}-{run_id}.json"


def _write_history(out: str, latest: dict[str, Any]) -> None:
    """Write the history file of the move ``latest`` records (create-only: idempotent)."""
    if not latest.get("history") or not latest.get("move"):
        return
    with contextlib.suppress(storage.ExistsError):  # written already
        storage.write_text(storage.join(out, latest["history"]), json.dumps(latest["move"], indent=1) + "\n",
                           create_only=True)


def _move_latest(out: str, target: dict[str, Any], action: str, via: str,
                 decide: Callable[[dict[str, Any] | None], list[str] | str]) -> tuple[bool, str]:
    """Move ``OUT/latest.json`` to ``target`` (a MANIFEST) by compare-and-swap.

    ``decide(current)`` sees what latest.json holds at the moment of the swap and returns the
    reasons for the move (a list) or one line saying why not (a string).

    Returns:
        ``(moved, reason)``.
    """
    uri = storage.join(out, LATEST_NAME)
    # A move whose history file a kill cut off. An unreadable pointer is left to decide()
    # (publish refuses it in one line, a rollback replaces it).
    with contextlib.suppress(PublishError):
        _write_history(out, read_latest(out) or {})
    refusal: list[str] = []
    run_id = target["run_id"]

    def change(data: bytes | None) -> bytes | None:
        refusal.clear()
        try:
            current = _parse_latest(uri, data)
        except PublishError as exc:
            if action != "rollback":
                raise
            current = {"run_id": None, "unreadable": str(exc)}
        verdict = decide(current)
        if isinstance(verdict, str):
            refusal.append(verdict)
            return None
        at = dt.datetime.now(dt.UTC)
        move = {"at": at.isoformat(timespec="microseconds"), "action": action,
                "from": (current or {}).get("run_id"), "to": run_id,
                "from_auc": (current or {}).get("auc"), "to_auc": target.get("auc"),
                "to_auc_ci95": target.get("auc_ci95"), "by": provenance.actor(), "via": via,
                "reasons": verdict}
        where = storage.join(out, run_id) if storage.is_gcs(out) else str(Path(out, run_id).resolve())
        latest = {"run_id": run_id, "uri": where,
                  "auc": target.get("auc"), "auc_ci95": target.get("auc_ci95"),
                  "test_rows": target.get("test_rows"), "files": len(target.get("files", [])),
                  "blessed": True, "model_sha256": target.get("model_sha256"),
                  "dataset_fingerprint": target.get("dataset_fingerprint"),
                  "published_at": move["at"], "history": _history_name(at, run_id), "move": move}
        return (json.dumps(latest, indent=1) + "\n").encode()

    try:
        written = storage.update(uri, change)
    except PublishError:
        raise
    except _failures() as exc:
        raise PublishError(f"moving {uri} failed ({_one_line(exc)}); it was left as it was") from exc
    if written is None:
        return False, refusal[0] if refusal else "latest.json unchanged"
    latest = json.loads(written)
    try:
        _write_history(out, latest)
    except _failures() as exc:  # the move stands; the next publish or rollback writes the record
        log.warning("latest.json moved to %s but writing %s failed (%s); the next publish writes it",
                    run_id, latest["history"], _one_line(exc))
    log.info("latest.json now points at %s (%s)", run_id, "; ".join(latest["move"]["reasons"]))
    return True, f"latest.json moved from {latest['move']['from'] or 'nothing'} to {run_id}"


def _publish_latest(out: str, manifest: dict[str, Any], blessing: dict[str, Any],
                    via: str) -> tuple[bool, str]:
    """Apply the blessing rule to what latest.json points at now; move it if the run passes."""
    from pipeline.evaluation.evaluate import bless

    run_id = manifest["run_id"]
    if any(h.get("to") == run_id for h in read_history(out)):
        current = read_latest(out) or {}
        if current.get("run_id") == run_id:
            return False, f"latest.json already points at {run_id}"
        return False, (f"{run_id} was latest before and was replaced since; publishing it again does not "
                       f"move latest.json back — use 'higgs rollback --to {out} --run {run_id}'")
    # The rule as the run was evaluated with (its floor and tolerance), against the model now.
    rule = dataclasses.replace(EvaluateConfig(), auc_floor=float(blessing["floor"]),
                               max_auc_regression=float(blessing["max_auc_regression"]))

    def decide(current: dict[str, Any] | None) -> list[str] | str:
        if current and current.get("run_id") == run_id:
            return f"latest.json already points at {run_id}"
        decision = bless(float(manifest["auc"]), current, rule, published_at=out)
        if not decision["blessed"]:
            return "latest.json unchanged: " + "; ".join(decision["reasons"])
        return decision["reasons"]

    return _move_latest(out, manifest, "publish", via, decide)


def rollback(out: str, run_id: str, via: str | None = None) -> tuple[bool, str]:
    """Point ``OUT/latest.json`` at an earlier published, blessed model, on purpose.

    Goes through the same compare-and-swap as publish and is recorded in the history (action
    ``rollback``); the blessing rule against the current model is *not* applied — that is
    the point of a rollback.

    Args:
        out: the store.
        run_id: a published model's id.
        via: what is rolling back, for the history (default: this process's command line).

    Returns:
        ``(moved, one line)``; not moved when latest.json already points there.

    Raises:
        PublishError: ``run_id`` is not published in ``out``, incomplete, or not blessed.
    """
    manifest = read_manifest(out, run_id)
    if manifest is None:
        known = ", ".join(m.run_id for m in list_models(out)) or "none"
        raise PublishError(f"no published model {run_id!r} in {out} (published: {known}); "
                           f"list them with 'higgs models --to {out}'")
    present = set(storage.list_files(storage.join(out, run_id)))
    missing = [e["path"] for e in manifest.get("files", []) if e["path"] not in present]
    if missing:
        raise PublishError(f"published model {run_id} in {out} is incomplete ({len(missing)} of "
                           f"{len(manifest['files'])} files missing, e.g. {missing[0]}); publish that run "
                           "again to complete it")
    if not manifest.get("blessed"):
        why = "; ".join(manifest.get("blessing_reasons") or []) or "its blessing said no"
        raise PublishError(f"run {run_id} was not blessed ({why}); latest.json only ever points at a "
                           "blessed model")

    def decide(current: dict[str, Any] | None) -> list[str] | str:
        if current and current.get("run_id") == run_id:
            return f"latest.json already points at {run_id}"
        return [f"rollback to {run_id} on purpose (AUC {manifest.get('auc')})"]

    return _move_latest(out, manifest, "rollback", via or _invocation(), decide)
