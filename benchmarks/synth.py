"""Benchmark the event generator and its UCI-format (``%.18e``) writer against np.savetxt.

    .venv/bin/python benchmarks/synth.py                      # 1,000,000 rows
    .venv/bin/python benchmarks/synth.py --rows 200000 --ref-rows 20000

Measures, one after the other in one process on this machine (each stage alone, so the
figures are comparable with each other under the same load):

- ``gen_events_s``: ``synth.generate`` — physics, detector, reconstruction, scaling;
- ``format_values_s``: the vectorised ``%.18e`` formatter (``pipeline.data.uci_text``) in one
  thread, values per second;
- ``ref_values_s``: the reference, ``np.savetxt(fmt="%.18e")`` (Python's ``%`` formatting per
  value) into memory, on the first ``--ref-rows`` rows — and both texts must be identical;
- ``write_rows_s``: the writer's work on the generated arrays in one thread — formatting and
  zlib level 6 into a file (``write_csv`` spreads the same deflate over two threads);
- ``wall_rows_s``: the real ``synth.write_csv`` call end to end (generation, two formatting
  threads and compression overlap), with its CPU utilisation (process CPU / wall);
- the compact format's ``write_csv`` for comparison, and bytes per row of both formats;

plus the same rates per CPU-second (thread time), which do not depend on how busy the shared
machine is. The last line is ``rows=… format_values_s=… ref_values_s=… … ratio=…`` with
ratio = format_values_s / ref_values_s (the formatter's speed-up over Python's ``%``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.data import synth, uci_text

CHUNK = 65_536


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """Run ``fn``; return (result, wall seconds, CPU seconds of this thread)."""
    start, cpu = time.perf_counter(), time.thread_time()
    result = fn()
    return result, time.perf_counter() - start, time.thread_time() - cpu


def project_format(labels: np.ndarray, features: np.ndarray) -> list[bytes]:
    """The UCI text of the rows, formatted chunk by chunk in this thread."""
    return [uci_text.format_rows(labels[i:i + CHUNK], features[i:i + CHUNK])
            for i in range(0, len(labels), CHUNK)]


def project_write(path: Path, labels: np.ndarray, features: np.ndarray) -> None:
    """Format and compress pre-generated rows as write_csv does (zlib level 6), in this thread."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                compresslevel=6, mtime=0) as gz:
        for i in range(0, len(labels), CHUNK):
            gz.write(synth.format_csv(labels[i:i + CHUNK], features[i:i + CHUNK]))


def reference_format(labels: np.ndarray, features: np.ndarray) -> bytes:
    """The same text the obvious way: np.savetxt with ``%.18e`` (float64 of each float32)."""
    rows = np.concatenate([labels[:, None], features], axis=1).astype(np.float64)
    out = io.BytesIO()
    np.savetxt(out, rows, fmt="%.18e", delimiter=",")
    return out.getvalue()


def timed_write_csv(path: Path, rows: int, seed: int, fmt: str) -> tuple[synth.SynthResult, float]:
    """``write_csv`` and its CPU utilisation (process CPU seconds / wall seconds)."""
    cpu = time.process_time()
    result = synth.write_csv(path, rows=rows, seed=seed, fmt=fmt, progress=False)
    return result, (time.process_time() - cpu) / result.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ref-rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="directory for the files (default: a temp dir)")
    args = parser.parse_args(argv)
    n, m = args.rows, min(args.ref_rows, args.rows)

    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        out = Path(tmp)
        synth.generate(1000, seed=args.seed)  # warm imports and caches outside the timing
        (labels, features), gen_wall, gen_cpu = timed(lambda: synth.generate(n, seed=args.seed))
        text, fmt_wall, fmt_cpu = timed(lambda: project_format(labels, features))
        ref, ref_wall, ref_cpu = timed(lambda: reference_format(labels[:m], features[:m]))
        identical = b"".join(text)[:len(ref)] == ref
        text_bytes = sum(len(t) for t in text)
        del text
        _, write_wall, write_cpu = timed(lambda: project_write(out / "p.csv.gz", labels, features))
        result, util = timed_write_csv(out / "synth.csv.gz", n, args.seed, "uci")
        size = result.path.stat().st_size
        same = gzip.decompress((out / "p.csv.gz").read_bytes()) == gzip.decompress(result.path.read_bytes())
        compact, compact_util = timed_write_csv(out / "compact.csv.gz", n, args.seed, "compact")
        compact_size = compact.path.stat().st_size

    load = os.getloadavg()[0]
    values = n * 29
    rates = {
        "gen_events_s": n / gen_wall, "gen_events_cpu_s": n / gen_cpu,
        "format_values_s": values / fmt_wall, "format_values_cpu_s": values / fmt_cpu,
        "ref_values_s": m * 29 / ref_wall, "ref_values_cpu_s": m * 29 / ref_cpu,
        "write_rows_s": n / write_wall, "write_rows_cpu_s": n / write_cpu,
        "wall_rows_s": n / result.seconds, "compact_wall_rows_s": n / compact.seconds,
    }
    print(f"{n:,} events ({result.signal_fraction:.1%} signal); UCI text {text_bytes / n:.0f} bytes/row, "
          f"{size / n:.0f} gzip bytes/row (x 11M = {size / n * 11e6 / 1e9:.2f} GB); compact "
          f"{compact_size / n:.0f} gzip bytes/row; load average {load:.1f} on {os.cpu_count()} cores")
    print(f"formatter text identical to np.savetxt('%.18e') on {m:,} rows: {identical}; write_csv text "
          f"identical to the one-thread writer's: {same}")
    print("                                    wall-clock          per CPU-second")
    print(f"  generate                    {rates['gen_events_s']:12,.0f} ev/s      "
          f"{rates['gen_events_cpu_s']:12,.0f} ev/s")
    print(f"  format %.18e (uci_text)     {rates['format_values_s']:12,.0f} values/s  "
          f"{rates['format_values_cpu_s']:12,.0f} values/s "
          f"({1e9 / rates['format_values_cpu_s']:.0f} ns/value)")
    print(f"  reference np.savetxt %.18e  {rates['ref_values_s']:12,.0f} values/s  "
          f"{rates['ref_values_cpu_s']:12,.0f} values/s ({1e9 / rates['ref_values_cpu_s']:.0f} ns/value)")
    print(f"  format + gzip + write       {rates['write_rows_s']:12,.0f} rows/s    "
          f"{rates['write_rows_cpu_s']:12,.0f} rows/s")
    print(f"  write_csv uci end to end    {rates['wall_rows_s']:12,.0f} rows/s    (CPU {util:.0%})")
    print(f"  write_csv compact           {rates['compact_wall_rows_s']:12,.0f} rows/s    "
          f"(CPU {compact_util:.0%})")
    ratio = rates["format_values_s"] / rates["ref_values_s"]
    print(f"rows={n} " + " ".join(f"{k}={v:.0f}" for k, v in rates.items())
          + f" cpu_util={util:.2f} identical={identical and same} load={load:.1f} ratio={ratio:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
