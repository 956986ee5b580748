"""``OUT/latest.json``: moved by compare-and-swap, every move recorded, rollback on purpose.

    higgs rollback --to published --run 20261121-083000-sample
    higgs models --to published --history

Publish re-reads ``latest.json`` at the moment of the swap (:func:`pipeline.core.cas.update`)
and applies the blessing rule to the model it points at *then*; a refused move leaves it
byte-identical. Each move writes ``OUT/history/<utc>-<run_id>.json`` (layout:
:mod:`pipeline.publish.layout`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core import cas, provenance, storage
from pipeline.core.config import EvaluateConfig
from pipeline.publish.layout import (
    HISTORY_DIR,
    LATEST_NAME,
    PublishError,
    _failures,
    _invocation,
    _one_line,
    _parse_latest,
    list_models,
    read_history,
    read_latest,
    read_manifest,
)

log = logging.getLogger("pipeline.publish.store")


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
        written = cas.update(uri, change)
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


def publish_latest(out: str, manifest: dict[str, Any], blessing: dict[str, Any],
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
        auc = manifest.get("auc")
        return [f"rollback to {run_id} on purpose (AUC {'—' if auc is None else f'{auc:.4f}'})"]

    return _move_latest(out, manifest, "rollback", via or _invocation(), decide)
