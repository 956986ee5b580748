"""The cloud side of infra/: work pool template, cloud deployments, image and Terraform files.

    .venv/bin/pytest tests/test_cloud_deployments.py

A real ``prefect server start`` on 127.0.0.1 (SQLite in a temporary PREFECT_HOME) gets the
``higgs-vertex`` work pool from ``infra/work-pools/vertex-ai.json`` and the deployments of
``infra/prefect-cloud.yaml`` through Prefect's own CLI (``work-pool create``, ``deploy``). A flow
run of ``full-cloud`` is then turned into the Vertex AI job the prefect-gcp worker would submit
(``VertexAIWorkerJobConfiguration.resolve_for_flow_run`` — Prefect's templating of the base job
template with the deployment's job variables — and the worker's own ``_build_job_spec``). The
deployment's flow parameters must resolve to a config that builds valid Dataflow options and a
valid training CustomJob. No Google Cloud is contacted.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.local_run import ROOT, LocalServer, api

# The server tests are slow: a Prefect server start + `prefect deploy` (~40-100 s here).
slow = pytest.mark.slow

INFRA = ROOT / "infra"
TEMPLATE = INFRA / "work-pools" / "vertex-ai.json"
CLOUD_YAML = INFRA / "prefect-cloud.yaml"
NAMES = ["higgs/full-cloud", "higgs/retrain-cloud"]
HIGGS_ENV = {
    "HIGGS_PROJECT": "test-project",
    "HIGGS_REGION": "europe-west4",
    "HIGGS_BUCKET": "test-project-higgs",
    "HIGGS_IMAGE": "europe-west4-docker.pkg.dev/test-project/higgs/higgs:42",
}


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LocalServer(tmp_path_factory.mktemp("prefect-home")) as srv:
        yield srv


@pytest.fixture(scope="module")
def deployed(server):
    env = {**server.env(), **HIGGS_ENV}
    pool = _prefect(env, "work-pool", "create", "higgs-vertex", "--type", "vertex-ai",
                    "--base-job-template", str(TEMPLATE))
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = _prefect(env, "deploy", "--all", "--prefect-file", str(CLOUD_YAML))
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    return {name: api(server.api_url, "GET", f"/deployments/name/{name}") for name in NAMES}


@slow
def test_server_accepts_the_work_pool_template(server, deployed):
    pool = api(server.api_url, "GET", "/work_pools/higgs-vertex")
    assert pool["type"] == "vertex-ai"
    assert pool["base_job_template"] == json.loads(TEMPLATE.read_text())


@slow
def test_cloud_deployments_target_the_pool_with_the_weekly_schedule(deployed):
    full, retrain = deployed["higgs/full-cloud"], deployed["higgs/retrain-cloud"]
    assert full is not None and retrain is not None
    assert {full["work_pool_name"], retrain["work_pool_name"]} == {"higgs-vertex"}
    assert full["schedules"] == []
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"])
            for s in retrain["schedules"]] == [("0 3 * * 1", "UTC", True)]
    assert full["parameters"] == retrain["parameters"]
    # Every {{ $VAR }} was filled from the environment at deploy time.
    text = json.dumps([full["parameters"], full["job_variables"], full["pull_steps"]])
    assert "{{" not in text and "test-project-higgs" in text
    assert full["job_variables"]["image"] == HIGGS_ENV["HIGGS_IMAGE"]
    assert full["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                   {"directory": "/opt/higgs"}}]


def _fake_service_account_key(path: Path) -> Path:
    """A well-formed service-account key for a made-up account: ADC loads it without network."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "test-project", "private_key_id": "0",
        "private_key": pem.decode(), "client_email": "prefect-worker@test-project.iam.gserviceaccount.com",
        "client_id": "0", "token_uri": "https://oauth2.googleapis.com/token"}))
    return path


@slow
def test_flow_run_renders_into_the_vertex_job_the_worker_submits(server, deployed, tmp_path,
                                                                  monkeypatch):
    # The worker's GcpCredentials resolve Application Default Credentials (the worker VM's
    # service account in the cloud); here a made-up key stands in, nothing is contacted.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_fake_service_account_key(tmp_path / "k.json")))
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_gcp.workers.vertex import VertexAIWorker, VertexAIWorkerJobConfiguration

    deployment_id = deployed["higgs/full-cloud"]["id"]
    run = api(server.api_url, "POST", f"/deployments/{deployment_id}/create_flow_run", {})

    async def render():
        async with get_client() as client:
            flow_run = await client.read_flow_run(run["id"])
            work_pool = await client.read_work_pool("higgs-vertex")
            deployment = await client.read_deployment(deployment_id)
            config = await VertexAIWorkerJobConfiguration.resolve_for_flow_run(
                flow_run, client=client, work_pool=work_pool, worker_name="test-worker",
                deployment=deployment)
            return config, VertexAIWorker(work_pool_name="higgs-vertex")._build_job_spec(config)

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        config, spec = asyncio.run(render())

    assert config.region == "europe-west4"
    (pool,) = spec.worker_pool_specs
    assert pool.replica_count == 1
    assert pool.container_spec.image_uri == HIGGS_ENV["HIGGS_IMAGE"]
    assert pool.machine_spec.machine_type == "n2-standard-8"
    # The flow run's command overrides the image's Beam ENTRYPOINT.
    assert list(pool.container_spec.command) == ["prefect", "flow-run", "execute"]
    env = {e.name: e.value for e in pool.container_spec.env}
    assert env["PREFECT__FLOW_RUN_ID"] == run["id"]
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert spec.service_account == "higgs-flow@test-project.iam.gserviceaccount.com"
    assert spec.scheduling.timeout.total_seconds() == 24 * 3600


@slow
def test_deployment_parameters_build_valid_dataflow_and_training_jobs(deployed):
    from flows.higgs import flow_config
    from pipeline import chain
    from pipeline.cloud import dataflow, vertex

    params = dict(deployed["higgs/full-cloud"]["parameters"])
    cfg = flow_config(params["preset"], params["overrides"], source=params["source"],
                      data_dir=params["data_dir"], runs_root=params["runs_root"],
                      publish_to=params["publish_to"], runner=params["runner"])
    options = dataflow.pipeline_options(cfg)  # Beam's own validation for DataflowRunner
    assert options.get_all_options()["sdk_container_image"] == HIGGS_ENV["HIGGS_IMAGE"]
    assert options.get_all_options()["service_account_email"] == \
        "higgs-worker@test-project.iam.gserviceaccount.com"

    paths = chain.default_paths(cfg, run_id="20260101-030000-full")
    remote = vertex.remote_run_dir(cfg, paths.run_dir)
    assert remote == "gs://test-project-higgs/staging/vertex-runs/20260101-030000-full"
    job = vertex.build_custom_job(cfg, paths.data, remote)
    assert [p.replica_count for p in job.job_spec.worker_pool_specs] == [1, 3]
    assert job.job_spec.worker_pool_specs[0].machine_spec.machine_type == "n2-standard-16"
    assert paths.data.startswith("gs://test-project-higgs/data/")


# --- the image and the Terraform files (static checks: no Docker daemon or provider here) ---


def test_dockerfile_copies_existing_files_and_installs_from_the_lock():
    text = (INFRA / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing in the repository"
    assert "-c requirements.lock" in text or "-r requirements.lock" in text
    assert "/opt/apache/beam" in text  # Dataflow's custom-container boot entrypoint
    for variant in ("cpu", "gpu", "tpu"):
        assert variant in text


def _unquote(value):
    """python-hcl2 keeps string literals' quotes ('"tmp/"'); drop them, recursively."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items()}
    return value


def _terraform() -> dict[str, list]:
    """Every top-level block of infra/terraform/*.tf, parsed by python-hcl2 (an HCL2 parser)."""
    import hcl2

    merged: dict[str, list] = {}
    for path in sorted((INFRA / "terraform").glob("*.tf")):
        with open(path) as f:
            for key, blocks in _unquote(hcl2.load(f)).items():
                if not key.startswith("__"):
                    merged.setdefault(key, []).extend(blocks)
    return merged


def _resources(tf: dict[str, list], kind: str) -> dict[str, dict]:
    found = {}
    for block in tf.get("resource", []):
        for name, body in block.get(kind, {}).items():
            found[name] = body
    return found


def test_terraform_bucket_registry_apis_and_least_privilege():
    tf = _terraform()
    declared = {name for block in tf["variable"] for name in block}
    text = "\n".join(p.read_text() for p in (INFRA / "terraform").glob("*.tf"))
    used = set(re.findall(r"var\.([a-z_]+)", text))
    assert used <= declared, f"undeclared variables: {used - declared}"
    assert {"project_id", "region"} <= declared
    assert not re.search(r"\b(?:projects/)?[a-z][-a-z0-9]{4,28}[a-z0-9]\.iam\.gserviceaccount", text), \
        "a literal service account / project id is committed"

    (bucket,) = _resources(tf, "google_storage_bucket").values()
    rules = bucket["lifecycle_rule"]
    prefixes = {p for r in rules for c in r["condition"] for p in c.get("matches_prefix", [])}
    assert {"tmp/", "staging/"} <= prefixes
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"

    (repo,) = _resources(tf, "google_artifact_registry_repository").values()
    assert repo["format"] == "DOCKER"

    apis = set()
    for block in tf.get("locals", []):
        apis |= set(block.get("services", []))
    assert {"aiplatform.googleapis.com", "dataflow.googleapis.com", "artifactregistry.googleapis.com",
            "storage.googleapis.com", "compute.googleapis.com", "cloudbuild.googleapis.com",
            "logging.googleapis.com"} <= apis

    roles = [body["role"] for kind in ("google_project_iam_member",)
             for body in _resources(tf, kind).values()]
    roles += [r for block in tf.get("locals", []) for rs in block.get("project_roles", {}).values()
              for r in rs]
    assert roles, "no project roles found"
    assert not {"roles/owner", "roles/editor", "roles/viewer", "roles/storage.admin"} & set(roles)
    # Bucket access is granted on the bucket, not the project.
    assert not any(r.startswith("roles/storage.") for r in roles)
    assert _resources(tf, "google_storage_bucket_iam_member")
