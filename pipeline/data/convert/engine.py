"""Which Beam runner executes the conversion, named explicitly, and the Dask cluster it may need.

    higgs convert --source S --out D                                  # in-process (FnApiRunner)
    higgs convert --source S --out D --runner DaskRunner              # local Dask worker processes
    higgs convert --source S --out D --runner DaskRunner --dask_client_address tcp://HOST:8786

* No ``--runner``, ``DirectRunner`` or ``FnApiRunner``: Beam's in-process ``FnApiRunner``,
  constructed here. Beam's ``DirectRunner`` would first try the Prism runner and download its
  binary from GitHub on every run (``direct_runner.py``: it does so even when named
  explicitly), then fall back to this same runner.
* ``DaskRunner`` (Beam's ``apache_beam.runners.dask.dask_runner.DaskRunner`` over
  ``dask.distributed``): without ``--dask_client_address`` a ``LocalCluster`` of
  ``data.dask_workers`` worker processes (0 = one per core) is started on 127.0.0.1 for this
  conversion and closed afterwards, with the client the runner opened; with an address the
  runner connects to that scheduler and only its client is closed. Beam's Dask translation
  puts up to 128 elements of a ``Create`` in one partition (one task), so
  ``--dask_partition_size=1`` is added unless a partitioning is given: every source part is
  then a task of its own that any worker can take.
* Any other name (``DataflowRunner``, ``FlinkRunner``, ``SparkRunner``, ``PortableRunner``,
  ``PrismRunner`` …) is left to Beam.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.convert.errors import ConvertError

log = logging.getLogger(__name__)

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_IN_PROCESS = ("", "DirectRunner", "FnApiRunner")


@dataclass
class Engine:
    """The runner of one conversion and the Beam options it runs with.

    Attributes:
        runner: a runner object for ``beam.Pipeline(runner=…)``, or None to let Beam resolve
            ``--runner`` by name.
        args: the Beam options (the caller's, plus what the runner needs).
        threads: block-pool threads per worker process (0 = one per core of the worker).
        name: the runner as named for people (``FnApiRunner``, ``DaskRunner`` …).
    """

    runner: Any
    args: list[str]
    threads: int = 0
    name: str = ""
    _clients: list[Any] = field(default_factory=list)

    def finished(self, result: Any) -> None:
        """Release what the runner opened for ``result`` (the DaskRunner's client)."""
        client = getattr(result, "client", None)
        if client is not None:
            self._clients.append(client)


def runner_name(beam_args: Sequence[str]) -> str:
    """The ``--runner`` value in ``beam_args`` ("" when absent)."""
    name = ""
    args = list(beam_args)
    for i, arg in enumerate(args):
        if arg == "--runner" and i + 1 < len(args):
            name = args[i + 1]
        elif arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
    return name


def _has(beam_args: Sequence[str], *options: str) -> bool:
    return any(a == o or a.startswith(o + "=") for a in beam_args for o in options)


@contextlib.contextmanager
def engine(beam_args: Sequence[str], dask_workers: int = 0, threads: int = 0) -> Iterator[Engine]:
    """Pick the runner for ``beam_args`` and hold what it needs while the pipeline runs.

    Args:
        beam_args: Beam options as given (``--runner`` and the runner's own options).
        dask_workers: worker processes of a local Dask cluster (0 = one per core).
        threads: block-pool threads per worker process (0 = one per core, or cores per
            worker for a local Dask cluster).

    Yields:
        The :class:`Engine`; call :meth:`Engine.finished` with the pipeline result.

    Raises:
        ConvertError: ``DaskRunner`` without ``dask``/``distributed`` installed.
    """
    args = list(beam_args)
    name = runner_name(args)
    if name in _IN_PROCESS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        yield Engine(FnApiRunner(), args, threads, "FnApiRunner")
        return
    if name not in ("DaskRunner", DASK_RUNNER):
        yield Engine(None, args, threads, name)
        return
    try:
        from apache_beam.runners.dask.dask_runner import DaskRunner
        from dask.distributed import LocalCluster
    except ImportError:
        raise ConvertError("--runner DaskRunner needs dask and distributed: pip install "
                           "'dask[distributed]' (the project's environment has them)") from None
    if not _has(args, "--dask_npartitions", "--dask_partition_size"):
        args.append("--dask_partition_size=1")
    cluster = None
    if not _has(args, "--dask_client_address", "--dask_scheduler_file"):
        cores = os.cpu_count() or 1
        workers = dask_workers or cores
        # Progress from worker processes: plain lines (several bars on one terminal would mix).
        env = {"HIGGS_PROGRESS": os.environ.get("HIGGS_PROGRESS", "log")}
        # Everything on loopback: the scheduler's HTTP server (always started; the dashboard
        # itself is off) on a free port, not 0.0.0.0:8787.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                               scheduler_kwargs={"dashboard": False}, env=env)
        args.append(f"--dask_client_address={cluster.scheduler_address}")
        threads = threads or max(1, cores // workers)
        log.info("started a local Dask cluster of %d worker processes at %s", workers,
                 cluster.scheduler_address)
    run = Engine(DaskRunner(), args, threads, "DaskRunner")
    try:
        yield run
    finally:
        for client in run._clients:
            client.close()
        if cluster is not None:
            cluster.close()
