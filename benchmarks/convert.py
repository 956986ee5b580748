"""Benchmark the Beam converter against its read floor and a per-row reference Beam pipeline.

    .venv/bin/python benchmarks/convert.py                       # 1M rows (+ 2M for memory)
    .venv/bin/python benchmarks/convert.py --rows 200000 --ref-rows 20000 --no-scaling
    .venv/bin/python benchmarks/convert.py --source uci-1m.csv.gz --no-scaling   # a given file

Measures, in one run on this machine, on a generated file (``pipeline.data.synth.write_csv``,
cached under ``data/bench/``):

(a) the read floor: ``isal`` decompression + ``pyarrow.csv`` streaming parse into float32
    batches of the same file — no split, no encoding, no writing;
(b) ``pipeline.data.convert.convert()`` end to end on the DirectRunner (in-process), in a child
    process so its peak RSS (``VmHWM``) is its own: fingerprint (sha256, recomputed),
    read, parse, split, encode, frame, write 24 shards, statistics, manifest. ``convert_s``
    is the call itself; ``convert_wall_s`` adds interpreter start and imports (Beam, pyarrow).
    Run again on a file twice as long to show that peak memory does not grow with the file;
(c) the straightforward reference Beam pipeline: ``ReadFromText`` → per-line parse → one
    ``tf.train.Example`` (``serialize_tensor``) per row → ``WriteToTFRecord``, on the first
    ``--ref-rows`` rows (it does less work than (b): no split, no statistics), scaled as rows/s.

Prints rows/s for each, ``b_over_a`` (time of b / time of a; target ≤ 2.0), ``speedup`` (rows/s
of b / rows/s of c; target ≥ 5) and the peak memory of (b), and checks that a Kaggle-style
reader (``parse_single_example`` → ``parse_tensor``) reads the 1M-row dataset bit-exactly.
The last line is ``key=value`` pairs with ``ratio=`` (= b_over_a). The machine is shared with
other jobs; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cached_source(rows: int, seed: int, cache: Path) -> Path:
    """The generated CSV.gz of ``rows`` rows, written once and reused while still current.

    The cache is rewritten when its first rows differ from what ``pipeline.data.synth`` generates
    today (a shorter file is a prefix of a longer one, so the head identifies the version).
    """
    from isal import igzip

    from pipeline.data import synth

    path = cache / f"synth-{rows}-seed{seed}.csv.gz"
    head = synth.format_csv(*synth.generate(1000, seed=seed))
    if path.exists():
        with igzip.open(path, "rb") as f:
            if f.read(len(head)) != head:
                print(f"{path} was written by an older generator; regenerating", flush=True)
                path.unlink()
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ...", flush=True)
        synth.write_csv(path, rows=rows, seed=seed)
    return path


def read_floor(path: Path) -> tuple[int, float, float]:
    """(a) isal + pyarrow.csv streaming into float32 batches; (rows, seconds, CPU seconds)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from isal import igzip

    from pipeline.core import schema

    read = pacsv.ReadOptions(column_names=list(schema.CSV_COLUMNS), block_size=4 << 20)
    conv = pacsv.ConvertOptions(column_types={c: pa.float32() for c in schema.CSV_COLUMNS})
    rows = 0
    start, cpu = time.perf_counter(), time.process_time()
    with igzip.open(path, "rb") as f:
        for batch in pacsv.open_csv(f, read_options=read, convert_options=conv):
            rows += batch.num_rows
    return rows, time.perf_counter() - start, time.process_time() - cpu


def child_convert(source: str, out: str) -> None:
    """Run inside a child process: time convert() and report its own peak RSS as JSON."""
    from pipeline.core.config import DataConfig
    from pipeline.data import convert

    sidecar = Path(source + ".sha256")
    sidecar.unlink(missing_ok=True)  # include the source hash in the timing
    start, cpu = time.perf_counter(), time.process_time()
    result = convert.convert(source, out, DataConfig(), overwrite=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mb": peak_rss_mb(),
                      "rows": sum(result.manifest["rows"].values())}))


def peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space, in MB.

    ``VmHWM`` rather than ``ru_maxrss``: on Linux, ``ru_maxrss`` survives ``exec`` and so
    reports the *parent's* peak when that was higher (the benchmark parent holds TensorFlow
    and a million generated events by the time it starts the 2x run).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_convert(source: Path, out: Path) -> dict:
    """(b) in a fresh interpreter; returns seconds, wall seconds, peak RSS (MB), rows."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child-convert", str(source), str(out)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"convert failed:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["wall"] = wall
    return info


def reference_pipeline(source: Path, rows: int, workdir: Path) -> tuple[int, float]:
    """(c) ReadFromText → parse → tf.train.Example per row → WriteToTFRecord; (rows, s)."""
    import gzip

    import apache_beam as beam
    import tensorflow as tf

    subset = workdir / "ref.csv.gz"
    with gzip.open(source, "rb") as f, gzip.open(subset, "wb", compresslevel=1) as g:
        for _ in range(rows):
            g.write(f.readline())

    def parse(line: str) -> tuple[float, list[float]]:
        values = [float(v) for v in line.split(",")]
        return values[0], values[1:]

    def to_example(row: tuple[float, list[float]]) -> bytes:
        label, feats = row
        tensor = tf.io.serialize_tensor(tf.constant(feats, dtype=tf.float32)).numpy()
        return tf.train.Example(features=tf.train.Features(feature={
            "features": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tensor])),
            "label": tf.train.Feature(float_list=tf.train.FloatList(value=[label])),
        })).SerializeToString()

    to_example((0.0, [0.0] * 28))  # TF's first eager op initializes the runtime: not timed
    start = time.perf_counter()
    with beam.Pipeline() as p:
        _ = (p
             | "Read" >> beam.io.ReadFromText(str(subset))
             | "Parse" >> beam.Map(parse)
             | "Encode" >> beam.Map(to_example)
             | "Write" >> beam.io.WriteToTFRecord(str(workdir / "ref" / "part"),
                                                  file_name_suffix=".tfrecord"))
    seconds = time.perf_counter() - start
    written = sum(1 for f in (workdir / "ref").parent.glob("ref/part*")
                  for _ in tf.data.TFRecordDataset(str(f)))
    return written, seconds


def verify_kaggle_reader(data: Path, rows: int, seed: int) -> bool:
    """Every record, decoded the Kaggle way, equals the generator's float32 bits in order."""
    import tensorflow as tf

    from pipeline.core import schema
    from pipeline.data import dataset, records, synth

    labels, feats = synth.generate(rows, seed=seed)
    manifest = dataset.load_manifest(str(data))
    got_f, got_l = [], []
    for split in schema.SPLITS:  # shards are contiguous row ranges, in manifest order
        ds = tf.data.TFRecordDataset(dataset.shard_paths(str(data), split, manifest))
        for f, lab in ds.map(records.decode_record, num_parallel_calls=2).batch(65536):
            got_f.append(f.numpy())
            got_l.append(lab.numpy())
    return (np.array_equal(np.concatenate(got_f).view(np.uint32), feats.view(np.uint32))
            and np.array_equal(np.concatenate(got_l), labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ref-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--no-scaling", action="store_true",
                        help="skip the 2x-rows run that shows memory does not grow")
    parser.add_argument("--no-verify", action="store_true", help="skip the Kaggle-reader check")
    parser.add_argument("--source", default=None, metavar="FILE.csv.gz",
                        help="benchmark this file instead of the generated one, e.g. the same rows "
                             "in the UCI %%.18e text (--rows/--seed must still name its rows for "
                             "the bit-exact check, or pass --no-verify)")
    parser.add_argument("--child-convert", nargs=2, metavar=("SOURCE", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_convert:
        child_convert(*args.child_convert)
        return 0

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    source = Path(args.source) if args.source else cached_source(args.rows, args.seed, cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        floor_rows, floor_s, floor_cpu = read_floor(source)
        assert floor_rows == args.rows, floor_rows
        big_source = None if args.no_scaling else cached_source(2 * args.rows, args.seed, cache)
        b = run_convert(source, work / "data")
        assert b["rows"] == args.rows, b
        big = None
        if big_source is not None:
            big = run_convert(big_source, work / "data2")
            assert big["rows"] == 2 * args.rows, big
            shutil.rmtree(work / "data2")
        verified = None if args.no_verify else verify_kaggle_reader(work / "data", args.rows,
                                                                    args.seed)
        shutil.rmtree(work / "data")
        ref_rows, ref_s = reference_pipeline(source, args.ref_rows, work)
        assert ref_rows == args.ref_rows, ref_rows

    floor_rs = args.rows / floor_s
    conv_rs = args.rows / b["seconds"]
    ref_rs = ref_rows / ref_s
    load = os.getloadavg()[0]
    print(f"source: {source} ({source.stat().st_size / 1e6:.0f} MB gz, {args.rows:,} rows); "
          f"load average {load:.2f} on {os.cpu_count()} cores (shared machine)")
    print(f"(a) read floor  isal+pyarrow.csv     {floor_s:7.2f} s  {floor_rs:10,.0f} rows/s"
          f"   (CPU {floor_cpu:.2f} s)")
    print(f"(b) convert()   DirectRunner         {b['seconds']:7.2f} s  {conv_rs:10,.0f} rows/s"
          f"   (CPU {b['cpu']:.2f} s; process wall incl. imports {b['wall']:.2f} s; "
          f"peak RSS {b['peak_mb']:.0f} MB)")
    if big:
        print(f"    convert() on {2 * args.rows:,} rows      {big['seconds']:7.2f} s  "
              f"{2 * args.rows / big['seconds']:10,.0f} rows/s   (peak RSS {big['peak_mb']:.0f} MB)")
    print(f"(c) reference   per-row Beam         {ref_s:7.2f} s  {ref_rs:10,.0f} rows/s"
          f"   (on the first {ref_rows:,} rows)")
    print(f"b/a time ratio {b['seconds'] / floor_s:.2f} (target <= 2.0; CPU-time ratio "
          f"{b['cpu'] / floor_cpu:.2f}, less sensitive to the other jobs on this machine); "
          f"b vs c speedup {conv_rs / ref_rs:.1f}x (target >= 5)")
    if verified is not None:
        print(f"Kaggle-style reader bit-exact on all {args.rows:,} rows: {verified}")
    fields = {
        "rows": args.rows, "floor_rows_s": round(floor_rs), "convert_rows_s": round(conv_rs),
        "reference_rows_s": round(ref_rs), "b_over_a": round(b["seconds"] / floor_s, 2),
        "cpu_ratio": round(b["cpu"] / floor_cpu, 2),
        "speedup": round(conv_rs / ref_rs, 1), "peak_rss_mb": round(b["peak_mb"]),
    }
    if big:
        fields["peak_rss_mb_2x"] = round(big["peak_mb"])
    if verified is not None:
        fields["bit_exact"] = verified
    fields["load"] = round(load, 2)
    fields["ratio"] = fields["b_over_a"]
    print(" ".join(f"{k}={v}" for k, v in fields.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
