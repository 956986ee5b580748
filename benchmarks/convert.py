"""Benchmark the Beam converter on the UCI text format against its read floor, a per-row Beam
pipeline, and on a real distributed engine (Beam's DaskRunner) with 1 and 2 workers.

    .venv/bin/python benchmarks/convert.py                       # 1M rows (+ 2M for memory)
    .venv/bin/python benchmarks/convert.py --rows 200000 --ref-rows 20000 --no-scaling --no-dask
    .venv/bin/python benchmarks/convert.py --source /tmp/higgs-11m.csv.gz --rows 11000000 \
        --no-scaling --no-dask --no-verify --ref-rows 20000        # the full-size file

Measures, in one run on this machine, on a generated file in the real file's ``%.18e`` text
(``pipeline.data.synth.write_csv``, cached under ``--cache``, default ``data/bench/``) or on
``--source``:

(a) the read floor: ``isal`` decompression + ``pyarrow.csv`` streaming parse into float32
    batches of the same file — no split, no encoding, no writing;
(b) ``pipeline.data.convert.convert()`` end to end in-process (Beam's FnApiRunner: what
    ``DirectRunner`` runs), in a child process so its peak RSS (``VmHWM``) is its own:
    fingerprint (sha256, recomputed), read, parse, split, encode, frame, write 24 shards,
    statistics, manifest. ``convert_s`` is the call itself; ``convert_wall_s`` adds interpreter
    start and imports. Run again on a file twice as long to show that peak memory does not
    grow with the file;
(c) the straightforward reference Beam pipeline: ``ReadFromText`` → per-line parse → one
    ``tf.train.Example`` (``serialize_tensor``) per row → ``WriteToTFRecord``, on the first
    ``--ref-rows`` rows (it does less work than (b): no split, no statistics), scaled as rows/s;
(d) ``higgs presplit`` parts of the file (``--parts``) converted with ``--runner DaskRunner`` on
    a local cluster of 1 and of 2 worker processes, each dataset checked byte for byte against
    (b)'s.

CPU utilisation is process CPU time / wall time (200 % = both cores busy). Prints rows/s for
each, ``b_over_a`` (time of b / time of a; target <= 1.3), ``speedup`` (rows/s of b / rows/s of
c), the peak memory of (b), and checks that a Kaggle-style reader (``parse_single_example`` →
``parse_tensor``) reads the dataset bit-exactly. The last line is ``key=value`` pairs with
``ratio=`` (= b_over_a). The machine is shared with other jobs; the load average is printed.
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

    path = cache / f"synth-uci-{rows}-seed{seed}.csv.gz"
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


def read_floor(path: Path, block_size: int = 4 << 20) -> tuple[int, float, float]:
    """(a) isal + pyarrow.csv streaming into float32 batches; (rows, seconds, CPU seconds).

    ``block_size`` 4 MB is the floor as DESIGN.md defines it; the converter parses 1 MB
    batches, so the same read with 1 MB batches is measured too (a'), to compare like with like.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from isal import igzip

    from pipeline.core import schema

    read = pacsv.ReadOptions(column_names=list(schema.CSV_COLUMNS), block_size=block_size)
    conv = pacsv.ConvertOptions(column_types={c: pa.float32() for c in schema.CSV_COLUMNS})
    rows = 0
    start, cpu = time.perf_counter(), time.process_time()
    with igzip.open(path, "rb") as f:
        for batch in pacsv.open_csv(f, read_options=read, convert_options=conv):
            rows += batch.num_rows
    return rows, time.perf_counter() - start, time.process_time() - cpu


def child_convert(source: str, out: str, runner: str = "", dask_workers: int = 0) -> None:
    """Run inside a child process: time convert() and report its own peak RSS as JSON."""
    from pipeline.core.config import DataConfig
    from pipeline.data import convert

    sidecar = Path(source + ".sha256")
    sidecar.unlink(missing_ok=True)  # include the source hash in the timing
    beam_args = [f"--runner={runner}"] if runner else []
    start, cpu = time.perf_counter(), time.process_time()
    result = convert.convert(source, out, DataConfig(dask_workers=dask_workers), beam_args=beam_args,
                             overwrite=True)
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


def run_convert(source: Path | str, out: Path, runner: str = "", dask_workers: int = 0) -> dict:
    """(b)/(d) in a fresh interpreter; returns seconds, CPU, wall seconds, peak RSS (MB), rows."""
    start = time.perf_counter()
    command = [sys.executable, __file__, "--child-convert", str(source), str(out), runner,
               str(dask_workers)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HIGGS_PROGRESS": "off"})
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"convert failed:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["wall"] = wall
    return info


def shard_bytes(data: Path) -> dict[str, bytes]:
    """Every shard file of a dataset, by its path in the manifest."""
    from pipeline.core import schema
    from pipeline.data import dataset

    manifest = dataset.load_manifest(str(data))
    return {s["path"]: (data / s["path"]).read_bytes()
            for split in schema.SPLITS for s in manifest["shards"][split]}


def dask_workers_run(source: Path, parts: int, workdir: Path, reference: dict[str, bytes]) -> dict:
    """(d) presplit parts, then DaskRunner with 1 and 2 local worker processes."""
    from pipeline.data import presplit

    split = presplit.presplit(str(source), str(workdir / "parts"), parts=parts)
    out = {"parts": len(split.parts), "presplit_s": split.seconds}
    for workers in (1, 2):
        info = run_convert(split.glob, workdir / f"dask{workers}", "DaskRunner", workers)
        out[workers] = info["seconds"]
        out[f"identical{workers}"] = shard_bytes(workdir / f"dask{workers}") == reference
        shutil.rmtree(workdir / f"dask{workers}")
    shutil.rmtree(workdir / "parts")
    return out


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
    # FnApiRunner named explicitly: "DirectRunner" would first try to download Prism.
    with beam.Pipeline(runner="FnApiRunner") as p:
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
    parser.add_argument("--source", default=None,
                        help="an existing UCI-format file of --rows rows (generated with --seed)")
    parser.add_argument("--parts", type=int, default=4, help="presplit parts for the Dask runs")
    parser.add_argument("--no-scaling", action="store_true",
                        help="skip the 2x-rows run that shows memory does not grow")
    parser.add_argument("--no-verify", action="store_true", help="skip the Kaggle-reader check")
    parser.add_argument("--no-dask", action="store_true", help="skip the 1 vs 2 Dask workers runs")
    parser.add_argument("--child-convert", nargs=4, metavar=("SOURCE", "OUT", "RUNNER", "WORKERS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_convert:
        src, out, runner, workers = args.child_convert
        child_convert(src, out, runner, int(workers))
        return 0

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    source = Path(args.source) if args.source else cached_source(args.rows, args.seed, cache)
    dask = None
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        floor_rows, floor_s, floor_cpu = read_floor(source)
        assert floor_rows == args.rows, floor_rows
        _, floor1_s, floor1_cpu = read_floor(source, 1 << 20)
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
        if not args.no_dask:
            dask = dask_workers_run(source, args.parts, work, shard_bytes(work / "data"))
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
          f"   (CPU {floor_cpu:.2f} s, {floor_cpu / floor_s:.0%})")
    print(f"(a') read floor with 1 MB batches   {floor1_s:7.2f} s  {args.rows / floor1_s:10,.0f} rows/s"
          f"   (CPU {floor1_cpu:.2f} s, {floor1_cpu / floor1_s:.0%}); b/a' {b['seconds'] / floor1_s:.2f}")
    print(f"(b) convert()   in-process           {b['seconds']:7.2f} s  {conv_rs:10,.0f} rows/s"
          f"   (CPU {b['cpu']:.2f} s, {b['cpu'] / b['seconds']:.0%}; process wall incl. imports "
          f"{b['wall']:.2f} s; peak RSS {b['peak_mb']:.0f} MB)")
    if big:
        print(f"    convert() on {2 * args.rows:,} rows      {big['seconds']:7.2f} s  "
              f"{2 * args.rows / big['seconds']:10,.0f} rows/s   (CPU {big['cpu'] / big['seconds']:.0%}, "
              f"peak RSS {big['peak_mb']:.0f} MB)")
    print(f"(c) reference   per-row Beam         {ref_s:7.2f} s  {ref_rs:10,.0f} rows/s"
          f"   (on the first {ref_rows:,} rows)")
    if dask:
        print(f"(d) DaskRunner  {dask['parts']} presplit parts     1 worker {dask[1]:.2f} s, "
              f"2 workers {dask[2]:.2f} s ({dask[1] / dask[2]:.2f}x; split itself "
              f"{dask['presplit_s']:.2f} s); byte-identical to (b): {dask['identical1']}, "
              f"{dask['identical2']}")
    print(f"b/a time ratio {b['seconds'] / floor_s:.2f} (target <= 1.3; CPU-time ratio "
          f"{b['cpu'] / floor_cpu:.2f}); b vs c speedup {conv_rs / ref_rs:.1f}x")
    if verified is not None:
        print(f"Kaggle-style reader bit-exact on all {args.rows:,} rows: {verified}")
    fields = {
        "rows": args.rows, "floor_s": round(floor_s, 2), "floor_cpu_util": round(floor_cpu / floor_s, 2),
        "convert_s": round(b["seconds"], 2), "convert_cpu_util": round(b["cpu"] / b["seconds"], 2),
        "floor_rows_s": round(floor_rs), "convert_rows_s": round(conv_rs),
        "reference_rows_s": round(ref_rs), "b_over_a": round(b["seconds"] / floor_s, 2),
        "cpu_ratio": round(b["cpu"] / floor_cpu, 2), "floor_1mb_s": round(floor1_s, 2),
        "b_over_a_1mb": round(b["seconds"] / floor1_s, 2),
        "speedup": round(conv_rs / ref_rs, 1), "peak_rss_mb": round(b["peak_mb"]),
    }
    if big:
        fields["peak_rss_mb_2x"] = round(big["peak_mb"])
    if dask:
        fields.update(dask_1_worker_s=round(dask[1], 2), dask_2_workers_s=round(dask[2], 2),
                      dask_identical=dask["identical1"] and dask["identical2"])
    if verified is not None:
        fields["bit_exact"] = verified
    fields["load"] = round(load, 2)
    fields["ratio"] = fields["b_over_a"]
    print(" ".join(f"{k}={v}" for k, v in fields.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
