"""Training on Vertex AI: build a CustomJob from the config, submit it, follow it.

    python -c "from pipeline.core.config import load_config; from pipeline import vertex; \
print(vertex.describe(vertex.build_custom_job(load_config('full', overrides=[ \
'runtime.gcp_project=my-project', 'runtime.gcp_region=us-central1', \
'runtime.image=us-central1-docker.pkg.dev/my-project/higgs/higgs:1', 'runtime.worker_count=4']), \
'gs://my-bucket/data/full', 'gs://my-bucket/runs/r1')))"

The job runs the project's own image (``infra/Dockerfile``) with the arguments
``train --data gs://… --out gs://… --preset P --set …`` of the ``higgs`` CLI a user runs locally,
with every config value that differs from the preset passed as ``--set`` so the replicas train
exactly the resolved config. The command is ``python -m pipeline.cloud.vertex`` (:func:`replica_main`):
it runs those ``higgs`` arguments, training into a local directory when ``--out`` is ``gs://``
(``pipeline.training.train`` writes local run directories), and the chief then uploads the run directory
to ``gs://``; a restarted job first downloads ``checkpoints/`` to resume. Three shapes, chosen
from ``cfg.runtime``:

* ``tpu_type`` set (``v3-8``, ``v5e-4`` …): one TPU VM replica, ``train.strategy=tpu`` with
  ``train.tpu=local`` (a Vertex TPU VM has its TPU attached to the VM itself).
* ``worker_count`` > 1: worker pool 0 = the chief (1 replica), worker pool 1 = ``worker_count - 1``
  workers, ``train.strategy=multi_worker``. Vertex AI sets ``TF_CONFIG`` on every replica
  (cluster ``{"chief": [pool 0], "worker": [pool 1]}``), which MultiWorkerMirroredStrategy reads.
* otherwise one replica with ``machine_type`` (+ ``accelerator_type``/``accelerator_count``).

The objects are ``google.cloud.aiplatform_v1`` request types (``CustomJob``, ``CustomJobSpec``,
``WorkerPoolSpec``, ``MachineSpec``, ``ContainerSpec``), so what the tests check is what the
service receives. Credentials are Application Default Credentials, looked up only when a job is
submitted (:func:`job_client`). :func:`run_job_locally` runs a job's worker pools as local
processes with ``TF_CONFIG`` built the way Vertex AI builds it — the stand-in used by the tests.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import storage
from pipeline.core.config import Config, load_config, require_runtime
from pipeline.core.errors import PipelineError
from pipeline.core.ports import free_ports

if typing.TYPE_CHECKING:  # the client library is imported lazily (it is large)
    from google.cloud import aiplatform_v1

log = logging.getLogger(__name__)

# Vertex AI's TF_CONFIG names worker pools 0..3 like this (pool 0 is the "primary replica").
POOL_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
# Port Vertex AI gives every replica in CLUSTER_SPEC / TF_CONFIG addresses ("workerpool0-0:2222").
VERTEX_PORT = 2222
DEFAULT_TIMEOUT = datetime.timedelta(hours=24)
# Every replica runs `python -m pipeline.cloud.vertex <higgs args>` (see replica_main).
REPLICA_COMMAND = ("python", "-m", "pipeline.cloud.vertex")
TERMINAL_OK = "JOB_STATE_SUCCEEDED"
TERMINAL_FAILED = ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")


class VertexConfigError(PipelineError):
    """The config cannot become a Vertex AI job (missing project, image, gs:// paths …)."""


class VertexJobError(PipelineError):
    """Vertex AI refused the job, or the job ended FAILED / CANCELLED / EXPIRED."""


@dataclass(frozen=True)
class TpuShape:
    """How one TPU slice is asked for in a Vertex AI ``MachineSpec``."""

    machine_type: str
    accelerator_type: str  # "" = implied by the machine type (v5e)
    accelerator_count: int
    topology: str = ""


# Vertex AI custom training on TPU VMs: v2/v3 are "cloud-tpu" + accelerator type and 8 cores;
# v5e (v5litepod) is chosen by machine type ct5lp-hightpu-{1,4,8}t plus its 2-D topology.
TPU_SHAPES: dict[str, TpuShape] = {
    "v2-8": TpuShape("cloud-tpu", "TPU_V2", 8),
    "v3-8": TpuShape("cloud-tpu", "TPU_V3", 8),
    "v5e-1": TpuShape("ct5lp-hightpu-1t", "", 0, "1x1"),
    "v5e-4": TpuShape("ct5lp-hightpu-4t", "", 0, "2x2"),
    "v5e-8": TpuShape("ct5lp-hightpu-8t", "", 0, "2x4"),
}


def job_kind(cfg: Config) -> str:
    """Return ``"tpu"``, ``"multi_worker"`` or ``"single"`` for ``cfg.runtime``."""
    if cfg.runtime.tpu_type:
        return "tpu"
    return "multi_worker" if cfg.runtime.worker_count > 1 else "single"


def config_overrides(cfg: Config) -> list[str]:
    """Return ``section.key=value`` strings that turn ``load_config(cfg.preset)`` into ``cfg``.

    Values are written as YAML scalars (``yaml.safe_dump``) so :func:`load_config` reads them
    back to the same types (``1e-07`` alone would be read as a string by YAML 1.1).

    Args:
        cfg: the resolved config.

    Returns:
        Overrides in section/field order; empty when ``cfg`` equals its preset.
    """
    import yaml

    base = load_config(cfg.preset)
    out = []
    for section in ("data", "model", "train", "evaluate", "runtime"):
        mine, theirs = getattr(cfg, section), getattr(base, section)
        for f in dataclasses.fields(mine):
            value = getattr(mine, f.name)
            if value == getattr(theirs, f.name):
                continue
            if isinstance(value, tuple):
                text = ",".join(_scalar(v, yaml) for v in value)
            else:
                text = _scalar(value, yaml)
            out.append(f"{section}.{f.name}={text}")
    return out


def _scalar(value: Any, yaml: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        # Quote only when YAML would read the bare text as something else (e.g. "1", "true").
        bare = yaml.safe_load(value) if value.strip() else ""
        return value if bare == value else json.dumps(value)
    text = yaml.safe_dump(value, default_flow_style=True)
    return text.split("\n", 1)[0].removesuffix(" ...").strip()


def job_config(cfg: Config) -> Config:
    """Return the config the replicas train with: local backend and the job's strategy.

    Inside the job nothing may submit another job (``backend=local``) or start local worker
    processes (``train.workers=1``): Vertex AI already started the replicas.
    """
    from pipeline.core.config import merge

    kind = job_kind(cfg)
    train: dict[str, Any] = {"workers": 1}
    if kind == "tpu":
        train.update(strategy="tpu", tpu="local")
    elif kind == "multi_worker":
        train["strategy"] = "multi_worker"
    return merge(cfg, {"runtime": {"backend": "local"}, "train": train})


def training_args(cfg: Config, data: str, run_dir: str) -> list[str]:
    """Return the ``higgs`` arguments every replica runs: ``train --data … --out … --set …``.

    Args:
        cfg: the resolved config (``runtime.*`` decides the job shape).
        data: the dataset directory (``gs://`` in the cloud).
        run_dir: the run directory the chief writes (``gs://`` in the cloud).

    Returns:
        Arguments after the ``higgs`` command.
    """
    args = ["train", "--data", data, "--out", run_dir, "--preset", cfg.preset]
    for item in config_overrides(job_config(cfg)):
        args += ["--set", item]
    return args


def _machine_spec(cfg: Config) -> aiplatform_v1.MachineSpec:
    from google.cloud import aiplatform_v1

    rt = cfg.runtime
    if rt.tpu_type:
        shape = TPU_SHAPES[rt.tpu_type]
        spec = aiplatform_v1.MachineSpec(machine_type=shape.machine_type, tpu_topology=shape.topology)
        if shape.accelerator_type:
            spec.accelerator_type = aiplatform_v1.AcceleratorType[shape.accelerator_type]
            spec.accelerator_count = shape.accelerator_count
        return spec
    spec = aiplatform_v1.MachineSpec(machine_type=rt.machine_type)
    if rt.accelerator_type:
        spec.accelerator_type = aiplatform_v1.AcceleratorType[rt.accelerator_type]
        spec.accelerator_count = rt.accelerator_count
    return spec


def validate(cfg: Config, data: str, run_dir: str) -> None:
    """Check that ``cfg`` can become a Vertex AI job; raise one line naming the fix.

    Raises:
        VertexConfigError: missing project/region/image, non-gs:// paths, unknown TPU or
            accelerator type, or a TPU asked together with several workers.
    """
    from google.cloud import aiplatform_v1

    rt = cfg.runtime
    require_runtime(cfg, ("gcp_project", "gcp_region", "image"), "a Vertex AI job", VertexConfigError)
    for name, uri in (("--data", data), ("--out", run_dir)):
        if not storage.is_gcs(uri):
            raise VertexConfigError(
                f"{name} {uri} is not a gs:// location; Vertex AI replicas cannot read this "
                f"machine's disk — use gs://BUCKET/…")
    if rt.tpu_type and rt.tpu_type not in TPU_SHAPES:
        raise VertexConfigError(
            f"runtime.tpu_type={rt.tpu_type!r} is unknown; choose one of: {', '.join(TPU_SHAPES)}")
    if rt.tpu_type and rt.worker_count > 1:
        raise VertexConfigError(
            "runtime.tpu_type and runtime.worker_count > 1 are exclusive: a TPU job is one TPU VM; "
            "set runtime.worker_count=1")
    if rt.worker_count < 1:
        raise VertexConfigError(f"runtime.worker_count must be at least 1, got {rt.worker_count}")
    known = [a.name for a in aiplatform_v1.AcceleratorType if a.value]
    if rt.accelerator_type and rt.accelerator_type not in known:
        raise VertexConfigError(
            f"runtime.accelerator_type={rt.accelerator_type!r} is not a Vertex AI accelerator; "
            f"choose one of: {', '.join(k for k in known if not k.startswith('TPU'))}")
    if rt.accelerator_type and rt.accelerator_count < 1:
        raise VertexConfigError("runtime.accelerator_count must be ≥ 1 when accelerator_type is set")


def build_custom_job(
    cfg: Config,
    data: str,
    run_dir: str,
    *,
    display_name: str | None = None,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> aiplatform_v1.CustomJob:
    """Build the Vertex AI ``CustomJob`` that trains ``cfg`` on ``data`` into ``run_dir``.

    Args:
        cfg: resolved config; ``runtime.{gcp_project, gcp_region, image}`` must be set.
        data: ``gs://`` dataset directory written by ``higgs convert``.
        run_dir: ``gs://`` run directory (checkpoints, TensorBoard logs, model).
        display_name: job name in the console (default ``higgs-<preset>-<kind>``).
        timeout: Vertex AI cancels the job after this long.

    Returns:
        A ``google.cloud.aiplatform_v1.CustomJob`` ready for ``JobServiceClient.create_custom_job``.

    Raises:
        VertexConfigError: see :func:`validate`.
    """
    from google.cloud import aiplatform_v1

    validate(cfg, data, run_dir)
    rt = cfg.runtime
    kind = job_kind(cfg)
    container = aiplatform_v1.ContainerSpec(
        image_uri=rt.image,
        command=list(REPLICA_COMMAND),
        args=training_args(cfg, data, run_dir),
        env=[aiplatform_v1.EnvVar(name=k, value=v) for k, v in _job_env(cfg).items()],
    )
    machine = _machine_spec(cfg)
    disk = aiplatform_v1.DiskSpec(boot_disk_type="pd-ssd", boot_disk_size_gb=100)
    pools = [aiplatform_v1.WorkerPoolSpec(replica_count=1, machine_spec=machine,
                                          container_spec=container, disk_spec=disk)]
    if kind == "multi_worker":
        # Pool 1 holds the other workers; same image, args and machine as the chief, because
        # MultiWorkerMirroredStrategy is synchronous all-reduce: every replica is a peer.
        pools.append(aiplatform_v1.WorkerPoolSpec(
            replica_count=rt.worker_count - 1, machine_spec=machine,
            container_spec=container, disk_spec=disk))
    spec = aiplatform_v1.CustomJobSpec(
        worker_pool_specs=pools,
        scheduling=aiplatform_v1.Scheduling(timeout=timeout),
        base_output_directory=aiplatform_v1.GcsDestination(output_uri_prefix=run_dir),
    )
    if rt.service_account:
        spec.service_account = rt.service_account
    return aiplatform_v1.CustomJob(
        display_name=display_name or f"higgs-{cfg.preset}-{kind}",
        job_spec=spec,
        labels={"app": "higgs", "preset": cfg.preset, "kind": kind.replace("_", "-")},
    )


def _job_env(cfg: Config) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if cfg.runtime.gcp_project:
        env["GOOGLE_CLOUD_PROJECT"] = cfg.runtime.gcp_project
    return env


def describe(job: aiplatform_v1.CustomJob) -> str:
    """Return the job as the JSON the Vertex AI REST API takes (``gcloud ai custom-jobs``)."""
    from google.cloud import aiplatform_v1

    return aiplatform_v1.CustomJob.to_json(job, including_default_value_fields=False)


# --- submitting and following --------------------------------------------------------------


def job_client(region: str) -> Any:
    """Return a ``JobServiceClient`` for ``region`` with Application Default Credentials.

    Raises:
        VertexConfigError: when no credentials are found.
    """
    import google.auth
    import google.auth.exceptions
    from google.cloud import aiplatform_v1

    try:
        credentials, _project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise VertexConfigError(
            "no Google Cloud credentials (Application Default Credentials) for Vertex AI: "
            "run `gcloud auth application-default login` or run on a VM/job with a service "
            f"account ({str(exc).splitlines()[0]})") from None
    return aiplatform_v1.JobServiceClient(
        credentials=credentials,
        client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"})


LogReader = Callable[[str], Iterable[str]]


def cloud_logging_reader(project: str) -> LogReader:
    """Return a reader of a job's new Cloud Logging lines (``resource.type="ml_job"``).

    Uses the Logging REST API through google-auth (no extra client library); each call returns
    the lines written since the previous call. Credentials: ADC, looked up on first call.
    """
    state: dict[str, Any] = {"since": "1970-01-01T00:00:00Z", "seen": set(), "session": None}

    def read(job_name: str) -> list[str]:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        if state["session"] is None:
            creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/logging.read"])
            state["session"] = AuthorizedSession(creds)
        job_id = job_name.rsplit("/", 1)[-1]
        body = {
            "resourceNames": [f"projects/{project}"],
            "filter": (f'resource.type="ml_job" AND resource.labels.job_id="{job_id}" '
                       f'AND timestamp>="{state["since"]}"'),
            "orderBy": "timestamp asc",
            "pageSize": 1000,
        }
        resp = state["session"].post("https://logging.googleapis.com/v2/entries:list", json=body,
                                     timeout=60)
        if resp.status_code != 200:
            return [f"(could not read Cloud Logging: HTTP {resp.status_code})"]
        lines = []
        for entry in resp.json().get("entries", []):
            if entry.get("insertId") in state["seen"]:
                continue
            state["seen"].add(entry.get("insertId"))
            state["since"] = entry.get("timestamp", state["since"])
            text = entry.get("textPayload") or entry.get("jsonPayload", {}).get("message", "")
            task = entry.get("labels", {}).get("ml.googleapis.com/task_name", "")
            lines.append(f"[{task}] {text}".rstrip() if task else str(text).rstrip())
        return lines

    return read


def console_url(job_name: str) -> str:
    """Return the Cloud console page of a job named ``projects/P/locations/R/customJobs/ID``."""
    parts = job_name.split("/")
    if len(parts) == 6:
        project, region, job_id = parts[1], parts[3], parts[5]
        return (f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/"
                f"{job_id}/cpu?project={project}")
    return job_name


def submit_and_follow(
    job: aiplatform_v1.CustomJob,
    *,
    project: str,
    region: str,
    client: Any = None,
    read_logs: LogReader | None = None,
    poll_seconds: float = 30.0,
    timeout_seconds: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> aiplatform_v1.CustomJob:
    """Create ``job`` on Vertex AI, print its state changes and log lines until it ends.

    Args:
        job: from :func:`build_custom_job`.
        project: Google Cloud project id.
        region: Vertex AI region (``us-central1`` …).
        client: a ``JobServiceClient``; default :func:`job_client` (ADC at call time).
        read_logs: called with the job name each poll, returns new log lines; default reads
            Cloud Logging (:func:`cloud_logging_reader`).
        poll_seconds: seconds between state polls.
        timeout_seconds: stop following (and cancel the job) after this long; None = wait.
        echo: where lines go (default: this module's logger at INFO).

    Returns:
        The finished job (state ``JOB_STATE_SUCCEEDED``).

    Raises:
        VertexJobError: the service refused the job, or it ended failed, cancelled or expired
            (the message carries the job's own error), or ``timeout_seconds`` passed.
    """
    from google.api_core import exceptions as gexc

    say = echo or log.info
    client = client if client is not None else job_client(region)
    read_logs = read_logs if read_logs is not None else cloud_logging_reader(project)
    parent = f"projects/{project}/locations/{region}"
    try:
        created = client.create_custom_job(parent=parent, custom_job=job)
    except gexc.GoogleAPICallError as exc:
        raise VertexJobError(f"Vertex AI refused job {job.display_name!r} in {parent}: "
                             f"{exc.message or exc}") from None
    name = created.name
    say(f"submitted Vertex AI job {name} — {console_url(name)}")
    started = time.monotonic()
    last_state = None
    while True:
        try:
            current = client.get_custom_job(name=name)
        except (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError) as exc:
            say(f"could not read job state ({exc.__class__.__name__}); retrying")
            time.sleep(poll_seconds)
            continue
        state = current.state.name
        if state != last_state:
            say(f"{name}: {state}")
            last_state = state
        for line in read_logs(name):
            say(line)
        if state == TERMINAL_OK:
            return current
        if state in TERMINAL_FAILED:
            detail = current.error.message or "no error message"
            raise VertexJobError(f"Vertex AI job {name} ended {state}: {detail} "
                                 f"(logs: {console_url(name)})")
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            client.cancel_custom_job(name=name)
            raise VertexJobError(f"Vertex AI job {name} still {state} after {timeout_seconds:.0f}s; "
                                 "cancel requested")
        time.sleep(poll_seconds)


@dataclass(frozen=True)
class VertexRun:
    """What a Vertex AI training run produced (the attributes of ``pipeline.training.train.TrainResult``).

    Attributes:
        run_dir: the run directory the caller asked for (local or gs://).
        model_path: ``run_dir/model/model.keras``.
        epochs: epochs run, from ``history.json``.
        best_val_auc: best validation AUC in ``history.json`` (nan if none).
        history: the content of ``history.json``.
        job_name: ``projects/P/locations/R/customJobs/ID``.
        state: the final job state name.
        console_url: the job's Cloud console page.
        remote_run_dir: where the job wrote the run (gs://).
    """

    run_dir: str
    model_path: str
    epochs: int
    best_val_auc: float
    history: dict[str, Any]
    job_name: str
    state: str
    console_url: str
    remote_run_dir: str


def remote_run_dir(cfg: Config, run_dir: str) -> str:
    """Return where the job writes ``run_dir``: itself if gs://, else under the staging bucket.

    Raises:
        VertexConfigError: ``run_dir`` is local and neither ``runtime.staging_location`` nor
            ``runtime.temp_location`` is set.
    """
    if storage.is_gcs(run_dir):
        return run_dir
    base = cfg.runtime.staging_location or cfg.runtime.temp_location
    if not storage.is_gcs(base):
        raise VertexConfigError(
            f"run directory {run_dir} is local, so the Vertex AI job needs a gs:// place to write "
            "it first: set runtime.staging_location=gs://BUCKET/staging")
    return storage.join(base, "vertex-runs", Path(run_dir).name)


def run_training_vertex(cfg: Config, data: str, run_dir: str, **follow: Any) -> VertexRun:
    """Train ``cfg`` on Vertex AI (the entry when ``cfg.runtime.backend == "vertex"``).

    Builds the job, submits it with :func:`submit_and_follow` and returns when it succeeded.
    The chief writes the run directory to gs:// (``config.yaml``, ``model/``, ``logs/``,
    ``checkpoints/``, ``history.json``); when ``run_dir`` is local it is written under
    ``runtime.staging_location/vertex-runs/`` and copied to ``run_dir`` afterwards, so
    evaluation and publishing work on it as on a local run.

    Args:
        cfg: resolved config with ``runtime.backend == "vertex"``.
        data: ``gs://`` dataset directory.
        run_dir: local or ``gs://`` run directory.
        **follow: passed to :func:`submit_and_follow` (``client``, ``poll_seconds`` …).

    Returns:
        :class:`VertexRun` with the ``TrainResult`` attributes plus the job's name and state.
    """
    import math

    remote = remote_run_dir(cfg, run_dir)
    job = build_custom_job(cfg, data, remote)
    done = submit_and_follow(job, project=cfg.runtime.gcp_project, region=cfg.runtime.gcp_region,
                             **follow)
    if remote != run_dir:
        n = _copy_tree(remote, run_dir)
        log.info("copied %d files of the run from %s to %s", n, remote, run_dir)
    history_uri = storage.join(run_dir, "history.json")
    if not storage.exists(history_uri):
        raise VertexJobError(f"Vertex AI job {done.name} succeeded but {history_uri} is missing")
    history = json.loads(storage.read_text(history_uri))
    aucs = [v for v in history.get("val_auc", []) if v is not None and not math.isnan(v)]
    return VertexRun(run_dir, storage.join(run_dir, "model", "model.keras"),
                     len(history.get("epoch", [])), max(aucs) if aucs else float("nan"), history,
                     done.name, done.state.name, console_url(done.name), remote)


# --- the local stand-in: a job's worker pools as processes on 127.0.0.1 ---------------------


def vertex_tf_configs(job: aiplatform_v1.CustomJob, addresses: Sequence[Sequence[str]]) -> list[list[str]]:
    """Return ``TF_CONFIG`` JSON for every replica, built the way Vertex AI builds it.

    Vertex AI maps worker pool 0..3 to the TensorFlow task types chief, worker, ps, evaluator;
    ``cluster`` lists every pool's replica addresses except the evaluator's, and ``task`` names
    the replica's own type and index; ``environment`` is ``"cloud"``
    (sources: README.md §Run on Google Cloud).

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

    Each replica runs its pool's ``command + args`` (``higgs`` resolved next to this Python
    when it is not on ``PATH``) with the container's env plus ``TF_CONFIG`` whose addresses are
    free ports on 127.0.0.1 — what Vertex AI does on separate VMs with ``workerpoolN-R:2222``.

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
    procs: list[tuple[str, subprocess.Popen, Any]] = []
    try:
        for i, pool in enumerate(pools):
            command = list(pool.container_spec.command) + list(pool.container_spec.args)
            command[0] = _resolve(command[0])
            for r in range(pool.replica_count):
                child_env = {**os.environ, **{e.name: e.value for e in pool.container_spec.env},
                             **(env or {}), "TF_CONFIG": configs[i][r]}
                out = _tempfile()
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
        for _task, proc, out in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()


def _resolve(exe: str) -> str:
    if exe == "python":  # the image's interpreter is the project's; here it is this one
        return sys.executable
    found = shutil.which(exe)
    if found:
        return found
    beside = Path(sys.executable).with_name(exe)
    return str(beside) if beside.exists() else exe


def _tempfile() -> Any:
    import tempfile

    return tempfile.TemporaryFile()


# --- what each replica runs ----------------------------------------------------------------


def _is_chief() -> bool:
    """True without ``TF_CONFIG`` (one replica) or when this replica's task is the chief."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    return task.get("type") in ("chief", "master") or (
        task.get("type") == "worker" and task.get("index") == 0
        and "chief" not in json.loads(raw).get("cluster", {}))


def _copy_tree(src: str, dst: str) -> int:
    """Copy every file under ``src`` to ``dst`` (local ↔ gs://); return the file count."""
    files = storage.list_files(src)
    for rel in files:
        source, target = storage.join(src, rel), storage.join(dst, rel)
        if storage.is_gcs(target):
            storage.upload_file(source, target)
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_bytes(storage.read_bytes(source))
    return len(files)


def replica_main(argv: Sequence[str]) -> int:
    """Run one replica of a Vertex AI job: ``higgs`` with a gs:// ``--out`` made local.

    ``pipeline.training.train`` writes a local run directory, so with ``--out gs://…`` the replica
    trains into ``$HIGGS_LOCAL_RUN`` (default ``/tmp/higgs-run``) — after downloading an
    earlier attempt's ``checkpoints/`` so a restarted job resumes — and the chief uploads the
    finished run directory to the ``gs://`` location. Other ``--out`` values run unchanged.

    Args:
        argv: ``higgs`` arguments, e.g. ``train --data gs://… --out gs://… --set …``.

    Returns:
        The exit code of the ``higgs`` command (2 when the upload fails).
    """
    from pipeline import cli

    args = list(argv)
    remote = args[args.index("--out") + 1] if "--out" in args[:-1] else ""
    if not storage.is_gcs(remote):
        return cli.main(args)
    local = Path(os.environ.get("HIGGS_LOCAL_RUN", "/tmp/higgs-run"))
    checkpoints = storage.join(remote, "checkpoints")
    if storage.list_files(checkpoints):
        n = _copy_tree(checkpoints, str(local / "checkpoints"))
        log.info("resuming: downloaded %d checkpoint files from %s", n, checkpoints)
    args[args.index("--out") + 1] = str(local)
    code = cli.main(args)
    if code == 0 and _is_chief():
        try:
            n = _copy_tree(str(local), remote)
        except PipelineError as exc:
            print(f"higgs: error: uploading {local} to {remote} failed: {exc}", file=sys.stderr)
            return 2
        print(f"uploaded {n} files of the run directory to {remote}")
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(replica_main(sys.argv[1:]))
