"""One writer at a time for a location: a lock file (local, ``flock``) or a lock object (gs://).

    python -c "from pipeline.core.locks import hold; import time; \
l = hold('/tmp/x.lock', 'demo'); print(l.holder); l.release()"

Local: ``flock`` on ``PATH`` (the kernel releases it when the holder dies, however it dies);
the file holds the holder's pid, host and start time for the message a second writer gets, and
is removed by the holder on release (a waiter that then locks the removed file notices — the
path no longer names its inode — and tries again).

gs:// has no ``flock``. The lock is an object created with ``if_generation_match=0`` (GCS
creates it only if absent, so of two simultaneous writers exactly one wins); its holder
rewrites it every ``ttl/4`` seconds with ``if_generation_match=<its generation>`` (a
heartbeat), and deletes it on release the same way. A lock whose heartbeat is older than
``ttl``, or whose holder is a dead process on this host, is stale: it is deleted (by
generation) and taken. The holder checks :meth:`Lock.check` before it publishes, so one that
lost its lock (stalled longer than ``ttl``) stops instead of overwriting the new holder's work.
After creating the object the holder reads it back and compares its token, so a store that
ignores preconditions (the test emulator does) still refuses a second writer that comes later.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import storage
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

POLL_S = 0.5
DEFAULT_TTL_S = 120.0


class LockError(PipelineError):
    """The location is locked by another writer (or the lock was lost); the message says who."""


def _holder(what: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "token": uuid.uuid4().hex,
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def describe(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host h since 2026-…`` (or ``an unknown holder``)."""
    if not holder:
        return "an unknown holder"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


def _alive_here(holder: dict[str, Any]) -> bool | None:
    """Whether the holder process is alive, when it runs on this host (None: cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


@dataclass
class Lock:
    """A held lock; :meth:`release` (or ``with``) frees it.

    Attributes:
        uri: the lock file or object.
        holder: what this holder wrote into it (pid, host, token, since).
    """

    uri: str
    holder: dict[str, Any]
    _fd: int | None = None
    _generation: int | None = None
    _lost: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def check(self) -> None:
        """Raise :class:`LockError` if the lock was lost (gs:// heartbeat refused)."""
        if self._lost:
            raise LockError(self._lost)

    def release(self) -> None:
        """Remove the lock (only if it is still ours) and free it."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.uri).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.uri)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            if not self._lost and self._generation is not None:
                from google.api_core import exceptions

                bucket, name = storage.split_gcs(self.uri)
                with contextlib.suppress(exceptions.PreconditionFailed, exceptions.NotFound):
                    storage.gcs_client().bucket(bucket).delete_blob(
                        name, if_generation_match=self._generation)

    def _heartbeat(self, ttl: float) -> None:
        from google.api_core import exceptions

        bucket, name = storage.split_gcs(self.uri)
        blob = storage.gcs_client().bucket(bucket).blob(name)
        while not self._stop.wait(ttl / 4):
            try:
                blob.upload_from_string(json.dumps(self.holder), if_generation_match=self._generation)
                self._generation = blob.generation
            except exceptions.PreconditionFailed:
                self._lost = (f"lost the lock {self.uri}: another writer took it over (this one did not "
                              f"refresh it within {ttl:.0f} s); run again")
                return
            except Exception as exc:  # a failed refresh is retried at the next beat
                log.warning("could not refresh lock %s: %s", self.uri, exc)


def hold(uri: str, what: str, *, wait: float = 0.0, ttl: float = DEFAULT_TTL_S,
         busy_hint: str = "") -> Lock:
    """Take the lock at ``uri`` (a local file or a gs:// object), waiting up to ``wait`` seconds.

    Args:
        uri: the lock's location (its directory is created locally).
        what: what the holder is doing, recorded in the lock (e.g. ``convert``).
        wait: seconds to wait for a held lock; 0 = refuse at once.
        ttl: gs:// only: a lock not refreshed for this long is stale.
        busy_hint: appended to the refusal (how to wait or where else to go).

    Returns:
        The held :class:`Lock`.

    Raises:
        LockError: still held by a live holder after ``wait`` seconds.
    """
    deadline = time.monotonic() + max(0.0, wait)
    if storage.is_gcs(uri):
        return _hold_gcs(uri, _holder(what), deadline, ttl, busy_hint)
    return _hold_local(uri, _holder(what), deadline, busy_hint)


def _busy(uri: str, holder: dict[str, Any] | None, hint: str) -> LockError:
    return LockError(f"{Path(uri).parent if not storage.is_gcs(uri) else uri.rsplit('/', 1)[0]} is in use by "
                     f"{holder.get('what', 'another writer') if holder else 'another writer'} "
                     f"({describe(holder)}, lock {uri}){'; ' + hint if hint else ''}")


def _hold_local(path: str, holder: dict[str, Any], deadline: float, hint: str) -> Lock:
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                try:
                    current = json.loads(Path(path).read_text() or "null")
                except (OSError, ValueError):
                    current = None
                raise _busy(path, current, hint) from None
            time.sleep(POLL_S)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file we locked: try the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        return Lock(path, holder, _fd=fd)


def _hold_gcs(uri: str, holder: dict[str, Any], deadline: float, ttl: float, hint: str) -> Lock:
    from google.api_core import exceptions

    bucket_name, name = storage.split_gcs(uri)
    bucket = storage.gcs_client().bucket(bucket_name)
    while True:
        current = bucket.get_blob(name)
        if current is not None:
            try:
                other = json.loads(current.download_as_bytes() or b"null")
            except (ValueError, exceptions.NotFound):
                other = None
            age = (datetime.datetime.now(datetime.UTC) - current.updated).total_seconds()
            alive = _alive_here(other) if other else None
            if alive is False or age > ttl:
                log.warning("removing the stale lock %s of %s (%s)", uri, describe(other),
                            "process gone" if alive is False else f"not refreshed for {age:.0f} s")
                with contextlib.suppress(exceptions.PreconditionFailed, exceptions.NotFound):
                    bucket.delete_blob(name, if_generation_match=current.generation)
                continue
            if time.monotonic() >= deadline:
                raise _busy(uri, other, hint)
            time.sleep(POLL_S)
            continue
        blob = bucket.blob(name)
        try:
            blob.upload_from_string(json.dumps(holder), if_generation_match=0)  # only if absent
        except exceptions.PreconditionFailed:
            continue  # someone else created it first
        mine = json.loads(bucket.blob(name).download_as_bytes())
        if mine.get("token") != holder["token"]:
            continue  # a store without preconditions let a simultaneous writer overwrite it
        lock = Lock(uri, holder, _generation=blob.generation)
        lock._thread = threading.Thread(target=lock._heartbeat, args=(ttl,), daemon=True)
        lock._thread.start()
        return lock
