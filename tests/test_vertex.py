"""Vertex AI job generation, submission/following, and a local stand-in of the multi-worker job.

    .venv/bin/pytest tests/test_vertex.py            # fast part (~10 s)
    .venv/bin/pytest tests/test_vertex.py -m slow    # the 2-worker stand-in that trains

The jobs are ``google.cloud.aiplatform_v1`` objects and the client is the real
``JobServiceClient`` talking gRPC to a stand-in JobService on 127.0.0.1 (there is no Vertex AI
here); the stand-in runs the job's worker pools as local processes with ``TF_CONFIG`` built the
way Vertex AI builds it (``tests/vertex_standin.py``).
"""

from __future__ import annotations

import json
import re
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import free_port
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1.services.job_service.transports import JobServiceGrpcTransport
from google.rpc import status_pb2
from vertex_standin import POOL_TASK_TYPES, run_job_locally, vertex_tf_configs

from pipeline.cloud import vertex, vertex_replica
from pipeline.core import rundir, storage
from pipeline.core.config import ConfigError, TpuType, choices, load_config, read_config
from pipeline.training import strategy

CLOUD = ["runtime.gcp_project=test-project", "runtime.gcp_region=us-central1",
         "runtime.image=us-central1-docker.pkg.dev/test-project/higgs/higgs:1",
         "runtime.backend=vertex"]
DATA, RUN = "gs://test-bucket/data/full", "gs://test-bucket/runs/r1"


def _cfg(*extra: str, preset: str = "full"):
    return load_config(preset, overrides=[*CLOUD, *extra])


# --- building the job ------------------------------------------------------------------------


def test_multi_worker_job_has_chief_and_worker_pools():
    cfg = _cfg("runtime.worker_count=4", "runtime.machine_type=n1-highmem-16",
               "runtime.accelerator_type=NVIDIA_TESLA_T4", "runtime.accelerator_count=2",
               "runtime.service_account=trainer@test-project.iam.gserviceaccount.com")
    job = vertex.build_custom_job(cfg, DATA, RUN)

    assert isinstance(job, aiplatform_v1.CustomJob)
    pools = job.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 3]  # chief + 3 workers = worker_count
    for pool in pools:
        assert pool.machine_spec.machine_type == "n1-highmem-16"
        assert pool.machine_spec.accelerator_type == aiplatform_v1.AcceleratorType.NVIDIA_TESLA_T4
        assert pool.machine_spec.accelerator_count == 2
        assert pool.container_spec.image_uri == cfg.runtime.image
        assert list(pool.container_spec.command) == ["python", "-m", "pipeline.cloud.vertex_replica"]
    args = ["--config", f"{RUN}/job/config.yaml", "--data", DATA, "--out", RUN]
    assert [list(p.container_spec.args) for p in pools] == [args, args]
    replica_cfg = vertex.job_config(cfg)
    assert replica_cfg.train.strategy == "multi_worker"
    assert replica_cfg.runtime.backend == "local"  # replicas must not submit jobs themselves
    env = {e.name: e.value for e in pools[0].container_spec.env}
    assert env["GOOGLE_CLOUD_PROJECT"] == "test-project" and env["PYTHONUNBUFFERED"] == "1"
    assert "TF_CONFIG" not in env  # Vertex AI sets it per replica
    assert job.job_spec.service_account == "trainer@test-project.iam.gserviceaccount.com"
    assert job.job_spec.base_output_directory.output_uri_prefix == RUN
    # The object survives the wire format the service receives.
    again = aiplatform_v1.CustomJob.deserialize(aiplatform_v1.CustomJob.serialize(job))
    assert again == job
    assert json.loads(vertex.describe(job))["jobSpec"]["workerPoolSpecs"][1]["replicaCount"] == "3"


@pytest.mark.gcs
def test_replicas_read_back_exactly_the_job_config(gcs_bucket):
    """The YAML written beside the run reads back (from gs://) equal to job_config(cfg)."""
    cfg = _cfg("runtime.worker_count=2", "model.units=64", "train.epsilon=1.0e-08",
               "train.schedule_boundaries=100,200", "train.schedule_values=0.1,0.01,0.001",
               "train.clipnorm=1.5", "evaluate.baseline=false", 'data.source="123"')
    run = f"gs://{gcs_bucket}/runs/r1"
    uri = vertex.write_job_config(cfg, run)
    assert uri == f"{run}/job/config.yaml"
    job = vertex.build_custom_job(cfg, DATA, run)
    for pool in job.job_spec.worker_pool_specs:
        assert list(pool.container_spec.args) == ["--config", uri, "--data", DATA, "--out", run]
    replica_cfg = read_config(uri)
    assert replica_cfg == vertex.job_config(cfg)
    assert replica_cfg.runtime.backend == "local" and replica_cfg.train.workers == 1
    assert replica_cfg.model.units == 64 and replica_cfg.train.schedule_values == (0.1, 0.01, 0.001)
    assert replica_cfg.train.epsilon == 1e-08 and replica_cfg.data.source == "123"


def test_replica_with_unreadable_config_fails_in_one_line(tmp_path, capsys):
    missing = tmp_path / "job" / "config.yaml"
    code = vertex_replica.replica_main(["--config", str(missing), "--data", str(tmp_path / "data"),
                                        "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("higgs vertex replica: error: cannot read config file") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("tpu", "machine", "accel", "count", "topology"), [
    ("v3-8", "cloud-tpu", aiplatform_v1.AcceleratorType.TPU_V3, 8, ""),
    ("v2-8", "cloud-tpu", aiplatform_v1.AcceleratorType.TPU_V2, 8, ""),
    ("v5e-4", "ct5lp-hightpu-4t", aiplatform_v1.AcceleratorType.ACCELERATOR_TYPE_UNSPECIFIED, 0, "2x2"),
])
def test_tpu_job_is_one_tpu_vm_with_tpu_strategy(tpu, machine, accel, count, topology):
    job = vertex.build_custom_job(_cfg(f"runtime.tpu_type={tpu}"), DATA, RUN)
    (pool,) = job.job_spec.worker_pool_specs
    assert pool.replica_count == 1
    assert pool.machine_spec.machine_type == machine
    assert pool.machine_spec.accelerator_type == accel
    assert pool.machine_spec.accelerator_count == count
    assert pool.machine_spec.tpu_topology == topology
    replica_cfg = vertex.job_config(_cfg(f"runtime.tpu_type={tpu}"))
    assert replica_cfg.train.strategy == "tpu" and replica_cfg.train.tpu == "local"
    assert job.labels["kind"] == "tpu"


def test_single_replica_job_keeps_configured_strategy():
    cfg = _cfg("train.strategy=mirrored")
    (pool,) = vertex.build_custom_job(cfg, DATA, RUN).job_spec.worker_pool_specs
    assert pool.replica_count == 1 and pool.machine_spec.machine_type == "n1-standard-8"
    assert vertex.job_config(cfg).train.strategy == "mirrored"


@pytest.mark.parametrize(("overrides", "data", "needle"), [
    (["runtime.image="], DATA, "runtime.image is empty"),
    (["runtime.gcp_project="], DATA, "runtime.gcp_project is empty"),
    ([], "data/full", "--data data/full is not a gs:// location"),
    (["runtime.accelerator_type=NVIDIA_GTX_1080", "runtime.accelerator_count=1"], DATA,
     "not a Vertex AI accelerator"),
])
def test_unusable_config_fails_with_one_line(overrides, data, needle):
    with pytest.raises(vertex.VertexConfigError) as err:
        vertex.build_custom_job(_cfg(*overrides), data, RUN)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("overrides", "needle"), [
    (["runtime.tpu_type=v9-1024"], "unknown runtime.tpu_type 'v9-1024'"),
    (["runtime.tpu_type=v3-8", "runtime.worker_count=2"], "exclusive"),
])
def test_job_shape_rules_fail_when_the_config_loads(overrides, needle):
    """A TPU job that cannot exist is refused at load, before any job is built or written."""
    with pytest.raises(ConfigError) as err:
        _cfg(*overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)
    # Every TPU type the config admits is one the job builder knows how to ask for.
    assert set(vertex.TPU_SHAPES) == set(choices(TpuType)) - {""}


def test_missing_credentials_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(vertex.VertexConfigError, match="application-default login"):
        vertex.job_client("us-central1")


def test_vertex_tf_config_matches_vertex_layout():
    job = vertex.build_custom_job(_cfg("runtime.worker_count=3"), DATA, RUN)
    addrs = [["workerpool0-0:2222"], ["workerpool1-0:2222", "workerpool1-1:2222"]]
    configs = vertex_tf_configs(job, addrs)
    worker1 = json.loads(configs[1][1])
    assert worker1["cluster"] == {"chief": addrs[0], "worker": addrs[1]}
    assert worker1["task"] == {"type": "worker", "index": 1}
    assert json.loads(configs[0][0])["task"] == {"type": "chief", "index": 0}
    # Only the chief of pool 0 uploads the run: worker 0 is not the chief when a chief exists.
    chiefs = [[strategy.is_chief_task(json.loads(c)) for c in pool] for pool in configs]
    assert chiefs == [[True], [False, False]]


# --- submitting and following: real client, stand-in JobService over gRPC ------------------


class LocalJobService:
    """A JobService on 127.0.0.1 that runs each created CustomJob with vertex_standin.run_job_locally."""

    SERVICE = "google.cloud.aiplatform.v1.JobService"

    def __init__(self) -> None:
        self.jobs: dict[str, aiplatform_v1.CustomJob] = {}
        self.logs: dict[str, list[str]] = {}
        self.env: dict[str, str] = {}
        # Replica arguments to replace (e.g. a gs:// dataset by this machine's copy).
        self.arg_map: dict[str, str] = {}
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "CreateCustomJob": grpc.unary_unary_rpc_method_handler(
                self._create, request_deserializer=aiplatform_v1.CreateCustomJobRequest.deserialize,
                response_serializer=aiplatform_v1.CustomJob.serialize),
            "GetCustomJob": grpc.unary_unary_rpc_method_handler(
                self._get, request_deserializer=aiplatform_v1.GetCustomJobRequest.deserialize,
                response_serializer=aiplatform_v1.CustomJob.serialize),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(self.SERVICE, handlers),))
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    def client(self) -> aiplatform_v1.JobServiceClient:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return aiplatform_v1.JobServiceClient(transport=JobServiceGrpcTransport(channel=channel))

    def read_logs(self, name: str) -> list[str]:
        with self.lock:
            lines, self.logs[name] = self.logs.get(name, []), []
        return lines

    def _create(self, request, context):
        with self.lock:
            name = f"{request.parent}/customJobs/{len(self.jobs) + 1}"
            job = aiplatform_v1.CustomJob(request.custom_job)
            job.name, job.state = name, aiplatform_v1.JobState.JOB_STATE_PENDING
            self.jobs[name] = job
        threading.Thread(target=self._run, args=(name,), daemon=True).start()
        return job

    def _run(self, name: str) -> None:
        with self.lock:
            job = self.jobs[name]
            job.state = aiplatform_v1.JobState.JOB_STATE_RUNNING
            local = aiplatform_v1.CustomJob(job)
            for pool in local.job_spec.worker_pool_specs:
                pool.container_spec.args = [self.arg_map.get(a, a) for a in pool.container_spec.args]
        replicas = run_job_locally(local, env=self.env, timeout=240)
        with self.lock:
            for r in replicas:
                self.logs.setdefault(name, []).extend(
                    f"[{r.task}] {line}" for line in r.output.splitlines())
            failed = [r for r in replicas if r.returncode != 0]
            if failed:
                # Vertex AI reports the first failing replica like this (code 3 = INVALID_ARGUMENT).
                r = failed[0]
                pool, index = r.task.split("-")
                pool_no = POOL_TASK_TYPES.index(pool)
                job.error = status_pb2.Status(code=3, message=(
                    f"The replica workerpool{pool_no}-{index} exited with a non-zero status of "
                    f"{r.returncode}."))
                job.state = aiplatform_v1.JobState.JOB_STATE_FAILED
            else:
                job.state = aiplatform_v1.JobState.JOB_STATE_SUCCEEDED

    def _get(self, request, context):
        with self.lock:
            return aiplatform_v1.CustomJob(self.jobs[request.name])


@pytest.fixture()
def job_service():
    service = LocalJobService()
    service.server.start()
    yield service
    service.server.stop(grace=None)


def _python_job(code: str, replicas: int = 2) -> aiplatform_v1.CustomJob:
    """A job built from the config whose replicas run a short Python program instead."""
    job = vertex.build_custom_job(_cfg(f"runtime.worker_count={replicas}"), DATA, RUN)
    for pool in job.job_spec.worker_pool_specs:
        pool.container_spec.command = [sys.executable]
        pool.container_spec.args = ["-c", code]
    return job


def test_submit_and_follow_reports_states_and_logs(job_service):
    code = ("import json, os; t = json.loads(os.environ['TF_CONFIG'])['task']; "
            "print('role', t['type'], t['index'])")
    lines: list[str] = []
    done = vertex.submit_and_follow(_python_job(code, replicas=3), project="test-project",
                                    region="us-central1", client=job_service.client(),
                                    read_logs=job_service.read_logs, poll_seconds=0.2,
                                    echo=lines.append)
    assert done.state == aiplatform_v1.JobState.JOB_STATE_SUCCEEDED
    assert done.name == "projects/test-project/locations/us-central1/customJobs/1"
    text = "\n".join(lines)
    assert "JOB_STATE_RUNNING" in text and "JOB_STATE_SUCCEEDED" in text
    assert "[chief-0] role chief 0" in text and "[worker-1] role worker 1" in text


def test_failed_job_raises_with_the_jobs_error(job_service):
    code = ("import json, os, sys; t = json.loads(os.environ['TF_CONFIG'])['task']; "
            "sys.exit(7 if t['type'] == 'worker' else 0)")
    with pytest.raises(vertex.VertexJobError) as err:
        vertex.submit_and_follow(_python_job(code), project="test-project", region="us-central1",
                                 client=job_service.client(), read_logs=job_service.read_logs,
                                 poll_seconds=0.2, echo=lambda _line: None)
    message = str(err.value)
    assert "JOB_STATE_FAILED" in message
    assert "The replica workerpool1-0 exited with a non-zero status of 7." in message


def test_refused_job_is_one_line():
    # Nothing listens on this port: the create call fails and must end in one line.
    bad = aiplatform_v1.JobServiceClient(transport=JobServiceGrpcTransport(
        channel=grpc.insecure_channel(f"127.0.0.1:{free_port()}")))
    with pytest.raises(vertex.VertexJobError, match="Vertex AI refused job"):
        vertex.submit_and_follow(_python_job("pass"), project="p", region="r", client=bad,
                                 read_logs=lambda _n: [], poll_seconds=0.1,
                                 echo=lambda _line: None)


TINY = ["model.blocks=1", "model.units=16", "train.epochs=1", "train.steps_per_epoch=4",
        "train.validation_steps=2", "train.batch_size_per_replica=64", "train.steps_per_execution=2",
        "train.shuffle_buffer=1000", "train.cache=false", "evaluate.baseline=false"]


@pytest.mark.slow
@pytest.mark.gcs
def test_multi_worker_job_trains_in_the_local_standin(small_dataset, gcs_emulator, gcs_bucket,
                                                      job_service, tmp_path):
    """The generated 2-replica job, run as chief + worker on 127.0.0.1, trains and comes back.

    run_training_vertex writes the job's config to gs:// (emulator) → JobServiceClient → stand-in
    JobService → 2 processes with Vertex-style TF_CONFIG running the job's own command and args,
    each reading that config → the chief uploads the run to gs:// → run_training_vertex copies
    it to the local run directory.
    """
    cfg = _cfg("runtime.worker_count=2", f"runtime.staging_location=gs://{gcs_bucket}/staging",
               *TINY, preset="sample")
    # TensorFlow's own gs:// filesystem cannot reach the emulator, so the stand-in gives the
    # replicas this machine's converted dataset in place of the gs:// one; all else is as built.
    job_service.arg_map = {DATA: small_dataset}
    job_service.env = {"STORAGE_EMULATOR_HOST": gcs_emulator, "GOOGLE_CLOUD_PROJECT": "test-project",
                       "HIGGS_LOCAL_RUN": str(tmp_path / "replica-run")}
    lines: list[str] = []
    run_dir = tmp_path / "runs" / "standin"
    result = vertex.run_training_vertex(cfg, DATA, str(run_dir), client=job_service.client(),
                                        read_logs=job_service.read_logs, poll_seconds=1.0,
                                        echo=lines.append)

    text = "\n".join(lines)
    remote = f"gs://{gcs_bucket}/staging/vertex-runs/standin"
    assert result.job is not None and result.job["state"] == "JOB_STATE_SUCCEEDED", text[-3000:]
    assert result.job["remote_run_dir"] == remote
    assert result.job["name"] == "projects/test-project/locations/us-central1/customJobs/1"
    assert result.job["console_url"] == vertex.console_url(result.job["name"])
    assert read_config(rundir.job_config_path(remote)) == vertex.job_config(cfg)
    assert "[chief-0]" in text and "[worker-0]" in text
    # Both processes ran one synchronous MultiWorkerMirroredStrategy: the same final weights.
    digests = {task: re.search(r"weights_sha256=([0-9a-f]{64})", "\n".join(
        line for line in lines if line.startswith(f"[{task}]"))) for task in ("chief-0", "worker-0")}
    assert all(digests.values()), text[-3000:]
    assert digests["chief-0"].group(1) == digests["worker-0"].group(1)
    # The chief's run directory went to gs:// and came back to the local run directory.
    assert {"config.yaml", "history.json", "model/model.keras"} <= set(storage.list_files(remote))
    assert result.run_dir == str(run_dir) and Path(result.model_path).is_file()
    assert result.model_path == rundir.model_path(run_dir)
    assert result.epochs == 1 and 0 < result.best_val_auc <= 1
    trained = read_config(run_dir / "config.yaml")
    assert trained.train.strategy == "multi_worker" and trained.model.units == 16
    assert trained.runtime.backend == "local"


def test_job_json_examples_are_current():
    """infra/vertex/*.json are this module's output for the documented configs."""
    root = Path(__file__).resolve().parents[1] / "infra" / "vertex"
    for path in sorted(root.glob("*.json")):
        example = json.loads(path.read_text())
        cfg = _cfg(*example["_overrides"])
        job = vertex.build_custom_job(cfg, example["_data"], example["_run"])
        assert json.loads(vertex.describe(job)) == example["job"], path.name


def test_train_with_vertex_backend_goes_to_vertex():
    """`higgs train` with runtime.backend=vertex reaches the Vertex path (its config check)."""
    from pipeline import backends

    cfg = load_config("sample", overrides=["runtime.backend=vertex"])
    with pytest.raises(vertex.VertexConfigError, match=r"runtime\.gcp_project is empty"):
        backends.train(cfg, "gs://b/data", "gs://b/runs/r1")
