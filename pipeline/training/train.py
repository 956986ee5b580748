"""Train the wide-and-deep model under a ``tf.distribute`` strategy and write the run directory.

    higgs train --data data/sample --out runs/try --preset sample
    higgs train --data data/sample --out runs/mw --preset sample --workers 2
    higgs train --data data/sample --out runs/x --preset full --estimate

:func:`run_training` writes (chief only; other workers of a cluster write to temporary
directories they delete, TensorFlow's multi-worker saving rule)::

    RUN/config.yaml            the resolved config
    RUN/provenance.json        code and package versions, dataset fingerprint, config hash, host
    RUN/model/model.keras      the model with the best validation AUC (EarlyStopping restores it)
    RUN/logs/                  TensorBoard
    RUN/checkpoints/           the resumable state, kept until model.keras is in place:
        backup/                  BackupAndRestore (model, optimizer, epoch)
        state.json               early stopping / LR plateau counters of the backed-up epoch
        best-epoch-NNNN.weights.npz   the best epoch's weights so far
    RUN/history.json           {"epoch": [...], "loss": [...], "auc": [...], ..., "lr": [...]}

Nothing is lost on a kill (``docs/faults.md``): every epoch ends in one ordered commit
(:class:`EpochCommit`: best weights, ``history.json``, callback state, then the backup as the
commit point), so a rerun resumes after the last committed epoch with the same early-stopping
and learning-rate state and a history without gaps; the final model is written to a temporary
name and renamed, and only then is the resumable state removed.

This module trains in this process only: alone, or as one worker of a ``TF_CONFIG`` cluster.
Which backend runs it (here, a local cluster of worker processes, a Vertex AI job) is chosen
above it, in :mod:`pipeline.backends`. :func:`estimate` times a few real steps and prints the
expected time of a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import faults, provenance, rundir, storage
from pipeline.core.config import Config, write_config
from pipeline.core.errors import PipelineError
from pipeline.core.rundir import TrainResult
from pipeline.core.tfk import keras
from pipeline.data import dataset, verify
from pipeline.training import strategy as strategy_lib

if TYPE_CHECKING:
    import tensorflow as tf

from pipeline.training.callbacks import (
    EpochCommit,
    EtaLogger,
    HistoryJson,
    _duration,
    _KillPoints,
    _StepTimer,
)

log = logging.getLogger(__name__)

ESTIMATE_MAX_SPE = 4  # steps_per_execution used by estimate() (see there)
TRAIN_SPLITS = ("training", "validation")  # what a run reads


class TrainError(PipelineError):
    """Training could not run or a worker failed; the message says which and why."""


@dataclass(frozen=True)
class Estimate:
    """Measured step times and the run time they imply (``higgs train --estimate``)."""

    strategy: str
    replicas: int
    global_batch: int
    steps_per_epoch: int
    validation_steps: int
    epochs: int
    step_s: float
    val_step_s: float
    timed_steps: int
    note: str = ""

    @property
    def epoch_s(self) -> float:
        """Expected seconds per epoch (training steps plus validation)."""
        return self.steps_per_epoch * self.step_s + self.validation_steps * self.val_step_s

    @property
    def run_s(self) -> float:
        """Expected seconds for all configured epochs (no early stop)."""
        return self.epochs * self.epoch_s

    @property
    def examples_per_s(self) -> float:
        """Training examples per second across all replicas."""
        return self.global_batch / self.step_s if self.step_s > 0 else float("nan")

    def summary(self) -> str:
        """Human-readable lines: what was measured and the expected times."""
        lines = [
            f"measured {self.timed_steps} training steps after warm-up on {self.strategy} "
            f"({self.replicas} replica(s), global batch {self.global_batch}): "
            f"{self.step_s * 1000:.1f} ms/step, {self.examples_per_s:,.0f} examples/s; "
            f"validation {self.val_step_s * 1000:.1f} ms/step",
            f"expected per epoch: {_duration(self.epoch_s)} ({self.steps_per_epoch} steps + "
            f"{self.validation_steps} validation steps)",
            f"expected per run:   {_duration(self.run_s)} ({self.epochs} epochs, without early stopping)",
        ]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


# --- entry points ----------------------------------------------------------------------------


def run_training(cfg: Config, data: str | dataset.Dataset, run_dir: str) -> TrainResult:
    """Train a model on ``data`` into ``run_dir`` in this process (resumes an interrupted run).

    Alone this process is the whole run; under ``TF_CONFIG`` it is one worker of a
    MultiWorkerMirroredStrategy cluster (worker 0, the chief, writes ``run_dir``). To run on a
    local cluster of processes or on Vertex AI, call :func:`pipeline.backends.train`.

    Args:
        cfg: resolved config (``model``, ``train``).
        data: dataset directory (local or gs://) with ``manifest.json``, or the opened
            :class:`~pipeline.data.dataset.Dataset` (its manifest is not read again).
        run_dir: local run directory; created if missing.

    Returns:
        :class:`~pipeline.core.rundir.TrainResult` of the chief's outputs.

    Raises:
        TrainError: the run directory is unusable, or the data changed while being read.
        pipeline.data.dataset.DatasetError: ``data`` is not a dataset.
        pipeline.data.verify.IntegrityError: a training or validation shard is missing, short
            or corrupt (checked before anything is written).
        pipeline.training.strategy.StrategyError: the strategy cannot be created here.
    """
    if "://" in run_dir:
        raise TrainError(f"run directory {run_dir} must be a local path; "
                         "'higgs publish --run RUN --to gs://…' copies a finished run to GCS")
    if cfg.train.workers > 1 and not strategy_lib.is_worker_process():
        raise TrainError(f"train.workers={cfg.train.workers} needs a cluster: run it through "
                         "pipeline.backends.train (higgs train --workers N starts one on 127.0.0.1)")
    # A bad path, or a missing, short or corrupt shard, fails here: before anything heavy and
    # before the run directory exists. The manifest is read once.
    data = dataset.open_dataset(data)
    verify.verify_dataset(data, splits=TRAIN_SPLITS)
    storage.check_destination(run_dir, what="--out")
    return _train_here(cfg, data, Path(run_dir))


def estimate(cfg: Config, data: str | dataset.Dataset, *, min_seconds: float = 3.0,
             max_steps: int = 200) -> Estimate:
    """Time real training and validation steps (after warm-up) and extrapolate to a run.

    Nothing is written. With ``train.workers > 1`` and no cluster the steps are timed in this
    one process and the note says so.

    Args:
        cfg: resolved config.
        data: dataset directory.
        min_seconds: keep timing until this much time has passed (or ``max_steps``).
        max_steps: upper bound of timed training steps.

    Returns:
        An :class:`Estimate`; ``.summary()`` is what ``higgs train --estimate`` prints.
    """
    data = dataset.open_dataset(data)
    manifest = data.manifest
    note = ""
    if cfg.train.workers > 1 and not strategy_lib.is_worker_process():
        note = (f"note: timed in one process; --workers {cfg.train.workers} on one machine shares its "
                "cores, on separate machines each worker runs about this fast per replica")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workers=1, strategy="auto"))
    if cfg.train.steps_per_execution > ESTIMATE_MAX_SPE:
        # The first execution is the warm-up and two more are timed: with 32 steps each a big
        # model on a CPU would take minutes before the first figure.
        note = "\n".join(filter(None, [note, (
            f"note: timed with steps_per_execution={ESTIMATE_MAX_SPE} instead of "
            f"{cfg.train.steps_per_execution}; the run itself may be a little faster per step")]))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                 steps_per_execution=ESTIMATE_MAX_SPE))
    strategy = strategy_lib.make_strategy(cfg.train)  # before any other TensorFlow op
    from pipeline.training import inputs

    replicas = strategy.num_replicas_in_sync
    gbs = inputs.global_batch_size(cfg, replicas)
    steps = cfg.train.steps_per_epoch or inputs.steps_for(manifest, "training", gbs)
    val_steps = cfg.train.validation_steps or inputs.steps_for(manifest, "validation", gbs)
    model = compiled_model(cfg, strategy, steps)
    spe = cfg.train.steps_per_execution
    train_ds = inputs.distributed_dataset(strategy, data, "training", cfg, True)
    timer = _StepTimer(min_seconds=min_seconds, max_steps=max_steps)
    # One long "epoch" that the timer stops once it has measured enough executions.
    model.fit(train_ds, epochs=1, steps_per_epoch=max(steps, spe * 4, max_steps + 2 * spe),
              callbacks=[timer], verbose=0)
    val_ds = inputs.distributed_dataset(strategy, data, "validation", cfg, False,
                                        repeat=True, drop_remainder=True)
    k = max(2, min(val_steps, 5))
    model.evaluate(val_ds, steps=k, verbose=0)  # warm-up: traces and compiles the test step
    start = time.perf_counter()
    model.evaluate(val_ds, steps=k, verbose=0)
    val_step_s = (time.perf_counter() - start) / k
    return Estimate(strategy=type(strategy).__name__, replicas=replicas, global_batch=gbs,
                    steps_per_epoch=steps, validation_steps=val_steps, epochs=cfg.train.epochs,
                    step_s=timer.step_s, val_step_s=val_step_s, timed_steps=timer.timed_steps, note=note)


# --- the training run ------------------------------------------------------------------------


def resolve_precision(mixed_precision: str, strategy: tf.distribute.Strategy) -> str:
    """Return the dtype policy name for ``train.mixed_precision`` on this strategy's hardware.

    ``auto`` is ``mixed_bfloat16`` on TPU, ``mixed_float16`` on GPU and ``float32`` on CPU
    (CPUs gain nothing from float16 and bfloat16 matmuls are slow on most of them).
    """
    if mixed_precision != "auto":
        return mixed_precision
    if strategy_lib.is_tpu(strategy):
        return "mixed_bfloat16"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"


def compiled_model(cfg: Config, strategy: tf.distribute.Strategy, steps_per_epoch: int) -> Any:
    """Build and compile the model and optimizer inside ``strategy.scope()``.

    Args:
        cfg: resolved config (``model``; ``train`` optimizer, precision, XLA, steps_per_execution).
        strategy: the run's strategy (its hardware picks the ``auto`` precision).
        steps_per_epoch: global optimizer steps per epoch (for learning-rate schedules).

    Returns:
        The compiled ``keras.Model`` (loss binary cross-entropy, metrics ``auc``, ``accuracy``).
    """
    from pipeline.training import optim
    from pipeline.training.model import build_wide_and_deep

    precision = resolve_precision(cfg.train.mixed_precision, strategy)
    with strategy.scope():
        model = build_wide_and_deep(cfg.model, dtype_policy=None if precision == "float32" else precision)
        optimizer = optim.build_optimizer(cfg.train, steps_per_epoch)
        if precision == "mixed_float16":
            # float16 gradients underflow without loss scaling (bfloat16 has float32's range).
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.BinaryCrossentropy(),
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
            steps_per_execution=cfg.train.steps_per_execution,
            jit_compile=cfg.train.jit_compile,
        )
    import tensorflow as tf

    log.info("model: %d parameters, dtype policy %s, jit_compile=%s, steps_per_execution=%d "
             "(TensorFlow %s, tf_keras %s)", model.count_params(), precision, cfg.train.jit_compile,
             cfg.train.steps_per_execution, tf.__version__, keras.__version__)
    return model


def _train_here(cfg: Config, data: dataset.Dataset, run_dir: Path) -> TrainResult:
    """Train in this process (alone, or as one worker of a TF_CONFIG cluster)."""
    strategy = strategy_lib.make_strategy(cfg.train)  # must precede every other TensorFlow op
    from pipeline.training import inputs, optim

    task_type, task_id, chief = strategy_lib.task_info(strategy)
    manifest = data.manifest
    replicas = strategy.num_replicas_in_sync
    gbs = inputs.global_batch_size(cfg, replicas)
    steps = cfg.train.steps_per_epoch or inputs.steps_for(manifest, "training", gbs)
    val_steps = cfg.train.validation_steps or inputs.steps_for(manifest, "validation", gbs)
    log.info("%s %d of %s: %d replica(s) in sync, global batch %d, %d steps/epoch, %d validation steps",
             task_type, task_id, type(strategy).__name__, replicas, gbs, steps, val_steps)

    # Non-chief workers run the same saving code into a private directory (TensorFlow's
    # multi-worker rule: every worker saves, only the chief's copy is kept).
    out = run_dir if chief else Path(tempfile.mkdtemp(prefix=f"higgs-{task_type}{task_id}-"))
    try:
        out.mkdir(parents=True, exist_ok=True)
        if chief:
            write_config(cfg, rundir.config_path(out))
            _remove_stale_model_files(out)
            rundir.write_provenance(out, provenance.gather(
                cfg, data=data.uri, dataset_fingerprint=dataset.fingerprint(data),
                strategy=type(strategy).__name__, replicas=replicas))
        model = compiled_model(cfg, strategy, steps)
        train_ds = inputs.distributed_dataset(strategy, data, "training", cfg, True)
        # Repeated + full batches: every replica sees the same number of validation steps,
        # and Keras starts a fresh iterator per evaluation, so each epoch sees the same rows.
        val_ds = inputs.distributed_dataset(strategy, data, "validation", cfg, False,
                                            repeat=True, drop_remainder=True)
        history_cb = HistoryJson(out)
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=cfg.train.early_stopping_patience,
            restore_best_weights=True, verbose=1 if chief else 0)
        reduce_lr = None
        if cfg.train.reduce_lr:
            reduce_lr = keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", mode="min", factor=cfg.train.reduce_lr_factor,
                patience=cfg.train.reduce_lr_patience, min_delta=cfg.train.reduce_lr_min_delta,
                min_lr=cfg.train.reduce_lr_min_lr, verbose=1 if chief else 0)
        callbacks = [
            optim.WeightNormCallback(),
            EtaLogger(epochs=cfg.train.epochs, steps_per_epoch=steps, enabled=chief),
            *([reduce_lr] if reduce_lr else []),
            early_stopping,
            keras.callbacks.TensorBoard(rundir.logs_dir(run_dir), update_freq="epoch", profile_batch=0),
            *([_KillPoints(steps)] if faults.enabled() else []),
            # Last, in this order: the epoch's history row, then its commit (see EpochCommit).
            history_cb,
            EpochCommit(run_dir, out, chief=chief, epochs=cfg.train.epochs,
                        early_stopping=early_stopping, reduce_lr=reduce_lr),
        ]
        start = time.perf_counter()
        try:
            model.fit(train_ds, epochs=cfg.train.epochs, steps_per_epoch=steps, validation_data=val_ds,
                      validation_steps=val_steps, callbacks=callbacks, verbose=2 if chief else 0)
        except Exception as exc:
            _raise_input_error(exc, data)
            raise
        elapsed = time.perf_counter() - start

        # Every worker saves (reads of synced variables are collective); the chief's file is
        # renamed into place only when complete, and the resumable state outlives the rename.
        model_path = Path(rundir.model_path(out))
        model_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(rundir.model_tmp_path(out, str(os.getpid())))
        model.save(tmp)
        faults.point("train.before_model_rename")
        os.replace(tmp, model_path)
        digest = weights_digest(model)
        steps_done = int(model.optimizer.iterations.numpy())
        log.info("finished: %d optimizer steps in %.1f s; weights_sha256=%s", steps_done, elapsed, digest)
        _barrier(strategy)  # the chief must not exit while other workers still talk to it
        if chief:
            faults.point("train.before_cleanup")
            remove_resume_state(run_dir)
    finally:
        if not chief:
            shutil.rmtree(out, ignore_errors=True)
    if not chief:  # its outputs are gone; report the chief's paths with this worker's history
        return TrainResult.from_history(run_dir, history_cb.history)
    return TrainResult.from_run_dir(run_dir)


def _raise_input_error(exc: Exception, data: dataset.Dataset) -> None:
    """Turn TensorFlow's read error of a shard that changed after the check into one line.

    The framed fast reader (``inputs._framed_dataset``) asserts the frame layout of every
    record; ``TFRecordDataset`` raises DataLossError on a bad CRC. Either way an uncached check
    names the shard and the byte offset (:func:`pipeline.data.verify.is_read_error`).
    """
    if verify.is_read_error(exc):
        verify.verify_dataset(data, splits=TRAIN_SPLITS, use_cache=False)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise TrainError(f"reading {data} failed during training ({type(exc).__name__}: {first}); "
                         f"check the dataset with 'higgs verify {data}'") from None


def _remove_stale_model_files(run: Path) -> None:
    """Delete temporary model files a killed run left beside ``model/model.keras``."""
    for path in Path(rundir.model_dir(run)).glob(rundir.MODEL_TMP_PATTERN):
        path.unlink(missing_ok=True)


def remove_resume_state(run: str | Path) -> None:
    """Remove the resumable state of a finished run (after ``model.keras`` is in place).

    The backup goes first: a kill midway leaves callback state without a backup, which a
    later run ignores (it starts fresh), never a backup without its callback state.
    """
    shutil.rmtree(rundir.backup_dir(run), ignore_errors=True)
    Path(rundir.backup_dir(run)).mkdir(parents=True, exist_ok=True)
    Path(rundir.state_path(run)).unlink(missing_ok=True)
    for path in Path(rundir.checkpoints_dir(run)).glob(rundir.BEST_WEIGHTS_PATTERN):
        path.unlink(missing_ok=True)


def weights_digest(model: Any) -> str:
    """SHA-256 over all weights of ``model`` (bit-exact; equal on all workers of a synced run)."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(str(w.dtype).encode())
        h.update(str(w.shape).encode())
        h.update(w.tobytes())
    return h.hexdigest()


def _barrier(strategy: tf.distribute.Strategy) -> None:
    """Block until every worker got here: one all-reduce across the cluster."""
    if not strategy_lib.is_worker_process():
        return
    import tensorflow as tf

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
    log.debug("barrier passed by %d replicas", int(total.numpy()))
