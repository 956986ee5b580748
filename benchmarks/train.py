"""Examples/s of the ``sample`` preset fed from TFRecords vs. from memory; steps_per_execution 1 vs 32.

    .venv/bin/python benchmarks/train.py                 # 220,000 generated rows (the sample size)
    .venv/bin/python benchmarks/train.py --data data/sample --seconds 20

Same model (the ``sample`` preset: 3 blocks × 128 units, batch 512, Adam), same strategy
(the one ``auto`` picks here), same number of timed steps, in one run:

(a) ``tfrecord``: the project's input pipeline (``pipeline.training.inputs.distributed_dataset``:
    interleaved reads, shuffle, batch, ``decode_batch``) with the preset's
    ``steps_per_execution``;
(b) ``memory``: the same training rows decoded once into tensors, shuffled once, then
    ``from_tensor_slices → batch → repeat → prefetch`` — the ideal feed;
(c) ``spe1`` / ``spe32``: (a) with ``steps_per_execution`` 1 and 32.

Each variant trains a fresh model for a warm-up epoch (tracing, graph building; by default one
pass over the rows, which also fills the preset's cache) and then whole epochs until
``--seconds`` have passed, timed with a callback. The variants run in ``--rounds``
interleaved rounds (default 5); each figure is the median over the rounds with its min–max
spread, each ratio the median of the per-round ratios. Without ``--data`` the rows are
generated once under ``data/bench/train-<rows>/``. Last line: ``key=value`` pairs with
``ratio`` = tfrecord ÷ memory examples/s (target ≥ 0.9) and ``spe_ratio`` = spe32 ÷ spe1. The
machine is shared with other jobs: the load average is printed, compare figures from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(cfg, strategy, train_ds, steps_per_epoch: int, seconds: float) -> float:
    """Train a fresh model: one warm-up epoch, then timed epochs until ``seconds``; examples/s."""
    from pipeline.core.tfk import keras
    from pipeline.training.train import compiled_model

    model = compiled_model(cfg, strategy, steps_per_epoch)

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.start: float | None = None
            self.steps = 0

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch >= 1:
                self.steps += steps_per_epoch
                if time.perf_counter() - self.start >= seconds:
                    self.model.stop_training = True

    timer = Timer()
    model.fit(train_ds, epochs=1000, steps_per_epoch=steps_per_epoch, callbacks=[timer], verbose=0)
    elapsed = time.perf_counter() - timer.start
    return timer.steps * cfg.train.batch_size_per_replica * strategy.num_replicas_in_sync / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=220_000)
    parser.add_argument("--data", default=None, help="an existing dataset (default: generate one)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed training per variant and round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds over all variants; medians and spread are reported")
    parser.add_argument("--epoch-steps", type=int, default=None,
                        help="steps per Keras epoch (default: one pass over the rows, so the warm-up "
                             "epoch also fills the preset's cache)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from input import write_dataset  # benchmarks/input.py: same generated layout

    from pipeline.core.config import load_config
    from pipeline.data import dataset
    from pipeline.training import inputs
    from pipeline.training.strategy import make_strategy

    data = args.data or str(write_dataset(Path("data/bench") / f"train-{args.rows}", args.rows, shards=4))
    cfg = load_config("sample")
    strategy = make_strategy(cfg.train)  # before any other TensorFlow op
    import numpy as np
    import tensorflow as tf

    manifest = dataset.load_manifest(data)
    batch = cfg.train.batch_size_per_replica
    steps = args.epoch_steps or dataset.split_rows(manifest, "training") // batch

    def with_spe(spe: int):
        return load_config("sample", overrides=[f"train.steps_per_execution={spe}"])

    def tfrecord_ds(c):
        return inputs.distributed_dataset(strategy, data, "training", c, True, manifest=manifest)

    # The same rows in memory: one decoded pass, shuffled once.
    feats, labels = [], []
    for f, y in inputs.make_dataset(data, "training", cfg, training=False, manifest=manifest):
        feats.append(f.numpy())
        labels.append(y.numpy())
    x, y = np.concatenate(feats), np.concatenate(labels)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    memory = (tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
              .cache().repeat().prefetch(tf.data.AUTOTUNE))
    memory_ds = strategy.experimental_distribute_dataset(memory)

    spe = cfg.train.steps_per_execution
    variants = {
        "tfrecord": lambda: measure(cfg, strategy, tfrecord_ds(cfg), steps, args.seconds),
        "memory": lambda: measure(cfg, strategy, memory_ds, steps, args.seconds),
        "spe1": lambda: measure(with_spe(1), strategy, tfrecord_ds(with_spe(1)), steps, args.seconds),
        "spe32": lambda: measure(with_spe(32), strategy, tfrecord_ds(with_spe(32)), steps, args.seconds),
    }
    # Rounds alternate the variants so a burst of load from other jobs hits all of them.
    runs: dict[str, list[float]] = {key: [] for key in variants}
    for i in range(args.rounds):
        for key, run in variants.items():
            runs[key].append(run())
            print(f"round {i + 1}: {key:9s} {runs[key][-1]:>10,.0f} examples/s", flush=True)
    rates = {key: statistics.median(v) for key, v in runs.items()}
    ratios = [t / m for t, m in zip(runs["tfrecord"], runs["memory"], strict=True)]
    spe_ratios = [a / b for a, b in zip(runs["spe32"], runs["spe1"], strict=True)]
    load = os.getloadavg()[0]
    print(f"sample preset ({cfg.model.blocks}x{cfg.model.units}, batch {batch}, steps_per_execution {spe}) "
          f"on {len(x):,} training rows, {type(strategy).__name__}, {args.rounds} rounds, load average "
          f"{load:.1f} on {os.cpu_count()} cores (shared machine); median (min–max)")
    for key, value in rates.items():
        print(f"  {key:9s} {value:>10,.0f} examples/s  ({min(runs[key]):,.0f}–{max(runs[key]):,.0f})")
    print(f"  tfrecord / memory per round: median {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}–{max(ratios):.2f})")
    print(f"rows={len(x)} batch={batch} spe={spe} rounds={args.rounds} "
          f"tfrecord_examples_s={rates['tfrecord']:.0f} "
          f"memory_examples_s={rates['memory']:.0f} spe1_examples_s={rates['spe1']:.0f} "
          f"spe32_examples_s={rates['spe32']:.0f} spe_ratio={statistics.median(spe_ratios):.2f} "
          f"ratio_min={min(ratios):.2f} ratio_max={max(ratios):.2f} load={load:.1f} "
          f"ratio={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
