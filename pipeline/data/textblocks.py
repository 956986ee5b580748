"""CSV(.gz) text → blocks of whole lines: the one line-block reader of convert and presplit.

    .venv/bin/pytest tests/test_textblocks.py -q

Both read a source from its start with ISA-L (``isal``; ~4× zlib here) and cut the text at
line ends into blocks, with :func:`line_blocks`. They differ only in how the gzip stream is
decompressed:

* :func:`open_text` — the converter's: ISA-L in its own thread, running ahead of the
  parser (it releases the GIL);
* :func:`decompressed_chunks` — the presplitter's: fixed-size compressed chunks fed to the
  decompressor in the calling thread, so the compressed position of every block is exact
  to a chunk; a read-ahead thread would blur it and the part cuts would depend on timing.

Plain (not gzip) text passes through both unchanged; several gzip members are one stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, TypeVar

from pipeline.core.errors import PipelineError

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE_BYTES = 64 << 20
T = TypeVar("T")


class LineTooLongError(PipelineError):
    """A line longer than :data:`MAX_LINE_BYTES`: the input is not a HIGGS CSV file."""


def gzip_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a corrupt or truncated gzip stream raises while it is read."""
    from isal.igzip_lib import IsalError

    return (EOFError, OSError, IsalError)


def is_gzip(raw: BinaryIO) -> bool:
    """True if the seekable stream ``raw`` starts with the gzip magic bytes (it stays at 0)."""
    magic = raw.read(2)
    raw.seek(0)
    return magic == GZIP_MAGIC


@contextlib.contextmanager
def open_text(raw: BinaryIO) -> Iterator[BinaryIO]:
    """Yield the CSV text of ``raw``, gunzipped by ISA-L in its own thread when gzipped.

    Args:
        raw: a seekable binary stream at position 0; the caller closes it (the gzip
            reader does not close a file it was handed).

    Yields:
        A binary stream of text; read errors of a bad gzip are :func:`gzip_errors`.
    """
    from isal import igzip_threaded

    if not is_gzip(raw):
        yield raw
        return
    # The decompressor thread runs ahead of the parser (ISA-L releases the GIL).
    with igzip_threaded.open(raw, "rb", threads=1) as stream:
        yield stream


def decompressed_chunks(raw: BinaryIO, chunk: int) -> Iterator[tuple[bytes, int]]:
    """Yield ``(text, compressed bytes read so far)``, gunzipping ``raw`` when it is gzipped.

    Args:
        raw: a seekable binary stream at position 0.
        chunk: compressed bytes fed to the decompressor at a time (the position's grain).

    Raises:
        EOFError: the gzip stream ends before its end-of-stream marker (truncated).
    """
    from isal import isal_zlib

    gzipped = is_gzip(raw)
    pos = 0
    decomp = isal_zlib.decompressobj(wbits=31)
    fed = False  # the current gzip member has received input
    while True:
        data = raw.read(chunk)
        if not data:
            if gzipped and fed and not decomp.eof:
                raise EOFError("compressed file ended before the end-of-stream marker")
            return
        pos += len(data)
        if not gzipped:
            yield data, pos
            continue
        while data:
            fed = True
            text = decomp.decompress(data)
            if text:
                yield text, pos
            if not decomp.eof:
                break
            data = decomp.unused_data  # the next member starts here
            decomp = isal_zlib.decompressobj(wbits=31)
            fed = False


def line_blocks(chunks: Iterable[tuple[bytes, T]], min_bytes: int) -> Iterator[tuple[bytes, T]]:
    """Regroup text chunks into blocks of whole lines.

    Args:
        chunks: ``(text, tag)`` pairs; a block carries the tag of the chunk it ends in.
        min_bytes: gather at least this much text before cutting a block at its last
            newline (1: cut every chunk).

    Yields:
        ``(block, tag)``; every block ends in ``\\n`` (one is added to a last line without
        it), and the blocks together hold the text exactly once.

    Raises:
        LineTooLongError: no newline in :data:`MAX_LINE_BYTES` of text.
    """
    carry, buf, n = b"", [], 0
    tag = None
    for data, tag in chunks:
        buf.append(data)
        n += len(data)
        if n < min_bytes:
            continue
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        buf, n = [], 0
        cut = data.rfind(b"\n") + 1  # the carried text holds no newline
        if cut == 0:
            carry += data
            if len(carry) > MAX_LINE_BYTES:
                raise LineTooLongError(f"a line of the source is longer than "
                                       f"{MAX_LINE_BYTES >> 20} MB: not a HIGGS CSV file")
            continue
        # One copy per block: the carried-over partial line plus this text up to its last newline.
        block = carry + memoryview(data)[:cut] if carry else data[:cut]
        carry = data[cut:]
        yield block, tag
    rest = carry + b"".join(buf)
    if rest:
        yield (rest if rest.endswith(b"\n") else rest + b"\n"), tag


def iter_text_blocks(stream: BinaryIO, block_bytes: int) -> Iterator[tuple[int, int, bytes]]:
    """Cut a text stream into blocks of whole lines, numbering the lines.

    Args:
        stream: binary stream of CSV text (e.g. from :func:`open_text`).
        block_bytes: approximate block size in bytes (one read each).

    Yields:
        ``(index of the block's first line, number of lines, text)``, text ending in ``\\n``
        (one is added to a last line without it).

    Raises:
        LineTooLongError: no newline in :data:`MAX_LINE_BYTES` of text.
    """
    reads = ((data, None) for data in iter(lambda: stream.read(block_bytes), b""))
    line0 = 0
    for block, _ in line_blocks(reads, 1):
        lines = block.count(b"\n")
        yield line0, lines, block
        line0 += lines
