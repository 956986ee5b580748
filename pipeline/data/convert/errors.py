"""The converter's one error type, and how its one-line message survives a Beam worker.

    python -c "from pipeline.data.convert import errors as e; print(e.error_line(ValueError(e.MARK + 'why')))"

A :class:`ConvertError` raised on the driver reaches the user as is. Raised inside a DoFn it
comes back wrapped by the runner (often as text, after a remote traceback), so worker-side
messages carry a tag, :data:`MARK`, and :func:`error_line` digs the line out again.
"""

from __future__ import annotations

import logging
import re

from pipeline.core.errors import PipelineError

MARK = "[higgs-convert] "  # tags our one-line errors inside Beam's wrapped worker exceptions


class ConvertError(PipelineError):
    """The conversion cannot proceed; the message is one line naming the thing and the fix."""


def error_line(exc: BaseException) -> str | None:
    """Return our one-line message from inside a (possibly wrapped, remote) Beam failure.

    Args:
        exc: what ``beam.Pipeline.run`` (or the ``with`` block) raised.

    Returns:
        The tagged message without its tag, or None when ``exc`` carries none.
    """
    seen: BaseException | None = exc
    while seen is not None:
        match = re.search(re.escape(MARK) + r"([^\n]*)", str(seen))
        if match:  # without the step name the runner appends
            return re.sub(r" \[while running '[^']*'\]", "", match.group(1)).rstrip("'\" ")
        seen = seen.__cause__ or seen.__context__
    return None


class DropMarked(logging.Filter):
    """Drops log records that carry our tagged one-line errors, or a Ctrl-C.

    A DoFn's exception is logged by Beam (``apache_beam.runners.common``, ERROR, with the
    worker traceback) before it reaches the driver, where :func:`error_line` turns it into the
    one line the user sees (and an interrupt into ``interrupted``); for those, the record only
    repeats it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return MARK not in message and not message.startswith("KeyboardInterrupt")
