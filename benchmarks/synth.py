"""Benchmark the event generator and its gzip-CSV writer against a plain numpy/gzip writer.

    .venv/bin/python benchmarks/synth.py                      # 1,000,000 rows
    .venv/bin/python benchmarks/synth.py --rows 200000 --ref-rows 50000

Measures, in one run on this machine:

- ``gen_events_s``: events generated per second (physics, detector, reconstruction, scaling),
- ``write_rows_s``: rows formatted (Arrow, shortest float32 text), gzip-compressed (ISA-L
  level 1) and written per second, counting the time of the format and compress stages as
  if one thread did both (comparable with the single-threaded reference),
- ``wall_rows_s``: rows per second of the whole ``write_csv`` call (generation, formatting
  and compression overlap in threads),
- ``ref_write_rows_s``: the same rows written the obvious way, ``np.savetxt(fmt="%.9g")``
  into ``gzip.open`` (zlib level 6), on the first ``--ref-rows`` rows,

and prints as its last line ``rows=… gen_events_s=… write_rows_s=… ref_write_rows_s=…
ratio=…`` where ratio = write_rows_s / ref_write_rows_s. The machine is shared: the load
average is printed with the figures.
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import synth


def reference_write(path: Path, labels: np.ndarray, features: np.ndarray) -> tuple[float, float]:
    """Write rows with np.savetxt through gzip.open; return (rows/s wall, rows per CPU-s)."""
    rows = np.concatenate([labels[:, None], features], axis=1)
    start, cpu = time.perf_counter(), time.thread_time()
    with gzip.open(path, "wb", compresslevel=6) as f:
        np.savetxt(f, rows, fmt="%.9g", delimiter=",")
    return len(rows) / (time.perf_counter() - start), len(rows) / (time.thread_time() - cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ref-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="directory for the files (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        out = Path(tmp)
        synth.generate(1000, seed=args.seed)  # warm imports and caches outside the timing
        result = synth.write_csv(out / "synth.csv.gz", rows=args.rows, seed=args.seed)
        size = result.path.stat().st_size
        labels, features = synth.generate(args.ref_rows, seed=args.seed)
        ref_rows_s, ref_cpu_rows_s = reference_write(out / "ref.csv.gz", labels, features)

    load = os.getloadavg()[0]
    print(f"generated {result.rows:,} events ({result.signal_fraction:.1%} signal) in "
          f"{result.seconds:.1f} s, {size / result.rows:.0f} gzip bytes/row, load average {load:.1f}")
    gen_cpu = result.rows / result.gen_cpu_seconds
    write_cpu = result.rows / result.write_cpu_seconds
    print("                          wall-clock        per CPU-second")
    print(f"  generation          {result.events_per_s:12,.0f} ev/s  {gen_cpu:12,.0f} ev/s")
    print(f"  format+gzip+write   {result.write_rows_per_s:12,.0f} rows/s{write_cpu:12,.0f} rows/s")
    print(f"  write_csv overall   {result.rows / result.seconds:12,.0f} rows/s")
    print(f"  reference savetxt   {ref_rows_s:12,.0f} rows/s{ref_cpu_rows_s:12,.0f} rows/s  "
          f"(np.savetxt '%.9g' + gzip level 6, {args.ref_rows:,} rows)")
    ratio = result.write_rows_per_s / ref_rows_s
    print(f"rows={result.rows} gen_events_s={result.events_per_s:.0f} gen_events_cpu_s={gen_cpu:.0f} "
          f"write_rows_s={result.write_rows_per_s:.0f} write_rows_cpu_s={write_cpu:.0f} "
          f"wall_rows_s={result.rows / result.seconds:.0f} ref_write_rows_s={ref_rows_s:.0f} "
          f"ref_write_rows_cpu_s={ref_cpu_rows_s:.0f} load={load:.1f} ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
