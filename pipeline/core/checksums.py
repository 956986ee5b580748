"""Checksums of files and verified uploads to ``gs://`` (publish and download use them).

    python -c "from pipeline.core import checksums; print(checksums.file_sha256('pyproject.toml'))"

Split from :mod:`pipeline.core.storage`, whose locations and client it uses.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.core.storage import StorageError, gcs_client, is_gcs, split_gcs

# --- checksums and verified uploads (used by pipeline.publish.store and pipeline.data.source) ------

CHUNK_BYTES = 8 << 20  # read size of the checksum helpers


class ChecksumMismatchError(StorageError):
    """A copied file's checksum as reported by the store differs from the local file's."""


@dataclasses.dataclass(frozen=True)
class Checksums:
    """Size and digests of one file: hex sha256, and md5 / crc32c in GCS's base64 form."""

    size: int
    sha256: str
    md5: str
    crc32c: str


def _digest_file(path: str | Path, *digests: Any) -> int:
    """Read a local file once in chunks, feeding each chunk to every digest; return its size."""
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            for digest in digests:
                digest.update(chunk)
            size += len(chunk)
    return size


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a local file (read once in chunks; no other digests).

    Args:
        path: a local file.

    Returns:
        64 lowercase hex digits, as ``sha256sum`` prints them.
    """
    sha = hashlib.sha256()
    _digest_file(path, sha)
    return sha.hexdigest()


def file_checksums(path: str | Path) -> Checksums:
    """Read a local file once in chunks and return its size, sha256, md5 and crc32c.

    Args:
        path: a local file.

    Returns:
        :class:`Checksums`; ``md5`` and ``crc32c`` are base64 of the big-endian digest,
        exactly as GCS reports ``md5Hash`` / ``crc32c`` in object metadata.
    """
    import google_crc32c

    sha, md5, crc = hashlib.sha256(), hashlib.md5(), google_crc32c.Checksum()
    size = _digest_file(path, sha, md5, crc)
    return Checksums(size, sha.hexdigest(), base64.b64encode(md5.digest()).decode(),
                     base64.b64encode(crc.digest()).decode())


def transient_retry(timeout: float = 120.0, initial: float = 1.0):
    """Exponential-backoff retry on transient errors (429, 5xx, connection resets, timeouts).

    Wraps google-cloud-storage's own predicate (``retry._should_retry``) and also retries
    :class:`ChecksumMismatchError`, since re-sending the bytes is the cure for a corrupted copy.

    Args:
        timeout: give up after this many seconds in total.
        initial: first delay in seconds; it doubles up to 30 s.
    """
    from google.api_core.retry import Retry
    from google.cloud.storage.retry import _should_retry

    return Retry(predicate=lambda exc: isinstance(exc, ChecksumMismatchError) or _should_retry(exc),
                 initial=initial, maximum=30.0, multiplier=2.0, timeout=timeout)


def upload_file(local: str | Path, uri: str, retry_timeout: float = 120.0) -> Checksums:
    """Copy a local file to a local path or gs:// object and verify the copy.

    Local destinations are written via a temporary name and renamed, then re-read and
    compared (size + sha256). gs:// uploads ask the server to check a crc32c and then
    compare the ``md5Hash`` and ``crc32c`` the store reports with the local file's.
    Transient failures are retried with exponential backoff (:func:`transient_retry`).

    Args:
        local: the source file.
        uri: the destination (file path or ``gs://bucket/object``).
        retry_timeout: total seconds to keep retrying transient errors.

    Returns:
        The verified :class:`Checksums` of the file.

    Raises:
        FileNotFoundError: the source file is missing.
        ChecksumMismatchError: the copy still differs after retries.
        google.api_core.exceptions.GoogleAPICallError: a non-transient store error
            (e.g. 403, 404 bucket).
    """
    expected = file_checksums(local)

    def attempt() -> Checksums:
        if is_gcs(uri):
            bucket, name = split_gcs(uri)
            blob = gcs_client().bucket(bucket).blob(name)
            # retry=None here: the outer Retry covers upload and verification together.
            blob.upload_from_filename(str(local), checksum="crc32c", retry=None)
            blob.reload(retry=None)
            got = (blob.size, blob.md5_hash, blob.crc32c)
            want = (expected.size, expected.md5, expected.crc32c)
        else:
            dest = Path(uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
            copy = file_checksums(dest)
            got, want = (copy.size, copy.sha256), (expected.size, expected.sha256)
        if got != want:
            raise ChecksumMismatchError(f"{uri}: store reports {got}, local file {local} has {want}")
        return expected

    return transient_retry(retry_timeout)(attempt)()
