"""Learning-rate range test: a short real training run with an exponentially growing rate.

    higgs lr-find --data data/sample --out runs/lrfind --preset sample --set train.optimizer=sgd
    python -c "from pipeline.core.config import load_config; from pipeline.training.lrfind import lr_find; \\
        print(lr_find(load_config('sample'), 'data/sample', 'runs/lrfind').suggested_lr)"

The configured model (:func:`pipeline.training.model.build_wide_and_deep`), optimizer
(:func:`pipeline.training.optim.build_optimizer`, with a constant, settable rate) and input pipeline
(:func:`pipeline.training.inputs.distributed_dataset`) are built inside the configured strategy's
scope, then trained for ``steps`` steps with ``lr_i = min_lr · (max_lr/min_lr)^(i/(steps−1))``.
Each Keras "epoch" is one step (``steps_per_epoch=1``), so the logged ``loss`` is exactly that
step's batch loss (Keras' ``loss`` is otherwise a running mean over the epoch). The run
stops early once the loss diverges (non-finite, or the smoothed loss above 4× its minimum).

The **suggested rate is the rate at the minimum of the smoothed loss divided by 10** (the
rule of Smith 2017 / fastai's ``lr_min``): on 100 noisy steps it is steadier than the
steepest-descent point, which is reported alongside (``steepest_lr``) for comparison.

Outputs in ``out_dir``: ``lr_find.png`` (loss vs rate, log x), ``lr_find.json`` (rates,
raw and smoothed losses, both suggestions) and ``config.yaml`` (the resolved config).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import storage
from pipeline.core.config import Config, ConfigError, to_yaml, validate

log = logging.getLogger(__name__)

DIVERGENCE_FACTOR = 4.0  # smoothed loss above 4× its minimum = diverged (fastai's rule)


@dataclass(frozen=True)
class LRFindResult:
    """What :func:`lr_find` measured and wrote.

    Attributes:
        suggested_lr: rate at the minimum of the smoothed loss / 10.
        lrs: the rate of every step run.
        losses: the batch loss of every step.
        plot_path: the PNG written (loss vs rate, log x).
        json_path: the JSON written.
        smoothed: bias-corrected exponential moving average of ``losses``.
        steepest_lr: rate of the steepest descent of the smoothed loss (for comparison).
        min_loss_lr: rate at the minimum of the smoothed loss.
        diverged: whether the run stopped early on divergence.
    """

    suggested_lr: float
    lrs: list[float]
    losses: list[float]
    plot_path: str
    json_path: str
    smoothed: list[float] = field(default_factory=list)
    steepest_lr: float = math.nan
    min_loss_lr: float = math.nan
    diverged: bool = False


def lr_find(
    cfg: Config,
    data: str,
    out_dir: str,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 100,
    smoothing: float = 0.9,
) -> LRFindResult:
    """Run the LR range test on the configured model, optimizer, input and strategy.

    Args:
        cfg: resolved config (model, optimizer and batch size are taken from it; the rate,
            schedule and ReduceLROnPlateau settings are replaced by the sweep).
        data: dataset directory (local or gs://) with ``manifest.json``.
        out_dir: where the PNG, JSON and config go (local directory or gs:// prefix).
        min_lr: first rate of the sweep (> 0).
        max_lr: last rate of the sweep (> min_lr).
        steps: number of training steps (>= 10).
        smoothing: EMA factor for the smoothed loss, in [0, 1).

    Returns:
        :class:`LRFindResult`.

    Raises:
        ConfigError: bad sweep arguments, ``train.optimizer=cg`` (its rate is a Frank–Wolfe
            step share, not a gradient step size), ``train.workers > 1`` (the sweep runs in
            this process) or an invalid optimizer config.
        pipeline.data.dataset.DatasetError: ``data`` is not a dataset.
    """
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"lr-find needs 0 < min_lr < max_lr, got min_lr={min_lr} max_lr={max_lr}")
    if steps < 10:
        raise ConfigError(f"lr-find needs at least 10 steps to fit a curve, got {steps}")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"lr-find smoothing must be in [0, 1), got {smoothing}")
    if cfg.train.optimizer == "cg":
        raise ConfigError("lr-find does not apply to train.optimizer=cg (its rate is the share of the "
                          "weights kept per Frank–Wolfe step); pick a rate near 1, e.g. 0.99")
    if cfg.train.workers > 1:
        raise ConfigError(f"lr-find runs in one process; drop train.workers={cfg.train.workers} and keep "
                          "the real run's global batch (train.batch_size_per_replica × replicas)")
    sweep_train = dataclasses.replace(cfg.train, schedule="constant", reduce_lr=False,
                                      schedule_warmup_steps=0, learning_rate=min_lr)
    run_cfg = dataclasses.replace(cfg, train=sweep_train)

    from pipeline.training import optim
    from pipeline.training.strategy import make_strategy

    validate(run_cfg)
    # The strategy first: MultiWorkerMirroredStrategy must configure the runtime before any op.
    strategy = make_strategy(sweep_train)

    import numpy as np

    from pipeline.data import dataset
    from pipeline.training import inputs
    from pipeline.training.model import build_wide_and_deep

    manifest = dataset.load_manifest(data)
    lrs = [float(lr) for lr in min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))]
    with strategy.scope():
        model = build_wide_and_deep(run_cfg.model)
        optimizer = optim.build_optimizer(sweep_train, steps_per_epoch=steps)
        # One step per execution: the callback must set the rate before every single step.
        model.compile(optimizer=optimizer, loss="binary_crossentropy", steps_per_execution=1,
                      jit_compile=run_cfg.train.jit_compile)
    train_data = inputs.distributed_dataset(strategy, data, "training", run_cfg, manifest=manifest)
    sweep = _range_callback(lrs, smoothing)
    model.fit(train_data, epochs=steps, steps_per_epoch=1, callbacks=[sweep], verbose=0)

    result = _summarise(sweep, out_dir)
    _write_outputs(result, run_cfg, out_dir, min_lr=min_lr, max_lr=max_lr, steps=steps)
    log.info("lr-find: %d steps, suggested %.3g (steepest %.3g)", len(result.lrs), result.suggested_lr,
             result.steepest_lr)
    return result


def _range_callback(lrs: list[float], smoothing: float) -> Any:
    """Return a Keras callback that sets each step's rate, records its loss, stops on divergence.

    Defined inside a function so that importing this module does not import TensorFlow.
    """
    from pipeline.core.tfk import keras

    class RangeCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.lrs, self.losses, self.smoothed = lrs, [], []
            self.diverged = False
            self._avg, self._best = 0.0, math.inf

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            # A constant rate is a variable: assigning it is what ReduceLROnPlateau does too.
            self.model.optimizer.learning_rate = self.lrs[epoch]

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            loss = float((logs or {}).get("loss", math.nan))
            self.losses.append(loss)
            if not math.isfinite(loss):
                self.smoothed.append(math.nan)
                self.diverged = True
                self.model.stop_training = True
                return
            self._avg = smoothing * self._avg + (1 - smoothing) * loss
            value = self._avg / (1 - smoothing ** (epoch + 1))  # bias-corrected EMA
            self.smoothed.append(value)
            self._best = min(self._best, value)
            if value > DIVERGENCE_FACTOR * self._best:
                self.diverged = True
                self.model.stop_training = True

    return RangeCallback()


def suggest(lrs: list[float], smoothed: list[float], skip: float = 0.1) -> tuple[float, float, float]:
    """Return ``(suggested, steepest, at_min)`` rates from a smoothed loss curve.

    Args:
        lrs: rates, increasing.
        smoothed: smoothed losses, same length (non-finite entries are ignored).
        skip: fraction of the first points left out of the steepest-descent search (the EMA
            is still settling there).

    Returns:
        ``suggested`` = rate at the smoothed minimum / 10; ``steepest`` = rate where the
        smoothed loss falls fastest per decade before the minimum; ``at_min`` = rate at the
        minimum.

    Raises:
        ValueError: fewer than 3 finite points.
    """
    import numpy as np

    lr = np.asarray(lrs[: len(smoothed)], dtype=np.float64)
    loss = np.asarray(smoothed, dtype=np.float64)
    ok = np.isfinite(loss)
    lr, loss = lr[ok], loss[ok]
    if len(loss) < 3:
        raise ValueError("need at least 3 finite losses to suggest a rate")
    i_min = int(np.argmin(loss))
    at_min = float(lr[i_min])
    slope = np.gradient(loss, np.log10(lr))
    lo = min(int(len(loss) * skip), max(0, i_min - 1))
    hi = max(lo + 1, i_min + 1)
    steepest = float(lr[lo + int(np.argmin(slope[lo:hi]))])
    return at_min / 10.0, steepest, at_min


def _summarise(sweep: Any, out_dir: str) -> LRFindResult:
    n = len(sweep.losses)
    lrs = sweep.lrs[:n]
    try:
        suggested, steepest, at_min = suggest(lrs, sweep.smoothed)
    except ValueError:
        raise ConfigError(
            f"lr-find diverged after {n} steps before a curve could be fitted; lower --max-lr "
            f"(it started at {lrs[0]:.3g})"
        ) from None
    return LRFindResult(
        suggested_lr=suggested,
        lrs=lrs,
        losses=sweep.losses,
        plot_path=storage.join(out_dir, "lr_find.png"),
        json_path=storage.join(out_dir, "lr_find.json"),
        smoothed=sweep.smoothed,
        steepest_lr=steepest,
        min_loss_lr=at_min,
        diverged=sweep.diverged,
    )


def plot(result: LRFindResult, title: str = "LR range test") -> bytes:
    """Return the PNG bytes of loss vs learning rate (log x) with the suggestion marked.

    Args:
        result: an :class:`LRFindResult`.
        title: plot title.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display on servers / in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="batch loss")
        ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed loss")
        ax.axvline(result.suggested_lr, color="C3", ls="--",
                   label=f"suggested {result.suggested_lr:.2g} (min/10)")
        ax.axvline(result.steepest_lr, color="C2", ls=":", label=f"steepest {result.steepest_lr:.2g}")
        ax.set_xscale("log")
        finite = [v for v in result.smoothed if math.isfinite(v)]
        if finite:  # keep the diverging tail from flattening the interesting part
            ax.set_ylim(min(finite) * 0.95, min(max(finite), DIVERGENCE_FACTOR * min(finite)) * 1.05)
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss (binary cross-entropy)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _write_outputs(result: LRFindResult, cfg: Config, out_dir: str, **sweep: Any) -> None:
    if not storage.is_gcs(out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    title = f"LR range test — {cfg.train.optimizer}, batch {cfg.train.batch_size_per_replica}/replica"
    storage.write_bytes(result.plot_path, plot(result, title))
    payload = {
        "suggested_lr": result.suggested_lr,
        "suggestion_rule": "rate at the minimum of the smoothed loss / 10",
        "steepest_lr": result.steepest_lr,
        "min_loss_lr": result.min_loss_lr,
        "diverged": result.diverged,
        "optimizer": cfg.train.optimizer,
        "sweep": sweep,
        "lrs": result.lrs,
        "losses": [v if math.isfinite(v) else None for v in result.losses],
        "smoothed": [v if math.isfinite(v) else None for v in result.smoothed],
    }
    storage.write_text(result.json_path, json.dumps(payload, indent=2) + "\n")
    storage.write_text(storage.join(out_dir, "config.yaml"), to_yaml(cfg))
