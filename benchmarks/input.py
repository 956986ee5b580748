"""Records/s of the project's tf.data pipeline vs. the record-by-record decoder vs. raw bytes.

    .venv/bin/python benchmarks/input.py                       # 1M generated rows, 16 shards
    .venv/bin/python benchmarks/input.py --rows 200000 --data data/sample

On the same shard files, in one run (after one warm-up read so every variant finds the files
in the page cache), it times one pass over the training split of:

(a) ``raw``: ``TFRecordDataset(files).batch(B)`` — reading the framed bytes only (the floor);
(b) ``per_record``: ``TFRecordDataset(files).map(decode_record, AUTOTUNE).batch(B)`` — the
    Kaggle-style ``parse_single_example`` + ``parse_tensor`` per record, in parallel (timed on
    the first ``--per-record-rows`` records; its cost is per record);
(c) ``project``: ``pipeline.training.inputs.make_dataset(..., training=True)`` of the ``sample`` preset
    (interleaved reads, shuffle, repeat, batch, then one ``decode_batch`` per batch), cache off;
(d) ``project_eval``: the same with ``training=False`` (ordered, no shuffle).

Without ``--data`` a dataset of ``--rows`` generated events is written once under
``data/bench/input-<rows>/`` with ``pipeline.data.records`` (the converter's own encoder), in the
contract layout with a manifest. Last line: ``key=value`` pairs, ``ratio`` = project records/s
÷ per-record records/s (target ≥ 10). The machine is shared with other jobs: the load average
is printed, compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
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
    results = {}
    results["raw"] = timed_pass(raw.prefetch(tf.data.AUTOTUNE), batches)
    per_record = (tf.data.TFRecordDataset(files)
                  .map(records.decode_record, num_parallel_calls=tf.data.AUTOTUNE)
                  .batch(batch).prefetch(tf.data.AUTOTUNE))
    results["per_record"] = timed_pass(per_record, min(batches, args.per_record_rows // batch))
    results["project"] = timed_pass(make_dataset(data, "training", cfg, training=True, manifest=manifest),
                                    batches)
    results["project_eval"] = timed_pass(make_dataset(data, "training", cfg, training=False,
                                                      manifest=manifest), batches)

    rate = {k: n / s for k, (s, n) in results.items()}
    load = os.getloadavg()[0]
    print(f"{rows:,} records in {len(files)} shards, batch {batch}, load average {load:.1f} "
          f"on {os.cpu_count()} cores (shared machine)")
    for key, (s, n) in results.items():
        print(f"  {key:13s} {n:>9,} records in {s:6.2f} s = {rate[key]:>12,.0f} records/s")
    print(f"rows={rows} batch={batch} raw_rows_s={rate['raw']:.0f} "
          f"per_record_rows_s={rate['per_record']:.0f} "
          f"project_rows_s={rate['project']:.0f} project_eval_rows_s={rate['project_eval']:.0f} "
          f"project_over_raw={rate['project'] / rate['raw']:.2f} load={load:.1f} "
          f"ratio={rate['project'] / rate['per_record']:.1f}")


if __name__ == "__main__":
    main()
