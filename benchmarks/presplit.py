"""Does presplitting one .csv.gz let the conversion scale with workers? Measured with DirectRunner.

    .venv/bin/python benchmarks/presplit.py                       # 500k rows, 2 workers, 8 parts
    .venv/bin/python benchmarks/presplit.py --rows 1000000 --workers 2 --parts 8

Converts the same generated HIGGS-format source three ways with the real converter
(``pipeline.data.convert``) on Beam's DirectRunner in ``multi_processing`` mode:

* ``single``: the one ``.csv.gz`` with W worker processes (the read stage is one element: one
  process reads, parses, encodes and writes everything), and with 1 worker (``single_w1``) —
  equal times mean the extra workers had nothing to do;
* ``split``: ``pipeline.data.presplit`` into P gzip parts (timed), then the parts with W workers;
* ``parts_w1``: the parts with one worker — the per-worker conversion rate ``r_w``.

The last line holds ``ratio = single_s / (presplit_s + parts_s)`` (the speed-up presplitting
gives with W workers) and the two rates of the scaling model in ``pipeline/data/presplit.py``:
``T(W) ≈ N/r_split + N/(min(W, P)·r_w)``, with its speed-up for 16 and 32 workers and P = W. The
machine may be shared: treat absolute figures as indicative and rerun for stable ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _convert(source: str, out: Path, workers: int) -> float:
    from pipeline.core.config import load_config
    from pipeline.data import convert

    if out.exists():
        shutil.rmtree(out)
    args = ["--runner=DirectRunner", f"--direct_num_workers={workers}"]
    if workers > 1:
        args.append("--direct_running_mode=multi_processing")
    start = time.perf_counter()
    convert.convert(source, str(out), load_config("full").data, beam_args=args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--keep", default=None, help="work directory to keep (default: a temp dir)")
    args = parser.parse_args()

    from pipeline.data import presplit, synth

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-presplit-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = work / "higgs.csv.gz"
        if not source.exists():
            synth.write_csv(source, rows=args.rows, seed=5)
        load_before = os.getloadavg()[0]
        single_s = _convert(str(source), work / "single", args.workers)
        single_w1_s = _convert(str(source), work / "single1", 1)
        start = time.perf_counter()
        shutil.rmtree(work / "parts", ignore_errors=True)
        result = presplit.presplit(str(source), str(work / "parts"), args.parts)
        presplit_s = time.perf_counter() - start
        parts_s = _convert(result.glob, work / "split", args.workers)
        parts_w1_s = _convert(result.glob, work / "split1", 1)
        load_after = os.getloadavg()[0]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    n = args.rows
    r_split, r_w = n / presplit_s, n / parts_w1_s
    # The model with parts = workers (what runtime.presplit_parts should be set to).
    predict = {w: 1 / (r_w / r_split + 1 / w) for w in (16, 32)}
    print(f"load average {load_before:.1f} → {load_after:.1f} on {os.cpu_count()} cores (shared)")
    print(f"single .gz, {args.workers} workers: {single_s:.1f} s, 1 worker: {single_w1_s:.1f} s; "
          f"presplit into {len(result.parts)} parts: "
          f"{presplit_s:.1f} s; parts, {args.workers} workers: {parts_s:.1f} s; parts, 1 worker: "
          f"{parts_w1_s:.1f} s")
    print(f"rows={n} workers={args.workers} parts={len(result.parts)} single_s={single_s:.2f} "
          f"single_w1_s={single_w1_s:.2f} load={load_before:.1f} "
          f"presplit_s={presplit_s:.2f} parts_s={parts_s:.2f} parts_w1_s={parts_w1_s:.2f} "
          f"r_split_rows_s={r_split:.0f} r_worker_rows_s={r_w:.0f} "
          f"model_speedup_w16={predict[16]:.1f} model_speedup_w32={predict[32]:.1f} "
          f"ratio={single_s / (presplit_s + parts_s):.2f}")


if __name__ == "__main__":
    main()
