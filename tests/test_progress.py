"""Progress of long work: log lines when not on a terminal, a live bar on one, for real commands.

    .venv/bin/pytest tests/test_progress.py -q
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline.core import progress
from pipeline.core.progress import Progress

LINE = re.compile(r"^synth s\.csv\.gz: [\d.]+[kM]?/400\.0k rows \(\d+%\), [\d.]+[kM]? rows/s, "
                  r"ETA (\d+s|\d+m\d\ds)$")


def test_cli_without_a_terminal_logs_plain_periodic_lines(tmp_path: Path) -> None:
    """``higgs synth`` with stderr piped (as in CI or a Prefect worker): no bar, dated lines."""
    higgs = Path(sys.executable).with_name("higgs")
    env = {**os.environ, "HIGGS_PROGRESS_SECONDS": "0.3"}
    env.pop("HIGGS_PROGRESS", None)
    proc = subprocess.run([str(higgs), "synth", "--rows", "400000", "--out", str(tmp_path / "s.csv.gz")],
                          capture_output=True, text=True, env=env, timeout=600, check=True)
    assert "\r" not in proc.stderr and "█" not in proc.stderr
    lines = [ln.split(" pipeline.progress: ", 1)[1] for ln in proc.stderr.splitlines()
             if " INFO pipeline.progress: " in ln]
    assert len(lines) >= 2, proc.stderr
    assert all(LINE.match(ln) for ln in lines[:-1]), lines
    percents = [int(re.search(r"\((\d+)%\)", ln).group(1)) for ln in lines[:-1]]
    assert percents == sorted(percents) and percents[-1] < 100
    assert re.match(r"^synth s\.csv\.gz: done, 400\.0k rows in [\d.]+ s \([\d.]+[kM]? rows/s\)$",
                    lines[-1]), lines[-1]
    assert proc.stdout.startswith("wrote 400000 events")


def test_log_mode_reports_every_interval_with_rate_and_eta(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        report = Progress("download HIGGS.csv.gz", total=2_000_000_000, unit="bytes",
                          initial=500_000_000, interval=0.05, mode="log")
        for _ in range(6):
            time.sleep(0.03)
            report.add(100_000_000)
        report.close()
    lines = [r.getMessage() for r in caplog.records]
    assert 2 <= len(lines) <= 5
    assert re.match(r"^download HIGGS\.csv\.gz: [\d.]+/2\.00 GB \(\d+%\), [\d.]+ (MB|GB)/s, ETA \d+s$",
                    lines[0]), lines
    assert re.match(r"^download HIGGS\.csv\.gz: done, 1\.10 GB in [\d.]+ s", lines[-1]), lines


def test_bar_mode_redraws_one_line_and_ends_it() -> None:
    screen = io.StringIO()
    report = Progress("convert", total=1000, unit="bytes", secondary="rows", mode="bar", stream=screen)
    for _ in range(5):
        time.sleep(0.21)
        report.add(100, 50)
    report.close()
    text = screen.getvalue()
    frames = text.split("\r")
    assert text.count("\n") == 1 and text.endswith("\n")
    assert any("[██████" in f and "MB" not in f and "rows" in f and "ETA" in f for f in frames), frames
    assert frames[-1].startswith("convert: done, 500 B, 250 rows in ")


def test_failed_work_only_clears_the_bar_and_off_prints_nothing() -> None:
    screen = io.StringIO()
    with_bar = Progress("synth", total=10, mode="bar", stream=screen)
    time.sleep(0.21)
    with_bar.add(3)
    with_bar.close(ok=False)
    assert "done" not in screen.getvalue() and screen.getvalue().endswith("\r")
    quiet = io.StringIO()
    off = Progress("synth", total=10, mode="off", stream=quiet, interval=0)
    off.add(5)
    off.close()
    assert quiet.getvalue() == ""


def test_without_logging_set_up_lines_go_to_the_stream() -> None:
    """A worker process that configured no logging (a Dask worker) still shows its lines."""
    code = ("import io, sys, time; from pipeline.core.progress import Progress;"
            "p = Progress('convert', total=4, interval=0.01, mode='log');"
            "[(time.sleep(0.02), p.add(1)) for _ in range(3)]; p.close()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert re.search(r"^convert: [\d.]+/4 rows \(\d+%\), .* ETA \d+s$", proc.stderr, re.M), proc.stderr
    assert re.search(r"^convert: done, 3 rows in ", proc.stderr, re.M), proc.stderr


def test_shared_reporter_counts_every_thread() -> None:
    report = progress.shared("k-test", "convert", total=4000, unit="rows")
    workers = [threading.Thread(target=lambda: [progress.shared("k-test", "x").add(1) for _ in range(1000)])
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert progress.shared("k-test", "y") is report and report.done == 4000
    report.mode = "off"
    progress.close_shared("k-test")
    assert progress.shared("k-test", "z") is not report
    progress.close_shared("k-test", ok=False)
