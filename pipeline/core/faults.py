"""Named kill points: make a real process die by SIGKILL at an exact step (fault-injection tests).

    HIGGS_KILL_AT=train.before_backup@1 higgs train --data data/sample --out runs/k --epochs 3

A kill from outside lands at a random moment; the windows that matter (between a backup and
``history.json``, between ``fit`` and the model rename) last microseconds. The steps that own such
a window call :func:`point` with their name (and an index such as the epoch); when
``HIGGS_KILL_AT`` names that point, the process sends itself ``SIGKILL`` there — no clean-up, no
``finally``, exactly a ``kill -9`` or a preempted machine. Unset (the normal case) :func:`point`
returns at once.

``HIGGS_KILL_AT`` is ``name`` or ``name@index``; ``HIGGS_KILL_WORKER=i`` restricts it to worker
``i`` of a ``TF_CONFIG`` cluster, and ``HIGGS_KILL_ONCE=FILE`` makes it fire only while ``FILE``
does not exist (it is created just before the kill), so a restarted process runs through.
The points are listed in :data:`POINTS` and in ``docs/faults.md``.
"""

from __future__ import annotations

import json
import os
import signal

ENV = "HIGGS_KILL_AT"
ENV_WORKER = "HIGGS_KILL_WORKER"
ENV_ONCE = "HIGGS_KILL_ONCE"

POINTS = (
    "train.mid_epoch",        # index = epoch; after half of the epoch's training steps
    "train.before_backup",    # index = epoch; history.json written, backup not yet
    "train.after_backup",     # index = epoch; the epoch is committed
    "train.before_model_rename",  # fit returned, the final model is in its temporary file
    "train.before_cleanup",   # model.keras renamed into place, backup not yet removed
    "convert.before_manifest",  # shards moved into DATA, manifest.json not yet written
)


def enabled() -> bool:
    """True when a kill point is armed in this process's environment."""
    return bool(os.environ.get(ENV))


def _worker_index() -> int:
    try:
        return int(json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {}).get("index", 0))
    except (ValueError, AttributeError):
        return 0


def point(name: str, index: int | None = None) -> None:
    """Kill this process with SIGKILL if ``HIGGS_KILL_AT`` names this point (else return).

    Args:
        name: the point's name, one of :data:`POINTS`.
        index: the occurrence (e.g. the epoch); ``name@index`` fires only there, ``name`` at
            every occurrence.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, at = spec.partition("@")
    if want != name or (at and index is not None and int(at) != index) or (at and index is None):
        return
    worker = os.environ.get(ENV_WORKER)
    if worker and int(worker) != _worker_index():
        return
    once = os.environ.get(ENV_ONCE)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
