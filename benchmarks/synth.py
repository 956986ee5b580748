"""Benchmark the event generator and its gzip-CSV writer against a plain numpy/gzip writer.

    .venv/bin/python benchmarks/synth.py                      # 1,000,000 rows
    .venv/bin/python benchmarks/synth.py --rows 200000 --ref-rows 50000

Measures, one after the other in one process on this machine (each stage alone, so the
figures are comparable with each other under the same load):

- ``gen_events_s``: ``synth.generate`` — physics, detector, reconstruction, scaling;
- ``write_rows_s``: the writer's work on those arrays in one thread — Arrow formatting
  (``synth.format_csv``, shortest round-trip float32 text) and ISA-L gzip level 1 into a file,
  exactly the functions ``write_csv`` uses;
- ``wall_rows_s``: the real ``synth.write_csv`` call end to end (generation, formatting and
  compression overlap in threads);
- ``ref_write_rows_s``: the same rows written the obvious way, ``np.savetxt(fmt="%.9g")``
  into ``gzip.open`` (zlib level 6), on the first ``--ref-rows`` rows;

plus the same rates per CPU-second (thread time), which do not depend on how busy the shared
machine is. The last line is ``rows=… gen_events_s=… write_rows_s=… ref_write_rows_s=…
ratio=…`` with ratio = write_rows_s / ref_write_rows_s.
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.data import synth

CHUNK = 65_536


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """Run ``fn``; return (result, wall seconds, CPU seconds of this thread)."""
    start, cpu = time.perf_counter(), time.thread_time()
    result = fn()
    return result, time.perf_counter() - start, time.thread_time() - cpu


def project_write(path: Path, labels: np.ndarray, features: np.ndarray) -> None:
    """Format and compress pre-generated rows the way write_csv does, in this thread."""
    from isal import igzip

    with open(path, "wb") as raw, igzip.IGzipFile(filename="", mode="wb", fileobj=raw,
                                                  compresslevel=1, mtime=0) as gz:
        for i in range(0, len(labels), CHUNK):
            gz.write(synth.format_csv(labels[i:i + CHUNK], features[i:i + CHUNK]))


def reference_write(path: Path, labels: np.ndarray, features: np.ndarray) -> None:
    """Write rows with np.savetxt through gzip.open (the obvious way)."""
    rows = np.concatenate([labels[:, None], features], axis=1)
    with gzip.open(path, "wb", compresslevel=6) as f:
        np.savetxt(f, rows, fmt="%.9g", delimiter=",")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ref-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="directory for the files (default: a temp dir)")
    args = parser.parse_args(argv)
    n, m = args.rows, min(args.ref_rows, args.rows)

    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        out = Path(tmp)
        synth.generate(1000, seed=args.seed)  # warm imports and caches outside the timing
        (labels, features), gen_wall, gen_cpu = timed(lambda: synth.generate(n, seed=args.seed))
        _, write_wall, write_cpu = timed(lambda: project_write(out / "p.csv.gz", labels, features))
        _, ref_wall, ref_cpu = timed(lambda: reference_write(out / "r.csv.gz", labels[:m], features[:m]))
        result = synth.write_csv(out / "synth.csv.gz", rows=n, seed=args.seed)
        size = result.path.stat().st_size
        same = gzip.decompress((out / "p.csv.gz").read_bytes()) == gzip.decompress(result.path.read_bytes())

    load = os.getloadavg()[0]
    rates = {
        "gen_events_s": n / gen_wall, "gen_events_cpu_s": n / gen_cpu,
        "write_rows_s": n / write_wall, "write_rows_cpu_s": n / write_cpu,
        "ref_write_rows_s": m / ref_wall, "ref_write_rows_cpu_s": m / ref_cpu,
        "wall_rows_s": n / result.seconds,
    }
    print(f"{n:,} events ({result.signal_fraction:.1%} signal), {size / n:.0f} gzip bytes/row, "
          f"write_csv text identical to the staged writer's: {same}; load average {load:.1f} "
          f"on {os.cpu_count()} cores")
    print("                                    wall-clock      per CPU-second")
    print(f"  generate                    {rates['gen_events_s']:12,.0f} ev/s  "
          f"{rates['gen_events_cpu_s']:10,.0f} ev/s")
    print(f"  format + gzip + write       {rates['write_rows_s']:12,.0f} rows/s"
          f"{rates['write_rows_cpu_s']:10,.0f} rows/s")
    print(f"  reference np.savetxt+gzip   {rates['ref_write_rows_s']:12,.0f} rows/s"
          f"{rates['ref_write_rows_cpu_s']:10,.0f} rows/s  ({m:,} rows)")
    print(f"  write_csv end to end        {rates['wall_rows_s']:12,.0f} rows/s")
    ratio = rates["write_rows_s"] / rates["ref_write_rows_s"]
    print(f"rows={n} " + " ".join(f"{k}={v:.0f}" for k, v in rates.items())
          + f" load={load:.1f} ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
