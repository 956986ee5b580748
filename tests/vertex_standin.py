"""A local stand-in of Vertex AI's replicas: a CustomJob's worker pools as processes on 127.0.0.1.

    .venv/bin/pytest tests/test_vertex.py -m slow    # a 2-replica job trains through it

Test-only (imported by ``tests/test_vertex.py`` as ``vertex_standin``): :func:`run_job_locally`
starts every replica of a job with ``TF_CONFIG`` built the way Vertex AI builds it
(:func:`vertex_tf_configs`), running the job's own command and arguments with this machine's
Python — what Vertex AI does on separate VMs with ``workerpoolN-R:2222`` addresses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from google.cloud import aiplatform_v1

from pipeline.cloud.vertex import VertexJobError
from pipeline.core.ports import free_ports

# Vertex AI's TF_CONFIG names worker pools 0..3 like this (pool 0 is the "primary replica").
POOL_TASK_TYPES = ("chief", "worker", "ps", "evaluator")


def vertex_tf_configs(job: aiplatform_v1.CustomJob, addresses: Sequence[Sequence[str]]) -> list[list[str]]:
    """Return ``TF_CONFIG`` JSON for every replica, built the way Vertex AI builds it.

    Vertex AI maps worker pool 0..3 to the TensorFlow task types chief, worker, ps, evaluator;
    ``cluster`` lists every pool's replica addresses except the evaluator's, and ``task`` names
    the replica's own type and index; ``environment`` is ``"cloud"``.

    Args:
        job: the CustomJob.
        addresses: for each worker pool, one ``host:port`` per replica.

    Returns:
        ``configs[pool][replica]`` — the JSON string for that replica.
    """
    pools = list(job.job_spec.worker_pool_specs)
    if len(addresses) != len(pools):
        raise ValueError(f"{len(pools)} worker pools but {len(addresses)} address lists")
    cluster = {}
    for i, (pool, addrs) in enumerate(zip(pools, addresses, strict=True)):
        if len(addrs) != pool.replica_count:
            raise ValueError(f"worker pool {i} has {pool.replica_count} replicas, "
                             f"got {len(addrs)} addresses")
        if POOL_TASK_TYPES[i] != "evaluator":
            cluster[POOL_TASK_TYPES[i]] = list(addrs)
    return [[json.dumps({"cluster": cluster, "task": {"type": POOL_TASK_TYPES[i], "index": r},
                         "environment": "cloud", "job": {"display_name": job.display_name}})
             for r in range(len(addrs))] for i, addrs in enumerate(addresses)]


@dataclass(frozen=True)
class LocalReplica:
    """One finished replica of :func:`run_job_locally`."""

    task: str  # e.g. "chief-0", "worker-1"
    returncode: int
    output: str


def run_job_locally(
    job: aiplatform_v1.CustomJob,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
) -> list[LocalReplica]:
    """Run every replica of ``job`` as a local process with Vertex-style ``TF_CONFIG``.

    Each replica runs its pool's ``command + args`` (``python`` is this interpreter; other
    commands are looked up on ``PATH`` or next to it) with the container's env plus
    ``TF_CONFIG`` whose addresses are free ports on 127.0.0.1.

    Args:
        job: the CustomJob (the image is ignored: this machine's environment is used).
        env: extra environment for every replica (e.g. ``STORAGE_EMULATOR_HOST``).
        timeout: seconds before all replicas are killed.

    Returns:
        One :class:`LocalReplica` per replica, chief first.

    Raises:
        VertexJobError: a replica did not finish within ``timeout``.
    """
    pools = list(job.job_spec.worker_pool_specs)
    # All ports chosen while their sockets are held, so no two replicas get the same one.
    ports = iter(free_ports(sum(p.replica_count for p in pools)))
    addresses = [[f"127.0.0.1:{next(ports)}" for _ in range(p.replica_count)] for p in pools]
    configs = vertex_tf_configs(job, addresses)
    procs: list[tuple[str, subprocess.Popen, IO[bytes]]] = []
    with contextlib.ExitStack() as outputs:
        try:
            for i, pool in enumerate(pools):
                command = list(pool.container_spec.command) + list(pool.container_spec.args)
                command[0] = _resolve(command[0])
                for r in range(pool.replica_count):
                    child_env = {**os.environ, **{e.name: e.value for e in pool.container_spec.env},
                                 **(env or {}), "TF_CONFIG": configs[i][r]}
                    out = outputs.enter_context(tempfile.TemporaryFile())
                    proc = subprocess.Popen(command, env=child_env, stdout=out, stderr=subprocess.STDOUT)
                    procs.append((f"{POOL_TASK_TYPES[i]}-{r}", proc, out))
            deadline = time.monotonic() + timeout
            results = []
            for task, proc, out in procs:
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise VertexJobError(f"local stand-in replica {task} still running after "
                                         f"{timeout:.0f}s") from None
                out.seek(0)
                results.append(LocalReplica(task, proc.returncode, out.read().decode(errors="replace")))
            return results
        finally:
            for _task, proc, _out in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _resolve(exe: str) -> str:
    if exe == "python":  # the image's interpreter is the project's; here it is this one
        return sys.executable
    found = shutil.which(exe)
    if found:
        return found
    beside = Path(sys.executable).with_name(exe)
    return str(beside) if beside.exists() else exe
