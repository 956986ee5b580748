"""The Beam converter: HIGGS.csv.gz → sharded TFRecords ``{training,validation,test}/`` + manifest.

    higgs convert --source data/sources/sample.csv.gz --out data/sample
    higgs convert --source gs://b/HIGGS.csv.gz --out gs://b/data/full --runner DataflowRunner \\
        --project P --region R --temp_location gs://b/tmp --sdk_container_image IMAGE
        (workers need this package: the project image, or --setup_file; see pipeline.cloud.dataflow)

How it is fast (see ``benchmarks/convert.py`` for the figures):

* A gzip stream cannot be split, so one sequential stage per source part reads it: ISA-L
  decompression (``isal``, in its own thread) into ~``block_rows``-line text blocks cut at
  newlines, each parsed by ``pyarrow.csv`` (multi-threaded, straight to float32) and checked
  with numpy. Only a block that fails the fast parse is re-read line by line to say which
  lines are bad and why.
* One Beam element is a *block* of rows, never a row. Encoding (fixed-layout Example bytes
  assembled with numpy, :mod:`pipeline.data.records`), TFRecord framing (C CRC32C) and writing are
  fused with the read, so blocks stream through in bounded memory: nothing is shuffled but
  small metadata.
* The split needs the total row count N (test = the last N/22 rows), which a gzip stream only
  reveals at its end. Instead of a counting pass, every block is written at once as a *piece*
  file of framed records, keyed by its first line. Every framed record has the same size
  (:data:`pipeline.data.records.FRAMED_BYTES`), so once N is known a shard is a list of byte ranges
  of pieces: the "plan" step cuts the row ranges of the splits and shards, and the
  "concatenate" step (parallel over shards) copies those ranges into the shard files.

Row positions are *line* positions: with ``max_bad_rows > 0`` a skipped bad line keeps its
place, so the last N/22 lines of the file are the test set whatever happens before them (the
official UCI test set for the full file). Validation and test are ``N // 22`` lines each unless
``data.validation_rows`` / ``data.test_rows`` say otherwise (11,000,000 → 500,000 each).

Everything is written under ``DATA/.staging-<id>/`` and moved into place only when the whole
pipeline succeeded and the bad-row limit holds; ``manifest.json`` is written last. Local paths
and ``gs://`` work for both source and output (a source may be a glob of parts, e.g.
``gs://b/parts/part-*.csv.gz``, read in name order). Unknown CLI options are Beam pipeline
options, passed through untouched.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime
import fnmatch
import glob as globlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.core import schema, storage
from pipeline.core.config import DataConfig
from pipeline.core.errors import PipelineError
from pipeline.data import records

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1.0"
METRICS_NAMESPACE = "higgs_convert"
# Kinds of bad rows, in the order they are checked.
BAD_KINDS: tuple[str, ...] = ("columns", "non_numeric", "non_finite", "label")
BAD_ROWS_DIR = "bad_rows"
BAD_ROWS_FILE = "bad_rows.tsv"
_RESULT_FILE = "_result.json"
_PIECES_DIR = "_pieces"
_MARK = "[higgs-convert] "  # tags our one-line errors inside Beam's wrapped worker exceptions
_GZIP_MAGIC = b"\x1f\x8b"
_SAMPLE_BYTES = 1 << 16
_BAD_TEXT_CHARS = 200
_MAX_LINE_BYTES = 64 << 20
_SECRET_WORDS = ("key", "token", "secret", "password", "credential")


class ConvertError(PipelineError):
    """The conversion cannot proceed; the message is one line naming the thing and the fix."""


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` did.

    Attributes:
        out: the dataset directory (local path or gs://).
        manifest: the dataset's manifest (the existing one when ``skipped``).
        skipped: True when the dataset was already complete for this source and options.
        metrics: Beam counters of the run (``rows_read``, ``bad_rows_<kind>`` …); empty when
            skipped.
    """

    out: str
    manifest: dict[str, Any]
    skipped: bool
    metrics: dict[str, int] = field(default_factory=dict)


# --- storage: local paths and gs:// behind one tiny interface ----------------------------


class _Files:
    """Streaming open/list/move/delete for local paths and ``gs://`` (Beam's GcsIO).

    Beam's GCS filesystem asks Google auth for credentials (with retries that take ~30 s when
    there are none) before every first use in a process. Against ``STORAGE_EMULATOR_HOST`` or
    with ``--no_auth`` we hand GcsIO an anonymous client instead, which also honours the
    emulator address.
    """

    def __init__(self, anonymous: bool = False):
        self.anonymous = anonymous
        self._gcs: Any = None

    def __getstate__(self) -> dict[str, Any]:  # DoFns are pickled: never ship a client
        return {"anonymous": self.anonymous, "_gcs": None}

    def gcs(self) -> Any:
        if self._gcs is None:
            from apache_beam.io.gcp import gcsio
            from apache_beam.options.pipeline_options import PipelineOptions

            client = None
            if self.anonymous or os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.cloud import storage as gcs

                client = gcs.Client.create_anonymous_client()
            self._gcs = gcsio.GcsIO(storage_client=client, pipeline_options=PipelineOptions([]))
        return self._gcs

    def open_read(self, path: str) -> BinaryIO:
        if storage.is_gcs(path):
            return self.gcs().open(path, "rb")
        return open(path, "rb")

    def open_write(self, path: str) -> BinaryIO:
        if storage.is_gcs(path):
            return self.gcs().open(path, "wb")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "wb")

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.open_write(path) as f:
            f.write(data)

    def read_bytes(self, path: str) -> bytes:
        with self.open_read(path) as f:
            return f.read()

    def copy_range(self, path: str, start: int, end: int, out: BinaryIO) -> None:
        """Append bytes [start, end) of ``path`` to the open file ``out``.

        Local to local uses ``os.copy_file_range`` (the kernel copies; no round trip
        through Python buffers); otherwise the range is read and written.
        """
        if not storage.is_gcs(path) and hasattr(out, "fileno") and hasattr(os, "copy_file_range"):
            out.flush()  # keep the file position in step with earlier buffered writes
            with open(path, "rb") as src:
                offset = start
                try:
                    while offset < end:
                        done = os.copy_file_range(src.fileno(), out.fileno(), end - offset, offset)
                        if done == 0:
                            break
                        offset += done
                except OSError:  # e.g. a filesystem without support: copy the rest by hand
                    pass
                if offset < end:
                    src.seek(offset)
                    out.write(src.read(end - offset))
            out.seek(0, os.SEEK_END)  # re-sync the buffered writer with the moved fd position
            return
        with self.open_read(path) as src:
            src.seek(start)
            data = src.read(end - start)
        if len(data) != end - start:
            raise ConvertError(f"{_MARK}staging piece {path} is shorter than written; rerun "
                               "the conversion")
        out.write(data)

    def exists(self, path: str) -> bool:
        if storage.is_gcs(path):
            return bool(self.gcs().exists(path))
        return os.path.exists(path)

    def size(self, path: str) -> int:
        if storage.is_gcs(path):
            return int(self.gcs().size(path))
        return os.path.getsize(path)

    def list(self, prefix: str) -> list[str]:
        """All files whose path starts with ``prefix`` (recursive), sorted."""
        if storage.is_gcs(prefix):
            return sorted(path for path, _ in self.gcs().list_files(prefix))
        root = prefix.rstrip(os.sep)
        if os.path.isfile(root):
            return [root]
        found = []
        for dirpath, _, files in os.walk(root):
            found.extend(os.path.join(dirpath, f) for f in files)
        return sorted(found)

    def glob(self, pattern: str) -> list[str]:
        """Files matching a glob (``*``, ``?``, ``[…]`` in the last path parts), sorted."""
        if storage.is_gcs(pattern):
            cut = min(pattern.find(c) for c in "*?[" if c in pattern)
            return sorted(p for p in self.list(pattern[:cut]) if fnmatch.fnmatchcase(p, pattern))
        return sorted(p for p in globlib.glob(pattern) if os.path.isfile(p))

    def delete_tree(self, prefix: str) -> None:
        if storage.is_gcs(prefix):
            paths = self.list(prefix.rstrip("/") + "/")
            for i in range(0, len(paths), 100):
                self.gcs().delete_batch(paths[i:i + 100])
        elif os.path.isdir(prefix):
            shutil.rmtree(prefix)
        elif os.path.exists(prefix):
            os.remove(prefix)

    def move_tree(self, src: str, dst: str) -> None:
        """Move a directory (local: one rename; gs://: server-side copy + delete per object)."""
        if storage.is_gcs(src):
            src_dir = src.rstrip("/") + "/"
            for path in self.list(src_dir):
                self.gcs().rename(path, dst.rstrip("/") + "/" + path[len(src_dir):])
        else:
            os.makedirs(os.path.dirname(dst.rstrip(os.sep)) or ".", exist_ok=True)
            os.replace(src, dst)


# --- reading and parsing: text blocks → float32 rows + bad rows ---------------------------


def _isal_errors() -> tuple[type[BaseException], ...]:
    from isal.igzip_lib import IsalError

    return (EOFError, OSError, IsalError)


@contextlib.contextmanager
def _open_text(files: _Files, path: str) -> Iterator[BinaryIO]:
    """Open a part as a binary stream of CSV text (gunzipped by ISA-L in its own thread)."""
    from isal import igzip_threaded

    with files.open_read(path) as raw:  # the gzip reader does not close a file it was handed
        magic = raw.read(2)
        raw.seek(0)
        if magic != _GZIP_MAGIC:
            yield raw
            return
        # The decompressor thread runs ahead of the parser (ISA-L releases the GIL).
        with igzip_threaded.open(raw, "rb", threads=1) as stream:
            yield stream


def _read_options(use_threads: bool = True) -> Any:
    import pyarrow.csv as pacsv

    return pacsv.ReadOptions(column_names=list(schema.CSV_COLUMNS), use_threads=use_threads,
                             block_size=4 << 20)


def _convert_options() -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Straight to float32 (correctly rounded from the decimal text); no null markers, so an
    # empty or "NA" field is a parse error and lands in the slow path as non-numeric.
    return pacsv.ConvertOptions(column_types={c: pa.float32() for c in schema.CSV_COLUMNS},
                                null_values=[], strings_can_be_null=False,
                                quoted_strings_can_be_null=False)


def _parse_csv(text: bytes, use_threads: bool = True) -> np.ndarray:
    """Parse newline-terminated CSV rows into float32 [n, 29]; raises pyarrow errors."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(pa.py_buffer(text), read_options=_read_options(use_threads),
                           convert_options=_convert_options())
    out = np.empty((table.num_rows, len(schema.CSV_COLUMNS)), dtype=np.float32)
    for j, column in enumerate(table.columns):
        out[:, j] = column.to_numpy()
    return out


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
        summary: ``{"signal": n, "moments": …}`` of the good rows (see :class:`_Moments`).
    """

    part: int
    line0: int
    lines: int
    labels: np.ndarray
    features: np.ndarray
    bad: list[tuple[int, str, str]]
    summary: dict[str, Any] = field(default_factory=dict)


def _value_checks(values: np.ndarray) -> np.ndarray:
    """Per row: '' if good, else the kind ('non_finite' or 'label')."""
    kinds = np.full(values.shape[0], "", dtype=object)
    finite = np.isfinite(values).all(axis=1)
    kinds[~finite] = "non_finite"
    label = values[:, 0]
    kinds[finite & (label != 0) & (label != 1)] = "label"
    return kinds


def parse_block(text: bytes, lines: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Parse newline-terminated HIGGS lines, separating bad rows.

    Fast path: one multi-threaded pyarrow parse of the whole block and numpy checks. Only if
    pyarrow fails or skips lines (blank lines) is the block re-read line by line to find
    which lines are bad and why; the good lines are then parsed by pyarrow again, so values
    always come from the same (correctly rounding) parser.

    Args:
        text: complete lines, each ending in ``\\n``.
        lines: the number of lines in ``text`` if already known.

    Returns:
        ``(labels float32 [k], features float32 [k, 28], bad)`` where ``bad`` lists
        ``(line index in the block, kind)`` with kind in :data:`BAD_KINDS`.
    """
    import pyarrow as pa

    if lines is None:
        lines = text.count(b"\n")
    good_index: np.ndarray | None = None
    bad: list[tuple[int, str]] = []
    try:
        values = _parse_csv(text)
        if values.shape[0] != lines:
            raise ValueError("row count differs from line count")  # blank lines were skipped
    except (pa.ArrowInvalid, ValueError):
        values, good_index, bad = _parse_slow(text)
    kinds = _value_checks(values)
    keep = kinds == ""
    if not keep.all():
        index = good_index if good_index is not None else np.arange(values.shape[0])
        bad.extend((int(index[i]), str(kinds[i])) for i in np.flatnonzero(~keep))
        bad.sort()
        values = values[keep]
    labels = np.ascontiguousarray(values[:, 0])
    labels[labels == 0] = 0.0  # a "-0" label is background; store the canonical +0.0
    return labels, values[:, 1:], bad


def _parse_slow(text: bytes) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Line-by-line classification of a block the fast parser rejected."""
    import pyarrow as pa

    width = len(schema.CSV_COLUMNS)
    bad: list[tuple[int, str]] = []
    good: list[int] = []
    split_lines = text.split(b"\n")[:-1]
    for i, line in enumerate(split_lines):
        fields = line.split(b",")
        if len(fields) != width:
            bad.append((i, "columns"))
            continue
        try:
            for tok in fields:
                float(tok)
        except ValueError:
            bad.append((i, "non_numeric"))
            continue
        good.append(i)
    try:
        values = _parse_csv(b"".join(split_lines[i] + b"\n" for i in good))
    except pa.ArrowInvalid:
        # Python's float() accepts a token pyarrow does not (e.g. "1_0"): find them one by one.
        keep, rows = [], []
        for i in good:
            try:
                rows.append(_parse_csv(split_lines[i] + b"\n", use_threads=False))
                keep.append(i)
            except pa.ArrowInvalid:
                bad.append((i, "non_numeric"))
        good = keep
        values = np.concatenate(rows) if rows else np.empty((0, width), np.float32)
    return values, np.asarray(good, dtype=np.int64), bad


def iter_text_blocks(stream: BinaryIO, block_bytes: int) -> Iterator[tuple[int, int, bytes]]:
    """Cut a text stream into blocks of whole lines.

    Args:
        stream: binary stream of CSV text.
        block_bytes: approximate block size in bytes.

    Yields:
        ``(index of the block's first line, number of lines, text)``, text ending in ``\\n``
        (one is added to a last line without it).
    """
    line0 = 0
    rest = b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            break
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest += data
            if len(rest) > _MAX_LINE_BYTES:
                raise ConvertError(f"{_MARK}a line of the source is longer than "
                                   f"{_MAX_LINE_BYTES >> 20} MB: not a HIGGS CSV file")
            continue
        # One copy per block: the carried-over partial line plus this read up to its last newline.
        block = rest + memoryview(data)[:cut] if rest else data[:cut]
        rest = data[cut:]
        lines = block.count(b"\n")
        yield line0, lines, block
        line0 += lines
    if rest:
        yield line0, rest.count(b"\n") + 1, rest + b"\n"


# --- Beam DoFns ----------------------------------------------------------------------------

PARTS_TAG = "parts"
BAD_TAG = "bad_rows"


def _parse_with_snippets(text: bytes, lines: int) -> tuple[np.ndarray, np.ndarray,
                                                            list[tuple[int, str, str]],
                                                            dict[str, Any]]:
    """:func:`parse_block`, the (truncated) text of each bad line, and the block's summary.

    Runs in the read step's helper thread, so the statistics (numpy, mostly without the
    GIL) overlap with encoding in the main thread; a shard made of whole blocks then needs
    no second look at its rows.
    """
    labels, features, bad = parse_block(text, lines)
    moments = _Moments()
    moments.add(features)
    summary = {"signal": int((labels == 1).sum()), "moments": moments.to_dict()}
    if not bad:
        return labels, features, [], summary
    split_lines = text.split(b"\n")
    return labels, features, [
        (i, kind, split_lines[i][:_BAD_TEXT_CHARS].decode("utf-8", "replace")) for i, kind in bad
    ], summary


class _ReadBlocks(beam.DoFn):
    """(part index, path) → :class:`ParsedBlock` elements.

    Dead-letter output ``bad_rows``: (part, line within part, kind, text); side output
    ``parts``: (part, total lines). The pyarrow parse of block k+1 runs in a helper thread
    (it releases the GIL) while block k is encoded and written downstream in this thread, and
    ISA-L decompresses ahead in a third: the three overlap on a multi-core worker.
    """

    def __init__(self, block_bytes: int, files: _Files):
        self.block_bytes = block_bytes
        self.files = files
        self.text_bytes = Metrics.counter(METRICS_NAMESPACE, "text_bytes")
        self.rows = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self.bad = {kind: Metrics.counter(METRICS_NAMESPACE, f"bad_rows_{kind}")
                    for kind in BAD_KINDS}

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        from concurrent.futures import ThreadPoolExecutor

        part, path = element
        total = 0
        pending: tuple[int, int, Any] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="parse") as pool:
            try:
                with _open_text(self.files, path) as stream:
                    for line0, lines, text in iter_text_blocks(stream, self.block_bytes):
                        self.text_bytes.inc(len(text))
                        parsing = (line0, lines, pool.submit(_parse_with_snippets, text, lines))
                        if pending is not None:
                            yield from self._emit(part, pending)
                        pending = parsing
                        total = line0 + lines
            except _isal_errors() as exc:
                raise ConvertError(f"{_MARK}{path} is a corrupt or truncated gzip file "
                                   f"({type(exc).__name__}: {exc}); download it again") from None
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


class _WritePieces(beam.DoFn):
    """:class:`ParsedBlock` → a piece file of framed records; emits the piece's metadata."""

    def __init__(self, staging: str, files: _Files):
        self.staging = staging
        self.files = files
        self.written = Metrics.counter(METRICS_NAMESPACE, "records_encoded")

    def process(self, block: ParsedBlock) -> Iterator[dict[str, Any]]:
        # Named by position, so a retried bundle overwrites the same piece (idempotent).
        path = storage.join(self.staging, _PIECES_DIR, f"p{block.part:05d}-l{block.line0:012d}.rec")
        framed = records.frame_records(records.encode_examples(block.features, block.labels))
        self.files.write_bytes(path, framed)
        self.written.inc(block.labels.shape[0])
        yield {"part": block.part, "line0": block.line0, "lines": block.lines,
               "records": int(block.labels.shape[0]), "path": path, **block.summary}


@dataclass(frozen=True)
class SplitPlan:
    """Where the splits fall, in source lines and in written records."""

    total_lines: int
    bad_rows: int
    lines: dict[str, tuple[int, int]]  # split → [start, end) line range (0-based, global)
    records: dict[str, tuple[int, int]]  # split → [start, end) record range


def plan_splits(total_lines: int, bad_lines: Sequence[int], validation_rows: int | None,
                test_rows: int | None) -> SplitPlan:
    """Cut the source lines into training, validation and test by position.

    Args:
        total_lines: lines in the whole source (all parts).
        bad_lines: sorted 0-based global line indices of skipped bad rows.
        validation_rows: lines of validation (None: ``total_lines // 22``).
        test_rows: lines of test, the last ones (None: ``total_lines // 22``).

    Returns:
        The line and record ranges of each split.

    Raises:
        ConvertError: if any split would be empty.
    """
    val = total_lines // 22 if validation_rows is None else validation_rows
    test = total_lines // 22 if test_rows is None else test_rows
    train = total_lines - val - test
    if val < 1 or test < 1 or train < 1:
        raise ConvertError(
            f"{_MARK}the source has {total_lines:,} rows, too few for non-empty training, "
            f"validation ({val:,}) and test ({test:,}) splits; use a bigger source or set "
            "data.validation_rows / data.test_rows")
    bounds = {"training": (0, train), "validation": (train, train + val),
              "test": (train + val, total_lines)}

    def record_index(line: int) -> int:
        return line - bisect.bisect_left(bad_lines, line)

    recs = {s: (record_index(a), record_index(b)) for s, (a, b) in bounds.items()}
    return SplitPlan(total_lines, len(bad_lines), bounds, recs)


def _shard_name(split: str, index: int, count: int) -> str:
    return f"{split}/part-{index:05d}-of-{count:05d}{schema.SHARD_SUFFIX}"


def plan_shards(pieces: Sequence[dict[str, Any]], parts: Sequence[tuple[int, int]],
                bad_rows: Sequence[tuple[int, int, str, str]], cfg: dict[str, Any]
                ) -> tuple[SplitPlan, list[dict[str, Any]], list[tuple[int, str, str]]]:
    """Turn piece metadata into shard-writing tasks once the total row count is known.

    Args:
        pieces: metadata from the write step (part, line0, lines, records, path).
        parts: (part index, total lines) of every source part.
        bad_rows: (part, line within part, kind, text) of every bad row.
        cfg: ``validation_rows``, ``test_rows`` and ``shards`` ({split: count}).

    Returns:
        ``(plan, tasks, bad)``: the split plan; the tasks: one per shard ``{kind: "shard",
        split, index, count, path, records, ranges: [(piece path, byte start, byte end)]}``
        and one per split ``{kind: "stats", split, records, ranges, summaries: [the piece's
        summary where the range is the whole piece, else None]}``; bad rows as
        ``(1-based global line, kind, text)`` sorted by line.
    """
    offsets, total = {}, 0
    for part, lines in sorted(parts):
        offsets[part] = total
        total += lines
    bad = sorted((offsets[p] + line + 1, kind, text) for p, line, kind, text in bad_rows)
    plan = plan_splits(total, [line - 1 for line, _, _ in bad], cfg["validation_rows"],
                       cfg["test_rows"])
    ordered = sorted(pieces, key=lambda m: (m["part"], m["line0"]))
    starts, acc = [], 0
    for meta in ordered:
        starts.append(acc)
        acc += meta["records"]
    def cut(a: int, b: int) -> tuple[list[tuple[str, int, int]], list[dict[str, Any] | None]]:
        """Byte ranges of pieces holding records [a, b), and summaries of whole pieces."""
        ranges, summaries = [], []
        first = max(0, bisect.bisect_right(starts, a) - 1)
        for meta, start in zip(ordered[first:], starts[first:], strict=True):
            if start >= b:
                break
            r0, r1 = max(a, start), min(b, start + meta["records"])
            if r1 > r0:
                ranges.append((meta["path"], (r0 - start) * records.FRAMED_BYTES,
                               (r1 - start) * records.FRAMED_BYTES))
                whole = r1 - r0 == meta["records"] and "moments" in meta
                summaries.append({"signal": meta["signal"], "moments": meta["moments"]}
                                 if whole else None)
        return ranges, summaries

    tasks: list[dict[str, Any]] = []
    for split in schema.SPLITS:
        lo, hi = plan.records[split]
        count = max(1, min(cfg["shards"][split], hi - lo))
        for k in range(count):
            a, b = lo + (hi - lo) * k // count, lo + (hi - lo) * (k + 1) // count
            tasks.append({"kind": "shard", "split": split, "index": k, "count": count,
                          "path": _shard_name(split, k, count), "records": b - a,
                          "ranges": cut(a, b)[0]})
        # Statistics per split, not per shard: whole pieces bring their summary, so only the
        # (at most two) pieces cut by a split boundary are read again.
        ranges, summaries = cut(lo, hi)
        tasks.append({"kind": "stats", "split": split, "records": hi - lo, "ranges": ranges,
                      "summaries": summaries})
    return plan, tasks, bad


class _Moments:
    """Mergeable per-feature count/mean/M2/min/max (Chan et al.), float64."""

    def __init__(self, width: int = schema.NUM_FEATURES):
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)

    def add(self, x: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        other = _Moments(x.shape[1])
        other.n = x.shape[0]
        # float64 accumulators over the float32 block, without a float64 copy of it; the
        # deviations from the float32-rounded mean are corrected exactly for the rounding.
        other.mean = x.mean(axis=0, dtype=np.float64)
        mean32 = other.mean.astype(x.dtype)
        dev = x - mean32
        np.square(dev, out=dev)
        shift = other.mean - mean32.astype(np.float64)
        other.m2 = np.maximum(dev.sum(axis=0, dtype=np.float64) - other.n * shift**2, 0.0)
        other.min = x.min(axis=0).astype(np.float64)
        other.max = x.max(axis=0).astype(np.float64)
        self.merge(other)

    def merge(self, other: _Moments) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.n / n
        self.m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / n
        self.n = n
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "min": self.min.tolist(), "max": self.max.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Moments:
        m = cls(len(d["mean"]))
        m.n = d["n"]
        m.mean, m.m2 = np.asarray(d["mean"]), np.asarray(d["m2"])
        m.min, m.max = np.asarray(d["min"]), np.asarray(d["max"])
        return m


class _FinishTask(beam.DoFn):
    """A planned task: write one shard file, or gather one split's statistics.

    A shard is a concatenation of byte ranges of pieces (a kernel copy for local files);
    its records are not looked at again. A split's statistics merge the summaries of whole
    pieces and decode only the pieces a split boundary cuts.
    """

    def __init__(self, staging: str, files: _Files):
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
                self.files.copy_range(path, start, end, out)
        written = sum(end - start for _, start, end in task["ranges"]) // records.FRAMED_BYTES
        if written != task["records"]:
            raise ConvertError(f"{_MARK}shard {task['path']} got {written} records, planned "
                               f"{task['records']}; rerun the conversion")
        return {"kind": "shard", "split": task["split"], "index": task["index"],
                "path": task["path"], "records": written}

    def _split_stats(self, task: dict[str, Any]) -> dict[str, Any]:
        moments = _Moments()
        signal = 0
        seen = 0
        training = task["split"] == "training"  # the manifest's feature stats are training's
        for (path, start, end), summary in zip(task["ranges"], task["summaries"], strict=True):
            if summary is not None:
                signal += summary["signal"]
                if training:
                    moments.merge(_Moments.from_dict(summary["moments"]))
                seen += (end - start) // records.FRAMED_BYTES
                continue
            with self.files.open_read(path) as f:
                f.seek(start)
                data = f.read(end - start)
            if len(data) != end - start:
                raise ConvertError(f"{_MARK}staging piece {path} is shorter than written; "
                                   "rerun the conversion")
            framed = np.frombuffer(data, np.uint8).reshape(-1, records.FRAMED_BYTES)
            feats, labels = records.decode_examples(framed[:, 12:12 + records.EXAMPLE_BYTES])
            signal += int((labels == 1).sum())
            seen += labels.shape[0]
            if training:
                moments.add(feats)
        if seen != task["records"]:
            raise ConvertError(f"{_MARK}split {task['split']} has {seen} records, planned "
                               f"{task['records']}; rerun the conversion")
        return {"kind": "stats", "split": task["split"], "records": seen, "signal": signal,
                "moments": moments.to_dict()}


def _plan_tasks(_: Any, pieces: list, parts: list, bad: list, cfg: dict) -> Iterator[dict]:
    _, tasks, _ = plan_shards(pieces, parts, bad, cfg)
    yield from tasks


def _write_result(_: Any, done: list, pieces: list, parts: list, bad: list, cfg: dict,
                  staging: str, files: _Files) -> None:
    """Last pipeline step: the run's summary (and bad-row report) as files in staging."""
    plan, _, bad_rows = plan_shards(pieces, parts, bad, cfg)
    if bad_rows:
        text = "line\tkind\ttext\n" + "".join(f"{n}\t{k}\t{t}\n" for n, k, t in bad_rows)
        files.write_bytes(storage.join(staging, BAD_ROWS_DIR, BAD_ROWS_FILE), text.encode())
    by_kind = {kind: 0 for kind in BAD_KINDS}
    for _, kind, _ in bad_rows:
        by_kind[kind] += 1
    order = {split: i for i, split in enumerate(schema.SPLITS)}
    result = {"plan": dataclasses.asdict(plan), "bad_rows_by_kind": by_kind,
              "bad_rows_sample": [list(b) for b in bad_rows[:20]],
              "shards": sorted((d for d in done if d["kind"] == "shard"),
                               key=lambda d: (order[d["split"]], d["index"])),
              "stats": {d["split"]: d for d in done if d["kind"] == "stats"}}
    files.write_bytes(storage.join(staging, _RESULT_FILE), json.dumps(result).encode())


class CsvToTFRecords(beam.PTransform):
    """The composite transform: (part index, path) elements → shard files + a result file.

    Steps: ReadBlocks (read + parse; dead letter: bad rows) → EncodeAndWritePieces, then
    PlanShards (needs all pieces: the split depends on the total row count) → WriteShards
    (parallel: one task per shard file and one per split's statistics) → WriteResult.
    """

    def __init__(self, staging: str, block_bytes: int, cfg: dict[str, Any], files: _Files,
                 spread_parts: bool):
        super().__init__()
        self.staging, self.block_bytes, self.cfg = staging, block_bytes, cfg
        self.files, self.spread_parts = files, spread_parts

    def expand(self, parts: Any) -> Any:
        if self.spread_parts:  # several parts: let workers read them in parallel
            parts = parts | "SpreadParts" >> beam.Reshuffle()
        read = parts | "ReadBlocks" >> beam.ParDo(
            _ReadBlocks(self.block_bytes, self.files)).with_outputs(PARTS_TAG, BAD_TAG,
                                                                    main="blocks")
        pieces = read.blocks | "EncodeAndWritePieces" >> beam.ParDo(
            _WritePieces(self.staging, self.files))
        side = {"pieces": beam.pvalue.AsList(pieces),
                "parts": beam.pvalue.AsList(read[PARTS_TAG]),
                "bad": beam.pvalue.AsList(read[BAD_TAG])}
        root = parts.pipeline
        done = (root
                | "PlanSeed" >> beam.Create([None])
                | "PlanShards" >> beam.FlatMap(_plan_tasks, cfg=self.cfg, **side)
                | "SpreadShards" >> beam.Reshuffle()
                | "WriteShards" >> beam.ParDo(_FinishTask(self.staging, self.files)))
        return (root
                | "ResultSeed" >> beam.Create([None])
                | "WriteResult" >> beam.Map(_write_result, done=beam.pvalue.AsList(done),
                                            cfg=self.cfg, staging=self.staging,
                                            files=self.files, **side))


# --- preflight: file errors before anything runs ----------------------------------------


def _expand_source(files: _Files, source: str) -> list[str]:
    if re.match(r"^[a-z][a-z0-9+.-]*://", source) and not storage.is_gcs(source):
        raise ConvertError(f"cannot read {source} directly: convert takes a local path or gs:// "
                           "URI (resolve https sources with pipeline.data.source.resolve first)")
    if any(c in source for c in "*?["):
        # pipeline.data.source keeps sha256 sidecars next to sources: never read those as parts.
        parts = [p for p in files.glob(source) if not p.endswith(".sha256")]
        if not parts:
            raise ConvertError(f"no source files match {source}; check the pattern")
        return parts
    if storage.is_gcs(source):
        storage.split_gcs(source)  # a bucket is required
    if not files.exists(source):
        raise ConvertError(f"source {source} not found; check the path or create one with "
                           "'higgs synth --rows N --out FILE.csv.gz'")
    return [source]


def _preflight(files: _Files, path: str) -> float:
    """Check one part's first bytes; return its mean line length in bytes."""
    if storage.is_gcs(path) or os.path.isfile(path):
        if files.size(path) == 0:
            raise ConvertError(f"source {path} is empty (0 bytes); download or generate it again")
    else:
        raise ConvertError(f"source {path} is not a file")
    with files.open_read(path) as raw:
        magic = raw.read(2)
    if path.endswith(".gz") and magic != _GZIP_MAGIC:
        raise ConvertError(f"source {path} is not gzip-compressed (it ends in .gz but does not "
                           "start with the gzip magic bytes); download it again")
    try:
        with _open_text(files, path) as stream:
            sample = stream.read(_SAMPLE_BYTES)
    except _isal_errors() as exc:
        raise ConvertError(f"source {path} is a corrupt or truncated gzip file "
                           f"({type(exc).__name__}: {exc}); "
                           "download it again") from None
    if not sample.strip():
        raise ConvertError(f"source {path} holds no rows; download or generate it again")
    if b"\x00" in sample:
        raise ConvertError(f"source {path} is not CSV text (binary data); expected HIGGS.csv or "
                           "HIGGS.csv.gz")
    first = sample.split(b"\n", 1)[0].strip()
    tokens = first.split(b",")
    if any(re.search(rb"[A-DF-Za-df-z_]", t) and t.strip().lower() not in
           (b"nan", b"-nan", b"inf", b"-inf", b"+inf", b"infinity", b"-infinity")
           for t in tokens):
        raise ConvertError(
            f"source {path} starts with a header line ({first[:60].decode('utf-8', 'replace')}…); "
            "HIGGS files have none: remove it (e.g. 'zcat F | tail -n +2 | gzip > G')")
    lines = sample.count(b"\n")
    return len(sample) / max(1, lines)


# --- driver ----------------------------------------------------------------------------


def _redact(beam_args: Sequence[str]) -> list[str]:
    out, hide_next = [], False
    for arg in beam_args:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        secret = name.startswith("--") and any(w in name.lower() for w in _SECRET_WORDS)
        if secret and eq:
            out.append(f"{name}=<redacted>")
        else:
            out.append(arg)
            hide_next = secret and not eq
    return out


def _fingerprint(parts: list[str], source: str) -> dict[str, Any]:
    from pipeline.data import source as source_mod

    prints = [source_mod.fingerprint(p) for p in parts]
    if len(prints) == 1 and parts[0] == source:
        return prints[0]
    key = "sha256" if all("sha256" in p for p in prints) else "crc32c"
    combined = hashlib.sha256("".join(
        f"{os.path.basename(p['uri'])}:{p.get(key) or p.get('sha256') or p.get('crc32c')}\n"
        for p in prints).encode()).hexdigest()
    return {"uri": source, "bytes": sum(int(p["bytes"]) for p in prints),
            "sha256" if key == "sha256" else "parts_sha256": combined, "parts": prints}


def _identity(fp: dict[str, Any]) -> dict[str, Any]:
    """The parts of a fingerprint that identify content (not where it was read from)."""
    keys = ("bytes", "sha256", "crc32c", "parts_sha256")
    return {k: fp[k] for k in keys if k in fp}


def _output_options(cfg: DataConfig) -> dict[str, Any]:
    """Options that change the output; a rerun with equal ones over the same source is a no-op."""
    return {"converter_version": CONVERTER_VERSION,
            "validation_rows": cfg.validation_rows, "test_rows": cfg.test_rows,
            "shards": {"training": cfg.training_shards, "validation": cfg.validation_shards,
                       "test": cfg.test_shards}}


def _error_line(exc: BaseException) -> str | None:
    """Our one-line message from inside a (possibly wrapped, remote) Beam failure."""
    seen: BaseException | None = exc
    while seen is not None:
        match = re.search(re.escape(_MARK) + r"([^\n]*)", str(seen))
        if match:
            return match.group(1).rstrip("'\" ")
        seen = seen.__cause__ or seen.__context__
    return None


def _metrics(result: Any) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):  # some runners do not report metrics
        return out
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def _feature_stats(moments: _Moments) -> dict[str, dict[str, float]]:
    std = np.sqrt(moments.m2 / max(1, moments.n))
    return {name: {"count": moments.n, "mean": float(moments.mean[j]), "std": float(std[j]),
                   "min": float(moments.min[j]), "max": float(moments.max[j])}
            for j, name in enumerate(schema.FEATURES)}


def convert(source: str, out: str, data_cfg: DataConfig, beam_args: Sequence[str] = (),
            overwrite: bool = False) -> ConvertResult:
    """Convert a HIGGS CSV(.gz) source into a sharded TFRecord dataset with a Beam pipeline.

    Args:
        source: local path or ``gs://`` URI of ``HIGGS.csv.gz`` (or plain ``.csv``), or a glob
            of parts (``gs://b/parts/part-*.csv.gz``) read in name order.
        out: dataset directory DATA (local or ``gs://``).
        data_cfg: split sizes, shard counts, ``block_rows`` and ``max_bad_rows``.
        beam_args: Beam pipeline options, untouched (``--runner``, ``--direct_num_workers``,
            ``--project`` …). ``--no_auth`` makes gs:// access anonymous.
        overwrite: rebuild even if DATA already holds a complete dataset.

    Returns:
        :class:`ConvertResult`; ``skipped`` when DATA was already complete for the same source
        fingerprint and output options.

    Raises:
        ConvertError: missing/empty/corrupt source, a header line, too many bad rows, a DATA
            holding another dataset (without ``overwrite``), or a failed pipeline step.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    from pipeline.data import dataset

    started = time.monotonic()
    beam_args = list(beam_args)
    options = PipelineOptions(beam_args)
    files = _Files(anonymous=bool(options.view_as(GoogleCloudOptions).no_auth))
    parts = _expand_source(files, source)
    line_bytes = max(_preflight(files, p) for p in parts)
    fingerprint = _fingerprint(parts, source)
    wanted = _output_options(data_cfg)

    manifest_path = dataset.manifest_uri(out)
    if files.exists(manifest_path):
        try:
            old = dataset.load_manifest(out)
        except dataset.DatasetError:
            old = None
        same = (old is not None and _identity(old.get("source", {})) == _identity(fingerprint)
                and {k: old.get("options", {}).get(k) for k in wanted} == wanted)
        if same and not overwrite:
            log.info("%s is complete for this source and options; nothing to do", out)
            return ConvertResult(out, old, True)
        if not overwrite:
            what = ("a dataset built from another source or options" if old is not None
                    else "an unreadable manifest")
            raise ConvertError(f"{out} already holds {what}; pass --overwrite to rebuild it or "
                               "choose another --out")

    staging = storage.join(out, f".staging-{uuid.uuid4().hex[:12]}")
    block_bytes = int(min(256 << 20, max(64 << 10, data_cfg.block_rows * line_bytes)))
    cfg = {"validation_rows": data_cfg.validation_rows, "test_rows": data_cfg.test_rows,
           "shards": wanted["shards"]}
    try:
        with beam.Pipeline(options=options) as p:
            _ = (p
                 | "Parts" >> beam.Create(list(enumerate(parts)))
                 | "CsvToTFRecords" >> CsvToTFRecords(staging, block_bytes, cfg, files,
                                                      spread_parts=len(parts) > 1))
        metrics = _metrics(p.result)
        result = json.loads(files.read_bytes(storage.join(staging, _RESULT_FILE)))
        manifest = _publish(files, out, staging, result, fingerprint, data_cfg, beam_args,
                            block_bytes, wanted, time.monotonic() - started)
    except Exception as exc:
        _discard(files, staging)
        line = _error_line(exc)  # raised in a DoFn: marked, maybe wrapped by the runner
        if line is not None:
            raise ConvertError(line) from None
        raise
    return ConvertResult(out, manifest, False, metrics)


def _discard(files: _Files, staging: str) -> None:
    try:
        files.delete_tree(staging)
    except Exception as exc:  # cleanup must not hide the real error
        log.warning("could not remove staging directory %s: %s", staging, exc)


def _publish(files: _Files, out: str, staging: str, result: dict[str, Any],
             fingerprint: dict[str, Any], data_cfg: DataConfig, beam_args: list[str],
             block_bytes: int, wanted: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Check the bad-row limit, move staging into place, write the manifest last."""
    from pipeline.data import dataset

    plan = result["plan"]
    bad = plan["bad_rows"]
    bad_src = storage.join(staging, BAD_ROWS_DIR)
    bad_dst = storage.join(out, BAD_ROWS_DIR)
    files.delete_tree(bad_dst)
    if bad:
        files.move_tree(bad_src, bad_dst)
    if bad > data_cfg.max_bad_rows:
        kinds = ", ".join(f"{k} {n}" for k, n in result["bad_rows_by_kind"].items() if n)
        first = result["bad_rows_sample"][0]
        raise ConvertError(
            f"{bad} bad rows in {fingerprint['uri']} ({kinds}; first: line {first[0]}, "
            f"{first[1]}) exceed --max-bad-rows {data_cfg.max_bad_rows}; see "
            f"{storage.join(bad_dst, BAD_ROWS_FILE)}, fix the source or raise --max-bad-rows")

    # Unpublish first: from here until the new manifest exists, DATA is not a dataset.
    manifest_path = dataset.manifest_uri(out)
    if files.exists(manifest_path):
        files.delete_tree(manifest_path)
    for split in schema.SPLITS:
        files.delete_tree(storage.join(out, split))
        files.move_tree(storage.join(staging, split), storage.join(out, split))

    rows = {s: 0 for s in schema.SPLITS}
    signal = {s: 0 for s in schema.SPLITS}
    shards: dict[str, list[dict[str, Any]]] = {s: [] for s in schema.SPLITS}
    for shard in result["shards"]:
        split = shard["split"]
        shards[split].append({"path": shard["path"], "records": shard["records"]})
        rows[split] += shard["records"]
    for split, stats in result["stats"].items():
        if stats["records"] != rows[split]:
            raise ConvertError(f"split {split}: shards hold {rows[split]} records, statistics "
                               f"saw {stats['records']}; rerun the conversion")
        signal[split] = stats["signal"]
    moments = _Moments.from_dict(result["stats"]["training"]["moments"])
    manifest = {
        "rows": rows,
        "bad_rows": bad,
        "source": fingerprint,
        "shards": shards,
        "features": list(schema.FEATURES),
        "label": schema.LABEL_KEY,
        "record": {"format": "tf.train.Example{features: bytes = serialize_tensor(float32[28]), "
                             "label: float_list[1]}",
                   "example_bytes": records.EXAMPLE_BYTES, "compression": None},
        "split": {"rule": "by source line position: training first, then validation, then test "
                          "(the last lines); ranges are 0-based [start, end) source lines",
                  "source_rows": plan["total_lines"],
                  "lines": {s: list(r) for s, r in plan["lines"].items()}},
        "bad_rows_by_kind": result["bad_rows_by_kind"],
        "signal_fraction": {s: (signal[s] / rows[s] if rows[s] else None) for s in schema.SPLITS},
        "feature_stats": _feature_stats(moments),
        "converter_version": CONVERTER_VERSION,
        "options": {**wanted, "block_rows": data_cfg.block_rows, "block_bytes": block_bytes,
                    "max_bad_rows": data_cfg.max_bad_rows, "beam_args": _redact(beam_args)},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    files.delete_tree(staging)
    _remove_stale_staging(files, out)
    files.write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    return manifest


def _remove_stale_staging(files: _Files, out: str) -> None:
    """Delete ``.staging-*`` left by killed runs (two runs into one DATA are not supported)."""
    if storage.is_gcs(out):
        base = out.rstrip("/") + "/"
        stale = {base + path[len(base):].split("/", 1)[0] for path in files.list(base + ".staging-")}
    else:
        stale = set(globlib.glob(os.path.join(globlib.escape(out), ".staging-*")))
    for path in sorted(stale):
        log.info("removing %s left by an earlier, interrupted run", path)
        files.delete_tree(path)


__all__ = ["BAD_KINDS", "CONVERTER_VERSION", "ConvertError", "ConvertResult", "CsvToTFRecords",
           "convert", "iter_text_blocks", "parse_block", "plan_shards", "plan_splits"]
