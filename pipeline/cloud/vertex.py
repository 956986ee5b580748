"""Training on Vertex AI: build a CustomJob from the config, submit it, follow it.

    python -c "from pipeline.core.config import load_config; from pipeline.cloud import vertex; \
print(vertex.describe(vertex.build_custom_job(load_config('full', overrides=[ \
'runtime.gcp_project=my-project', 'runtime.gcp_region=us-central1', \
'runtime.image=us-central1-docker.pkg.dev/my-project/higgs/higgs:1', 'runtime.worker_count=4']), \
'gs://my-bucket/data/full', 'gs://my-bucket/runs/r1')))"

This module is the submitting side. The job runs the project's own image (``infra/Dockerfile``);
every replica runs ``python -m pipeline.cloud.vertex_replica --config gs://…/RUN/job/config.yaml
--data gs://… --out gs://…/RUN`` (:mod:`pipeline.cloud.vertex_replica`, which trains and, on the
chief, uploads the run directory to ``gs://``). The config reaches the replicas one way:
:func:`run_training_vertex` writes the resolved job config (:func:`job_config`) as YAML to
``RUN/job/config.yaml`` before it submits the job, and every replica reads that file back.
Three shapes, chosen from ``cfg.runtime``:

* ``tpu_type`` set (``v3-8``, ``v5e-4`` …): one TPU VM replica, ``train.strategy=tpu`` with
  ``train.tpu=local`` (a Vertex TPU VM has its TPU attached to the VM itself).
* ``worker_count`` > 1: worker pool 0 = the chief (1 replica), worker pool 1 = ``worker_count - 1``
  workers, ``train.strategy=multi_worker``. Vertex AI sets ``TF_CONFIG`` on every replica
  (cluster ``{"chief": [pool 0], "worker": [pool 1]}``), which MultiWorkerMirroredStrategy reads.
* otherwise one replica with ``machine_type`` (+ ``accelerator_type``/``accelerator_count``).

The objects are ``google.cloud.aiplatform_v1`` request types (``CustomJob``, ``CustomJobSpec``,
``WorkerPoolSpec``, ``MachineSpec``, ``ContainerSpec``), so what the tests check is what the
service receives. Credentials are Application Default Credentials, looked up only when a job is
submitted (:func:`job_client`). The tests run a job's worker pools as local processes with
``TF_CONFIG`` built the way Vertex AI builds it (``tests/vertex_standin.py``).
"""

from __future__ import annotations

import datetime
import logging
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import checksums, rundir, storage
from pipeline.core.config import Config, merge, require_runtime, to_yaml
from pipeline.core.errors import PipelineError
from pipeline.core.rundir import TrainResult

if typing.TYPE_CHECKING:  # the client library is imported lazily (it is large)
    from google.cloud import aiplatform_v1

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(hours=24)
# Every replica runs `python -m pipeline.cloud.vertex_replica --config … --data … --out …`.
REPLICA_COMMAND = ("python", "-m", "pipeline.cloud.vertex_replica")
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


def job_config(cfg: Config) -> Config:
    """Return the config the replicas train with: local backend and the job's strategy.

    Inside the job nothing may submit another job (``backend=local``) or start local worker
    processes (``train.workers=1``): Vertex AI already started the replicas.
    """
    kind = job_kind(cfg)
    train: dict[str, Any] = {"workers": 1}
    if kind == "tpu":
        train.update(strategy="tpu", tpu="local")
    elif kind == "multi_worker":
        train["strategy"] = "multi_worker"
    return merge(cfg, {"runtime": {"backend": "local"}, "train": train})


def replica_args(data: str, run_dir: str) -> list[str]:
    """Return the arguments of every replica (:func:`pipeline.cloud.vertex_replica.replica_main`).

    Args:
        data: the dataset directory (``gs://`` in the cloud).
        run_dir: the run directory the chief writes (``gs://`` in the cloud).

    Returns:
        ``["--config", RUN/job/config.yaml, "--data", data, "--out", run_dir]``; the config file
        is written by :func:`write_job_config`.
    """
    return ["--config", rundir.job_config_path(run_dir), "--data", data, "--out", run_dir]


def write_job_config(cfg: Config, run_dir: str) -> str:
    """Write the config the replicas train with (:func:`job_config`) to ``RUN/job/config.yaml``.

    Args:
        cfg: the resolved config.
        run_dir: the job's run directory (local or ``gs://``).

    Returns:
        The location written, the ``--config`` of :func:`replica_args`.
    """
    uri = rundir.job_config_path(run_dir)
    storage.write_text(uri, to_yaml(job_config(cfg)))
    return uri


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

    The config's own rules (TPU type, TPU with several workers, counts) were checked when it was
    loaded (:func:`pipeline.core.config.validate`); this adds what only a Vertex AI job needs.

    Raises:
        VertexConfigError: missing project/region/image, non-gs:// paths, or an accelerator
            type Vertex AI does not offer.
    """
    from google.cloud import aiplatform_v1

    rt = cfg.runtime
    require_runtime(cfg, ("gcp_project", "gcp_region", "image"), "a Vertex AI job", VertexConfigError)
    for name, uri in (("--data", data), ("--out", run_dir)):
        if not storage.is_gcs(uri):
            raise VertexConfigError(
                f"{name} {uri} is not a gs:// location; Vertex AI replicas cannot read this "
                f"machine's disk — use gs://BUCKET/…")
    known = [a.name for a in aiplatform_v1.AcceleratorType if a.value]
    if rt.accelerator_type and rt.accelerator_type not in known:
        raise VertexConfigError(
            f"runtime.accelerator_type={rt.accelerator_type!r} is not a Vertex AI accelerator; "
            f"choose one of: {', '.join(k for k in known if not k.startswith('TPU'))}")


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
        args=replica_args(data, run_dir),
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


def run_training_vertex(cfg: Config, data: str, run_dir: str, **follow: Any) -> TrainResult:
    """Train ``cfg`` on Vertex AI (the entry when ``cfg.runtime.backend == "vertex"``).

    Builds the job, writes the replicas' config to ``REMOTE_RUN/job/config.yaml``, submits the
    job with :func:`submit_and_follow` and returns when it succeeded. The chief writes the run
    directory to gs:// (``config.yaml``, ``model/``, ``logs/``, ``checkpoints/``,
    ``history.json``); when ``run_dir`` is local it is written under
    ``runtime.staging_location/vertex-runs/`` and copied to ``run_dir`` afterwards, so
    evaluation and publishing work on it as on a local run.

    Args:
        cfg: resolved config with ``runtime.backend == "vertex"``.
        data: ``gs://`` dataset directory.
        run_dir: local or ``gs://`` run directory.
        **follow: passed to :func:`submit_and_follow` (``client``, ``poll_seconds`` …).

    Returns:
        The run's :class:`~pipeline.core.rundir.TrainResult`; its ``job`` holds the job's
        ``name``, final ``state``, ``console_url`` and ``remote_run_dir`` (where the job wrote the run).

    Raises:
        VertexConfigError: see :func:`validate` and :func:`remote_run_dir`.
        VertexJobError: the job failed, or it succeeded without leaving a finished run.
    """
    remote = remote_run_dir(cfg, run_dir)
    job = build_custom_job(cfg, data, remote)  # validates before anything is written
    write_job_config(cfg, remote)
    done = submit_and_follow(job, project=cfg.runtime.gcp_project, region=cfg.runtime.gcp_region,
                             **follow)
    if remote != run_dir:
        n = copy_tree(remote, run_dir)
        log.info("copied %d files of the run from %s to %s", n, remote, run_dir)
    info = {"name": done.name, "state": done.state.name, "console_url": console_url(done.name),
            "remote_run_dir": remote}
    try:
        return TrainResult.from_run_dir(run_dir, job=info)
    except rundir.RunDirError:
        raise VertexJobError(
            f"Vertex AI job {done.name} succeeded but {run_dir} has no {rundir.HISTORY} or "
            f"{rundir.MODEL_DIR}/{rundir.MODEL_FILE}; see the chief's log: {info['console_url']}"
        ) from None


def copy_tree(src: str, dst: str) -> int:
    """Copy every file under ``src`` to ``dst`` (local ↔ gs://); return the file count."""
    files = storage.list_files(src)
    for rel in files:
        source, target = storage.join(src, rel), storage.join(dst, rel)
        if storage.is_gcs(target):
            checksums.upload_file(source, target)
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_bytes(storage.read_bytes(source))
    return len(files)
