"""Checksums of files and verified uploads to ``gs://`` (publish and download use them).

    python -c "from pipeline.core import checksums; print(checksums.file_sha256('pyproject.toml'))"

Split from :mod:`pipeline.core.storage`, whose locations and client it uses.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Any

from pipeline.core.storage import (
    ExistsError,
    StorageError,
    commit_temp,
    gcs_client,
    is_gcs,
    split_gcs,
    temp_path,
)

# --- checksums and verified uploads (used by pipeline.publish.store and pipeline.data.source) ------

CHUNK_BYTES = 8 << 20  # read size of the checksum helpers


class ChecksumMismatchError(StorageError):
    """A copied file's checksum as reported by the store differs from the local file's."""


@dataclasses.dataclass(frozen=True)
class Checksums:
    """Size and digests of one file: hex sha256, and md5 / crc32c in GCS's base64 form.

    ``sha256`` is empty where the store does not know it (gs:// object metadata).
    """

    size: int
    sha256: str
    md5: str
    crc32c: str

    def same_bytes(self, other: Checksums) -> bool:
        """True when both describe the same content (sha256 compared where both have it)."""
        if self.sha256 and other.sha256 and self.sha256 != other.sha256:
            return False
        return (self.size, self.md5, self.crc32c) == (other.size, other.md5, other.crc32c)


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


def stored_checksums(uri: str) -> Checksums | None:
    """The checksums of what is stored at ``uri`` now, or None when nothing is there.

    Local files are read; gs:// objects report size, md5 and crc32c from their metadata
    (``sha256`` is then empty).
    """
    if is_gcs(uri):
        bucket, name = split_gcs(uri)
        blob = gcs_client().bucket(bucket).get_blob(name)
        return None if blob is None else Checksums(blob.size, "", blob.md5_hash, blob.crc32c)
    return file_checksums(uri) if Path(uri).is_file() else None


def upload_file(local: str | Path, uri: str, retry_timeout: float = 120.0, create_only: bool = False,
                expect: Checksums | None = None) -> Checksums:
    """Copy a local file to a local path or gs:// object, verified before it takes the name.

    Local destinations are copied to a temporary name, re-read and compared (size + sha256),
    and only then renamed (or, ``create_only``, linked) into place. gs:// uploads send the
    expected md5 and crc32c with the object, so the store itself refuses bytes that differ,
    and the ``md5Hash`` / ``crc32c`` it reports afterwards are compared again. Transient
    failures are retried with exponential backoff (:func:`transient_retry`).

    Args:
        local: the source file.
        uri: the destination (file path or ``gs://bucket/object``).
        retry_timeout: total seconds to keep retrying transient errors.
        create_only: never replace: raise :class:`~pipeline.core.storage.ExistsError` when
            ``uri`` already exists.
        expect: checksums the content must have (e.g. recorded earlier in a manifest); by
            default those of ``local`` as it is read now.

    Returns:
        The verified :class:`Checksums` of the file.

    Raises:
        FileNotFoundError: the source file is missing.
        ExistsError: ``create_only`` and something is already at ``uri``.
        ChecksumMismatchError: the copy still differs after retries, or the source no
            longer has the ``expect``-ed content.
        google.api_core.exceptions.GoogleAPICallError: a non-transient store error
            (e.g. 403, 404 bucket).
    """
    expected = file_checksums(local)
    if expect is not None and not expected.same_bytes(expect):
        raise ChecksumMismatchError(f"{local} changed: it no longer has the checksums recorded for {uri}")

    def attempt() -> Checksums:
        if is_gcs(uri):
            from google.api_core import exceptions

            bucket, name = split_gcs(uri)
            blob = gcs_client().bucket(bucket).blob(name)
            blob.md5_hash, blob.crc32c = expected.md5, expected.crc32c  # the store checks them
            # retry=None here: the outer Retry covers upload and verification together.
            try:
                blob.upload_from_filename(str(local), checksum="crc32c", retry=None,
                                          **({"if_generation_match": 0} if create_only else {}))
            except exceptions.PreconditionFailed:
                raise ExistsError(f"{uri} already exists") from None
            blob.reload(retry=None)
            got = (blob.size, blob.md5_hash, blob.crc32c)
            want = (expected.size, expected.md5, expected.crc32c)
        else:
            dest = Path(uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path(dest)
            shutil.copyfile(local, tmp)
            copy = file_checksums(tmp)
            got, want = (copy.size, copy.sha256), (expected.size, expected.sha256)
            if got == want:
                commit_temp(tmp, dest, create_only)
            else:
                tmp.unlink(missing_ok=True)
        if got != want:
            raise ChecksumMismatchError(f"{uri}: store reports {got}, local file {local} has {want}")
        return expected

    return transient_retry(retry_timeout)(attempt)()
