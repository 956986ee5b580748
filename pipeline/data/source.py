"""Find, download or generate the source file and fingerprint it.

    higgs fetch --preset full        # download the UCI higgs.zip (resumes, verifies) into data/sources/
    higgs fetch --preset sample      # generate the embedded sample with pipeline.data.synth
    python -c "from pipeline.data import source; print(source.fingerprint('data/sources/HIGGS.csv.gz'))"

A source file is ``HIGGS.csv.gz``, a plain ``HIGGS.csv``, or the UCI ``higgs.zip`` (its one
member ``HIGGS.csv.gz``, read in place: no unpacking, no second copy on disk), found as

- a local path (must exist),
- a ``gs://bucket/object`` (must exist; read later by the converter through
  :mod:`pipeline.core.storage`),
- an ``https://`` URL, downloaded once into ``{data_root}/sources/<basename>``: resumable
  (HTTP Range on ``<dest>.part``), verified (size from Content-Length or the configured
  ``data.expected_bytes``, and ``data.sha256`` when given), renamed into place only when
  verified, with progress every few seconds (:mod:`pipeline.core.progress`). The sha256 is
  always computed and recorded in a sidecar ``<dest>.sha256``. When the URL cannot be reached,
  ``data.mirror`` is tried (verified by ``data.mirror_bytes`` / ``data.mirror_sha256``),
- empty: the generated sample ``{data_root}/sources/higgs-synth-uci-r{rows}-s{seed}.csv.gz``.

A zip must hold exactly one ``.csv.gz`` or ``.csv`` member (directories, ``__MACOSX/`` and
dot files aside); otherwise it fails with one line listing what it holds. Every failure a user
can fix (missing file, unreachable server, corrupted download) raises :class:`SourceError`
with one line that names the thing and the fix. Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.core import checksums, storage
from pipeline.core.config import DataConfig
from pipeline.core.errors import PipelineError
from pipeline.core.progress import Progress

_DOWNLOAD_BLOCK = 1 << 20
_SIDECAR_SUFFIX = ".sha256"
_PART_SUFFIX = ".part"
log = logging.getLogger(__name__)
_USER_AGENT = "higgs-pipeline/1 (+https://archive.ics.uci.edu/dataset/280/higgs)"
_SOURCE_KINDS = "HIGGS.csv.gz, HIGGS.csv or higgs.zip"


class SourceError(PipelineError):
    """The source cannot be found, reached or verified; the message is one line."""


class _UnreachableError(SourceError):
    """The server could not be reached or has no such file (a mirror may help)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SourceInfo:
    """A source ready for the converter."""

    path: str  # what the converter reads: a local path or a gs:// URI
    uri: str  # where it came from (the URL for downloads, else same as path)
    bytes: int
    sha256: str  # "" for gs:// objects (their checksum is ``crc32c``)
    crc32c: str = ""


def is_url(uri: str) -> bool:
    """True for ``http://`` and ``https://`` sources."""
    return str(uri).startswith(("https://", "http://"))


def synth_path(data_cfg: DataConfig) -> Path:
    """Where the generated sample for this config lives.

    ``uci`` in the name: the sample is in the real file's ``%.18e`` text; a sample written in
    the earlier short text under the old name is not mistaken for it.
    """
    name = f"higgs-synth-uci-r{data_cfg.synth_rows}-s{data_cfg.synth_seed}.csv.gz"
    return Path(data_cfg.data_root) / "sources" / name


def download_path(url: str, data_cfg: DataConfig) -> Path:
    """Where a URL is downloaded to: ``{data_root}/sources/<basename of the URL path>``."""
    name = Path(urlparse(url).path).name
    if not name:
        raise SourceError(f"cannot derive a file name from URL {url}; give a URL that ends in a file name")
    return Path(data_cfg.data_root) / "sources" / name


def resolve(uri: str, data_cfg: DataConfig) -> str:
    """Return a location the converter can read for ``uri``.

    Args:
        uri: local path, ``gs://`` object, ``https://`` URL, or "" for the configured source
            (``data_cfg.source``; generated sample when that is empty too).
        data_cfg: the data section of the config (data_root, synth size, expected checksum).

    Returns:
        A local path (downloads land under ``{data_root}/sources/``) or the ``gs://`` URI.

    Raises:
        SourceError: missing file or object, unreachable URL, failed verification.
    """
    if not uri:
        return ensure_source(data_cfg).path
    if is_url(uri):
        location = str(_download_source(uri, data_cfg)[0])
    elif storage.is_gcs(uri):
        _check_gcs(uri)
        location = uri
    else:
        location = str(_check_local(uri))
    check_archive(location)
    return location


def ensure_source(data_cfg: DataConfig) -> SourceInfo:
    """Make the configured source available locally or confirm it exists, and describe it.

    ``data_cfg.source`` empty → generate the sample with :func:`pipeline.data.synth.write_csv`
    (reused when already there: it is written atomically, so existing means complete);
    ``https://`` → download with :func:`download`; a local path or ``gs://`` → checked.

    Args:
        data_cfg: the data section of the config.

    Returns:
        A :class:`SourceInfo` with the readable path, origin, size and checksum.

    Raises:
        SourceError: as :func:`resolve`.
    """
    src = data_cfg.source
    if not src:
        path = synth_path(data_cfg)
        if not path.is_file():
            from pipeline.data import synth

            synth.write_csv(path, rows=data_cfg.synth_rows, seed=data_cfg.synth_seed)
        fp = fingerprint(str(path))
        return SourceInfo(path=str(path), uri=str(path), bytes=fp["bytes"], sha256=fp["sha256"])
    if is_url(src):
        path, url = _download_source(src, data_cfg)
        check_archive(str(path))
        fp = fingerprint(str(path))
        return SourceInfo(path=str(path), uri=url, bytes=fp["bytes"], sha256=fp["sha256"])
    location = resolve(src, data_cfg)
    fp = fingerprint(location)
    return SourceInfo(path=location, uri=src, bytes=fp["bytes"], sha256=fp.get("sha256", ""),
                      crc32c=fp.get("crc32c", ""))


def fingerprint(uri: str) -> dict[str, Any]:
    """Identify a source's content cheaply enough to run on every conversion.

    Local files are hashed with sha256 once; the digest is kept in a sidecar
    ``<file>.sha256`` together with the file's size and mtime and reused while both match
    (so a 2.6 GB file is not re-hashed on every rerun). ``gs://`` objects use the crc32c
    and size from the object metadata (no download).

    Args:
        uri: local path or ``gs://`` object (resolve URLs first with :func:`resolve`).

    Returns:
        ``{"uri", "bytes", "sha256"}`` for local files, ``{"uri", "bytes", "crc32c"}`` for gs://.

    Raises:
        SourceError: if the file/object does not exist or ``uri`` is a URL.
    """
    if is_url(uri):
        raise SourceError(f"cannot fingerprint URL {uri} directly; resolve() it to a local download first")
    if storage.is_gcs(uri):
        blob = _gcs_blob(uri)
        return {"uri": uri, "bytes": int(blob.size), "crc32c": blob.crc32c}
    path = _check_local(uri)
    return {"uri": str(uri), "bytes": path.stat().st_size, "sha256": _sha256_cached(path)}


def check_archive(location: str) -> None:
    """Fail early, in one line, when ``location`` is a zip without exactly one rows member.

    Args:
        location: a local path or gs:// object; anything but a zip passes.

    Raises:
        pipeline.data.textblocks.ArchiveError: an unreadable zip, or not exactly one
            ``.csv.gz``/``.csv`` member (the message lists what it holds).
    """
    from pipeline.data import textblocks

    with storage.open_read(location) as raw:
        if textblocks.is_zip(raw):
            textblocks.open_member(raw, location).close()


def download(
    url: str,
    dest: str | Path,
    expected_bytes: int = 0,
    sha256: str = "",
    retries: int = 5,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` with resume, verification and an atomic rename.

    Bytes go to ``<dest>.part``; after an interruption (dropped connection, killed
    process) the next attempt asks for the rest with an HTTP ``Range`` request. When all
    bytes are there, the size is checked against ``expected_bytes`` (or the server's
    Content-Length) and the sha256 against ``sha256`` (when given); only then is the file
    renamed to ``dest`` and its digest recorded in ``<dest>.sha256``. A ``dest`` that
    already exists and matches is returned without any network access.

    Args:
        url: ``http(s)://`` address.
        dest: final local path (parent directories are created).
        expected_bytes: required size, 0 = take the server's word.
        sha256: required hex digest, "" = compute and record only.
        retries: attempts after a dropped transfer (each resumes where the last stopped).
        timeout: socket timeout in seconds.

    Returns:
        ``dest`` as a Path.

    Raises:
        SourceError: unreachable server (one line saying how to provide the file), HTTP
            error, or a size/checksum mismatch (the bad partial file is removed).
    """
    dest = Path(dest)
    sha256 = sha256.strip().lower()
    if dest.is_file() and _complete(dest, expected_bytes, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + _PART_SUFFIX)
    failures = 0
    reached = False  # did the server answer at all during this call?
    while True:
        have = part.stat().st_size if part.is_file() else 0
        log.info("downloading %s → %s%s", url, dest, f" (resuming at byte {have:,})" if have else "")
        try:
            total, written = _fetch(url, part, have, timeout)
        except _TransientError as exc:
            reached = reached or exc.answered
            failures = 0 if exc.progressed else failures + 1
            # A server that never answered is unreachable (offline, wrong host): say so at
            # once instead of retrying for minutes. Dropped transfers are retried.
            if not reached or failures > retries:
                raise _UnreachableError(_unreachable(url, exc.reason), exc.reason) from None
            time.sleep(min(0.2 * 2**failures, 5.0))
            continue
        reached = True
        size = part.stat().st_size
        if total is not None and size < total:
            # The connection closed early without an error: resume from where it stopped.
            failures = 0 if written else failures + 1
            if failures > retries:
                reason = f"transfer stopped at {size} of {total} bytes"
                raise _UnreachableError(_unreachable(url, reason), reason)
            continue
        break
    _verify(url, part, expected_bytes or (total or 0), sha256)
    digest = checksums.file_sha256(part)
    if sha256 and digest != sha256:
        part.unlink(missing_ok=True)
        raise SourceError(
            f"checksum mismatch for {url}: got sha256 {digest[:16]}…, expected {sha256[:16]}…; "
            "the corrupted download was removed — run again, or fix data.sha256"
        )
    os.replace(part, dest)
    _write_sidecar(dest, digest)
    log.info("downloaded %s (%s bytes, sha256 %s)", dest, f"{dest.stat().st_size:,}", digest)
    return dest


# --- internals -------------------------------------------------------------------------------


class _TransientError(Exception):
    """A network failure worth retrying.

    ``answered``: the server sent a response (so it is reachable); ``progressed``: bytes
    of the body arrived in this attempt.
    """

    def __init__(self, reason: str, answered: bool, progressed: bool):
        super().__init__(reason)
        self.reason, self.answered, self.progressed = reason, answered, progressed


def _unreachable(url: str, reason: str) -> str:
    name = Path(urlparse(url).path).name or "the file"
    return (f"cannot reach {url}: {reason}; download {name} yourself and pass "
            f"--source /path/to/{name} or a gs:// copy")


def _fetch(url: str, part: Path, have: int, timeout: float) -> tuple[int | None, int]:
    """One HTTP attempt appending to ``part`` from byte ``have``.

    Returns:
        (total size announced by the server or None, bytes written in this attempt).
    """
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    answered, written = False, 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            answered = True
            total = _total_size(resp, have)
            # 206 = the server honoured the Range; anything else sends the whole file again.
            resumed = have if resp.status == 206 else 0
            name = Path(urlparse(url).path).name
            with open(part, "ab" if resumed else "wb") as f, Progress(
                    f"download {name}", total=total, unit="bytes", initial=resumed) as progress:
                while True:
                    block = resp.read(_DOWNLOAD_BLOCK)
                    if not block:
                        break
                    f.write(block)
                    written += len(block)
                    progress.add(len(block))
            return total, written
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return have, 0  # nothing left to fetch: the partial file is already whole
        if exc.code >= 500 or exc.code == 429:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}", True, False) from None
        reason = f"HTTP {exc.code} {exc.reason}"
        message = (f"cannot download {url}: {reason}; check the URL or pass --source with a local "
                   "path or gs:// copy")
        if exc.code in (403, 404, 410):
            raise _UnreachableError(message, reason) from None
        raise SourceError(message) from None
    except urllib.error.URLError as exc:
        raise _TransientError(_reason(exc.reason), answered, written > 0) from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise _TransientError(_reason(exc), answered, written > 0) from None


def _reason(exc: object) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def _total_size(resp: http.client.HTTPResponse, have: int) -> int | None:
    if resp.status == 206:
        # Content-Range: bytes START-END/TOTAL
        content_range = resp.headers.get("Content-Range", "")
        try:
            span, _, total = content_range.partition(" ")[2].partition("/")
            start = int(span.partition("-")[0])
        except ValueError:
            raise _TransientError(f"bad Content-Range {content_range!r}", True, False) from None
        if start != have:
            raise _TransientError(f"server resumed at byte {start}, expected {have}", True, False)
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _verify(url: str, part: Path, expected_bytes: int, sha256: str) -> None:
    size = part.stat().st_size
    if expected_bytes and size != expected_bytes:
        part.unlink(missing_ok=True)
        raise SourceError(f"download of {url} has {size} bytes, expected {expected_bytes}; "
                          "the bad partial file was removed — run again")


def _complete(dest: Path, expected_bytes: int, sha256: str) -> bool:
    if expected_bytes and dest.stat().st_size != expected_bytes:
        return False
    return not sha256 or _sha256_cached(dest) == sha256


def _download_source(url: str, data_cfg: DataConfig) -> tuple[Path, str]:
    """Download ``url`` (or, when it cannot be reached, ``data.mirror``); return (path, URL used).

    The configured size/checksum describe ``data.source`` (and the mirror's describe the
    mirror): they apply only to that URL, or to any URL when the config names none. A
    complete earlier download of either is reused without any network access.
    """
    ours = data_cfg.source in ("", url)
    targets = [(url, data_cfg.expected_bytes if ours else 0, data_cfg.sha256 if ours else "")]
    if ours and data_cfg.mirror and data_cfg.mirror != url:
        targets.append((data_cfg.mirror, data_cfg.mirror_bytes, data_cfg.mirror_sha256))
    for target, size, digest in targets:
        dest = download_path(target, data_cfg)
        if dest.is_file() and _complete(dest, size, digest.strip().lower()):
            return dest, target
    failures = []
    for target, size, digest in targets:
        try:
            return download(target, download_path(target, data_cfg), expected_bytes=size,
                            sha256=digest), target
        except _UnreachableError as exc:
            failures.append(exc)
            if len(targets) > 1 and target == url:
                log.warning("%s; trying the mirror %s", exc, data_cfg.mirror)
    if len(failures) == 1:
        raise SourceError(str(failures[0]))
    raise SourceError(f"cannot download {url} ({failures[0].reason}) nor its mirror "
                      f"{data_cfg.mirror} ({failures[1].reason}); download either yourself and pass "
                      f"--source /path/to/it ({_SOURCE_KINDS}) or a gs:// copy")


def _check_local(uri: str) -> Path:
    path = Path(uri).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise SourceError(f"source {uri} {what}; pass an existing {_SOURCE_KINDS}, a gs:// object "
                          "or an https:// URL (or no --source for the generated sample)")
    return path


def _gcs_blob(uri: str):
    bucket, name = storage.split_gcs(uri)
    if not name:
        raise SourceError(f"source {uri} names a bucket, not an object; add the object path")
    from google.api_core import exceptions

    try:
        blob = storage.gcs_client().bucket(bucket).get_blob(name)
    except exceptions.GoogleAPICallError as exc:
        raise SourceError(
            f"cannot read {uri}: {_reason(exc)}; check the bucket name and your access"
        ) from None
    if blob is None:
        raise SourceError(f"source {uri} does not exist; upload {_SOURCE_KINDS} there or pass "
                          "another --source")
    return blob


def _check_gcs(uri: str) -> None:
    _gcs_blob(uri)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _sha256_cached(path: Path) -> str:
    """sha256 of ``path``, from its sidecar when that matches size and mtime, else computed."""
    st = path.stat()
    try:
        meta = json.loads(_sidecar(path).read_text())
        if meta.get("bytes") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns:
            return str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = checksums.file_sha256(path)
    _write_sidecar(path, digest)
    return digest


def _write_sidecar(path: Path, digest: str) -> None:
    st = path.stat()
    meta = {"sha256": digest, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "file": path.name}
    # A read-only location just means the digest is recomputed next time.
    with contextlib.suppress(OSError):
        storage.write_text(str(_sidecar(path)), json.dumps(meta) + "\n")
