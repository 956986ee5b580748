"""Local multi-worker training: N worker processes on 127.0.0.1, one TF_CONFIG each.

    higgs train --data data/sample --out runs/mw --preset sample --workers 2
    python -m pipeline.cloud.launch worker --config CONFIG.yaml --data DATA --out RUN   # one worker

:func:`run_local_cluster` picks free loopback ports, writes the resolved config to a temporary
YAML file, and starts ``python -m pipeline.cloud.launch worker …`` once per worker with
``TF_CONFIG = {"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}``. Each
worker runs :func:`pipeline.training.train.run_training` under MultiWorkerMirroredStrategy (worker 0 is
the chief and writes the run directory). Every line a worker prints is streamed with a
``[worker i]`` prefix. If a worker dies, the others are stopped and the cluster is started
again on fresh ports, resuming from the run's backup (at most ``train.max_restarts`` times);
a user-fixable error (exit code 2) or one failure too many ends in :class:`LaunchError`
naming the worker and how to resume. Plain subprocesses, no TensorFlow in the launching process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pipeline.core.config import Config, write_config
from pipeline.core.errors import PipelineError
from pipeline.core.ports import free_ports

log = logging.getLogger(__name__)


class LaunchError(PipelineError):
    """A worker of the local cluster failed or the cluster could not start."""


def tf_config_for(ports: Sequence[int], index: int) -> dict:
    """Return the ``TF_CONFIG`` of worker ``index`` in a loopback cluster on ``ports``."""
    return {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index}}


def _stream(prefix: str, pipe: IO[str], lock: threading.Lock, out: IO[str]) -> None:
    for line in iter(pipe.readline, ""):
        with lock:
            out.write(f"{prefix} {line.rstrip()}\n")
            out.flush()
    pipe.close()


def _kill(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate still-running workers (their process groups), then kill stragglers after ``grace`` s."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_local_cluster(cfg: Config, data: str, run_dir: str, *, workers: int | None = None,
                      timeout: float | None = None, out: IO[str] | None = None,
                      max_restarts: int | None = None) -> int:
    """Run MultiWorkerMirroredStrategy training with ``workers`` processes on this machine.

    When a worker dies (killed, crashed: any exit but 0 and 2, the code of a one-line
    :class:`~pipeline.core.errors.PipelineError`), the launcher notices at its next poll
    (:data:`POLL_S`), stops the others and starts the whole cluster again on fresh ports; the
    workers resume from the run's backup (``RUN/checkpoints/``,
    :class:`~pipeline.training.callbacks.EpochCommit`), so only the interrupted epoch is trained
    again. After ``max_restarts`` restarts the next
    failure ends the run with one line saying how to resume it.

    Args:
        cfg: resolved config (``train.workers`` is the default number of workers,
            ``train.max_restarts`` of restarts).
        data: dataset directory.
        run_dir: the run directory the chief (worker 0) writes.
        workers: number of worker processes (default ``cfg.train.workers``).
        timeout: seconds after which all workers are killed (None = no limit), per attempt.
        out: where prefixed worker lines go (default ``sys.stdout``).
        max_restarts: override of ``cfg.train.max_restarts``.

    Returns:
        The number of restarts it took.

    Raises:
        LaunchError: a worker failed with a user-fixable error (exit 2), failed again after the
            last restart, or the timeout passed; the other workers are stopped.
    """
    n = workers or cfg.train.workers
    out = out or sys.stdout
    allowed = max(0, cfg.train.max_restarts if max_restarts is None else max_restarts)
    with tempfile.TemporaryDirectory(prefix="higgs-launch-") as tmp:
        config_path = write_config(cfg, Path(tmp) / "config.yaml")
        restarts = 0
        while True:
            try:
                _run_once(n, config_path, data, run_dir, Path(tmp) / f"attempt-{restarts}", timeout, out)
                return restarts
            except WorkerExitError as died:
                if died.code == 2 or restarts >= allowed:
                    hint = ("" if died.code == 2 else
                            f"; {restarts} restart(s) used (train.max_restarts={allowed}) — resume with the "
                            f"same command: it continues from {run_dir}/checkpoints")
                    raise LaunchError(f"{died}{hint}") from None
                restarts += 1
                log.warning("%s; restarting the cluster on fresh ports (restart %d of %d): the workers "
                            "resume from the backup in %s", died, restarts, allowed, run_dir)


POLL_S = 0.2  # how often the launcher looks at its workers
DEAD_PEER_GRACE_S = 2.0  # SIGTERM → SIGKILL for the survivors of a dead worker


class WorkerExitError(LaunchError):
    """One worker exited non-zero (the others were stopped); ``code`` is its exit code."""

    def __init__(self, message: str, index: int, code: int) -> None:
        super().__init__(message)
        self.index, self.code = index, code


def _run_once(n: int, config_path: Path, data: str, run_dir: str, tmp: Path, timeout: float | None,
              out: IO[str]) -> None:
    """Start ``n`` workers on fresh ports and wait for all of them (one attempt)."""
    ports = free_ports(n)
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    log.info("starting %d workers on 127.0.0.1 ports %s", n, ", ".join(map(str, ports)))
    try:
        for i in range(n):
            # Each worker's temporary files (a non-chief's private outputs) live under the
            # launcher's directory, so a killed worker leaves none behind.
            worker_tmp = tmp / f"worker-{i}"
            worker_tmp.mkdir(parents=True)
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config_for(ports, i)), PYTHONUNBUFFERED="1",
                       TMPDIR=str(worker_tmp))
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            cmd = [sys.executable, "-m", "pipeline.cloud.launch", "worker", "--config", str(config_path),
                   "--data", data, "--out", run_dir]
            # Own process group: killing a worker also kills anything it started.
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1, start_new_session=True)
            procs.append(p)
            log.info("worker %d: pid %d", i, p.pid)
            t = threading.Thread(target=_stream, args=(f"[worker {i}]", p.stdout, lock, out), daemon=True)
            t.start()
            threads.append(t)
        _wait(procs, timeout)
    except WorkerExitError:
        # The survivors wait in a collective for a peer that is gone (they ignore SIGTERM there):
        # a short grace, then SIGKILL — their progress is in the backup either way.
        _kill(procs, grace=DEAD_PEER_GRACE_S)
        raise
    finally:
        _kill(procs)
        for t in threads:
            t.join(timeout=5)


def _wait(procs: Sequence[subprocess.Popen], timeout: float | None) -> None:
    """Wait for all workers; on the first failure raise WorkerExitError (LaunchError on the timeout)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    done: set[int] = set()
    while True:
        codes = [p.poll() for p in procs]
        for i, code in enumerate(codes):
            if code == 0 and i not in done:
                done.add(i)
                log.info("worker %d finished", i)
        for i, code in enumerate(codes):
            if code not in (None, 0):
                how = f"was killed by signal {-code}" if code < 0 else f"failed with exit code {code}"
                log.warning("worker %d (pid %d) %s; stopping the other workers", i, procs[i].pid, how)
                raise WorkerExitError(f"worker {i} of {len(procs)} {how} (see its '[worker {i}]' lines "
                                      "above); stopped the other workers", i, code)
        if all(code == 0 for code in codes):
            return
        if deadline is not None and time.monotonic() > deadline:
            raise LaunchError(f"local cluster did not finish within {timeout:.0f} s; stopped all workers")
        time.sleep(POLL_S)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one worker process (``python -m pipeline.cloud.launch worker …``)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.cloud.launch")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("worker", help="run one worker of a TF_CONFIG cluster")
    p.add_argument("--config", required=True, metavar="CONFIG.yaml")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow logs every eager all-reduce at INFO; keep the workers' streams readable.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    from pipeline.core.config import read_config
    from pipeline.training import train

    try:
        result = train.run_training(read_config(args.config), args.data, args.out)
    except PipelineError as exc:
        print(f"worker error: {exc}", file=sys.stderr)
        return 2
    print(f"worker done: {result.epochs} epochs, best val_auc {result.best_val_auc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
