"""Effect of the learning-rate schedule on validation AUC (sample preset, same data and seeds).

    .venv/bin/python benchmarks/schedule_auc.py --rows 100000 --epochs 8 --seeds 1,2

Generates ``--rows`` events with the sample generator (``pipeline.data.synth``), writes them in
the contract layout with the project's record encoder (or uses ``--data``), then trains the
``sample`` preset once per schedule and seed through the real path
(:func:`pipeline.training.train.run_training`, one device) with the same initial weights, dropout
and shuffle order per seed. Schedules compared (all on the preset's Adam; peak rate
``--learning-rate``, default the sample preset's rate, 1e-2):

* ``constant`` — fixed rate, no ReduceLROnPlateau;
* ``constant+rlrop`` — the preset default (fixed rate, ReduceLROnPlateau on val_loss);
* ``inverse_time`` — lr / (1 + 0.5·epoch) (decay_steps = one epoch);
* ``inverse_time_slow`` — lr / (1 + 0.1·epoch);
* ``exponential`` — lr · 0.5^epoch;
* ``cosine`` — 100 warmup steps, cosine to 0 at the end of the run.

Prints a table and, last, ``key=value`` pairs; ``ratio`` = best schedule's mean best
val_auc / constant's. The machine is shared: timings are indicative only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SCHEDULES: dict[str, list[str]] = {
    "constant": ["train.schedule=constant", "train.reduce_lr=false"],
    "constant+rlrop": ["train.schedule=constant", "train.reduce_lr=true"],
    "inverse_time": ["train.schedule=inverse_time", "train.reduce_lr=false", "train.schedule_decay_rate=0.5"],
    "inverse_time_slow": ["train.schedule=inverse_time", "train.reduce_lr=false",
                          "train.schedule_decay_rate=0.1"],
    "exponential": ["train.schedule=exponential", "train.reduce_lr=false", "train.schedule_decay_rate=0.5"],
    "cosine": ["train.schedule=cosine", "train.reduce_lr=false", "train.schedule_warmup_steps=100"],
}


def write_dataset(out: Path, rows: int, seed: int, training_shards: int = 4) -> Path:
    """Generate ``rows`` events and write them as a dataset (split by the contract's 1/22 rule)."""
    from pipeline.core import schema
    from pipeline.data import records, synth

    labels, features = synth.generate(rows, seed)
    n_val = n_test = rows // 22
    n_train = rows - n_val - n_test
    bounds = {"training": (0, n_train, training_shards), "validation": (n_train, n_train + n_val, 2),
              "test": (n_train + n_val, rows, 2)}
    shards, counts = {}, {}
    for split, (lo, hi, n_shards) in bounds.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        shards[split] = []
        for i, idx in enumerate(np.array_split(np.arange(lo, hi), n_shards)):
            rel = f"{split}/part-{i:05d}-of-{n_shards:05d}.tfrecord"
            encoded = records.encode_examples(features[idx], labels[idx])
            (out / rel).write_bytes(records.frame_records(encoded))
            shards[split].append({"path": rel, "records": len(idx)})
        counts[split] = hi - lo
    manifest = {"rows": counts, "bad_rows": 0, "source": {"uri": f"synth:rows={rows},seed={seed}", "bytes": 0,
                                                          "sha256": ""},
                "shards": shards, "features": list(schema.FEATURES)}
    (out / schema.MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="existing dataset (default: generate one)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="1", help="comma-separated weight/shuffle seeds")
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--learning-rate", type=float, default=None, help="peak rate (default: preset)")
    parser.add_argument("--out", default=None, help="run directories (default: a temp dir)")
    args = parser.parse_args()

    from pipeline.core.config import load_config
    from pipeline.core.tfk import keras
    from pipeline.training import train

    work = Path(args.out or tempfile.mkdtemp(prefix="schedule-auc-"))
    data = args.data or str(write_dataset(work / "data", args.rows, seed=7))
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict[str, float]]] = {}
    for name in args.schedules.split(","):
        for seed in seeds:
            cfg = load_config("sample", overrides=[
                f"train.epochs={args.epochs}", "train.strategy=one_device", "train.workers=1",
                "train.deterministic=true", f"train.seed={seed}", "train.early_stopping_patience=100",
                *SCHEDULES[name],
                *([f"train.learning_rate={args.learning_rate}"] if args.learning_rate else [])])
            keras.utils.set_random_seed(seed)  # same initial weights and dropout per seed
            start = time.perf_counter()
            result = train.run_training(cfg, data, str(work / f"{name}-s{seed}"))
            val = [v for v in result.history["val_auc"] if v is not None]
            row = {"best_val_auc": max(val), "final_val_auc": val[-1], "seconds": time.perf_counter() - start,
                   "final_lr": result.history.get("lr", [float("nan")])[-1]}
            results.setdefault(name, []).append(row)
            print(f"{name:16s} seed {seed}: best val_auc {row['best_val_auc']:.4f}  final "
                  f"{row['final_val_auc']:.4f}  final lr {row['final_lr']:.2e}  {row['seconds']:.0f} s",
                  flush=True)

    print(f"\n{'schedule':16s} {'best val_auc':>14s} {'final val_auc':>14s}   (mean over seeds {seeds})")
    means = {}
    for name, rows in results.items():
        means[name] = statistics.mean(r["best_val_auc"] for r in rows)
        final = statistics.mean(r["final_val_auc"] for r in rows)
        print(f"{name:16s} {means[name]:14.4f} {final:14.4f}")
    (work / "schedule_auc.json").write_text(json.dumps(results, indent=1))
    best = max(means, key=means.get)
    base = means.get("constant", next(iter(means.values())))
    pairs = " ".join(f"{k.replace('+', '_')}_auc={v:.4f}" for k, v in means.items())
    lr = args.learning_rate or load_config("sample").train.learning_rate
    print(f"rows={args.rows} epochs={args.epochs} seeds={len(seeds)} lr={lr:g} {pairs} best={best} "
          f"ratio={means[best] / base:.4f}")


if __name__ == "__main__":
    main()
