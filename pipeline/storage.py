"""Local and ``gs://`` storage behind one small API.

    python -c "from pipeline import storage; print(storage.exists('gs://my-bucket/runs/latest.json'))"

``gs://`` goes through google-cloud-storage, which uses Application Default Credentials in
the cloud and honours ``STORAGE_EMULATOR_HOST`` (then no credentials are needed). Nothing
is contacted at import time; the client is created on first use.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pipeline.errors import PipelineError


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
