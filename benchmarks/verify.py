"""Records/s of ``higgs verify`` (vectorised CRC32C) vs. TensorFlow's TFRecord reader of the same files.

    .venv/bin/python benchmarks/verify.py                     # 2M generated records, 16 shards
    .venv/bin/python benchmarks/verify.py --data data/sample

On the same shard files, in one run (after a warm-up read, so every variant finds them in the
page cache), it times one pass over the training split of:

(a) ``project``: :func:`pipeline.data.verify.verify_dataset` — sizes, framing and both CRCs of
    every record (one C CRC call per 64k records plus numpy), no cache;
(b) ``tfrecord``: ``tf.data.TFRecordDataset(files).batch(4096)`` — TensorFlow's reader, which
    checks the same CRCs while reading (the reference: what a check by reading costs);
(c) ``per_record``: a plain Python loop of ``google_crc32c.value`` per record (what the check
    costs without the vectorised combination; timed on the first ``--per-record-rows``);
(d) ``read``: reading the bytes only (``open().read`` in 16 MB chunks), the floor.

Without ``--data`` a dataset of ``--rows`` generated events is written once under
``data/bench/verify-<rows>/`` with :mod:`pipeline.data.records` (the converter's encoder).
Last line: ``key=value`` pairs, ``ratio`` = project records/s ÷ tfrecord records/s. The machine
is shared: the load average is printed; compare figures of the same run only.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def write_dataset(out: Path, rows: int, shards: int = 16, seed: int = 5) -> Path:
    """Write ``rows`` generated events as a training split of ``shards`` files (+ manifest)."""
    from input import write_dataset as write  # benchmarks/input.py: the same generated split

    return write(out, rows, shards, seed)


def read_pass(files: list[str]) -> int:
    """Read every byte of ``files`` in 16 MB chunks; return the byte count."""
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(16 << 20):
                n += len(chunk)
    return n


def per_record_pass(files: list[str], max_records: int) -> int:
    """Check data CRCs record by record with one ``google_crc32c.value`` call each."""
    import google_crc32c

    from pipeline.data import records

    w, length, done = records.FRAMED_BYTES, records.EXAMPLE_BYTES, 0
    value = google_crc32c.value
    for f in files:
        data = Path(f).read_bytes()
        stored = np.frombuffer(data, np.uint8).reshape(-1, w)[:, -4:].copy().view("<u4").reshape(-1)
        for i in range(len(data) // w):
            crc = value(data[i * w + 12:i * w + 12 + length])
            if ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF) != int(stored[i]):
                raise SystemExit(f"bad record {i} in {f}")
            done += 1
            if done >= max_records:
                return done
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--per-record-rows", type=int, default=300_000)
    parser.add_argument("--data", default=None, help="an existing dataset (default: generate one)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf

    from pipeline.data import dataset, verify

    data = args.data or str(write_dataset(Path("data/bench") / f"verify-{args.rows}", args.rows))
    opened = dataset.open_dataset(data)
    files = opened.shard_paths("training")
    rows = opened.rows("training")

    read_pass(files)  # warm-up: page cache
    timings: dict[str, tuple[float, int]] = {}
    start = time.perf_counter()
    result = verify.verify_dataset(opened, splits=("training",), use_cache=False)
    timings["project"] = (time.perf_counter() - start, result.records)
    start = time.perf_counter()
    n = sum(int(b.shape[0]) for b in tf.data.TFRecordDataset(files).batch(4096))
    timings["tfrecord"] = (time.perf_counter() - start, n)
    start = time.perf_counter()
    n = per_record_pass(files, args.per_record_rows)
    timings["per_record"] = (time.perf_counter() - start, n)
    start = time.perf_counter()
    n = read_pass(files) // (result.bytes // result.records)
    timings["read"] = (time.perf_counter() - start, n)

    rate = {k: r / s for k, (s, r) in timings.items()}
    load = os.getloadavg()[0]
    print(f"{rows:,} records in {len(files)} shards ({result.bytes / 1e6:.0f} MB), load average {load:.1f} "
          f"on {os.cpu_count()} cores (shared machine)")
    for key, (s, r) in timings.items():
        print(f"  {key:11s} {r:>10,} records in {s:6.2f} s = {rate[key]:>13,.0f} records/s")
    print(f"rows={rows} project_records_s={rate['project']:.0f} tfrecord_records_s={rate['tfrecord']:.0f} "
          f"per_record_records_s={rate['per_record']:.0f} read_records_s={rate['read']:.0f} "
          f"project_over_per_record={rate['project'] / rate['per_record']:.1f} load={load:.1f} "
          f"ratio={rate['project'] / rate['tfrecord']:.2f}")


if __name__ == "__main__":
    main()
