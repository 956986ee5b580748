"""Local and ``gs://`` storage behind one small API: the only module that touches either.

    python -c "from pipeline.core import storage; print(storage.list_files('pipeline/core'))"

``gs://`` goes through google-cloud-storage, which uses Application Default Credentials in
the cloud and honours ``STORAGE_EMULATOR_HOST`` (then no credentials are needed). Nothing
is contacted at import time; the client is created on first use, once per process.
:class:`Files` is the whole API (streaming reads and writes, byte ranges, listing, globbing,
tree moves and deletes); the module-level functions are a default handle's methods, and
Beam DoFns carry a :class:`Files` of their own (it pickles without a client).

``exists`` means *a file or object is there*; a directory (or a gs:// prefix with objects
under it) is not a file: list it with :func:`list_files` / :func:`list_paths`.

Local files are written under a temporary name (``.NAME.tmp-PID``) and renamed, so a reader
or a kill never leaves half a file under the real name; the next write of the same file
removes temporaries whose process is gone. ``create_only=True`` writes fail with
:class:`ExistsError` when the file is there (``os.link`` locally, ``ifGenerationMatch=0`` on
gs://); read-decide-write without a race is :func:`pipeline.core.cas.update`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import glob as globlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)
STREAM_CHUNK_BYTES = 16 << 20  # per request when streaming gs:// objects (Beam's GcsIO default)


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


@functools.lru_cache(maxsize=2)
def gcs_client(anonymous: bool = False):
    """Return this process's cached ``google.cloud.storage.Client``.

    Args:
        anonymous: an unauthenticated client (public buckets) instead of Application
            Default Credentials. Against ``STORAGE_EMULATOR_HOST`` the client is always
            anonymous.

    Raises:
        StorageError: when no credentials are found outside an emulator.
    """
    from google.cloud import storage as gcs

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                          credentials=AnonymousCredentials())
    if anonymous:
        return gcs.Client.create_anonymous_client()
    try:
        return gcs.Client()
    except Exception as exc:  # google.auth raises several types; all mean "no usable login"
        raise StorageError(
            "no Google Cloud credentials found for gs:// access: run "
            "'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS "
            f"({type(exc).__name__})"
        ) from None


PREFLIGHT_TIMEOUT_S = 10.0


def check_destination(uri: str, files: Files | None = None, *, what: str = "destination",
                      timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Fail in seconds, with one line, when nothing can be written at ``uri``; create nothing.

    Convert, train and publish call this before any work, so a wrong destination does not
    surface minutes later as a retried upload or a Beam traceback. gs://: credentials, then
    a request for the bucket, retried with backoff while the store is unreachable or answers
    5xx, for at most ``timeout`` seconds (no such bucket or refused credentials fail at once).
    Local: the nearest existing ancestor must be a directory in which a (removed at once) probe
    directory can be made — a real write, so it also holds for root and read-only file systems.

    Args:
        uri: the directory (local or ``gs://bucket/prefix``) about to be written.
        files: the storage handle the caller will write with (default: ADC credentials).
        what: how the caller names it in messages (``--out``, ``--to``).
        timeout: seconds the gs:// check may wait for an unreachable store.

    Raises:
        StorageError: no credentials, no such bucket, no access, unreachable store, or a local
            path that cannot be written; the message names ``uri`` and the fix.
    """
    if is_gcs(uri):
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions

        bucket, _ = split_gcs(uri)
        try:
            client = (files or Files()).client()
        except StorageError as exc:  # no credentials
            raise StorageError(f"{what} {uri}: {exc}") from None
        deadline, pause = time.monotonic() + timeout, 0.25
        while True:
            left = max(0.5, deadline - time.monotonic())
            try:
                found = client.bucket(bucket).exists(timeout=min(left, 10.0), retry=None)
                break
            except exceptions.Forbidden:
                return  # may write objects without reading bucket metadata: the write will tell
            except auth_exceptions.GoogleAuthError as exc:
                raise StorageError(f"{what} {uri}: the Google Cloud credentials were refused "
                                   f"({type(exc).__name__}); run 'gcloud auth application-default "
                                   "login'") from None
            except (exceptions.GoogleAPICallError, OSError, ValueError) as exc:
                # Unreachable or 5xx: the store may be coming back; retry with backoff until the
                # deadline. A 4xx other than 403 is an answer, not an outage.
                transient = not isinstance(exc, exceptions.ClientError)
                if not transient or time.monotonic() + pause > deadline:
                    raise StorageError(f"{what} {uri}: cannot reach Cloud Storage within "
                                       f"{timeout:.0f} s ({type(exc).__name__}); check the network "
                                       "or STORAGE_EMULATOR_HOST") from None
                time.sleep(pause)
                pause = min(pause * 2, 4.0)
        if not found:
            raise StorageError(f"{what} {uri}: bucket gs://{bucket} does not exist; create it "
                               f"('gcloud storage buckets create gs://{bucket}') or fix the name")
        return
    path = Path(uri).absolute()
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StorageError(f"{what} {uri}: {ancestor} is a file, not a directory; choose another {what}")
    try:
        probe = tempfile.mkdtemp(prefix=".write-probe-", dir=ancestor)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(f"{what} {uri}: cannot write in {ancestor} ({reason}); "
                           f"choose another {what} or fix its permissions") from None
    os.rmdir(probe)


@dataclasses.dataclass(frozen=True)
class Files:
    """Streaming open/read/write/list/move/delete for local paths and ``gs://`` objects.

    One handle is the whole storage layer: the module-level functions (:func:`exists`,
    :func:`read_bytes` …) are the methods of the default handle. Beam DoFns keep a handle
    of their own; it holds no client (only the ``anonymous`` flag), so pickling one never
    ships a live connection, and each worker process creates its client on first use
    (:func:`gcs_client`).

    Attributes:
        anonymous: use an unauthenticated client for gs:// (``--no_auth``: public buckets)
            instead of looking up Application Default Credentials, which probes the
            metadata server (and waits) when there are none. Against an emulator every
            client is anonymous.
    """

    anonymous: bool = False

    def client(self) -> Any:
        """The process's ``google.cloud.storage.Client`` for this handle."""
        return gcs_client(self.anonymous)

    def _blob(self, uri: str) -> Any:
        bucket, name = split_gcs(uri)
        return self.client().bucket(bucket).blob(name)

    def _stat(self, uri: str) -> Any:
        """The object's metadata; raises FileNotFoundError naming ``uri`` when it is missing."""
        bucket, name = split_gcs(uri)
        blob = self.client().bucket(bucket).get_blob(name)
        if blob is None:
            raise FileNotFoundError(f"no such object: {uri}")
        return blob

    def exists(self, uri: str) -> bool:
        """True if a file (or gs:// object) exists at ``uri``; a directory is not a file."""
        if is_gcs(uri):
            return bool(self._blob(uri).exists())
        return Path(uri).is_file()

    def size(self, uri: str) -> int:
        """Size in bytes of a file or gs:// object (FileNotFoundError when missing)."""
        if is_gcs(uri):
            return int(self._stat(uri).size)
        return os.path.getsize(uri)

    def read_bytes(self, uri: str) -> bytes:
        """Read a whole file or gs:// object.

        Raises:
            FileNotFoundError: if it does not exist (message names ``uri``).
        """
        if is_gcs(uri):
            from google.api_core import exceptions

            try:
                return self._blob(uri).download_as_bytes()
            except exceptions.NotFound:
                raise FileNotFoundError(f"no such object: {uri}") from None
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {uri}") from None

    def write_bytes(self, uri: str, data: bytes, create_only: bool = False) -> None:
        """Write ``data`` to a file (atomically, via a temporary name) or a gs:// object.

        Args:
            uri: local path or ``gs://bucket/object``.
            data: the bytes.
            create_only: fail with :class:`ExistsError` instead of replacing what is there
                (``os.link`` locally, ``ifGenerationMatch=0`` on gs://).
        """
        if is_gcs(uri):
            from google.api_core import exceptions

            try:
                precondition = {"if_generation_match": 0} if create_only else {}
                self._blob(uri).upload_from_string(data, **precondition)
            except exceptions.PreconditionFailed:
                raise ExistsError(f"{uri} already exists") from None
            return
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        tmp.write_bytes(data)
        commit_temp(tmp, path, create_only)

    def open_read(self, uri: str, chunk_size: int = STREAM_CHUNK_BYTES) -> BinaryIO:
        """Open a file or gs:// object for streaming, seekable reads.

        Args:
            uri: local path or ``gs://bucket/object``.
            chunk_size: bytes fetched per HTTP range request (gs:// only).

        Returns:
            A binary file object; gs:// objects are read as stored (no decompressive
            transcoding of ``Content-Encoding: gzip`` objects, as Beam's GcsIO reads them).

        Raises:
            FileNotFoundError: if it does not exist.
        """
        if is_gcs(uri):
            return self._stat(uri).open("rb", chunk_size=chunk_size, raw_download=True)
        return open(uri, "rb")

    def open_write(self, uri: str) -> BinaryIO:
        """Open a file (parent directories created) or gs:// object for streaming writes.

        A gs:// object is uploaded in resumable 16 MiB chunks and appears when the file
        is closed; ``flush()`` is a no-op there.
        """
        if is_gcs(uri):
            return self._blob(uri).open("wb", chunk_size=STREAM_CHUNK_BYTES, ignore_flush=True,
                                        content_type="application/octet-stream")
        os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
        return open(uri, "wb")

    def read_range(self, uri: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of a file or object (fewer if it ends before ``end``)."""
        with self.open_read(uri) as src:
            src.seek(start)
            return src.read(end - start)

    def copy_range(self, uri: str, start: int, end: int, out: BinaryIO) -> int:
        """Append bytes ``[start, end)`` of ``uri`` to the open file ``out``.

        Local to local uses ``os.copy_file_range`` (the kernel copies; no round trip
        through Python buffers); otherwise the range is read and written.

        Returns:
            The number of bytes copied (less than ``end - start`` if ``uri`` is shorter).
        """
        try:
            fd = None if is_gcs(uri) or not hasattr(os, "copy_file_range") else out.fileno()
        except (AttributeError, OSError):  # not a real local file (e.g. a gs:// writer)
            fd = None
        if fd is None:
            data = self.read_range(uri, start, end)
            out.write(data)
            return len(data)
        out.flush()  # keep the file position in step with earlier buffered writes
        with open(uri, "rb") as src:
            offset = start
            try:
                while offset < end:
                    done = os.copy_file_range(src.fileno(), fd, end - offset, offset)
                    if done == 0:
                        break
                    offset += done
            except OSError:  # e.g. a filesystem without support: copy the rest by hand
                pass
            if offset < end:
                src.seek(offset)
                offset += out.write(src.read(end - offset))
        out.seek(0, os.SEEK_END)  # re-sync the buffered writer with the moved fd position
        return offset - start

    def list_paths(self, prefix: str) -> list[str]:
        """Full paths of every file whose path starts with ``prefix`` (recursive), sorted.

        ``gs://b/d/`` lists the objects under ``d/``; ``gs://b/d/.staging-`` every object
        whose name starts so. Local paths follow the same rule over the files on disk.
        """
        if is_gcs(prefix):
            return sorted(p for p in self._gcs_paths(prefix) if not p.endswith("/"))
        root = prefix if prefix.endswith(os.sep) else os.path.dirname(prefix)
        found = []
        for dirpath, _, names in os.walk(root or os.curdir):
            found.extend(os.path.join(dirpath, n) if root else os.path.relpath(os.path.join(dirpath, n))
                         for n in names)
        return sorted(p for p in found if p.startswith(prefix))

    def _gcs_paths(self, prefix: str) -> Iterator[str]:
        """Every object name under a gs:// prefix (directory markers included), as URIs."""
        bucket, name = split_gcs(prefix)
        for blob in self.client().list_blobs(bucket, prefix=name):
            yield f"gs://{bucket}/{blob.name}"

    def list_files(self, uri: str) -> list[str]:
        """Return the relative paths of every file under a directory or gs:// prefix, sorted.

        Args:
            uri: a local directory or ``gs://bucket/prefix``.

        Returns:
            Paths relative to ``uri`` with ``/`` separators; empty if nothing is there.
        """
        if is_gcs(uri):
            base = uri.rstrip("/") + "/"
            return [p[len(base):] for p in self.list_paths(base)]
        root = Path(uri)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def glob(self, pattern: str) -> list[str]:
        """Files matching a glob (``*``, ``?``, ``[…]``), sorted; on gs:// ``*`` also spans ``/``."""
        if is_gcs(pattern):
            wild = [pattern.find(c) for c in "*?[" if c in pattern]
            if not wild:
                return [pattern] if self.exists(pattern) else []
            return [p for p in self.list_paths(pattern[:min(wild)])
                    if fnmatch.fnmatchcase(p, pattern)]
        return sorted(p for p in globlib.glob(pattern) if os.path.isfile(p))

    def delete_tree(self, uri: str) -> None:
        """Delete a directory with everything in it, or one file; nothing there is fine.

        On gs:// every object under ``uri/`` is deleted in batches of 100 requests
        (errors of single deletes, e.g. an object already gone, are ignored).
        """
        if is_gcs(uri):
            paths = list(self._gcs_paths(uri.rstrip("/") + "/"))
            client = self.client()
            for i in range(0, len(paths), 100):
                with client.batch(raise_exception=False):
                    for path in paths[i:i + 100]:
                        bucket, name = split_gcs(path)
                        client.bucket(bucket).delete_blob(name)
        elif os.path.isdir(uri):
            shutil.rmtree(uri)
        elif os.path.exists(uri):
            os.remove(uri)

    def delete_file(self, uri: str) -> None:
        """Delete one file or gs:// object; nothing there is fine (a directory is left alone)."""
        if is_gcs(uri):
            from google.api_core import exceptions

            with contextlib.suppress(exceptions.NotFound):
                self._blob(uri).delete()
        elif os.path.isfile(uri) or os.path.islink(uri):
            os.remove(uri)

    def move_file(self, src: str, dst: str) -> None:
        """Move one file (local: a rename) or gs:// object (server-side copy, then delete)."""
        if is_gcs(src):
            client = self.client()
            bucket, name = split_gcs(src)
            to_bucket, to_name = split_gcs(dst)
            blob = client.bucket(bucket).blob(name)
            client.bucket(bucket).copy_blob(blob, client.bucket(to_bucket), to_name)
            blob.delete()
        else:
            os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
            os.replace(src, dst)

    def move_tree(self, src: str, dst: str) -> None:
        """Move a directory (local: one rename; gs://: server-side copy + delete per object)."""
        if is_gcs(src):
            src_dir = src.rstrip("/") + "/"
            client = self.client()
            for path in self.list_paths(src_dir):
                bucket, name = split_gcs(path)
                to_bucket, to_name = split_gcs(dst.rstrip("/") + "/" + path[len(src_dir):])
                blob = client.bucket(bucket).blob(name)
                client.bucket(bucket).copy_blob(blob, client.bucket(to_bucket), to_name)
                blob.delete()
        else:
            os.makedirs(os.path.dirname(dst.rstrip(os.sep)) or ".", exist_ok=True)
            os.replace(src, dst)


# The module-level API: the default handle's methods (ADC credentials; anonymous on an emulator).
_DEFAULT = Files()
# reading
exists, size, read_bytes = _DEFAULT.exists, _DEFAULT.size, _DEFAULT.read_bytes
open_read, read_range = _DEFAULT.open_read, _DEFAULT.read_range
# writing
write_bytes, open_write, copy_range = _DEFAULT.write_bytes, _DEFAULT.open_write, _DEFAULT.copy_range
# trees
list_files, list_paths, glob = _DEFAULT.list_files, _DEFAULT.list_paths, _DEFAULT.glob
delete_tree, move_tree = _DEFAULT.delete_tree, _DEFAULT.move_tree
delete_file, move_file = _DEFAULT.delete_file, _DEFAULT.move_file


def read_text(uri: str) -> str:
    """Read a UTF-8 text file or gs:// object."""
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str, create_only: bool = False) -> None:
    """Write UTF-8 text with :func:`write_bytes`."""
    write_bytes(uri, text.encode("utf-8"), create_only=create_only)


# --- temporary names: a reader or a kill never sees half a file under the real name ----------


def temp_path(path: Path) -> Path:
    """The temporary name this process writes ``path`` under before renaming it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temp_name(name: str) -> bool:
    """True for a name :func:`temp_path` makes (``.NAME.tmp-PID``), e.g. left by a killed writer."""
    base = name.rsplit("/", 1)[-1]
    head, sep, pid = base.rpartition(".tmp-")
    return base.startswith(".") and bool(sep) and bool(head) and pid.split("-", 1)[0].isdigit()


def commit_temp(tmp: Path, path: Path, create_only: bool = False) -> None:
    """Move a finished temporary file to its name; then sweep temporaries of dead processes.

    Raises:
        ExistsError: ``create_only`` and ``path`` exists (the temporary file is removed).
    """
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
    removed: list[Path] = []
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
