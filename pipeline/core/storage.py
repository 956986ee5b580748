"""Local and ``gs://`` storage behind one small API.

    python -c "from pipeline import storage; print(storage.exists('gs://my-bucket/runs/latest.json'))"

``gs://`` goes through google-cloud-storage, which uses Application Default Credentials in
the cloud and honours ``STORAGE_EMULATOR_HOST`` (then no credentials are needed). Nothing
is contacted at import time; the client is created on first use.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from pipeline.core.errors import PipelineError


class StorageError(PipelineError):
    """A storage operation failed; the message is one line naming the location."""


def is_gcs(uri: str) -> bool:
    """True for ``gs://bucket/...`` locations."""
    return str(uri).startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/a/b`` into ``("bucket", "a/b")``.

    Raises:
        StorageError: if ``uri`` is not a gs:// location with a bucket.
    """
    if not is_gcs(uri):
        raise StorageError(f"not a gs:// location: {uri}")
    bucket, _, name = str(uri)[len("gs://"):].partition("/")
    if not bucket:
        raise StorageError(f"gs:// location without a bucket: {uri}")
    return bucket, name


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and gs:// URIs alike."""
    if is_gcs(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


@functools.lru_cache(maxsize=1)
def gcs_client():
    """Return a cached ``google.cloud.storage.Client`` (anonymous against an emulator).

    Raises:
        StorageError: when no credentials are found outside an emulator.
    """
    from google.cloud import storage as gcs

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                          credentials=AnonymousCredentials())
    try:
        return gcs.Client()
    except Exception as exc:  # google.auth raises several types; all mean "no usable login"
        raise StorageError(
            "no Google Cloud credentials found for gs:// access: run "
            "'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS "
            f"({type(exc).__name__})"
        ) from None


def exists(uri: str) -> bool:
    """True if a file (or gs:// object) exists at ``uri``."""
    if is_gcs(uri):
        bucket, name = split_gcs(uri)
        return gcs_client().bucket(bucket).blob(name).exists()
    return Path(uri).is_file()


def read_bytes(uri: str) -> bytes:
    """Read a whole file or gs:// object.

    Raises:
        FileNotFoundError: if it does not exist (message names ``uri``).
    """
    if is_gcs(uri):
        from google.api_core import exceptions

        bucket, name = split_gcs(uri)
        try:
            return gcs_client().bucket(bucket).blob(name).download_as_bytes()
        except exceptions.NotFound:
            raise FileNotFoundError(f"no such object: {uri}") from None
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None


def open_read(uri: str, chunk_bytes: int = 16 << 20) -> BinaryIO:
    """Open a file or gs:// object for streaming binary reads (``with open_read(u) as f: f.read(n)``).

    Args:
        uri: local path or ``gs://bucket/object``.
        chunk_bytes: bytes fetched per request from gs://.

    Raises:
        FileNotFoundError: if it does not exist (message names ``uri``).
    """
    if is_gcs(uri):
        bucket, name = split_gcs(uri)
        blob = gcs_client().bucket(bucket).blob(name)
        if not blob.exists():
            raise FileNotFoundError(f"no such object: {uri}")
        return blob.open("rb", chunk_size=chunk_bytes)
    try:
        return open(uri, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None


def read_text(uri: str) -> str:
    """Read a UTF-8 text file or gs:// object."""
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to a file (atomically, via a temporary name) or a gs:// object."""
    if is_gcs(uri):
        bucket, name = split_gcs(uri)
        gcs_client().bucket(bucket).blob(name).upload_from_string(data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    """Write UTF-8 text with :func:`write_bytes`."""
    write_bytes(uri, text.encode("utf-8"))


# --- listing, checksums and verified uploads (used by pipeline.publish.store) --------------------

CHUNK_BYTES = 1 << 20


class ChecksumMismatchError(StorageError):
    """A copied file's checksum as reported by the store differs from the local file's."""


@dataclasses.dataclass(frozen=True)
class Checksums:
    """Size and digests of one file: hex sha256, and md5 / crc32c in GCS's base64 form."""

    size: int
    sha256: str
    md5: str
    crc32c: str


def file_checksums(path: str | Path) -> Checksums:
    """Read a local file once in chunks and return its size, sha256, md5 and crc32c.

    Args:
        path: a local file.

    Returns:
        :class:`Checksums`; ``md5`` and ``crc32c`` are base64 of the big-endian digest,
        exactly as GCS reports ``md5Hash`` / ``crc32c`` in object metadata.
    """
    import google_crc32c

    sha, md5, crc, size = hashlib.sha256(), hashlib.md5(), google_crc32c.Checksum(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            sha.update(chunk)
            md5.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return Checksums(size, sha.hexdigest(), base64.b64encode(md5.digest()).decode(),
                     base64.b64encode(crc.digest()).decode())


def list_files(uri: str) -> list[str]:
    """Return the relative paths of every file under a directory or gs:// prefix, sorted.

    Args:
        uri: a local directory or ``gs://bucket/prefix``.

    Returns:
        Paths relative to ``uri`` with ``/`` separators; empty if nothing is there.
    """
    if is_gcs(uri):
        bucket, prefix = split_gcs(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        return sorted(b.name[len(prefix):] for b in gcs_client().list_blobs(bucket, prefix=prefix)
                      if not b.name.endswith("/"))
    root = Path(uri)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


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
