"""Every range and cross-field rule of the config, checked once when a config is loaded.

    python -c "from pipeline.core.config import load_config as L; L('sample', overrides=['train.epochs=0'])"

:func:`pipeline.core.config.validate` (called by ``load_config`` and ``read_config``) runs
:func:`check`; types and choice values (``Literal`` fields) are already checked while the
config is parsed. Each rule raises :class:`~pipeline.core.errors.ConfigError` with one line
naming the key and the fix.
"""

from __future__ import annotations

import itertools
from typing import Any

from pipeline.core.config_tree import (
    Config,
    DataConfig,
    EvaluateConfig,
    ModelConfig,
    RuntimeConfig,
    TrainConfig,
    ValidateConfig,
)
from pipeline.core.errors import ConfigError


def check(cfg: Config) -> None:
    """Check every section of ``cfg``; raise ``ConfigError`` on the first problem."""
    _validate_data(cfg.data)
    _validate_model(cfg.model)
    _validate_train(cfg.train)
    _validate_evaluate(cfg.evaluate)
    _validate_runtime(cfg.runtime)
    _validate_tune(cfg)
    _validate_validate(cfg.validate)


def _at_least(section: str, obj: Any, minimum: float, *keys: str) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < minimum:
            raise ConfigError(f"{section}.{key} must be >= {minimum}, got {value}")


def _validate_data(d: DataConfig) -> None:
    _at_least("data", d, 1, "synth_rows", "training_shards", "validation_shards", "test_shards",
              "block_rows", "validation_rows", "test_rows")
    _at_least("data", d, 0, "max_bad_rows", "expected_bytes", "mirror_bytes", "convert_threads",
              "dask_workers")


def _validate_model(m: ModelConfig) -> None:
    _at_least("model", m, 1, "units")
    _at_least("model", m, 0, "blocks", "l1", "l2")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")


def _validate_train(t: TrainConfig) -> None:
    _at_least("train", t, 1, "epochs", "batch_size_per_replica", "steps_per_epoch", "validation_steps",
              "steps_per_execution", "workers")
    _at_least("train", t, 0, "shuffle_buffer", "early_stopping_patience", "reduce_lr_patience",
              "reduce_lr_min_delta", "reduce_lr_min_lr")
    if t.workers > 1 and t.strategy not in ("auto", "multi_worker"):
        raise ConfigError(f"--workers {t.workers} runs MultiWorkerMirroredStrategy; "
                          f"use --strategy multi_worker or auto (got {t.strategy})")
    if not t.learning_rate > 0:
        raise ConfigError(f"train.learning_rate must be > 0, got {t.learning_rate}")
    if t.reduce_lr and not 0.0 < t.reduce_lr_factor < 1.0:
        raise ConfigError(f"train.reduce_lr_factor must be in (0, 1), got {t.reduce_lr_factor}")
    if t.reduce_lr and not t.reduce_lr_min_lr < t.learning_rate:
        # The reference notebook's min_lr equalled Adam's default rate: the callback never fired.
        raise ConfigError(f"train.reduce_lr_min_lr={t.reduce_lr_min_lr} must be below train.learning_rate="
                          f"{t.learning_rate}, or ReduceLROnPlateau can never lower the rate")
    if t.schedule != "constant" and t.reduce_lr:
        # tf_keras' ReduceLROnPlateau assigns to optimizer.learning_rate, which is not a
        # variable when a schedule drives it: "TypeError: This optimizer was created with a
        # `LearningRateSchedule` object ..." after the first plateau — hours into a run.
        raise ConfigError(
            f"train.schedule={t.schedule} cannot be combined with train.reduce_lr=true: "
            "ReduceLROnPlateau needs a settable rate; set train.reduce_lr=false or train.schedule=constant"
        )
    _validate_schedule(t)
    if t.clipnorm is not None and t.global_clipnorm is not None:
        raise ConfigError("set at most one of train.clipnorm (per tensor) and "
                          "train.global_clipnorm (all tensors together)")
    for key in ("clipnorm", "clipvalue", "global_clipnorm"):
        value = getattr(t, key)
        if value is not None and not value > 0:
            raise ConfigError(f"train.{key} must be > 0 (or null to disable), got {value}")
    if not 0.0 <= t.momentum <= 1.0:
        raise ConfigError(f"train.momentum must be in [0, 1], got {t.momentum}")
    if not 0.0 <= t.rmsprop_rho < 1.0:
        raise ConfigError(f"train.rmsprop_rho must be in [0, 1), got {t.rmsprop_rho}")
    if t.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    if t.optimizer == "adamw" and t.weight_decay == 0:
        raise ConfigError("train.optimizer=adamw needs train.weight_decay > 0 (e.g. 0.004); "
                          "with 0 it is plain adam")
    if t.optimizer == "cg":
        _validate_cg(t)


def _validate_schedule(t: TrainConfig) -> None:
    if t.schedule == "piecewise":
        b, v = t.schedule_boundaries, t.schedule_values
        if not b or len(v) != len(b) + 1:
            raise ConfigError(
                f"train.schedule=piecewise needs N boundaries and N+1 values, got {len(b)} boundaries "
                f"and {len(v)} values; e.g. train.schedule_boundaries=[1000,2000] "
                "train.schedule_values=[1e-3,1e-4,1e-5]"
            )
        if any(x <= 0 for x in b) or any(x >= y for x, y in itertools.pairwise(b)):
            raise ConfigError(f"train.schedule_boundaries must be positive and increasing, got {list(b)}")
        if any(not x > 0 for x in v):
            raise ConfigError(f"train.schedule_values must all be > 0, got {list(v)}")
    if t.schedule_warmup_steps < 0 or t.schedule_decay_steps < 0:
        raise ConfigError("train.schedule_warmup_steps and train.schedule_decay_steps must be >= 0")
    if t.schedule_warmup_steps > 0 and t.schedule != "cosine":
        raise ConfigError(
            f"train.schedule_warmup_steps={t.schedule_warmup_steps} only applies to train.schedule=cosine "
            f"(got {t.schedule}); set train.schedule=cosine or train.schedule_warmup_steps=0"
        )
    if t.schedule in ("inverse_time", "exponential") and not t.schedule_decay_rate > 0:
        raise ConfigError(f"train.schedule_decay_rate must be > 0, got {t.schedule_decay_rate}")


def _validate_cg(t: TrainConfig) -> None:
    rates = t.schedule_values if t.schedule == "piecewise" else (t.learning_rate,)
    if any(not 0.0 < r <= 1.0 for r in rates):
        # TFA's convention: the rate is the weight kept on the current iterate, so a
        # value above 1 would push the weights *away* from the constraint set.
        raise ConfigError(
            f"train.optimizer=cg needs learning rates in (0, 1] (the share kept of the current "
            f"weights, e.g. train.learning_rate=0.99), got {list(rates)}"
        )
    if not t.cg_lambda > 0:
        raise ConfigError(f"train.cg_lambda must be > 0, got {t.cg_lambda}")
    if t.reduce_lr:
        raise ConfigError("train.optimizer=cg cannot use train.reduce_lr=true: lowering its rate makes "
                          "the Frank–Wolfe steps larger (step = 1 − rate); set train.reduce_lr=false")


def _validate_evaluate(e: EvaluateConfig) -> None:
    _at_least("evaluate", e, 1, "batch_size", "baseline_rows", "baseline_trees")
    _at_least("evaluate", e, 0, "bootstrap", "baseline_threads", "max_auc_regression")
    if not 0.0 <= e.auc_floor <= 1.0:
        raise ConfigError(f"evaluate.auc_floor must be in [0, 1], got {e.auc_floor}")


def _validate_runtime(r: RuntimeConfig) -> None:
    _at_least("runtime", r, 1, "direct_num_workers", "worker_count", "dataflow_max_workers")
    _at_least("runtime", r, 0, "accelerator_count", "presplit_parts")
    if r.tpu_type and r.worker_count > 1:
        raise ConfigError("runtime.tpu_type and runtime.worker_count > 1 are exclusive: a TPU job is one "
                          "TPU VM; set runtime.worker_count=1")
    if r.accelerator_type and r.accelerator_count < 1:
        raise ConfigError("runtime.accelerator_count must be >= 1 when runtime.accelerator_type is set")


def _validate_tune(cfg: Config) -> None:
    t = cfg.tune
    _at_least("tune", t, 1, "trials", "parallel", "epochs")
    _at_least("tune", t, 0, "trial_timeout_s")
    for key in ("blocks", "units", "optimizers", "batch_sizes"):
        if not getattr(t, key):
            raise ConfigError(f"tune.{key} must list at least one choice")
    if any(b < 1 for b in t.blocks) or any(u < 1 for u in t.units) or any(b < 1 for b in t.batch_sizes):
        raise ConfigError("tune.blocks, tune.units and tune.batch_sizes must be positive")
    if not 0.0 <= t.dropout_min <= t.dropout_max < 1.0:
        raise ConfigError(f"need 0 <= tune.dropout_min <= tune.dropout_max < 1, got "
                          f"{t.dropout_min}, {t.dropout_max}")
    if not 0.0 < t.learning_rate_min <= t.learning_rate_max:
        raise ConfigError(f"need 0 < tune.learning_rate_min <= tune.learning_rate_max, got "
                          f"{t.learning_rate_min}, {t.learning_rate_max}")
    if cfg.train.reduce_lr and t.learning_rate_min <= cfg.train.reduce_lr_min_lr:
        raise ConfigError(f"tune.learning_rate_min={t.learning_rate_min} must exceed train.reduce_lr_min_lr="
                          f"{cfg.train.reduce_lr_min_lr} (or set train.reduce_lr=false)")


def _validate_validate(v: ValidateConfig) -> None:
    _at_least("validate", v, 0, "max_psi", "max_mean_shift", "max_signal_fraction_shift",
              "max_bad_row_rate_increase")
    _at_least("validate", v, 1, "max_rows_factor")
