"""Optimizers, learning-rate schedules and regularizers built from the typed config.

    higgs train --data data/sample --out runs/cg --set train.optimizer=cg \\
        --set train.learning_rate=0.99 --set train.cg_lambda=20 --set train.reduce_lr=false
    python -c "from pipeline.core.config import load_config; \
from pipeline.training.optim import build_optimizer; \\
        print(build_optimizer(load_config('sample').train, 100).get_config())"

Everything here is built from ``TrainConfig`` / ``ModelConfig`` so that every option is
reachable from ``--set`` on the real (distributed) training path:

Impossible combinations (e.g. a decaying schedule together with ReduceLROnPlateau, which
needs a settable rate and otherwise fails deep inside Keras) are rejected when the config is
loaded (:func:`pipeline.core.config.validate`), before any TensorFlow work.
* :func:`build_schedule` returns a float or a real ``tf_keras`` ``LearningRateSchedule``.
* :func:`build_optimizer` returns a new-style ``tf_keras`` optimizer; call it inside
  ``strategy.scope()`` so its variables are mirrored.
* :class:`ConditionalGradient` is the Frank–Wolfe optimizer of TensorFlow Addons (end of
  life, does not install with TensorFlow 2.21) re-implemented on the ``tf_keras`` API.
* :class:`WeightNormCallback` records Frobenius norms of the kernels into the history.

``tf_keras`` is imported at module level because this module defines Keras classes; the
CLI imports it lazily (only training code paths import it).
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from pipeline.core.config import ConfigError, ModelConfig, Optimizer, Schedule, TrainConfig, choices
from pipeline.core.tfk import keras

OPTIMIZERS = choices(Optimizer)
SCHEDULES = choices(Schedule)


# --- schedules -----------------------------------------------------------------------------


def build_schedule(
    train_cfg: TrainConfig, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Return the configured learning rate: a float (``constant``) or a Keras schedule.

    Schedules count optimizer steps (``optimizer.iterations``), which under any strategy are
    global steps (one per synchronous all-reduced update), so ``steps_per_epoch`` is the
    global number of steps in an epoch.

    Args:
        train_cfg: the ``train`` section; ``schedule`` selects the form:
            ``constant`` → ``learning_rate``;
            ``inverse_time`` → ``InverseTimeDecay`` (lr / (1 + rate·step/decay_steps));
            ``exponential`` → ``ExponentialDecay`` (lr · rate^(step/decay_steps));
            ``piecewise`` → ``PiecewiseConstantDecay(boundaries, values)``;
            ``cosine`` → ``CosineDecay`` with a linear warmup from 0 to ``learning_rate``
            over ``schedule_warmup_steps``, then a cosine to 0 over ``decay_steps``.
            ``schedule_decay_steps=0`` means one epoch (inverse_time, exponential) or the rest
            of the run after warmup (cosine).
        steps_per_epoch: global optimizer steps per epoch (>= 1).

    Returns:
        A float or a ``LearningRateSchedule``.

    Raises:
        ConfigError: ``steps_per_epoch`` < 1 (the config itself was validated when loaded).
    """
    if steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be >= 1 to build a schedule, got {steps_per_epoch}")
    t = train_cfg
    schedules = keras.optimizers.schedules
    lr = float(t.learning_rate)
    if t.schedule == "constant":
        return lr
    if t.schedule == "piecewise":
        values = [float(v) for v in t.schedule_values]
        return schedules.PiecewiseConstantDecay(list(t.schedule_boundaries), values)
    if t.schedule in ("inverse_time", "exponential"):
        decay_steps = t.schedule_decay_steps or steps_per_epoch
        cls = schedules.InverseTimeDecay if t.schedule == "inverse_time" else schedules.ExponentialDecay
        return cls(lr, decay_steps=decay_steps, decay_rate=float(t.schedule_decay_rate), staircase=False)
    # cosine
    warmup = t.schedule_warmup_steps
    decay_steps = t.schedule_decay_steps or max(1, t.epochs * steps_per_epoch - warmup)
    if warmup > 0:
        # tf_keras >= 2.13 CosineDecay: linear ramp initial_learning_rate → warmup_target over
        # warmup_steps, then cosine from warmup_target down to alpha·warmup_target.
        return schedules.CosineDecay(0.0, decay_steps, alpha=0.0, warmup_target=lr, warmup_steps=warmup)
    return schedules.CosineDecay(lr, decay_steps, alpha=0.0)


# --- optimizers ----------------------------------------------------------------------------


def build_optimizer(train_cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Return the configured ``tf_keras`` optimizer (call inside ``strategy.scope()``).

    Args:
        train_cfg: the ``train`` section. ``optimizer`` picks Adam (``beta_1``, ``beta_2``,
            ``epsilon``, ``amsgrad``), AdamW (+ ``weight_decay``), SGD (``momentum``,
            ``nesterov``), RMSprop (``rmsprop_rho``, ``epsilon``) or ``cg``
            (:class:`ConditionalGradient` with ``cg_lambda``, ``epsilon``). Every optimizer
            takes the schedule of :func:`build_schedule`, gradient clipping by value
            (``clipvalue``), per tensor (``clipnorm``) or by global norm
            (``global_clipnorm``), decoupled ``weight_decay`` when > 0, and ``jit_compile``.
        steps_per_epoch: global optimizer steps per epoch, for the schedule.

    Returns:
        A new-style ``tf_keras.optimizers.Optimizer``. Clipping is applied by Keras after
        the cross-replica all-reduce, so it acts on the same gradient on every replica.

    Raises:
        ConfigError: invalid settings.
    """
    t = train_cfg
    lr = build_schedule(t, steps_per_epoch)
    common: dict[str, Any] = {
        "clipnorm": t.clipnorm,
        "clipvalue": t.clipvalue,
        "global_clipnorm": t.global_clipnorm,
        "weight_decay": t.weight_decay or None,
        # XLA for the update step only where asked for (DESIGN: "auto" is off on CPU); Keras
        # itself keeps optimizer XLA off unless a GPU is visible.
        "jit_compile": t.jit_compile,
    }
    opt = keras.optimizers
    if t.optimizer == "adam":
        return opt.Adam(lr, beta_1=t.beta_1, beta_2=t.beta_2, epsilon=t.epsilon, amsgrad=t.amsgrad, **common)
    if t.optimizer == "adamw":
        return opt.AdamW(lr, beta_1=t.beta_1, beta_2=t.beta_2, epsilon=t.epsilon, amsgrad=t.amsgrad, **common)
    if t.optimizer == "sgd":
        return opt.SGD(lr, momentum=t.momentum, nesterov=t.nesterov, **common)
    if t.optimizer == "rmsprop":
        return opt.RMSprop(lr, rho=t.rmsprop_rho, epsilon=t.epsilon, **common)
    return ConditionalGradient(lr, lambda_=t.cg_lambda, epsilon=t.epsilon, **common)


def kernel_regularizer(model_cfg: ModelConfig) -> keras.regularizers.Regularizer | None:
    """Return the kernel regularizer for the deep blocks from ``model.l1`` / ``model.l2``.

    Args:
        model_cfg: the ``model`` section.

    Returns:
        ``None`` (both 0), ``L1``, ``L2`` or ``L1L2`` (negative factors are rejected when the
        config is loaded).
    """
    l1, l2 = float(model_cfg.l1), float(model_cfg.l2)
    if l1 and l2:
        return keras.regularizers.L1L2(l1=l1, l2=l2)
    if l1:
        return keras.regularizers.L1(l1)
    if l2:
        return keras.regularizers.L2(l2)
    return None


@keras.utils.register_keras_serializable(package="higgs")
class ConditionalGradient(keras.optimizers.Optimizer):
    """Conditional gradient (Frank–Wolfe) with a Frobenius-norm ball, as TensorFlow Addons had it.

    Per variable ``w`` with (cross-replica summed) gradient ``g``, exactly like
    ``tfa.optimizers.ConditionalGradient(ord="fro")``::

        s = g / (‖g‖_F + epsilon)                   # ‖·‖_F over this variable only
        w ← learning_rate · w − (1 − learning_rate) · lambda_ · s

    ``−lambda_·s`` is the linear-minimisation oracle of the ball ``{‖w‖_F ≤ lambda_}``, so the
    update is a Frank–Wolfe step with step size ``γ = 1 − learning_rate`` (TFA's convention:
    ``learning_rate`` is the share *kept* of the current weights; use values close to 1, e.g.
    0.99). Since ``‖s‖_F < 1``, ``‖w_t‖_F ≤ max(‖w_0‖_F, lambda_)`` for every variable and step
    when ``0 ≤ learning_rate ≤ 1``. Sparse gradients update only the touched rows (TFA's sparse
    path). Registered as ``higgs>ConditionalGradient`` so a saved ``model.keras`` reloads once
    this module is imported.

    Args:
        learning_rate: float in (0, 1] or a ``LearningRateSchedule``.
        lambda_: radius of the Frobenius-norm ball (TFA default 0.01).
        epsilon: added to the gradient norm so a zero gradient gives a zero direction.
        **kwargs: base optimizer options (``clipnorm``, ``clipvalue``, ``global_clipnorm``,
            ``weight_decay``, ``jit_compile``, ``name``, ...).
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.99,
        lambda_: float = 0.01,
        epsilon: float = 1e-7,
        name: str = "ConditionalGradient",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.lambda_ = float(lambda_)
        self.epsilon = float(epsilon) if epsilon else keras.backend.epsilon()

    def build(self, var_list: list[tf.Variable]) -> None:
        """Create the optimizer state (none beyond the base class: FW keeps no slots)."""
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True

    def update_step(self, gradient: tf.Tensor | tf.IndexedSlices, variable: tf.Variable) -> None:
        """Apply one Frank–Wolfe step to ``variable`` (see the class docstring)."""
        lr = tf.cast(self.learning_rate, variable.dtype)
        lambda_ = tf.cast(self.lambda_, variable.dtype)
        epsilon = tf.cast(self.epsilon, variable.dtype)
        if isinstance(gradient, tf.IndexedSlices):
            values = gradient.values
            s = values / (tf.sqrt(tf.reduce_sum(tf.square(values))) + epsilon)
            rows = tf.gather(variable, gradient.indices)
            variable.scatter_update(tf.IndexedSlices(lr * rows - (1 - lr) * lambda_ * s, gradient.indices))
            return
        s = gradient / (tf.sqrt(tf.reduce_sum(tf.square(gradient))) + epsilon)
        variable.assign(lr * variable - (1 - lr) * lambda_ * s)

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments (schedules serialized), for ``model.keras``."""
        config = super().get_config()
        config.update({
            "learning_rate": self._serialize_hyperparameter(self._learning_rate),
            "lambda_": self.lambda_,
            "epsilon": self.epsilon,
        })
        return config


def custom_objects() -> dict[str, type]:
    """Return the custom Keras objects of this module (for ``load_model(custom_objects=...)``)."""
    return {"higgs>ConditionalGradient": ConditionalGradient, "ConditionalGradient": ConditionalGradient}


# --- weight norms --------------------------------------------------------------------------


def kernel_norms(model: keras.Model) -> dict[str, float]:
    """Return Frobenius norms of every kernel of ``model``: per variable and ``total``.

    Args:
        model: a built Keras model (any nesting; wide and deep branches included).

    Returns:
        ``{"<layer path>": ‖K‖_F, ..., "total": sqrt(Σ ‖K‖_F²)}`` over trainable variables
        whose name ends in ``kernel`` (biases and batch-norm parameters are not kernels).
    """
    norms: dict[str, float] = {}
    squares = 0.0
    for var in model.trainable_variables:
        path = var.name.split(":")[0]
        layer, _, leaf = path.rpartition("/")
        if not leaf.startswith("kernel"):
            continue
        value = float(tf.norm(tf.cast(var, tf.float32)).numpy())
        key = layer or path
        while key in norms:  # two kernels in one layer (unusual): keep both
            key += "_"
        norms[key] = value
        squares += value * value
    norms["total"] = math.sqrt(squares)
    return norms


class WeightNormCallback(keras.callbacks.Callback):
    """Record the Frobenius norm of all kernels (per layer and total) at the end of each epoch.

    Writes ``weight_norm`` (total) and ``weight_norm/<layer>`` into the epoch ``logs``, so they
    land in ``model.fit(...).history`` (→ ``RUN/history.json`` and the report) and in
    TensorBoard. Put it before callbacks that persist logs; Keras' own History comes last.
    Under MirroredStrategy/MWMS all replicas hold the same values, so every worker records
    the same numbers.

    Attributes:
        history: list of the per-epoch dicts from :func:`kernel_norms`, epoch 0 first; the
            initial norms (before training) are in ``initial``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []
        self.initial: dict[str, float] = {}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Record the norms of the initial weights."""
        self.initial = kernel_norms(self.model)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Record the norms and add them to ``logs``."""
        norms = kernel_norms(self.model)
        self.history.append(norms)
        if logs is not None:
            logs["weight_norm"] = norms["total"]
            for key, value in norms.items():
                if key != "total":
                    logs[f"weight_norm/{key}"] = value
