"""Compare-and-swap of one small file, local or gs:// (``latest.json``, the store's claims).

    python -c "from pipeline.core import cas; print(cas.update('/tmp/x.json', lambda old: b'1'))"

Locally the read, the decision and the write happen under an exclusive ``fcntl.flock`` on
``.NAME.lock`` beside the file (released by the kernel if the process dies). On gs:// the
object's generation is read with its bytes and the write is conditional on it
(``ifGenerationMatch``): two writers can never both win.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.core.storage import StorageError, gcs_client, is_gcs, split_gcs, write_bytes

log = logging.getLogger(__name__)


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
            # Jittered backoff: writers that lost a race in lockstep would otherwise keep colliding.
            time.sleep(random.uniform(0.0, min(0.02 * 2 ** attempt, 1.0)))
        except Exception as exc:
            if not _should_retry(exc):
                raise
            unconfirmed = new
            log.info("%s: transient error writing it (%s); reading it again", uri, type(exc).__name__)
            time.sleep(min(0.5 * 2 ** attempt, 10.0))
    raise StorageError(f"{uri} kept changing under {attempts} concurrent writes; try again")

