"""The Beam side of the converter: its DoFns and the composite ``CsvToTFRecords`` transform.

    .venv/bin/pytest tests/test_convert.py -q -k transform

One Beam element is a *block* of rows, never a row. Reading (ISA-L in its own thread),
parsing (pyarrow, in a helper thread), encoding (fixed-layout Example bytes assembled with
numpy, :mod:`pipeline.data.records`), TFRecord framing (C CRC32C) and writing are fused, so
blocks stream through in bounded memory: nothing is shuffled but small metadata. Each block
becomes a *piece* file; once every piece is written the total row count is known and
:func:`pipeline.data.convert.plan.plan_shards` turns pieces into shard-writing tasks.
Bad rows are counted with ``Metrics.counter`` and routed to the ``bad_rows`` dead-letter
output.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.core import schema, storage
from pipeline.core.storage import Files
from pipeline.data import records, textblocks
from pipeline.data.convert import parse, plan, stage, stats
from pipeline.data.convert.errors import MARK, ConvertError

METRICS_NAMESPACE = "higgs_convert"
PARTS_TAG = "parts"
BAD_TAG = "bad_rows"


@dataclass
class ParsedBlock:
    """One block of a source part after parsing.

    Attributes:
        part: index of the source part.
        line0: 0-based line index (within the part) of the block's first line.
        lines: number of lines in the block.
        labels: float32 [k] of the good rows (0.0/1.0).
        features: float32 [k, 28] of the good rows, in line order.
        bad: ``(line index within the block, kind, text)`` of every bad line.
        summary: ``{"signal": n, "stats": …}`` of the good rows (:func:`.stats.summarise`).
    """

    part: int
    line0: int
    lines: int
    labels: np.ndarray
    features: np.ndarray
    bad: list[tuple[int, str, str]]
    summary: dict[str, Any] = field(default_factory=dict)


def _parse_and_summarise(text: bytes, lines: int) -> tuple[np.ndarray, np.ndarray,
                                                            list[tuple[int, str, str]],
                                                            dict[str, Any]]:
    """Parse a block (bad lines with their text) and summarise its good rows.

    Runs in the read step's helper thread, so the statistics (numpy, mostly without the
    GIL) overlap with encoding in the main thread; a shard made of whole blocks then needs
    no second look at its rows.
    """
    labels, features, bad = parse.parse_with_snippets(text, lines)
    return labels, features, bad, stats.summarise(labels, features)


class ReadBlocks(beam.DoFn):
    """(part index, path) → :class:`ParsedBlock` elements.

    Dead-letter output ``bad_rows``: (part, line within part, kind, text); side output
    ``parts``: (part, total lines). The pyarrow parse of block k+1 runs in a helper thread
    (it releases the GIL) while block k is encoded and written downstream in this thread, and
    ISA-L decompresses ahead in a third: the three overlap on a multi-core worker.
    """

    def __init__(self, block_bytes: int, files: Files):
        self.block_bytes = block_bytes
        self.files = files
        self.text_bytes = Metrics.counter(METRICS_NAMESPACE, "text_bytes")
        self.rows = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self.bad = {kind: Metrics.counter(METRICS_NAMESPACE, f"bad_rows_{kind}")
                    for kind in parse.BAD_KINDS}

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        from concurrent.futures import ThreadPoolExecutor

        part, path = element
        total = 0
        pending: tuple[int, int, Any] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="parse") as pool:
            try:
                with self.files.open_read(path) as raw, textblocks.open_text(raw) as stream:
                    for line0, lines, text in textblocks.iter_text_blocks(stream, self.block_bytes):
                        self.text_bytes.inc(len(text))
                        parsing = (line0, lines, pool.submit(_parse_and_summarise, text, lines))
                        if pending is not None:
                            yield from self._emit(part, pending)
                        pending = parsing
                        total = line0 + lines
            except textblocks.gzip_errors() as exc:
                raise ConvertError(f"{MARK}{path} is a corrupt or truncated gzip file "
                                   f"({type(exc).__name__}: {exc}); download it again") from None
            except textblocks.LineTooLongError as exc:
                raise ConvertError(f"{MARK}{exc}") from None
            if pending is not None:
                yield from self._emit(part, pending)
        yield beam.pvalue.TaggedOutput(PARTS_TAG, (part, total))

    def _emit(self, part: int, pending: tuple[int, int, Any]) -> Iterator[Any]:
        line0, lines, future = pending
        labels, features, bad, summary = future.result()
        self.rows.inc(lines)
        for i, kind, text in bad:
            self.bad[kind].inc()
            yield beam.pvalue.TaggedOutput(BAD_TAG, (part, line0 + i, kind, text))
        yield ParsedBlock(part, line0, lines, labels, features, bad, summary)


class WritePieces(beam.DoFn):
    """:class:`ParsedBlock` → a piece file of framed records; emits the piece's metadata."""

    def __init__(self, staging: str, files: Files):
        self.staging = staging
        self.files = files
        self.written = Metrics.counter(METRICS_NAMESPACE, "records_encoded")

    def process(self, block: ParsedBlock) -> Iterator[dict[str, Any]]:
        # Named by position, so a retried bundle overwrites the same piece (idempotent).
        path = storage.join(self.staging, stage.PIECES_DIR, f"p{block.part:05d}-l{block.line0:012d}.rec")
        framed = records.frame_records(records.encode_examples(block.features, block.labels))
        self.files.write_bytes(path, framed)
        self.written.inc(block.labels.shape[0])
        yield {"part": block.part, "line0": block.line0, "lines": block.lines,
               "records": int(block.labels.shape[0]), "path": path, **block.summary}


class FinishTask(beam.DoFn):
    """A planned task: write one shard file, or gather one split's statistics.

    A shard is a concatenation of byte ranges of pieces (a kernel copy for local files);
    its records are not looked at again. A split's statistics merge the summaries of whole
    pieces and decode only the pieces a split boundary cuts.
    """

    def __init__(self, staging: str, files: Files):
        self.staging = staging
        self.files = files

    def process(self, task: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if task["kind"] == "shard":
            yield self._write_shard(task)
        else:
            yield self._split_stats(task)

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


def _plan_tasks(_: Any, pieces: list, parts: list, bad: list, cfg: dict) -> Iterator[dict]:
    """The PlanShards step: every shard-writing and statistics task, once all pieces exist."""
    _, tasks, _ = plan.plan_shards(pieces, parts, bad, cfg)
    yield from tasks


def _write_result(_: Any, done: list, pieces: list, parts: list, bad: list, cfg: dict,
                  staging: str, files: Files) -> None:
    """Last pipeline step: the run's summary (and bad-row report) as files in staging."""
    split_plan, _, bad_rows = plan.plan_shards(pieces, parts, bad, cfg)
    if bad_rows:
        text = "line\tkind\ttext\n" + "".join(f"{n}\t{k}\t{t}\n" for n, k, t in bad_rows)
        report = storage.join(staging, stage.BAD_ROWS_DIR, stage.BAD_ROWS_FILE)
        files.write_bytes(report, text.encode())
    by_kind = {kind: 0 for kind in parse.BAD_KINDS}
    for _, kind, _ in bad_rows:
        by_kind[kind] += 1
    order = {split: i for i, split in enumerate(schema.SPLITS)}
    result = {"plan": dataclasses.asdict(split_plan), "bad_rows_by_kind": by_kind,
              "bad_rows_sample": [list(b) for b in bad_rows[:20]],
              "shards": sorted((d for d in done if d["kind"] == "shard"),
                               key=lambda d: (order[d["split"]], d["index"])),
              "stats": {d["split"]: d for d in done if d["kind"] == "stats"}}
    files.write_bytes(storage.join(staging, stage.RESULT_FILE), json.dumps(result).encode())


class CsvToTFRecords(beam.PTransform):
    """The composite transform: (part index, path) elements → shard files + a result file.

    Steps: ReadBlocks (read + parse; dead letter: bad rows) → EncodeAndWritePieces, then
    PlanShards (needs all pieces: the split depends on the total row count) → WriteShards
    (parallel: one task per shard file and one per split's statistics) → WriteResult.
    """

    def __init__(self, staging: str, block_bytes: int, cfg: dict[str, Any], files: Files,
                 spread_parts: bool):
        super().__init__()
        self.staging, self.block_bytes, self.cfg = staging, block_bytes, cfg
        self.files, self.spread_parts = files, spread_parts

    def expand(self, parts: Any) -> Any:
        if self.spread_parts:  # several parts: let workers read them in parallel
            parts = parts | "SpreadParts" >> beam.Reshuffle()
        read = parts | "ReadBlocks" >> beam.ParDo(
            ReadBlocks(self.block_bytes, self.files)).with_outputs(PARTS_TAG, BAD_TAG,
                                                                   main="blocks")
        pieces = read.blocks | "EncodeAndWritePieces" >> beam.ParDo(
            WritePieces(self.staging, self.files))
        side = {"pieces": beam.pvalue.AsList(pieces),
                "parts": beam.pvalue.AsList(read[PARTS_TAG]),
                "bad": beam.pvalue.AsList(read[BAD_TAG])}
        root = parts.pipeline
        done = (root
                | "PlanSeed" >> beam.Create([None])
                | "PlanShards" >> beam.FlatMap(_plan_tasks, cfg=self.cfg, **side)
                | "SpreadShards" >> beam.Reshuffle()
                | "WriteShards" >> beam.ParDo(FinishTask(self.staging, self.files)))
        return (root
                | "ResultSeed" >> beam.Create([None])
                | "WriteResult" >> beam.Map(_write_result, done=beam.pvalue.AsList(done),
                                            cfg=self.cfg, staging=self.staging,
                                            files=self.files, **side))
