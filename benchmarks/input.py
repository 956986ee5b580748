"""Records/s of the project's tf.data pipeline vs. the record-by-record decoder vs. raw bytes.

    .venv/bin/python benchmarks/input.py                       # 1M generated rows, 16 shards
    .venv/bin/python benchmarks/input.py --rows 200000 --data data/sample

On the same shard files, in one run (after one warm-up read so every variant finds the files
in the page cache), it times one pass over the training split of:

(a) ``raw``: ``TFRecordDataset(files).batch(B)`` — reading the framed records only, no decode
    (the reference: the raw batched read rate);
(b) ``per_record``: ``TFRecordDataset(files).map(decode_record, AUTOTUNE).batch(B)`` — the
    Kaggle-style ``parse_single_example`` + ``parse_tensor`` per record, in parallel (timed on
    the first ``--per-record-rows`` records; its cost is per record);
(c) ``project``: ``pipeline.training.inputs.make_dataset(..., training=True)`` of the ``sample``
    preset, cache off (framed 16-record blocks, shuffle, repeat, one decode per batch, rebatch);
(d) ``project_eval``: the same with ``training=False`` (ordered, no shuffle).

The variants run in ``--rounds`` interleaved rounds (default 5: a, b, c, d, a, b, …) so a burst
of load from other jobs hits all of them; each figure is the median over the rounds, printed
with its min–max spread, and each ratio is the median of the per-round ratios. Without
``--data`` a dataset of ``--rows`` generated events is written once under
``data/bench/input-<rows>/`` with ``pipeline.data.records`` (the converter's own encoder), in the
contract layout with a manifest. Last line: ``key=value`` pairs, ``ratio`` = project ÷ raw
records/s (target ≥ 0.8), ``per_record_ratio`` = project ÷ per-record decoder. The machine is
shared with other jobs: the load average is printed, compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def write_dataset(out: Path, rows: int, shards: int = 16, seed: int = 11) -> Path:
    """Write ``rows`` generated events as a training split of ``shards`` files (+ manifest)."""
    from pipeline.core import schema
    from pipeline.data import records, synth

    if (out / "manifest.json").is_file():
        return out
    labels, feats = synth.generate(rows, seed)
    (out / "training").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, idx in enumerate(np.array_split(np.arange(rows), shards)):
        name = f"training/part-{i:05d}-of-{shards:05d}.tfrecord"
        (out / name).write_bytes(records.frame_records(records.encode_examples(feats[idx], labels[idx])))
        entries.append({"path": name, "records": len(idx)})
    manifest = {"rows": {"training": rows, "validation": 0, "test": 0}, "bad_rows": 0,
                "source": {"uri": f"synth:{rows}:{seed}", "bytes": 0, "sha256": ""},
                "shards": {"training": entries, "validation": [], "test": []},
                "features": list(schema.FEATURES)}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def timed_pass(ds, batches: int) -> tuple[float, int]:
    """Iterate ``batches`` batches; return (seconds, records)."""
    n = 0
    start = time.perf_counter()
    for item in ds.take(batches):
        first = item[0] if isinstance(item, tuple) else item
        n += int(first.shape[0])
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--per-record-rows", type=int, default=200_000,
                        help="rows timed for the slow per-record decoder (its rate is per record)")
    parser.add_argument("--data", default=None, help="an existing dataset (default: generate one)")
    parser.add_argument("--batch", type=int, default=None, help="default: the sample preset's 512")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median and spread)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf

    from pipeline.core.config import load_config
    from pipeline.data import dataset, records
    from pipeline.training.inputs import make_dataset

    data = args.data or str(write_dataset(Path("data/bench") / f"input-{args.rows}", args.rows))
    manifest = dataset.load_manifest(data)
    files = dataset.shard_paths(data, "training", manifest)
    rows = dataset.split_rows(manifest, "training")
    cfg = load_config("sample", overrides=["train.cache=false"] +
                      ([f"train.batch_size_per_replica={args.batch}"] if args.batch else []))
    batch = cfg.train.batch_size_per_replica
    batches = rows // batch

    raw = tf.data.TFRecordDataset(files).batch(batch)
    timed_pass(raw, batches)  # warm-up: page cache
    per_record = (tf.data.TFRecordDataset(files)
                  .map(records.decode_record, num_parallel_calls=tf.data.AUTOTUNE)
                  .batch(batch).prefetch(tf.data.AUTOTUNE))
    variants = {
        "raw": lambda: timed_pass(raw.prefetch(tf.data.AUTOTUNE), batches),
        "per_record": lambda: timed_pass(per_record, min(batches, args.per_record_rows // batch)),
        "project": lambda: timed_pass(make_dataset(data, "training", cfg, training=True,
                                                   manifest=manifest), batches),
        "project_eval": lambda: timed_pass(make_dataset(data, "training", cfg, training=False,
                                                        manifest=manifest), batches),
    }
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(args.rounds):
        for key, run in variants.items():
            seconds, n = run()
            rates[key].append(n / seconds)
        print(f"round {i + 1}: " + "  ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()), flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = [p / r for p, r in zip(rates["project"], rates["raw"], strict=True)]
    eval_ratios = [p / r for p, r in zip(rates["project_eval"], rates["raw"], strict=True)]
    per_record_ratios = [p / r for p, r in zip(rates["project"], rates["per_record"], strict=True)]
    load = os.getloadavg()[0]
    print(f"{rows:,} records in {len(files)} shards, batch {batch}, {args.rounds} rounds, load average "
          f"{load:.1f} on {os.cpu_count()} cores (shared machine); median (min–max) records/s")
    for key, values in rates.items():
        print(f"  {key:13s} {med[key]:>12,.0f}  ({min(values):,.0f}–{max(values):,.0f})")
    print(f"  project / raw per round: median {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}–{max(ratios):.2f}); project_eval / raw {statistics.median(eval_ratios):.2f} "
          f"({min(eval_ratios):.2f}–{max(eval_ratios):.2f})")
    print(f"rows={rows} batch={batch} rounds={args.rounds} raw_rows_s={med['raw']:.0f} "
          f"per_record_rows_s={med['per_record']:.0f} project_rows_s={med['project']:.0f} "
          f"project_eval_rows_s={med['project_eval']:.0f} ratio_min={min(ratios):.2f} "
          f"ratio_max={max(ratios):.2f} eval_ratio={statistics.median(eval_ratios):.2f} "
          f"per_record_ratio={statistics.median(per_record_ratios):.1f} load={load:.1f} "
          f"ratio={statistics.median(ratios):.2f}")

if __name__ == "__main__":
    main()
