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
A zip (the UCI ``higgs.zip``) is read in place through its one ``.csv.gz`` or ``.csv`` member
(:func:`archive_member`), with no unpacked copy on disk.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import BinaryIO, TypeVar

from pipeline.core.errors import PipelineError

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a first member, or an empty zip's end record
MEMBER_SUFFIXES = (".csv.gz", ".csv")
SOURCE_KINDS = "HIGGS.csv.gz, HIGGS.csv or higgs.zip"
MAX_LINE_BYTES = 64 << 20
# read_blocks copies at most this much per readinto: one read of tens of MB from a gzip stream
# costs ISA-L twice the CPU of 4 MB reads (measured: 1.06 s against 0.54 s for 300 MB of text).
READ_BYTES = 4 << 20
T = TypeVar("T")


class LineTooLongError(PipelineError):
    """A line longer than :data:`MAX_LINE_BYTES`: the input is not a HIGGS CSV file."""


class ArchiveError(PipelineError):
    """A zip that is unreadable or does not hold exactly one ``.csv.gz``/``.csv`` member."""


def gzip_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a corrupt or truncated gzip stream (or zip member) raises while it is read.

    A zip member adds ``zipfile.BadZipFile`` (its CRC-32 or sizes do not match) and
    ``zlib.error`` (a broken deflate member).
    """
    import zlib

    from isal.igzip_lib import IsalError

    return (EOFError, OSError, IsalError, zipfile.BadZipFile, zlib.error)


def corrupt_line(path: str, exc: BaseException) -> str:
    """The one line for a source that :func:`gzip_errors` says is damaged."""
    kind = "zip" if isinstance(exc, zipfile.BadZipFile) or path.lower().endswith(".zip") else "gzip"
    return (f"{path} is a corrupt or truncated {kind} file ({type(exc).__name__}: {exc}); "
            "download it again")


def is_gzip(raw: BinaryIO) -> bool:
    """True if the seekable stream ``raw`` starts with the gzip magic bytes (it stays at 0)."""
    magic = raw.read(2)
    raw.seek(0)
    return magic == GZIP_MAGIC


def is_zip(raw: BinaryIO) -> bool:
    """True if the seekable stream ``raw`` starts like a zip (it stays at 0)."""
    magic = raw.read(4)
    raw.seek(0)
    return magic in ZIP_MAGICS


def archive_member(names: list[str], uri: str) -> str:
    """The one member of a zip that holds the rows: its only ``.csv.gz`` or ``.csv`` file.

    Directories, ``__MACOSX/`` entries and dot files are not candidates.

    Args:
        names: the zip's member names (``ZipFile.namelist()``).
        uri: the zip, for the message.

    Returns:
        The member name.

    Raises:
        ArchiveError: no candidate, or several (the message lists what the zip holds).
    """
    files = [n for n in names if not n.endswith("/")]
    candidates = [n for n in files if n.lower().endswith(MEMBER_SUFFIXES)
                  and not n.startswith("__MACOSX/") and not PurePosixPath(n).name.startswith(".")]
    if len(candidates) == 1:
        return candidates[0]
    shown = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    if not candidates:
        raise ArchiveError(f"zip {uri} holds no .csv.gz or .csv member ({shown or 'it is empty'}); "
                           f"pass {SOURCE_KINDS} itself as --source")
    raise ArchiveError(f"zip {uri} holds {len(candidates)} candidate members "
                       f"({', '.join(candidates)}); unzip the one to convert and pass it as --source")


def open_member(raw: BinaryIO, uri: str = "the zip") -> BinaryIO:
    """Open the rows member of the zip ``raw`` (see :func:`archive_member`).

    Args:
        raw: the zip as a seekable binary stream; it must stay open while the member is read.
        uri: the zip, for messages.

    Returns:
        A binary stream of the member's bytes (its CRC-32 is checked when it is read to the end).

    Raises:
        ArchiveError: not a readable zip, or no single candidate member.
    """
    try:
        archive = zipfile.ZipFile(raw)
        return archive.open(archive_member(archive.namelist(), uri))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArchiveError(f"{uri} is not a readable zip ({reason}); download it again") from None


def unwrap(raw: BinaryIO, uri: str = "the zip") -> BinaryIO:
    """``raw`` itself, or for a zip the stream of its rows member (:func:`open_member`)."""
    return open_member(raw, uri) if is_zip(raw) else raw


@contextlib.contextmanager
def open_text(raw: BinaryIO, uri: str = "the zip") -> Iterator[BinaryIO]:
    """Yield the CSV text of ``raw``, gunzipped by ISA-L in its own thread when gzipped.

    Args:
        raw: a seekable binary stream at position 0 (a zip is read through its rows member);
            the caller closes it (the gzip reader does not close a file it was handed).
        uri: where ``raw`` comes from, for messages.

    Yields:
        A binary stream of text; read errors of a bad gzip are :func:`gzip_errors`.

    Raises:
        ArchiveError: a zip without exactly one rows member.
    """
    from isal import igzip_threaded

    raw = unwrap(raw, uri)
    if not is_gzip(raw):
        yield raw
        return
    # The decompressor thread runs ahead of the parser (ISA-L releases the GIL).
    with igzip_threaded.open(raw, "rb", threads=1) as stream:
        yield stream


def decompressed_chunks(raw: BinaryIO, chunk: int) -> Iterator[tuple[bytes, int]]:
    """Yield ``(text, compressed bytes read so far)``, gunzipping ``raw`` when it is gzipped.

    Args:
        raw: a seekable binary stream at position 0 (for a zip, pass :func:`unwrap` of it:
            positions then count the member's bytes).
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


def read_blocks(stream: BinaryIO, block_bytes: int) -> Iterator[memoryview]:
    """Cut a text stream into blocks of whole lines, each read straight into its own buffer.

    Unlike :func:`iter_text_blocks` nothing is joined or sliced here: every byte is copied
    once, by ``readinto``, into a fresh buffer of about ``block_bytes`` that starts with the
    previous block's unfinished line, and the block is a view of it up to its last newline.
    The converter's reading thread therefore holds the GIL for little more than that copy;
    counting the lines is left to whoever parses the block.

    Args:
        stream: binary stream of CSV text with ``readinto`` (e.g. from :func:`open_text`).
        block_bytes: text per block (a block holds at least one whole line).

    Yields:
        memoryviews of whole lines, each ending in ``\\n`` (one is added to a last line
        without it); together they hold the text exactly once.

    Raises:
        LineTooLongError: no newline in :data:`MAX_LINE_BYTES` of text.
    """
    import numpy as np

    carry = b""
    while True:
        # numpy.empty: an uninitialised buffer (bytearray(n) would first write n zero bytes).
        buf = np.empty(max(block_bytes, 2 * len(carry)), dtype=np.uint8)
        view = memoryview(buf)
        view[:len(carry)] = carry
        filled = len(carry)
        while filled < len(buf):
            got = stream.readinto(view[filled:filled + READ_BYTES])
            if not got:
                break
            filled += got
        if filled == len(carry):  # end of the stream
            if carry:
                yield memoryview(carry if carry.endswith(b"\n") else carry + b"\n")
            return
        cut = _last_newline(buf, filled) + 1
        if cut == 0:  # no newline yet: keep everything and read on
            carry = bytes(view[:filled])
            if len(carry) > MAX_LINE_BYTES:
                raise LineTooLongError(f"a line of the source is longer than "
                                       f"{MAX_LINE_BYTES >> 20} MB: not a HIGGS CSV file")
            continue
        carry = bytes(view[cut:filled])
        yield view[:cut]


def _last_newline(buf, end: int) -> int:
    """Index of the last ``\\n`` in ``buf[:end]`` (a uint8 array), or -1."""
    import numpy as np

    tail = 1 << 16  # a line is ~730 bytes: the last newline is almost always near the end
    start = max(0, end - tail)
    found = bytes(buf[start:end]).rfind(b"\n")
    if found >= 0 or start == 0:
        return start + found if found >= 0 else -1
    hits = np.flatnonzero(buf[:start] == ord("\n"))
    return int(hits[-1]) if hits.size else -1
