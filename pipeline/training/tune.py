"""Hyperparameter search over the real training path with Optuna (``higgs tune``).

    higgs tune --data data/sample --out runs/tune --preset sample --set tune.trials=8
    higgs train --data data/sample --out runs/best --config runs/tune/best_config.yaml

The search space and budget are the ``tune`` config section (blocks, units, dropout,
learning rate, optimizer, per-replica batch size; ``trials``, ``parallel``, ``epochs`` per
trial, ``sampler``). Every trial is a real ``higgs train`` run in its own process (own
TensorFlow runtime, own strategy — ``--workers N`` trials work too) in ``OUT/trials/NNN``;
its objective is the best validation AUC of its ``history.json``. Up to ``tune.parallel``
trials run at once: Optuna's ask/tell interface hands out a batch of points, a *runner*
trains them (threads here; Prefect tasks in ``flows/tune.py``), and the values are told back.

Why Optuna and not KerasTuner: KerasTuner is not installed here, and it imports Keras 3
(``import keras`` in ``keras_tuner/backend/config.py``) and rejects ``tf_keras`` models
("Expected the model-building function ... to return a valid Keras Model instance",
keras-team/keras-tuner#1039; the fix #1040 is unmerged), while this project must stay on
``tf_keras`` (DESIGN.md). Optuna is framework-free, so trials can be whole training runs.

Outputs in ``OUT``: ``best_config.yaml`` (the base config with the best point and the base
epoch count, accepted by ``higgs train --config``), ``trials.json``, ``study.journal``
(Optuna's journal: re-running the same command resumes the study) and ``hparams/``
(TensorBoard HParams: one run per trial with its parameters and ``val_auc``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import rundir
from pipeline.core.config import Config, TuneConfig, apply_overrides, validate, write_config
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

STUDY_NAME = "higgs-tune"
ADAMW_DEFAULT_DECAY = 0.004  # Keras' AdamW default, used when the base config has none

# A runner trains a batch of (trial config, run directory) pairs and returns, in order, each
# trial's objective or the exception that ended it.
Runner = Callable[[Sequence[tuple[Config, str]]], list["float | BaseException"]]


class TuneError(PipelineError):
    """A trial could not be run or produced no validation AUC; one line says which and why."""


@dataclass(frozen=True)
class TrialResult:
    """One finished trial.

    Attributes:
        number: Optuna's trial number (0-based).
        params: the point of the search space.
        value: best validation AUC, or None if the trial failed.
        run_dir: the trial's run directory.
        error: the failure's one-line reason ("" when it succeeded).
    """

    number: int
    params: dict[str, Any]
    value: float | None
    run_dir: str
    error: str = ""


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found and wrote.

    Attributes:
        best_value: best validation AUC over all trials of the study.
        best_params: the point that reached it.
        best_config_path: YAML accepted by ``higgs train --config``.
        trials: every finished trial of the study (resumed ones included).
        trials_path: ``trials.json``.
        hparams_dir: TensorBoard HParams log directory.
    """

    best_value: float
    best_params: dict[str, Any]
    best_config_path: str
    trials: list[TrialResult]
    trials_path: str
    hparams_dir: str


def suggest(trial: Any, tune_cfg: TuneConfig) -> dict[str, Any]:
    """Draw one point of the search space from an Optuna trial.

    Args:
        trial: ``optuna.Trial`` (or ``optuna.trial.FixedTrial``).
        tune_cfg: the ``tune`` section.

    Returns:
        ``{"blocks", "units", "dropout", "learning_rate", "optimizer", "batch_size"}``.
    """
    t = tune_cfg
    return {
        "blocks": trial.suggest_categorical("blocks", list(t.blocks)),
        "units": trial.suggest_categorical("units", list(t.units)),
        "dropout": trial.suggest_float("dropout", t.dropout_min, t.dropout_max),
        "learning_rate": trial.suggest_float("learning_rate", t.learning_rate_min, t.learning_rate_max,
                                             log=True),
        "optimizer": trial.suggest_categorical("optimizer", list(t.optimizers)),
        "batch_size": trial.suggest_categorical("batch_size", list(t.batch_sizes)),
    }


def trial_config(cfg: Config, params: dict[str, Any], epochs: int | None = None) -> Config:
    """Return the base config with one point of the space applied.

    Args:
        cfg: the base config.
        params: from :func:`suggest`.
        epochs: epochs to train (default: the base config's ``train.epochs``).

    Returns:
        A checked :class:`Config` (AdamW gets ``weight_decay=0.004`` if the base has none).
    """
    overrides = [
        f"model.blocks={params['blocks']}", f"model.units={params['units']}",
        f"model.dropout={params['dropout']!r}", f"train.learning_rate={params['learning_rate']!r}",
        f"train.optimizer={params['optimizer']}", f"train.batch_size_per_replica={params['batch_size']}",
        f"train.epochs={epochs or cfg.train.epochs}",
    ]
    if params["optimizer"] == "adamw" and cfg.train.weight_decay == 0:
        overrides.append(f"train.weight_decay={ADAMW_DEFAULT_DECAY}")
    return apply_overrides(cfg, overrides)


def run_trial(cfg: Config, data: str, run_dir: str, timeout_s: float | None = None) -> float:
    """Train one trial with ``higgs train`` in a fresh process; return its best val AUC.

    A fresh process per trial gives each its own TensorFlow runtime and strategy (Keras global
    state never leaks between trials, and trials can run side by side).

    Args:
        cfg: the trial's full config (written to ``run_dir/trial_config.yaml``).
        data: dataset directory.
        run_dir: the trial's run directory.
        timeout_s: kill the trial after this many seconds (None = no limit).

    Returns:
        The maximum ``val_auc`` of ``run_dir/history.json``.

    Raises:
        TuneError: the run failed, timed out or recorded no validation AUC.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    config_path = write_config(cfg, run / "trial_config.yaml")
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--data", data, "--out", str(run),
           "--config", str(config_path)]
    with open(run / "train.log", "w") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise TuneError(f"trial {run.name} did not finish within {timeout_s:.0f} s "
                            f"(tune.trial_timeout_s); see {run / 'train.log'}") from None
    if proc.returncode != 0:
        tail = (run / "train.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise TuneError(f"trial {run.name} failed (exit {proc.returncode}): {tail[0][:200]}")
    best = rundir.best_val_auc(rundir.read_history(run))
    if math.isnan(best):
        raise TuneError(f"trial {run.name} recorded no val_auc in {rundir.history_path(run)}")
    return best


def thread_runner(parallel: int, timeout_s: float | None, data: str) -> Runner:
    """Return a runner that trains up to ``parallel`` trials at once (one process each)."""

    def run(batch: Sequence[tuple[Config, str]]) -> list[float | BaseException]:
        def one(item: tuple[Config, str]) -> float | BaseException:
            try:
                return run_trial(item[0], data, item[1], timeout_s)
            except PipelineError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            return list(pool.map(one, batch))

    return run


def tune(cfg: Config, data: str, out_dir: str, runner: Runner | None = None) -> TuneResult:
    """Search ``cfg.tune``'s space with Optuna; write the best config, trials and HParams logs.

    Re-running with the same ``out_dir`` resumes the study (finished trials count toward
    ``tune.trials``).

    Args:
        cfg: the base config (everything not searched is taken from it).
        data: dataset directory (local or gs://).
        out_dir: local output directory.
        runner: trains a batch of trials (default: :func:`thread_runner` with
            ``tune.parallel`` threads, each starting one training process).

    Returns:
        :class:`TuneResult`.

    Raises:
        ConfigError: invalid ``tune`` section.
        TuneError: every trial failed.
        pipeline.data.dataset.DatasetError: ``data`` is not a dataset.
    """
    validate(cfg)
    from pipeline.data import dataset

    dataset.load_manifest(data)  # a bad path fails here, not in N trial processes
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    t = cfg.tune
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=t.seed) if t.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=t.seed))
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler,
                                direction="maximize", load_if_exists=True)
    runner = runner or thread_runner(t.parallel, t.trial_timeout_s or None, data)
    finished = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL

    while (done := len(study.get_trials(deepcopy=False, states=finished))) < t.trials:
        batch = [study.ask() for _ in range(min(t.parallel, t.trials - done))]
        items = []
        for trial in batch:
            params = suggest(trial, t)
            run_dir = str(out / "trials" / f"{trial.number:03d}")
            items.append((trial_config(cfg, params, epochs=t.epochs), run_dir))
        start = time.perf_counter()
        values = runner(items)
        for trial, value in zip(batch, values, strict=True):
            if isinstance(value, BaseException):
                log.warning("trial %d failed: %s", trial.number, value)
                reason = str(value).splitlines()[0] if str(value) else type(value).__name__
                trial.set_user_attr("error", reason)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                log.info("trial %d: val_auc %.4f %s", trial.number, value, trial.params)
                study.tell(trial, float(value))
        log.info("batch of %d trial(s) took %.0f s", len(batch), time.perf_counter() - start)

    trials = [TrialResult(tr.number, dict(tr.params), tr.value, str(out / "trials" / f"{tr.number:03d}"),
                          str(tr.user_attrs.get("error", "")))
              for tr in study.get_trials(deepcopy=False, states=finished)]
    if not any(tr.value is not None for tr in trials):
        raise TuneError(f"all {len(trials)} trials failed; first: {trials[0].error}; see {out / 'trials'}")
    best = study.best_trial
    best_params = suggest(optuna.trial.FixedTrial(best.params), t)
    best_path = write_config(trial_config(cfg, best_params), out / "best_config.yaml")
    trials_path = out / "trials.json"
    trials_path.write_text(json.dumps([dataclasses.asdict(tr) for tr in trials], indent=1) + "\n")
    hparams_dir = _write_hparams(out / "hparams", cfg.tune, trials)
    return TuneResult(float(best.value), best_params, str(best_path), trials, str(trials_path),
                      str(hparams_dir))


def _write_hparams(log_dir: Path, tune_cfg: TuneConfig, trials: Sequence[TrialResult]) -> Path:
    """Write TensorBoard HParams summaries: the space once, then one run per finished trial."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    t = tune_cfg
    space = [
        hp.HParam("blocks", hp.Discrete(list(t.blocks))),
        hp.HParam("units", hp.Discrete(list(t.units))),
        hp.HParam("dropout", hp.RealInterval(float(t.dropout_min), float(max(t.dropout_max, t.dropout_min)))),
        hp.HParam("learning_rate", hp.RealInterval(float(t.learning_rate_min), float(t.learning_rate_max))),
        hp.HParam("optimizer", hp.Discrete(list(t.optimizers))),
        hp.HParam("batch_size", hp.Discrete(list(t.batch_sizes))),
    ]
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp.hparams_config(hparams=space, metrics=[hp.Metric("val_auc", display_name="best val AUC")])
    for tr in trials:
        if tr.value is None:
            continue
        with tf.summary.create_file_writer(str(log_dir / f"trial-{tr.number:03d}")).as_default():
            hp.hparams(tr.params, trial_id=f"trial-{tr.number:03d}")
            tf.summary.scalar("val_auc", tr.value, step=1)
    return log_dir


def summary(result: TuneResult) -> str:
    """One line for the CLI: best value, point and where things were written."""
    ok = sum(tr.value is not None for tr in result.trials)
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in result.best_params.items())
    return (f"best val_auc {result.best_value:.4f} ({params}) after {ok}/{len(result.trials)} successful "
            f"trials; wrote {result.best_config_path}, {result.trials_path} and {result.hparams_dir}/")


__all__ = ["TrialResult", "TuneError", "TuneResult", "run_trial", "suggest", "summary", "trial_config",
           "tune"]
