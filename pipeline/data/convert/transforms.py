"""The Beam side of the converter: its DoFns and the composite ``CsvToTFRecords`` transform.

    .venv/bin/pytest tests/test_convert.py -q -k transform

One Beam element is a whole source *part*, and inside the worker that reads it every core
works on it (:class:`ConvertPart`): ISA-L decompresses in its own thread, this thread cuts
the text into blocks of whole lines, and a pool of threads — one per core — parses each
block (pyarrow, one thread each), checks and summarises it, encodes the Examples (numpy,
:mod:`pipeline.data.records`), frames them (C CRC32C) and writes them as a *piece* file. All
of these release the GIL for most of their time, so decompression, parsing, encoding and
writing of different blocks overlap. Only small metadata leaves the worker.

Once every piece exists the total row count is known and
:func:`pipeline.data.convert.plan.plan_shards` turns pieces into shard-writing tasks.

The pipeline is one chain — Parts → ConvertParts → GatherPieces (GroupByKey) → PlanShards →
WriteShards → GatherResults (GroupByKey) → WriteResult — with no side inputs and one output
per step: every element of ConvertParts is a ``(kind, value)`` pair, ``kind`` one of
``piece``, ``part`` or ``bad`` (the dead-letter rows, also counted with ``Metrics.counter``).
That shape runs unchanged on the DirectRunner, Dataflow, Flink/Spark and Beam's DaskRunner,
whose translation (Beam 2.77) merges the tagged outputs of a multi-output ParDo into one bag,
re-runs the producer of every side input inside the consuming task, and computes only the
graph's last step.
"""

import dataclasses
import json
import os
from collections import deque
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.core import progress, schema, storage
from pipeline.data import records, textblocks
from pipeline.data.convert import parse, plan, stage, stats
from pipeline.data.convert.errors import MARK, ConvertError

METRICS_NAMESPACE = "higgs_convert"
PIECE, PART, BAD = "piece", "part", "bad"  # the kinds of ConvertParts' elements
_GATHER_KEY = 0  # one key for the gathering GroupByKeys (an int: its hash is the same in every process)


def default_threads() -> int:
    """Cores this process may use (its CPU affinity), the default size of the block pool."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def piece_path(staging, part, index):
    """Where block ``index`` of source part ``part`` is written (``…/_pieces/p00000-b00000042.rec``).

    Named by position (blocks are cut the same way every time), so a retried bundle
    overwrites the same piece (idempotent).
    """
    return storage.join(staging, stage.PIECES_DIR, f"p{part:05d}-b{index:08d}.rec")


def block_to_piece(text, part, index, staging, files):
    """Count, parse, check, summarise, encode, frame and write one block (on a pool thread).

    Args:
        text: the block: whole lines, each ending in ``\\n`` (bytes or a memoryview).
        part: index of the source part.
        index: the block's number within the part.
        staging: the conversion's staging directory.
        files: storage handle.

    Returns:
        ``(piece metadata, bad rows)``: ``{"part", "lines", "records", "path", "signal",
        "stats"}`` (the caller adds ``line0``) and ``[(line within the block, kind, text)]``.
    """
    lines = parse.count_lines(text)
    labels, features, bad = parse.parse_with_snippets(text, lines, use_threads=False)
    summary = stats.summarise(labels, features)
    path = piece_path(staging, part, index)
    files.write_bytes(path, records.frame_records(records.encode_examples(features, labels)))
    meta = {"part": part, "lines": lines, "records": int(labels.shape[0]), "path": path, **summary}
    return meta, bad


class ConvertPart(beam.DoFn):
    """(part index, path) → ``(kind, value)`` elements: its pieces, its bad rows, its length.

    ``("piece", metadata)`` per block written, ``("bad", (part, line within part, kind,
    text))`` per bad row and one ``("part", (part, total lines))``. Blocks are worked on by
    ``threads`` pool threads at once and emitted in order; at most ``threads + 2`` blocks are
    in memory, so memory does not grow with the file. Progress (compressed bytes of input
    read, rows) goes to :mod:`pipeline.core.progress`, one reporter per process and
    conversion.

    Args:
        block_bytes: text per block (about ``data.block_rows`` lines).
        files: storage handle.
        staging: the conversion's staging directory (pieces go to its ``_pieces/``).
        threads: pool threads per worker process (0 = one per core of that worker).
        total_bytes: bytes of all source parts together (the progress total; 0 = unknown).
    """

    def __init__(self, block_bytes, files, staging, threads=0, total_bytes=0):
        self.block_bytes, self.files, self.staging = block_bytes, files, staging
        self.threads, self.total_bytes = threads, total_bytes
        self.text_bytes = Metrics.counter(METRICS_NAMESPACE, "text_bytes")
        self.rows = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self.written = Metrics.counter(METRICS_NAMESPACE, "records_encoded")
        self.bad = {kind: Metrics.counter(METRICS_NAMESPACE, f"bad_rows_{kind}")
                    for kind in parse.BAD_KINDS}

    def process(self, element):
        from concurrent.futures import ThreadPoolExecutor

        part, path = element
        threads = self.threads or default_threads()
        report = progress.shared(self.staging, "convert", total=self.total_bytes or None,
                                 unit="bytes", secondary="rows")
        line0, counted = 0, 0
        in_flight: deque = deque()

        def emit():
            nonlocal line0, counted
            meta, bad = in_flight.popleft().result()
            meta["line0"] = line0
            self.rows.inc(meta["lines"])
            self.written.inc(meta["records"])
            for i, kind, text in bad:
                self.bad[kind].inc()
                yield BAD, (part, line0 + i, kind, text)
            yield PIECE, meta
            line0 += meta["lines"]
            counted = _advance(report, raw, counted, meta["lines"])

        with ThreadPoolExecutor(threads, thread_name_prefix="convert") as pool:
            try:
                with self.files.open_read(path) as raw, textblocks.open_text(raw, path) as stream:
                    for index, text in enumerate(textblocks.read_blocks(stream, self.block_bytes)):
                        self.text_bytes.inc(len(text))
                        in_flight.append(pool.submit(block_to_piece, text, part, index, self.staging,
                                                     self.files))
                        while len(in_flight) > threads + 1:  # bounded memory, blocks in order
                            yield from emit()
                    while in_flight:
                        yield from emit()
            except textblocks.gzip_errors() as exc:
                raise ConvertError(f"{MARK}{textblocks.corrupt_line(path, exc)}") from None
            except (textblocks.LineTooLongError, textblocks.ArchiveError) as exc:
                raise ConvertError(f"{MARK}{exc}") from None
        yield PART, (part, line0)


def _advance(report, raw, counted, rows):
    """Add the compressed bytes read since the last call (and ``rows``) to the progress."""
    try:
        position = raw.tell()
    except (OSError, ValueError):  # a closed or unseekable stream: rows only
        position = counted
    report.add(position - counted, rows)
    return position


class FinishTask(beam.DoFn):
    """A planned task: write one shard file, or gather one split's statistics.

    A shard is a concatenation of byte ranges of pieces (a kernel copy for local files);
    its records are not looked at again. A split's statistics merge the summaries of whole
    pieces and decode only the pieces a split boundary cuts. The plan's own ``result``
    element passes through unchanged.
    """

    def __init__(self, staging, files):
        self.staging = staging
        self.files = files

    def process(self, task):
        if task["kind"] == "shard":
            yield self._write_shard(task)
        elif task["kind"] == "stats":
            yield self._split_stats(task)
        else:
            yield task

    def _write_shard(self, task: dict[str, Any]) -> dict[str, Any]:
        with self.files.open_write(storage.join(self.staging, task["path"])) as out:
            for path, start, end in task["ranges"]:
                if self.files.copy_range(path, start, end, out) != end - start:
                    raise _short_piece(path)
        written = sum(end - start for _, start, end in task["ranges"]) // records.FRAMED_BYTES
        if written != task["records"]:
            raise ConvertError(f"{MARK}shard {task['path']} got {written} records, planned "
                               f"{task['records']}; rerun the conversion")
        return {"kind": "shard", "split": task["split"], "index": task["index"],
                "path": task["path"], "records": written}

    def _split_stats(self, task: dict[str, Any]) -> dict[str, Any]:
        split = stats.SplitStats()
        seen = 0
        for (path, start, end), summary in zip(task["ranges"], task["summaries"], strict=True):
            if summary is not None:
                split.merge(stats.SplitStats.from_dict(summary["stats"]))
                seen += (end - start) // records.FRAMED_BYTES
                continue
            data = self.files.read_range(path, start, end)
            if len(data) != end - start:
                raise _short_piece(path)
            framed = np.frombuffer(data, np.uint8).reshape(-1, records.FRAMED_BYTES)
            feats, labels = records.decode_examples(framed[:, 12:12 + records.EXAMPLE_BYTES])
            seen += labels.shape[0]
            split.add(labels, feats)
        if seen != task["records"] or split.rows != seen:
            raise ConvertError(f"{MARK}split {task['split']} has {seen} records, planned "
                               f"{task['records']}; rerun the conversion")
        return {"kind": "stats", "split": task["split"], "records": seen, "signal": split.signal,
                "stats": split.to_dict()}


def _short_piece(path: str) -> ConvertError:
    return ConvertError(f"{MARK}staging piece {path} is shorter than written; rerun the conversion")


def _gathered(element):
    """The ``(kind, value)`` elements of one GroupByKey group, sorted into their kinds."""
    _, values = element
    pieces, parts, bad = [], [], []
    for kind, value in values:
        {PIECE: pieces, PART: parts, BAD: bad}[kind].append(value)
    return pieces, parts, bad


def plan_tasks(element, cfg):
    """The PlanShards step: every shard-writing and statistics task, and the run's summary.

    Args:
        element: ``(key, [(kind, value)])``, everything ConvertParts emitted.
        cfg: ``validation_rows``, ``test_rows`` and ``shards``.

    Yields:
        Task dicts (``kind`` ``shard`` or ``stats``), then one ``{"kind": "result", "plan",
        "bad_rows"}`` for the last step.
    """
    pieces, parts, bad = _gathered(element)
    split_plan, tasks, bad_rows = plan.plan_shards(pieces, parts, bad, cfg)
    yield from tasks
    yield {"kind": "result", "plan": dataclasses.asdict(split_plan), "bad_rows": bad_rows}


def write_result(element, staging, files):
    """Last pipeline step: the run's summary (and bad-row report) as files in staging.

    Args:
        element: ``(key, [task results and the plan's result element])``.
        staging: the conversion's staging directory.
        files: storage handle.
    """
    _, done = element
    (summary,) = [d for d in done if d["kind"] == "result"]
    bad_rows = [tuple(b) for b in summary["bad_rows"]]
    if bad_rows:
        text = "line\tkind\ttext\n" + "".join(f"{n}\t{k}\t{t}\n" for n, k, t in bad_rows)
        report = storage.join(staging, stage.BAD_ROWS_DIR, stage.BAD_ROWS_FILE)
        files.write_bytes(report, text.encode())
    by_kind = {kind: 0 for kind in parse.BAD_KINDS}
    for _, kind, _ in bad_rows:
        by_kind[kind] += 1
    order = {split: i for i, split in enumerate(schema.SPLITS)}
    result = {"plan": summary["plan"], "bad_rows_by_kind": by_kind,
              "bad_rows_sample": [list(b) for b in bad_rows[:20]],
              "shards": sorted((d for d in done if d["kind"] == "shard"),
                               key=lambda d: (order[d["split"]], d["index"])),
              "stats": {d["split"]: d for d in done if d["kind"] == "stats"}}
    files.write_bytes(storage.join(staging, stage.RESULT_FILE), json.dumps(result).encode())


def _keyed(value):
    return _GATHER_KEY, value


class CsvToTFRecords(beam.PTransform):
    """The composite transform: (part index, path) elements → shard files + a result file.

    Steps: ConvertParts (read, parse, encode and write pieces on every core; dead letter: the
    ``bad`` elements) → GatherPieces (the split depends on the total row count) → PlanShards
    → WriteShards (parallel: one task per shard file and one per split's statistics) →
    GatherResults → WriteResult.

    Args:
        staging: the conversion's staging directory.
        block_bytes: text per block.
        cfg: ``validation_rows``, ``test_rows`` and ``shards``.
        files: storage handle.
        spread_parts: reshuffle the parts first, so several workers read them at once.
        threads: block-pool threads per worker process (0 = one per core).
        total_bytes: bytes of all source parts (for progress).
    """

    def __init__(self, staging, block_bytes, cfg, files, spread_parts, threads=0, total_bytes=0):
        super().__init__()
        self.staging, self.block_bytes, self.cfg = staging, block_bytes, cfg
        self.files, self.spread_parts = files, spread_parts
        self.threads, self.total_bytes = threads, total_bytes

    def expand(self, parts):
        if self.spread_parts:  # several parts: let workers read them in parallel
            parts = parts | "SpreadParts" >> beam.Reshuffle()
        converted = parts | "ConvertParts" >> beam.ParDo(ConvertPart(
            self.block_bytes, self.files, self.staging, self.threads, self.total_bytes))
        done = (converted
                | "KeyPieces" >> beam.Map(_keyed)
                | "GatherPieces" >> beam.GroupByKey()
                | "PlanShards" >> beam.FlatMap(plan_tasks, cfg=self.cfg)
                | "SpreadShards" >> beam.Reshuffle()
                | "WriteShards" >> beam.ParDo(FinishTask(self.staging, self.files)))
        return (done
                | "KeyResults" >> beam.Map(_keyed)
                | "GatherResults" >> beam.GroupByKey()
                | "WriteResult" >> beam.Map(write_result, staging=self.staging, files=self.files))
