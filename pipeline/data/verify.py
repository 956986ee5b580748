"""Check a dataset's shards against its manifest: presence, size, framing and every record's CRCs.

    higgs verify data/sample
    python -c "from pipeline.data.verify import verify_dataset as v; print(v('data/sample').summary())"

Every record our converter writes has the same framed size (:data:`pipeline.data.records.FRAMED_BYTES`,
``u64 length | u32 masked crc32c(length) | 163 data bytes | u32 masked crc32c(data)``), so a
shard listed with ``records: n`` in ``DATA/manifest.json`` must be exactly ``n × 179`` bytes.
The cheap checks come first, for every shard of the splits asked for: the file exists and has
that size (one listing per split on gs://). A missing shard, one cut by whole records, or one cut
mid-record each end in one line naming the shard.

Then the CRCs, without a Python call per record. The length field and its CRC are the same in
every record, so they are compared as bytes. For the data CRCs the stored values are unmasked
(numpy) and combined with the linearity of CRC32C: the CRC register of a whole chunk of records,
computed by one C call over its bytes (``google_crc32c``, GB/s), must equal the XOR of each
record's own register contribution moved to its place — a tree of 32×32 GF(2) matrix products,
applied as byte-table lookups on all records at once. A corrupt record (any change confined to
one record: a flipped byte, a bad CRC field) always breaks that equality; the chunk is then read
record by record to name the first bad one and its byte offset. ``benchmarks/verify.py`` measures
it against TensorFlow's own reader of the same files.
"""

from __future__ import annotations

import functools
import logging
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

from pipeline.core import schema, storage
from pipeline.data import dataset, records

log = logging.getLogger(__name__)

CHUNK_RECORDS = 1 << 16  # records checked per C CRC call (11.7 MB)
_MASK_DELTA = np.uint32(0xA282EAD8)
_ALL = 0xFFFFFFFF


class IntegrityError(dataset.DatasetError):
    """A shard is missing, has the wrong size, or holds a corrupt record (one line names it)."""


@dataclass(frozen=True)
class SplitCheck:
    """What was checked of one split."""

    shards: int
    records: int
    bytes: int


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_dataset` (it raises on the first bad shard)."""

    data: str
    splits: dict[str, SplitCheck] = field(default_factory=dict)
    crc: bool = True
    seconds: float = 0.0

    @property
    def records(self) -> int:
        """Records checked in all splits."""
        return sum(s.records for s in self.splits.values())

    @property
    def bytes(self) -> int:
        """Bytes checked in all splits."""
        return sum(s.bytes for s in self.splits.values())

    def summary(self) -> str:
        """A few lines for people: per split shards, records and bytes, then the rate."""
        what = "framing + CRC of every record" if self.crc else "presence and sizes"
        lines = [f"{self.data}: OK — {what} match manifest.json"]
        for split, c in self.splits.items():
            lines.append(f"  {split:<11} {c.shards:>4} shards {c.records:>13,} records "
                         f"{c.bytes / 1e6:>10.1f} MB")
        rate = self.records / self.seconds if self.seconds > 0 else float("inf")
        lines.append(f"  checked {self.records:,} records ({self.bytes / 1e6:.1f} MB) in "
                     f"{self.seconds:.2f} s ({rate:,.0f} records/s)")
        return "\n".join(lines)


# --- CRC32C as linear maps over GF(2) ------------------------------------------------------------
# A map is kept as 2 tables of 65,536 uint32: its value on x is the XOR of the tables' entries for
# the low and the high 16 bits of x (half the lookups of byte tables; measured 2x faster). The
# "register" is the CRC shift register without the initial and final inversion: it is linear in
# the data and in its start value.


def _register(start: int, data: bytes) -> int:
    """The CRC32C register after feeding ``data`` to a register holding ``start``."""
    return google_crc32c.extend(start ^ _ALL, data) ^ _ALL


def _tables(images: np.ndarray) -> np.ndarray:
    """Tables [2, 65536] of the linear map whose value on bit j is ``images[j]``."""
    byte_values = np.arange(256, dtype=np.uint32)
    bytes4 = np.zeros((4, 256), np.uint32)  # first per byte, then two bytes at a time
    for k in range(4):
        for bit in range(8):
            bytes4[k] ^= np.where((byte_values >> np.uint32(bit)) & np.uint32(1), images[8 * k + bit],
                                  np.uint32(0))
    values = np.arange(1 << 16, dtype=np.uint32)
    lo, hi = values & 0xFF, values >> 8
    return np.stack([bytes4[0][lo] ^ bytes4[1][hi], bytes4[2][lo] ^ bytes4[3][hi]])


def _apply(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply a linear map (its tables) to every uint32 of ``x``."""
    return tables[0][x & 0xFFFF] ^ tables[1][x >> 16]


def _basis() -> np.ndarray:
    return np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))


@functools.cache
def _shift_tables(nbytes: int) -> np.ndarray:
    """Tables of "feed ``nbytes`` zero bytes" (where a record's register lands ``nbytes`` later)."""
    return _tables(np.array([_register(int(b), bytes(nbytes)) for b in _basis()], np.uint32))


@functools.cache
def _doubling_tables(width: int, level: int) -> np.ndarray:
    """Tables of the shift by ``width × 2**level`` bytes (the previous level squared)."""
    if level == 0:
        return _shift_tables(width)
    half = _doubling_tables(width, level - 1)
    return _tables(_apply(half, _apply(half, _basis())))


@functools.cache
def _record_constants(length: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-record pieces of the register of one framed record of ``length`` data bytes.

    Returns:
        ``(shift4, raw4, header_term, k_len)``: tables of "4 bytes later", tables of the register
        of the 4 CRC bytes themselves, the header's (constant) term, and the constant that turns
        a record's plain data CRC into its data's register.
    """
    shift4 = _shift_tables(4)
    raw4 = _tables(np.array([_register(0, int(b).to_bytes(4, "little")) for b in _basis()], np.uint32))
    header_term = _register(_register(0, _header(length)), bytes(length + 4))  # h; d and c come after
    k_len = _ALL ^ _register(_ALL, bytes(length))
    return shift4, raw4, header_term, k_len


@functools.cache
def _header(length: int) -> bytes:
    """The 12 framing bytes before every record of ``length`` bytes (length and its CRC)."""
    return struct.pack("<QI", length, records.masked_crc32c(struct.pack("<Q", length)))


def _column(chunk: bytes, n: int, width: int, offset: int, dtype: str) -> np.ndarray:
    """A strided (unaligned) view of one little-endian field of every record; no copy."""
    return np.ndarray(shape=(n,), dtype=dtype, buffer=chunk, offset=offset, strides=(width,))


def _unmask(stored: np.ndarray) -> np.ndarray:
    """TFRecord's stored (masked) CRCs → the plain CRC32C values."""
    rot = stored - _MASK_DELTA
    return (rot << np.uint32(15)) | (rot >> np.uint32(17))


def _chunk_register_expected(stored: np.ndarray, width: int, length: int) -> int:
    """The register of a whole chunk of records as their stored data CRCs say it must be."""
    shift4, raw4, header_term, k_len = _record_constants(length)
    # Register of record i alone: header, data, then its 4 CRC bytes (all linear pieces).
    v = _apply(shift4, _unmask(stored) ^ np.uint32(k_len)) ^ _apply(raw4, stored) ^ np.uint32(header_term)
    n = len(v)
    levels = (n - 1).bit_length()
    if (1 << levels) != n:  # zero records in front change nothing (a zero register stays zero)
        v = np.concatenate([np.zeros((1 << levels) - n, np.uint32), v])
    # Record i's register moves (n-1-i) records on: combine neighbours, doubling the shift.
    for level in range(levels):
        v = _apply(_doubling_tables(width, level), v[0::2]) ^ v[1::2]
    return int(v[0])


def check_chunk(chunk: bytes, length: int = records.EXAMPLE_BYTES) -> int | None:
    """Check the framing and both CRCs of every record in ``chunk`` (whole framed records).

    Args:
        chunk: the bytes of consecutive framed records, all with ``length`` data bytes.
        length: the data bytes of each record.

    Returns:
        None when every record is intact, else the index of the first bad record.
    """
    width = length + records.FRAME_OVERHEAD
    n = len(chunk) // width
    if n == 0:
        return None
    header = _header(length)
    lengths = _column(chunk, n, width, 0, "<u8")
    length_crcs = _column(chunk, n, width, 8, "<u4")
    stored = _column(chunk, n, width, width - 4, "<u4").astype(np.uint32)
    header_ok = ((lengths == struct.unpack("<Q", header[:8])[0])
                 & (length_crcs == struct.unpack("<I", header[8:])[0]))
    first_bad_header = None if header_ok.all() else int(np.argmin(header_ok))
    if first_bad_header is None and _register(0, chunk) == _chunk_register_expected(stored, width, length):
        return None
    # Something is wrong: find the first bad record, one by one (this chunk only).
    value = google_crc32c.value
    end = n if first_bad_header is None else first_bad_header
    for i in range(end):
        crc = value(chunk[i * width + 12:i * width + 12 + length])
        if ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & _ALL) != int(stored[i]):
            return i
    return first_bad_header


# --- the dataset ------------------------------------------------------------------------------


def _listing(data: str, split: str) -> dict[str, tuple[int, str]]:
    """Size and version of the files in ``DATA/<split>/``, by their path relative to ``data``.

    The version (gs:// generation; local inode and mtime) tells a rewritten file from the one
    checked before.
    """
    folder = storage.join(data, split)
    if storage.is_gcs(data):
        bucket, prefix = storage.split_gcs(folder)
        base = storage.split_gcs(data)[1].rstrip("/")
        cut = len(base) + 1 if base else 0
        return {b.name[cut:]: (int(b.size), str(b.generation))
                for b in storage.gcs_client().list_blobs(bucket, prefix=prefix.rstrip("/") + "/")}
    root = Path(folder)
    if not root.is_dir():
        return {}
    out = {}
    for p in root.iterdir():
        st = p.stat()
        if p.is_file():
            out[f"{split}/{p.name}"] = (st.st_size, f"{st.st_ino}:{st.st_mtime_ns}")
    return out


def check_sizes(data: str, manifest: dict[str, Any],
                splits: Iterable[str]) -> list[tuple[str, str, int, str]]:
    """The cheap checks: every listed shard exists and holds exactly its records' bytes.

    Args:
        data: dataset directory (local or gs://).
        manifest: its manifest.
        splits: the splits to check.

    Returns:
        ``(split, relative path, records, version)`` of every shard checked, in manifest order.

    Raises:
        IntegrityError: the first missing shard or shard of the wrong size.
    """
    out = []
    for split in splits:
        shards = manifest["shards"].get(split) or []
        if not shards:
            raise IntegrityError(f"{data}: manifest.json lists no {split} shards; rebuild the dataset "
                                 f"with 'higgs convert --overwrite'")
        listing = _listing(data, split)
        for shard in shards:
            rel, n = shard["path"], int(shard["records"])
            uri = storage.join(data, rel)
            want = n * records.FRAMED_BYTES
            if rel not in listing:
                raise IntegrityError(f"shard {uri} is missing (manifest.json lists it with {n} records); "
                                     f"rebuild the dataset with 'higgs convert --overwrite'")
            got, version = listing[rel]
            if got != want and not _foreign_layout(uri):
                whole, part = divmod(got, records.FRAMED_BYTES)
                how = (_records(n - whole) + " short" if got < want and not part else
                       _records(whole - n) + " too many" if not part else
                       f"cut mid-record: {_records(whole)} and {part} bytes")
                raise IntegrityError(f"shard {uri} has {got:,} bytes but manifest.json says {n} records "
                                     f"= {want:,} bytes ({how}); rebuild the dataset with "
                                     f"'higgs convert --overwrite'")
            out.append((split, rel, n, version))
    return out


def _records(n: int) -> str:
    return f"{n:,} record{'' if n == 1 else 's'}"


def check_shard(uri: str, n_records: int, chunk_records: int = CHUNK_RECORDS) -> None:
    """Check the framing and CRCs of every record of one shard.

    Args:
        uri: the shard (local or gs://), already known to be ``n_records × FRAMED_BYTES`` bytes.
        n_records: its records.
        chunk_records: records read and checked at a time.

    Raises:
        IntegrityError: the first corrupt record, with its index and byte offset.
    """
    if _foreign_layout(uri):
        check_frames(uri, n_records)
        return
    width = records.FRAMED_BYTES
    with storage.open_read(uri) as fh:
        done = 0
        while done < n_records:
            want = min(chunk_records, n_records - done) * width
            chunk = fh.read(want)
            if len(chunk) != want:
                raise IntegrityError(f"shard {uri} ended after {done * width + len(chunk):,} bytes while "
                                     f"reading it; rebuild the dataset with 'higgs convert --overwrite'")
            bad = check_chunk(chunk)
            if bad is not None:
                record = done + bad
                raise IntegrityError(
                    f"shard {uri} is corrupt: record {record} at byte offset {record * width:,} fails its "
                    f"TFRecord CRC; rebuild the dataset with 'higgs convert --overwrite'")
            done += len(chunk) // width


def _foreign_layout(uri: str) -> bool:
    """True when the shard's first record is not our 163-byte Example (another writer's layout)."""
    with storage.open_read(uri) as fh:
        head = fh.read(8)
    return len(head) == 8 and struct.unpack("<Q", head)[0] != records.EXAMPLE_BYTES


def check_frames(uri: str, n_records: int) -> None:
    """Walk every frame of a shard whose records are not fixed-size (another writer's layout).

    Raises:
        IntegrityError: a frame cut short or failing a CRC (with its index and byte offset), or
            a record count other than the manifest's.
    """
    data = storage.read_bytes(uri)
    off = count = 0
    fix = "rebuild the dataset with 'higgs convert --overwrite'"
    while off < len(data):
        if off + 12 > len(data):
            raise IntegrityError(f"shard {uri} is cut inside record {count} at byte offset {off:,}; {fix}")
        (length,) = struct.unpack_from("<Q", data, off)
        (length_crc,) = struct.unpack_from("<I", data, off + 8)
        end = off + 16 + length
        ok = records.masked_crc32c(data[off:off + 8]) == length_crc and end <= len(data)
        if ok:
            (data_crc,) = struct.unpack_from("<I", data, end - 4)
            ok = records.masked_crc32c(data[off + 12:end - 4]) == data_crc
        if not ok:
            raise IntegrityError(f"shard {uri} is corrupt: record {count} at byte offset {off:,} fails its "
                                 f"TFRecord CRC; {fix}")
        off, count = end, count + 1
    if count != n_records:
        raise IntegrityError(f"shard {uri} holds {count:,} records but manifest.json says "
                             f"{n_records:,}; {fix}")


def is_read_error(exc: BaseException) -> bool:
    """True for TensorFlow's errors of reading a shard: CRC, missing file, or a frame whose layout
    :func:`pipeline.data.records.decode_framed` rejects (the bytes changed after the check)."""
    import tensorflow as tf

    if isinstance(exc, (tf.errors.DataLossError, tf.errors.NotFoundError)):
        return True
    return isinstance(exc, tf.errors.InvalidArgumentError) and "fixed HIGGS layout" in str(exc)


_VERIFIED: dict[tuple[str, str], str] = {}  # (data, shard) → version whose CRCs were checked


def verify_dataset(data: str | dataset.Dataset, *, splits: Sequence[str] = schema.SPLITS,
                   crc: bool = True, use_cache: bool = True) -> VerifyResult:
    """Check the shards of ``splits`` against ``DATA/manifest.json``; raise on the first bad one.

    Training, validation and evaluation call this before they read (the input pipeline,
    :func:`pipeline.training.inputs.make_dataset`, and :func:`pipeline.evaluation.evaluate.evaluate`).
    The sizes are checked every time (one listing per split); a shard whose CRCs this process
    already checked is not read again while it is the same file version (local inode + mtime,
    gs:// generation), unless ``use_cache`` is False.

    Args:
        data: dataset directory (local or gs://), or the opened dataset (its manifest is used).
        splits: which splits to check.
        crc: also check every record's framing and CRCs (else presence and sizes only).
        use_cache: skip the CRCs of shards checked before and unchanged since.

    Returns:
        A :class:`VerifyResult`; ``.summary()`` is what ``higgs verify`` prints.

    Raises:
        pipeline.data.dataset.DatasetError: ``data`` is not a dataset.
        IntegrityError: a shard is missing, has the wrong size or holds a corrupt record.
    """
    start = time.perf_counter()
    opened = dataset.open_dataset(data)
    data = opened.uri
    shards = check_sizes(data, opened.manifest, splits)
    result = VerifyResult(data=data, crc=crc)
    for _, rel, n, version in shards:
        if crc and not (use_cache and _VERIFIED.get((data, rel)) == version):
            check_shard(storage.join(data, rel), n)
            _VERIFIED[(data, rel)] = version
    for split in splits:
        mine = [n for s, _, n, _ in shards if s == split]
        result.splits[split] = SplitCheck(len(mine), sum(mine), sum(mine) * records.FRAMED_BYTES)
    result.seconds = time.perf_counter() - start
    log.info("verified %s (%s): %d records in %.2f s", data, ", ".join(splits), result.records,
             result.seconds)
    return result
