"""Dataflow options from the config, validated by Beam, and the real Dataflow job request.

    .venv/bin/pytest tests/test_dataflow.py

No Dataflow service here: the options are checked with Beam's own validator for the Dataflow
runner, and :func:`pipeline.cloud.dataflow.dry_run_job` runs the real ``DataflowRunner`` translation of
the converter's transform plus Beam's staging (pipeline proto, sdist from ``pyproject.toml``)
into the GCS emulator — everything up to the job-creation call.
"""

from __future__ import annotations

import json

import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from pipeline.cloud import dataflow
from pipeline.core import storage
from pipeline.core.config import ConfigError, load_config

IMAGE = "us-central1-docker.pkg.dev/test-project/higgs/higgs:1"


def _cfg(bucket: str = "test-bucket", *extra: str):
    return load_config("full", overrides=[
        "runtime.gcp_project=test-project", "runtime.gcp_region=europe-west4",
        f"runtime.temp_location=gs://{bucket}/tmp", "runtime.dataflow_machine_type=n2-highcpu-8",
        "runtime.dataflow_max_workers=24",
        "runtime.service_account=dataflow-worker@test-project.iam.gserviceaccount.com", *extra])


def test_options_assemble_into_valid_dataflow_pipeline_options():
    options = dataflow.pipeline_options(_cfg("test-bucket", f"runtime.image={IMAGE}"),
                                        job_name="higgs-convert-test")
    assert isinstance(options, PipelineOptions)
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.job_name) == ("test-project", "europe-west4", "higgs-convert-test")
    assert gcp.temp_location == "gs://test-bucket/tmp"
    assert gcp.staging_location == "gs://test-bucket/tmp/staging"
    assert gcp.service_account_email == "dataflow-worker@test-project.iam.gserviceaccount.com"
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    workers = options.view_as(WorkerOptions)
    assert (workers.machine_type, workers.max_num_workers) == ("n2-highcpu-8", 24)
    assert workers.sdk_container_image == IMAGE
    assert options.view_as(SetupOptions).setup_file is None


def test_setup_file_packaging_points_at_pyproject():
    options = dataflow.pipeline_options(_cfg(), packaging="setup_file")
    setup = options.view_as(SetupOptions).setup_file
    assert setup.endswith("pyproject.toml") and setup == str(dataflow.setup_file())
    assert options.view_as(WorkerOptions).sdk_container_image is None


@pytest.mark.parametrize(("overrides", "needle"), [
    (["runtime.gcp_project="], "runtime.gcp_project is empty"),
    (["runtime.temp_location=/tmp/local"], "must be gs://BUCKET/PATH"),
    (["runtime.temp_location=gs://b/tmp"], "must be gs://BUCKET/PATH"),  # bucket too short
])
def test_bad_config_fails_before_beam(overrides, needle):
    with pytest.raises(dataflow.DataflowConfigError) as err:
        dataflow.dataflow_args(_cfg("test-bucket", *overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_worker_count_fails_when_the_config_is_loaded():
    with pytest.raises(ConfigError, match=r"runtime\.dataflow_max_workers must be >= 1, got 0"):
        _cfg("test-bucket", "runtime.dataflow_max_workers=0")


def test_beam_validator_rejects_project_number():
    # Beam's own Dataflow checks run too: a project *number* is not a project id.
    with pytest.raises(dataflow.DataflowConfigError, match="Invalid Project ID"):
        dataflow.pipeline_options(_cfg("test-bucket", "runtime.gcp_project=123456789"))


def test_image_packaging_needs_an_image():
    with pytest.raises(dataflow.DataflowConfigError, match=r"needs runtime\.image"):
        dataflow.dataflow_args(_cfg(), packaging="image")


@pytest.mark.gcs
@pytest.mark.parametrize("packaging", ["image", "setup_file"])
def test_dry_run_builds_the_dataflow_job_for_the_converter(gcs_bucket, tmp_path, packaging):
    from apache_beam import Create

    from pipeline.core.storage import Files
    from pipeline.data import convert

    cfg = _cfg(gcs_bucket, f"runtime.image={IMAGE}")
    options = dataflow.pipeline_options(cfg, packaging=packaging, job_name="higgs-convert-dry",
                                        extra=["--no_auth"])
    files = Files(anonymous=True)
    parts = [f"gs://{gcs_bucket}/parts/part-{i:05d}-of-00004.csv.gz" for i in range(4)]
    shard_cfg = {"validation_rows": None, "test_rows": None,
                 "shards": {"training": 16, "validation": 4, "test": 4}}

    def build(p):
        _ = (p | "Parts" >> Create(list(enumerate(parts)))
             | "CsvToTFRecords" >> convert.CsvToTFRecords(
                 f"gs://{gcs_bucket}/data/.staging-x", 1 << 20, shard_cfg, files, spread_parts=True))

    job = dataflow.dry_run_job(build, options)

    assert job["name"] == "higgs-convert-dry" and job["type"] == "JOB_TYPE_BATCH"
    env = job["environment"]
    (pool,) = env["workerPools"]
    assert pool["machineType"] == "n2-highcpu-8"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 24
    assert env["serviceAccountEmail"] == "dataflow-worker@test-project.iam.gserviceaccount.com"
    assert env["tempStoragePrefix"].startswith(f"storage.googleapis.com/{gcs_bucket}/tmp")
    images = {h["containerImage"] for h in pool["sdkHarnessContainerImages"]}
    staged = storage.list_files(f"gs://{gcs_bucket}/tmp/staging")
    assert any(n.endswith("/pipeline.pb") for n in staged)
    if packaging == "image":
        assert images == {IMAGE}
        assert not any(n.endswith("workflow.tar.gz") for n in staged)
    else:
        # Beam built the sdist from pyproject.toml and staged it for the workers to install.
        assert images == {"gcr.io/cloud-dataflow/v1beta3/beam_python3.11_sdk:2.77.0"}
        assert any(n.endswith("/workflow.tar.gz") for n in staged)
    options_json = json.dumps(env["sdkPipelineOptions"])
    assert '"max_num_workers": 24' in options_json
