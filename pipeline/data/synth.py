"""A physics-motivated generator of HIGGS-like events: the embedded default data.

    higgs synth --rows 100000 --seed 1 --out data/sources/sample.csv.gz
    python -c "from pipeline.data import synth; y, x = synth.generate(1000, seed=1); print(x.shape, y.mean())"

It writes the UCI ``HIGGS.csv.gz`` layout (no header, ``label, 28 features``; see
:mod:`pipeline.core.schema`) so every path of the pipeline runs offline. Everything is vectorized
numpy over blocks of events; the output is a pure function of ``(seed, row index)``: the same
seed gives a byte-identical file, and a shorter file is a prefix of a longer one.

The model — processes, decays, detector, reconstruction and the real file's column scaling —
is described and implemented in :mod:`pipeline.data.physics`.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.core import schema
from pipeline.core.errors import PipelineError
from pipeline.data import physics

# Fixed-size blocks make the event stream independent of how the caller chunks it.
_CANDIDATE_BLOCK = 32_768
_LABEL_BLOCK = 65_536
_STREAM_LABEL, _STREAM_SIGNAL, _STREAM_BACKGROUND = 0, 1, 2


class SynthError(PipelineError, ValueError):
    """Bad generator arguments or an unwritable output; the message is one line."""


@dataclass(frozen=True)
class SynthResult:
    """What :func:`write_csv` wrote and how fast."""

    path: Path
    rows: int
    signal_fraction: float
    seconds: float
    events_per_s: float  # generation only (physics + reconstruction), events per second
    write_rows_per_s: float  # text formatting + gzip + file write, rows per second
    # CPU seconds of each stage (thread time): rates that do not depend on a busy machine.
    gen_cpu_seconds: float = 0.0
    write_cpu_seconds: float = 0.0


# --- streams ---------------------------------------------------------------------------------


def _block_rng(seed: int, stream: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, block)))


class _ClassStream:
    """Accepted events of one class, generated in fixed candidate blocks (chunking-invariant)."""

    def __init__(self, seed: int, stream: int):
        self.seed, self.stream = seed, stream
        self.block = 0
        self.buffer = np.empty((0, schema.NUM_FEATURES), physics.F32)

    def take(self, n: int) -> np.ndarray:
        parts, have = [self.buffer], self.buffer.shape[0]
        while have < n:
            rng = _block_rng(self.seed, self.stream, self.block)
            self.block += 1
            signal = self.stream == _STREAM_SIGNAL
            make = physics.signal_partons if signal else physics.background_partons
            partons, lepton, nu, m_w_lep = make(rng, _CANDIDATE_BLOCK)
            events = physics.reconstruct(rng, partons, lepton, nu, m_w_lep)
            parts.append(events)
            have += events.shape[0]
        allev = np.concatenate(parts) if len(parts) > 1 else self.buffer
        self.buffer = allev[n:].copy()  # < one block; don't keep the whole chunk alive
        return allev[:n]


class _LabelStream:
    """Labels drawn with P(signal) = SIGNAL_FRACTION, in fixed blocks like the events."""

    def __init__(self, seed: int):
        self.seed, self.block = seed, 0
        self.buffer = np.empty(0, dtype=bool)

    def take(self, n: int) -> np.ndarray:
        parts, have = [self.buffer], self.buffer.shape[0]
        while have < n:
            rng = _block_rng(self.seed, _STREAM_LABEL, self.block)
            self.block += 1
            parts.append(rng.random(_LABEL_BLOCK) < physics.SIGNAL_FRACTION)
            have += _LABEL_BLOCK
        allv = np.concatenate(parts)
        self.buffer = allv[n:]
        return allv[:n]


class _EventStream:
    """The deterministic sequence of (label, raw features) for one seed."""

    def __init__(self, seed: int, raw: bool = False):
        self.labels = _LabelStream(seed)
        self.signal = _ClassStream(seed, _STREAM_SIGNAL)
        self.background = _ClassStream(seed, _STREAM_BACKGROUND)
        self.raw = raw

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        is_sig = self.labels.take(n)
        nsig = int(is_sig.sum())
        both = np.concatenate([self.signal.take(nsig), self.background.take(n - nsig)])
        # Row i takes the next signal event if its label is signal, else the next background
        # one: a gather (np.take) is much faster than boolean-mask assignment of rows.
        rank_sig = np.cumsum(is_sig) - 1
        rank_bkg = nsig + np.arange(n) - rank_sig - 1
        feats = np.take(both, np.where(is_sig, rank_sig, rank_bkg), axis=0)
        if not self.raw:
            feats = physics.scale(feats)
        return is_sig.astype(np.float32), feats


def _check_args(rows: int, seed: int) -> None:
    if not isinstance(rows, (int, np.integer)) or rows < 0:
        raise SynthError(f"rows must be a non-negative integer, got {rows!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")


def generate(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate HIGGS-like events in memory.

    Args:
        rows: number of events.
        seed: any non-negative integer; the output is a pure function of (seed, row index).

    Returns:
        ``(labels, features)``: float32 [rows] (1.0 signal, 0.0 background) and float32
        [rows, 28] in the column order of :data:`pipeline.core.schema.FEATURES`, scaled like
        the real file.
    """
    _check_args(rows, seed)
    return _EventStream(int(seed)).take(int(rows))


def calibrate(rows: int = 400_000, seed: int = 12345) -> np.ndarray:
    """Re-derive :data:`COLUMN_DIVISORS` (mean for GeV columns, std for η columns).

    Args:
        rows: events of the 53%-signal mixture to average over.
        seed: generator seed.

    Returns:
        float64 [28] divisors (φ and b-tag entries are 1; they use fixed real-file values).
    """
    _, raw = _EventStream(seed, raw=True).take(rows)
    div = raw.mean(axis=0)
    eta_cols = [schema.feature_index(n) for n in schema.FEATURES if n.endswith("_eta")]
    div[eta_cols] = raw[:, eta_cols].std(axis=0)
    div[list(physics.PHI_COLS) + list(physics.BTAG_COLS)] = 1.0
    return div


# --- writing ---------------------------------------------------------------------------------

FORMATS = ("uci", "compact")


def format_csv(labels: np.ndarray, features: np.ndarray, fmt: str = "uci") -> bytes:
    """Format rows as UCI-layout CSV text (no header, label first).

    ``uci`` (the default) is the real file's text: every value, the label too, as ``%.18e``
    of its float32 (:mod:`pipeline.data.uci_text`), ~730 bytes a row. ``compact`` is Arrow's
    shortest decimal that parses back to the same float32 (e.g. ``1.0865381``), ~270 bytes a
    row. Both round-trip bit for bit whether a reader parses to float32 directly or to
    float64 and then casts.

    Args:
        labels: float32 [n].
        features: float32 [n, 28].
        fmt: ``"uci"`` or ``"compact"``.

    Returns:
        The CSV bytes, one ``\\n``-terminated line per row.

    Raises:
        SynthError: for an unknown ``fmt``.
    """
    if fmt == "uci":
        from pipeline.data import uci_text

        return uci_text.format_rows(labels, features)
    if fmt != "compact":
        raise SynthError(f"unknown text format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    import pyarrow as pa
    import pyarrow.csv as pacsv

    columns = [np.ascontiguousarray(labels, dtype=np.float32)]
    columns += list(np.ascontiguousarray(np.asarray(features, dtype=np.float32).T))
    table = pa.table([pa.array(c) for c in columns], names=list(schema.CSV_COLUMNS))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, batch_size=1 << 20))
    return sink.getvalue().to_pybytes()


_GZIP_PIECE = 4 << 20  # text is compressed in fixed pieces: the file does not depend on chunk_rows
# compact: ISA-L level 1 (~0.47 of the text at several hundred MB/s), as it always was.
_COMPACT_LEVEL = 1
# uci: zlib level 6 like gzip's default, so the file is as big as the real one (11M rows:
# ~2.86 GB against the real 2,816,407,858 bytes; ISA-L level 3 would give 3.1 GB), compressed
# pigz-style: each piece is its own deflate run primed with the previous 32 kB, so pieces
# compress on several threads and still form one ordinary gzip member.
_UCI_LEVEL = 6
_WINDOW = 32 << 10
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_DEFLATE_END = b"\x03\x00"  # an empty final block: ends the deflate stream after SYNC_FLUSHed pieces


def _deflate_piece(piece: bytes, zdict: bytes) -> bytes:
    """Raw deflate of one piece, primed with the text before it, ending byte-aligned."""
    import zlib

    args = (_UCI_LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    c = zlib.compressobj(*args, zdict) if zdict else zlib.compressobj(*args)
    return c.compress(piece) + c.flush(zlib.Z_SYNC_FLUSH)


class _Sink:
    """Writes text in order as a deterministic gzip file; ``fmt`` picks the compressor.

    ``compact``: ISA-L level 1 on one thread (its output depends on how the input is split, so
    it is fed fixed pieces). ``uci``: zlib level 6 on a thread pool, one task per piece, joined
    in order with the gzip header, CRC-32 and length written here.
    """

    def __init__(self, raw: BinaryIO, fmt: str, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.raw, self.fmt = raw, fmt
        self.pending = bytearray()
        self.tail = b""  # the last 32 kB of text before the next piece (its deflate dictionary)
        self.crc, self.size = 0, 0
        self.in_flight: deque[Future] = deque()
        self.threads = threads
        if fmt == "compact":
            from isal import igzip

            self.gz = igzip.IGzipFile(filename="", mode="wb", fileobj=raw,
                                      compresslevel=_COMPACT_LEVEL, mtime=0)
            self.pool = None
        else:
            self.gz = None
            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="deflate")
            raw.write(_GZIP_HEADER)

    def write(self, text: bytes) -> None:
        self.pending.extend(text)
        whole = len(self.pending) - len(self.pending) % _GZIP_PIECE
        with memoryview(self.pending) as view:
            for i in range(0, whole, _GZIP_PIECE):
                self._piece(bytes(view[i:i + _GZIP_PIECE]))
        del self.pending[:whole]

    def _piece(self, piece: bytes) -> None:
        if self.gz is not None:
            self.gz.write(piece)
            return
        from isal import isal_zlib

        self.crc = isal_zlib.crc32(piece, self.crc)
        self.size += len(piece)
        self.in_flight.append(self.pool.submit(_deflate_piece, piece, self.tail))
        self.tail = piece[-_WINDOW:]
        while len(self.in_flight) > 2 * self.threads:  # bounded memory
            self.raw.write(self.in_flight.popleft().result())

    def close(self) -> None:
        if self.pending:
            self._piece(bytes(self.pending))
            self.pending.clear()
        if self.gz is not None:
            self.gz.close()
            return
        while self.in_flight:
            self.raw.write(self.in_flight.popleft().result())
        self.pool.shutdown()
        self.raw.write(_DEFLATE_END + struct.pack("<II", self.crc, self.size & 0xFFFFFFFF))

    def abort(self) -> None:
        if self.pool is not None:
            for future in self.in_flight:
                future.cancel()
            self.pool.shutdown(wait=True)


def write_csv(out: str | Path, rows: int, seed: int, chunk_rows: int = 65_536, fmt: str = "uci",
              progress: bool = True) -> SynthResult:
    """Generate ``rows`` events and write them as a deterministic gzip CSV.

    The file is written to a temporary name in the same directory and renamed when
    complete, so an existing file is always whole. The gzip header carries mtime 0 and no
    file name, and text is compressed in fixed pieces, so the same seed gives byte-identical
    files whatever ``chunk_rows`` is.

    The stages overlap on every core (numpy, zlib, Arrow and ISA-L release the GIL): the
    calling thread generates chunk i+2 while two threads format chunks as text and (``uci``)
    two threads deflate 4 MB pieces, written in order. At most a few chunks and pieces are in
    flight, so memory stays around 100–300 MB whatever ``rows`` is (11M rows are fine).

    Args:
        out: destination path (``.csv.gz``); parent directories are created.
        rows: number of events.
        seed: generator seed.
        chunk_rows: events per chunk (memory bound; does not change the output).
        fmt: ``"uci"`` (the real file's ``%.18e`` text and gzip ratio, default) or
            ``"compact"`` (shortest float32 text, ISA-L level 1); see :func:`format_csv`.
        progress: report rows written every few seconds (:mod:`pipeline.core.progress`).

    Returns:
        A :class:`SynthResult` with the path, row count, signal fraction and both rates
        (``write_rows_per_s`` counts the formatting and compression time as if one thread
        did both, so it is comparable with a plain single-threaded writer).

    Raises:
        SynthError: bad arguments, or an output that cannot be written.
    """
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.core.progress import Progress

    _check_args(rows, seed)
    if chunk_rows <= 0:
        raise SynthError(f"chunk_rows must be positive, got {chunk_rows}")
    if fmt not in FORMATS:
        raise SynthError(f"unknown text format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SynthError(f"cannot create {path.parent}: {exc.strerror or exc}; "
                         "choose a writable --out") from None
    # Unique per process and call, so concurrent writers of the same file never share a temp.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    stream = _EventStream(int(seed))
    threads = max(1, min(2, os.cpu_count() or 1))
    gen_seconds = gen_cpu = 0.0
    write_seconds = [0.0, 0.0]  # wall, CPU summed over the format and compress stages
    lock = threading.Lock()
    signal = 0
    start = time.perf_counter()

    def format_block(labels: np.ndarray, feats: np.ndarray) -> bytes:
        t, c = time.perf_counter(), time.thread_time()
        text = format_csv(labels, feats, fmt)
        with lock:
            write_seconds[0] += time.perf_counter() - t
            write_seconds[1] += time.thread_time() - c
        return text

    report = Progress(f"synth {path.name}", total=rows, unit="rows", mode=None if progress else "off")
    sink: _Sink | None = None
    try:
        with report, open(tmp, "wb") as raw, ThreadPoolExecutor(threads) as formatters:
            sink = _Sink(raw, fmt, threads)
            in_flight: deque[tuple[Future, int]] = deque()

            def drain(keep: int) -> None:
                while len(in_flight) > keep:
                    future, n = in_flight.popleft()
                    text = future.result()
                    t, c = time.perf_counter(), time.thread_time()
                    sink.write(text)
                    write_seconds[0] += time.perf_counter() - t
                    write_seconds[1] += time.thread_time() - c
                    report.add(n)

            for first in range(0, rows, chunk_rows):
                t, c = time.perf_counter(), time.thread_time()
                labels, feats = stream.take(min(chunk_rows, rows - first))
                gen_seconds += time.perf_counter() - t
                gen_cpu += time.thread_time() - c
                signal += int(labels.sum())
                in_flight.append((formatters.submit(format_block, labels, feats), labels.shape[0]))
                drain(threads)  # bounded memory
            drain(0)
            t, c = time.perf_counter(), time.thread_time()
            sink.close()
            write_seconds[0] += time.perf_counter() - t
            write_seconds[1] += time.thread_time() - c
        os.replace(tmp, path)
    except OSError as exc:
        if sink is not None:
            sink.abort()
        tmp.unlink(missing_ok=True)
        raise SynthError(f"cannot write {path}: {exc.strerror or exc}; choose a writable --out "
                         "with enough free space") from None
    except BaseException:
        if sink is not None:
            sink.abort()
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    return SynthResult(
        path=path,
        rows=rows,
        signal_fraction=signal / rows if rows else 0.0,
        seconds=seconds,
        events_per_s=rows / gen_seconds if gen_seconds > 0 else 0.0,
        write_rows_per_s=rows / write_seconds[0] if write_seconds[0] > 0 else 0.0,
        gen_cpu_seconds=gen_cpu,
        write_cpu_seconds=write_seconds[1],
    )
