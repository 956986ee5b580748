"""Local and ``gs://`` storage behind one small API.

    python -c "from pipeline import storage; print(storage.exists('gs://my-bucket/runs/latest.json'))"

``gs://`` goes through google-cloud-storage, which uses Application Default Credentials in
the cloud and honours ``STORAGE_EMULATOR_HOST`` (then no credentials are needed). Nothing
is contacted at import time; the client is created on first use.

Local files are written under a temporary name (``.NAME.tmp-PID``) and renamed, so a reader
or a kill never leaves half a file under the real name; the next write of the same file
removes temporaries whose process is gone (a ``kill -9`` mid-copy leaves nothing behind for
long). Two writes that must not race have their own primitives: ``create_only=True`` (the
file must not exist yet: ``os.link`` locally, ``ifGenerationMatch=0`` on gs://) and
:func:`update` (read, decide, write back only if unchanged: an ``fcntl.flock`` lock file
locally, ``ifGenerationMatch=<generation read>`` on gs://).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


class StorageError(PipelineError):
    """A storage operation failed; the message is one line naming the location."""


class ExistsError(StorageError):
    """A create-only write found the file (or gs:// object) already there; nothing was written."""


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


def read_text(uri: str) -> str:
    """Read a UTF-8 text file or gs:// object."""
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes, create_only: bool = False) -> None:
    """Write ``data`` to a file (atomically, via a temporary name) or a gs:// object.

    Args:
        uri: local path or ``gs://bucket/object``.
        data: the bytes.
        create_only: fail with :class:`ExistsError` instead of replacing an existing file.
    """
    if is_gcs(uri):
        from google.api_core import exceptions

        bucket, name = split_gcs(uri)
        try:
            gcs_client().bucket(bucket).blob(name).upload_from_string(
                data, **({"if_generation_match": 0} if create_only else {}))
        except exceptions.PreconditionFailed:
            raise ExistsError(f"{uri} already exists") from None
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_bytes(data)
    _commit(tmp, path, create_only)


def temp_path(path: Path) -> Path:
    """The temporary name this process writes ``path`` under before renaming it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temp_name(name: str) -> bool:
    """True for a name :func:`temp_path` makes (``.NAME.tmp-PID``), e.g. left by a killed writer."""
    base = name.rsplit("/", 1)[-1]
    head, sep, pid = base.rpartition(".tmp-")
    return base.startswith(".") and bool(sep) and bool(head) and pid.split("-", 1)[0].isdigit()


def _commit(tmp: Path, path: Path, create_only: bool) -> None:
    """Move a finished temporary file to its name; then sweep temporaries of dead processes."""
    if create_only:
        try:
            os.link(tmp, path)  # fails if path exists: creation is atomic and exclusive
        except FileExistsError:
            raise ExistsError(f"{path} already exists") from None
        finally:
            tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)
    remove_stale_temps(path)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files next to ``path`` whose process no longer runs.

    A writer killed mid-copy (``kill -9``, a lost machine) leaves its temporary file; the next
    writer of the same name removes it. Temporaries of live processes are left alone.

    Returns:
        The files removed.
    """
    removed = []
    prefix = f".{path.name}.tmp-"
    try:
        siblings = list(path.parent.iterdir())
    except FileNotFoundError:
        return removed
    for sibling in siblings:
        if not sibling.name.startswith(prefix):
            continue
        pid = sibling.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            sibling.unlink(missing_ok=True)
            removed.append(sibling)
    if removed:
        log.info("removed %d temporary file(s) left by a killed writer of %s", len(removed), path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def update(uri: str, change: Callable[[bytes | None], bytes | None], attempts: int = 20) -> bytes | None:
    """Compare-and-swap: read ``uri``, let ``change`` decide, write only if nobody wrote meanwhile.

    Locally the read, the decision and the write happen under an exclusive ``fcntl.flock`` on
    ``.NAME.lock`` beside the file (released by the kernel if the process dies), and the write
    is a temporary file renamed over the old one. On gs:// the object's generation is read
    with its bytes and the write is conditional on it (``ifGenerationMatch``, 0 when absent);
    when another writer won the race, the new bytes are read and ``change`` decides again.

    Args:
        uri: the file or gs:// object.
        change: called with the current bytes (None when absent); returns the bytes to write,
            or None to leave the file as it is. It may raise to refuse; it may be called again
            after a lost race, so it must not have side effects of its own.
        attempts: lost races (and transient errors) tolerated on gs:// before giving up. After
            a transient error the write may have landed: it counts as ours when the object
            then holds exactly the bytes ``change`` returned, so those should be unique to
            the decision (``latest.json`` carries the time of its move).

    Returns:
        The bytes written, or None when ``change`` left the file unchanged.

    Raises:
        StorageError: the object kept changing for ``attempts`` rounds.
    """
    if not is_gcs(uri):
        import fcntl

        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            new = change(path.read_bytes() if path.is_file() else None)
            if new is not None:
                write_bytes(uri, new)
            return new  # closing the file releases the lock

    from google.api_core import exceptions
    from google.cloud.storage.retry import _should_retry

    bucket_name, name = split_gcs(uri)
    bucket = gcs_client().bucket(bucket_name)
    unconfirmed: bytes | None = None  # written, but the answer was lost to a transient error
    for attempt in range(attempts):
        blob = bucket.get_blob(name)
        current, generation = None, 0
        if blob is not None:
            generation = blob.generation
            try:
                current = blob.download_as_bytes(if_generation_match=generation)
            except (exceptions.PreconditionFailed, exceptions.NotFound):
                continue  # replaced or deleted between metadata and bytes: read again
        if unconfirmed is not None and current == unconfirmed:
            return unconfirmed  # that write did land
        unconfirmed = None
        new = change(current)
        if new is None:
            return None
        try:
            # No retry inside: after a lost answer a retry would meet our own write as a 412.
            bucket.blob(name).upload_from_string(new, if_generation_match=generation, retry=None)
            return new
        except exceptions.PreconditionFailed:
            log.info("%s changed while deciding (generation %s); reading it again", uri, generation)
        except Exception as exc:
            if not _should_retry(exc):
                raise
            unconfirmed = new
            log.info("%s: transient error writing it (%s); reading it again", uri, type(exc).__name__)
            time.sleep(min(0.5 * 2 ** attempt, 10.0))
    raise StorageError(f"{uri} kept changing under {attempts} concurrent writes; try again")


def write_text(uri: str, text: str, create_only: bool = False) -> None:
    """Write UTF-8 text with :func:`write_bytes`."""
    write_bytes(uri, text.encode("utf-8"), create_only=create_only)


# --- listing, checksums and verified uploads (used by pipeline.publish.store) --------------------

CHUNK_BYTES = 1 << 20


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
        create_only: never replace: raise :class:`ExistsError` when ``uri`` already exists.
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
                _commit(tmp, dest, create_only)
            else:
                tmp.unlink(missing_ok=True)
        if got != want:
            raise ChecksumMismatchError(f"{uri}: store reports {got}, local file {local} has {want}")
        return expected

    return transient_retry(retry_timeout)(attempt)()
