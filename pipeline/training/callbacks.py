"""Keras callbacks of a training run: the epoch commit, history.json, progress and timing.

    python -c "from pipeline.training import callbacks; print(callbacks.EpochCommit.__doc__)"

Split from :mod:`pipeline.training.train`, which builds the callback list of a run from these.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core import faults, rundir, storage
from pipeline.core.tfk import keras

if TYPE_CHECKING:
    pass

# Progress lines keep the training logger's name: users and the flow filter on it.
log = logging.getLogger("pipeline.training.train")


# --- callbacks --------------------------------------------------------------------------------


class HistoryJson(keras.callbacks.Callback):
    """Write ``history.json`` after every epoch (kept across resumes).

    Entries for epochs at or after the current one are replaced, so a resumed run keeps the
    epochs before the interruption and a fresh run in an old directory starts clean. ``lr``
    is the rate in effect during the epoch (read when it begins).
    """

    def __init__(self, run: Path) -> None:
        super().__init__()
        self.run = run
        self.history: dict[str, list[Any]] = {k: [] for k in rundir.HISTORY_KEYS}
        self._lr = float("nan")

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Load the history of an interrupted run in the same directory, if any."""
        try:
            self.history = rundir.read_history(self.run) or self.history
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring unreadable %s", rundir.history_path(self.run))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Remember the learning rate this epoch trains with."""
        self._lr = current_lr(self.model)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Append this epoch's metrics and rewrite the file atomically."""
        logs = logs or {}
        epochs = self.history.get("epoch", [])
        keep = [i for i, e in enumerate(epochs) if e < epoch]
        history = {k: [v[i] for i in keep] for k, v in self.history.items() if len(v) == len(epochs)}
        row: dict[str, Any] = {"epoch": epoch, "lr": self._lr}
        row.update({k: logs.get(k) for k in rundir.HISTORY_KEYS[1:-1]})
        # Kernel norms from optim.WeightNormCallback: total and per layer ("weight_norm/<layer>").
        row.update({k: v for k, v in logs.items() if k.startswith("weight_norm")})
        for key, value in row.items():
            column = history.setdefault(key, [None] * len(keep))
            column.append(None if value is None else (int(value) if key == "epoch" else float(value)))
        self.history = history
        rundir.write_history(self.run, history)  # atomic: a reader (or a kill) never sees half a file


class EpochCommit(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose backup is the commit point of an epoch, and whose restore is whole.

    Keras' own callback backs up when its turn comes (before ReduceLROnPlateau had lowered the
    rate, before ``history.json`` was written) and deletes the backup when ``fit`` returns; a
    resumed run restarted early stopping and the LR plateau from scratch. Here, placed last,
    the end of epoch N is one ordered commit:

    1. (``HistoryJson``, the callback just before this one: the history row of N, atomic),
    2. when N improved ``val_auc``: its weights to ``best-epoch-N.weights.npz`` (atomic),
    3. ``state.json``: the early-stopping and LR-plateau state after N (with that after N-1),
    4. the backup of model, optimizer and epoch N — the commit point,
    5. best-weight files no kept state refers to are removed.

    A kill before 4 retrains epoch N (its history row and state are replaced); a kill after it
    resumes at N+1 with the callbacks exactly as they were. A resume of a run whose last
    committed epoch ended it (the last epoch, or early stopping) trains no further epoch and
    only restores the best weights for the final save. The backup is kept when ``fit``
    returns (:func:`remove_resume_state` removes it once ``model.keras`` is in place).

    Args:
        run_dir: the run directory (every worker restores from the chief's state there).
        out: where this worker writes (the run directory, or a non-chief's private one).
        chief: whether this worker writes the run directory.
        epochs: the run's epochs.
        early_stopping: the run's EarlyStopping callback (``restore_best_weights=True``).
        reduce_lr: the run's ReduceLROnPlateau callback, if any.
    """

    KEEP_STATES = 2  # the committed epoch and the one before (a commit may be cut before 4)

    def __init__(self, run_dir: Path, out: Path, *, chief: bool, epochs: int,
                 early_stopping: Any, reduce_lr: Any | None) -> None:
        super().__init__(rundir.backup_dir(run_dir), delete_checkpoint=False)
        self.run_dir, self.out, self.chief, self.epochs = run_dir, out, chief, epochs
        self.early_stopping, self.reduce_lr = early_stopping, reduce_lr
        self.states: dict[str, dict[str, Any]] = {}
        self.resumed_from: int | None = None  # the restored (last committed) epoch, if any

    # -- resume -----------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Restore the backup, then the callbacks' state of the same epoch."""
        super().on_train_begin(logs)  # restores model + optimizer + epoch (after the others reset)
        saved = int(self._training_state._ckpt_saved_epoch.numpy())
        if saved < 0:
            return
        self.resumed_from = saved
        try:
            self.states = json.loads(Path(rundir.state_path(self.run_dir)).read_text())["epochs"]
        except (OSError, ValueError, KeyError):
            self.states = {}
        state = self.states.get(str(saved))
        if state is None:
            log.warning("the backup of epoch %d has no callback state in %s; early stopping and the "
                        "LR plateau restart their counts", saved + 1, rundir.state_path(self.run_dir))
            return
        es = self.early_stopping
        es.wait, es.best = state["early_stopping"]["wait"], float(state["early_stopping"]["best"])
        es.best_epoch = state["early_stopping"]["best_epoch"]
        es.stopped_epoch = state["early_stopping"]["stopped_epoch"]
        best_file = Path(rundir.best_weights_path(self.run_dir, es.best_epoch))
        if best_file.is_file():
            with np.load(best_file) as npz:
                es.best_weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        else:
            log.warning("%s is missing; the final model will be the best epoch after the resume", best_file)
        if self.reduce_lr is not None and state.get("reduce_lr"):
            rl = self.reduce_lr
            rl.wait, rl.best = state["reduce_lr"]["wait"], float(state["reduce_lr"]["best"])
            rl.cooldown_counter = state["reduce_lr"]["cooldown_counter"]
        if state["stopped"] or saved >= self.epochs - 1:
            # The committed epoch ended the run (a kill came after fit): train nothing more.
            self._training_state._ckpt_saved_epoch.assign(self.epochs - 1)
            log.info("the backup holds the finished run (epoch %d/%d%s); saving its best model",
                     saved + 1, self.epochs, ", early stopping" if state["stopped"] else "")

    # -- commit -----------------------------------------------------------------------------

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Commit epoch ``epoch``: best weights, callback state, then the backup."""
        es = self.early_stopping
        if self.chief and es.best_epoch == epoch and es.best_weights is not None:
            buf = io.BytesIO()
            np.savez(buf, *es.best_weights)
            storage.write_bytes(rundir.best_weights_path(self.out, epoch), buf.getvalue())  # atomic
        state = {
            "early_stopping": {"wait": es.wait, "best": float(es.best), "best_epoch": es.best_epoch,
                               "stopped_epoch": es.stopped_epoch},
            "reduce_lr": None if self.reduce_lr is None else {
                "wait": self.reduce_lr.wait, "best": float(self.reduce_lr.best),
                "cooldown_counter": self.reduce_lr.cooldown_counter},
            "stopped": bool(self.model.stop_training),
        }
        kept = sorted(((int(k), v) for k, v in self.states.items() if int(k) < epoch))
        self.states = {str(k): v for k, v in kept[-(self.KEEP_STATES - 1):]}
        self.states[str(epoch)] = state
        if self.chief:
            storage.write_text(rundir.state_path(self.out), json.dumps({"epochs": self.states}, indent=1))
        faults.point("train.before_backup", epoch)
        super().on_epoch_end(epoch, logs)  # the backup: epoch `epoch` is committed
        faults.point("train.after_backup", epoch)
        if self.chief:
            wanted = {rundir.best_weights_path(self.out, s["early_stopping"]["best_epoch"])
                      for s in self.states.values()}
            for path in Path(rundir.checkpoints_dir(self.out)).glob(rundir.BEST_WEIGHTS_PATTERN):
                if str(path) not in wanted:
                    path.unlink(missing_ok=True)


class _KillPoints(keras.callbacks.Callback):
    """Fires the ``train.mid_epoch`` kill point (added only when ``HIGGS_KILL_AT`` is set)."""

    def __init__(self, steps_per_epoch: int) -> None:
        super().__init__()
        self.half, self.epoch, self.fired = max(1, steps_per_epoch // 2), 0, False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Remember the epoch."""
        self.epoch, self.fired = epoch, False

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """At the first batch end past half of the epoch: the kill point."""
        if not self.fired and batch + 1 >= self.half:
            self.fired = True
            faults.point("train.mid_epoch", self.epoch)


def current_lr(model: Any) -> float:
    """The optimizer's current learning rate as a float (schedules evaluated at this step)."""
    return float(keras.backend.get_value(model.optimizer.learning_rate))


class EtaLogger(keras.callbacks.Callback):
    """Log progress and the estimated time of the whole run.

    After the first execution (which includes tracing/compilation) it times the following
    steps for about two seconds and logs the expected time per epoch and for the run; after
    every epoch it updates the estimate from the measured epoch times (validation included).

    Args:
        epochs: epochs of the run.
        steps_per_epoch: optimizer steps per epoch.
        enabled: log (the chief) or only measure (other workers).
    """

    def __init__(self, epochs: int, steps_per_epoch: int, enabled: bool = True) -> None:
        super().__init__()
        self.epochs, self.steps_per_epoch, self.enabled = epochs, steps_per_epoch, enabled
        self.first_epoch: int | None = None
        self.epoch_times: list[float] = []
        self.step_s = float("nan")
        self._warm: tuple[float, int] | None = None
        self._epoch, self._epoch_start = 0, time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Log the epoch (and a resume) and start its clock."""
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch > 0 and self.enabled:
                log.info("resumed from the backup at epoch %d/%d", epoch + 1, self.epochs)
        self._epoch, self._epoch_start = epoch, time.perf_counter()
        if self.enabled:
            log.info("epoch %d/%d", epoch + 1, self.epochs)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Measure step time after warm-up and log the first estimate once."""
        # With steps_per_execution = k Keras calls this every k steps with the last index.
        if not math.isnan(self.step_s):
            return
        now, steps = time.perf_counter(), batch + 1
        if self._warm is None:
            self._warm = (now, steps)
            return
        t0, s0 = self._warm
        if now - t0 < 2.0 and steps < self.steps_per_epoch:
            return
        self.step_s = (now - t0) / (steps - s0)
        epoch_s = self.step_s * self.steps_per_epoch
        remaining = self.step_s * (self.steps_per_epoch - steps) + epoch_s * (self.epochs - self._epoch - 1)
        if self.enabled:
            log.info("ETA: %.1f ms/step → about %s per epoch (training steps), %s for the run (done ≈ %s)",
                     self.step_s * 1000, _duration(epoch_s), _duration(remaining), _clock(remaining))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Update the estimate from measured epoch times."""
        self.epoch_times.append(time.perf_counter() - self._epoch_start)
        self._warm = None  # batch indices restart every epoch
        times = self.epoch_times[1:] or self.epoch_times  # the first epoch includes compilation
        per_epoch = sum(times) / len(times)
        left = self.epochs - epoch - 1
        if self.enabled and left > 0:
            log.info("ETA: %s per epoch measured, %s left for %d epoch(s) (done ≈ %s)",
                     _duration(per_epoch), _duration(per_epoch * left), left, _clock(per_epoch * left))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + max(0.0, seconds)))


class _StepTimer(keras.callbacks.Callback):
    """Callback for :func:`estimate`: time executions after the first, then stop the fit."""

    def __init__(self, min_seconds: float, max_steps: int) -> None:
        super().__init__()
        self.min_seconds, self.max_steps = min_seconds, max_steps
        self._start: tuple[float, int] | None = None
        self.step_s, self.timed_steps = float("nan"), 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Record the time of each execution; stop once enough steps were timed."""
        now = time.perf_counter()
        if self._start is None:
            self._start = (now, batch)  # the first execution includes tracing + compilation
            return
        t0, b0 = self._start
        self.timed_steps = batch - b0
        self.step_s = (now - t0) / self.timed_steps
        if (now - t0 >= self.min_seconds and self.timed_steps >= 2) or self.timed_steps >= self.max_steps:
            self.model.stop_training = True
