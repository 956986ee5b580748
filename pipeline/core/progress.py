"""Progress of long work (download, synth, convert): done, rate and ETA every few seconds.

    python -c "import time; from pipeline.core.progress import Progress; \
p = Progress('demo', total=50, unit='rows'); [(time.sleep(0.05), p.add(1)) for _ in range(50)]; p.close()"

On a terminal (stderr is a TTY) it draws one live line that is redrawn in place::

    convert [██████████░░░░░░░░░░]  48%  1.35/2.82 GB  5.3M rows  31.2 MB/s  ETA 47s

Anywhere else (CI, Prefect logs, a pipe) it logs a plain line through ``logging`` (logger
``pipeline.progress``; straight to stderr in a process without any logging set up, such as a
Dask worker) every ``interval`` seconds, and one closing line::

    convert: 1.35/2.82 GB (48%), 5.3M rows, 31.2 MB/s, ETA 47s
    convert: done, 2.82 GB, 11.0M rows in 90.1 s (31.3 MB/s)

``HIGGS_PROGRESS=bar|log|off`` forces a mode and ``HIGGS_PROGRESS_SECONDS`` sets the log
interval (default 5). :func:`shared` hands every caller in one process the same reporter for a
key, so several threads (or DoFn instances) add to one total.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from typing import TextIO

log = logging.getLogger("pipeline.progress")

_BAR_REFRESH = 0.2  # seconds between redraws of the live line
_DEFAULT_SECONDS = 5.0
_BAR_WIDTH = 20
_MODES = ("bar", "log", "off")


def _count(value: float, unit: str) -> str:
    """A short human number: ``1.35 GB``, ``5.3M rows``, ``812 rows``."""
    if unit == "bytes":
        for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if abs(value) >= scale:
                return f"{value / scale:.2f} {name}" if scale >= 1e9 else f"{value / scale:.1f} {name}"
        return f"{value:.0f} B"
    for scale, name in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{name} {unit}"
    return f"{value:.0f} {unit}"


def _pair(done: float, total: float, unit: str) -> str:
    """``1.35/2.82 GB`` (one unit for both) or ``4.1M/11.0M rows``."""
    if unit == "bytes":
        for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B")):
            if total >= scale:
                digits = 2 if scale >= 1e9 else 1 if scale > 1 else 0
                return f"{done / scale:.{digits}f}/{total / scale:.{digits}f} {name}"
    return f"{_count(done, unit).split(' ')[0]}/{_count(total, unit)}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _rate(per_s: float, unit: str) -> str:
    return f"{_count(per_s, unit)}/s"


def default_mode(stream: TextIO | None = None) -> str:
    """``bar`` when ``stream`` (default stderr) is a terminal, else ``log``; env may override."""
    forced = os.environ.get("HIGGS_PROGRESS", "").strip().lower()
    if forced in _MODES:
        return forced
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # closed or a stand-in without isatty
        return "log"


class Progress:
    """One long task's progress: thread-safe counters, printed as a bar or as log lines.

    Args:
        label: what is being done (``convert``, ``download HIGGS.csv.gz``, ``synth``).
        total: the amount when finished (None or 0 = unknown: no percentage or ETA).
        unit: ``bytes`` or a count noun (``rows``).
        secondary: an optional second count shown alongside (e.g. ``rows`` while the main
            count is bytes of input).
        initial: amount already done before this process started (a resumed download); it
            counts towards the percentage but not the rate.
        interval: seconds between log lines (default ``HIGGS_PROGRESS_SECONDS`` or 5).
        mode: ``bar``, ``log`` or ``off`` (default :func:`default_mode`).
        stream: where the bar is drawn (default stderr).
    """

    def __init__(self, label: str, total: float | None = None, unit: str = "rows",
                 secondary: str | None = None, initial: float = 0, interval: float | None = None,
                 mode: str | None = None, stream: TextIO | None = None):
        self.label, self.total, self.unit, self.secondary = label, total or None, unit, secondary
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode or default_mode(self.stream)
        if interval is None:
            try:
                interval = float(os.environ.get("HIGGS_PROGRESS_SECONDS", _DEFAULT_SECONDS))
            except ValueError:
                interval = _DEFAULT_SECONDS
        self.interval = interval
        self.initial = self.done = initial
        self.extra = 0
        self.started = time.monotonic()
        self._next = self.started + (_BAR_REFRESH if self.mode == "bar" else self.interval)
        self._lock = threading.Lock()
        self._closed = False
        self._drawn = 0  # width of the live line on screen

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    def add(self, amount: float, secondary: float = 0) -> None:
        """Count ``amount`` more done (and ``secondary`` more of the second count)."""
        with self._lock:
            self.done += amount
            self.extra += secondary
            now = time.monotonic()
            finished = self.total is not None and self.done >= self.total  # the closing line follows
            if now < self._next or self._closed or finished:
                return
            self._next = now + (_BAR_REFRESH if self.mode == "bar" else self.interval)
            self._report(now, final=False)

    def close(self, ok: bool = True) -> None:
        """Print the closing line (once); ``ok=False`` only clears the live bar."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if ok:
                self._report(time.monotonic(), final=True)
            elif self.mode == "bar" and self._drawn:
                self._write("\r" + " " * self._drawn + "\r")

    # --- rendering --------------------------------------------------------------------------

    def _fields(self, now: float, final: bool) -> tuple[str | None, str, str | None, str, str | None]:
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.initial) / elapsed
        pct = amount = eta = None
        if self.total and not final:
            pct = f"{min(100.0, 100.0 * self.done / self.total):3.0f}%"
            amount = _pair(self.done, self.total, self.unit)
            if not final and rate > 0 and self.done < self.total:
                eta = f"ETA {_duration((self.total - self.done) / rate)}"
        else:
            amount = _count(self.done, self.unit)
        extra = _count(self.extra, self.secondary) if self.secondary else None
        return pct, amount, extra, _rate(rate, self.unit), eta

    def _report(self, now: float, final: bool) -> None:
        if self.mode == "off":
            return
        pct, amount, extra, rate, eta = self._fields(now, final)
        if final:
            what = ", ".join(x for x in (amount, extra) if x)
            line = f"{self.label}: done, {what} in {now - self.started:.1f} s ({rate})"
            if self.mode == "bar":
                self._write("\r" + line.ljust(self._drawn) + "\n")
                self._drawn = 0
            else:
                self._log(line)
            return
        if self.mode == "log":
            head = f"{amount} ({pct.strip()})" if pct else amount
            self._log(f"{self.label}: " + ", ".join(x for x in (head, extra, rate, eta) if x))
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        bar = ""
        if self.total:
            filled = int(_BAR_WIDTH * min(1.0, self.done / self.total))
            bar = "[" + "█" * filled + "░" * (_BAR_WIDTH - filled) + "] "
        line = f"{self.label} {bar}" + "  ".join(x for x in (pct, amount, extra, rate, eta) if x)
        line = line[:width]
        self._write("\r" + line.ljust(self._drawn))
        self._drawn = len(line)

    def _log(self, line: str) -> None:
        # A process that configured no logging (a Dask or Beam worker) still shows the line.
        if log.hasHandlers():
            log.info("%s", line)
        else:
            self._write(line + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not fail the work
            self.mode = "off"


_SHARED: dict[str, Progress] = {}
_SHARED_LOCK = threading.Lock()


def shared(key: str, label: str, total: float | None = None, unit: str = "rows",
           secondary: str | None = None) -> Progress:
    """The one :class:`Progress` of ``key`` in this process (created on first use).

    Args:
        key: identifies the task (e.g. a conversion's staging directory).
        label, total, unit, secondary: as :class:`Progress`, used when it is created.

    Returns:
        The shared reporter; close it with :func:`close_shared`.
    """
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Progress(label, total=total, unit=unit, secondary=secondary)
        return _SHARED[key]


def close_shared(key: str, ok: bool = True) -> None:
    """Close and forget the shared reporter of ``key`` if this process has one."""
    with _SHARED_LOCK:
        progress = _SHARED.pop(key, None)
    if progress is not None:
        progress.close(ok=ok)
