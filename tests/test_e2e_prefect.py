"""End to end on a real Prefect server: prefect.yaml deploys, served deployments, CLI-triggered runs.

    .venv/bin/pytest tests/test_e2e_prefect.py -m e2e

Starts ``prefect server start`` on a free 127.0.0.1 port (SQLite in a temporary PREFECT_HOME),
registers ``prefect.yaml`` with ``prefect deploy --all`` into a local process work pool (the
declarative path), serves the same deployments with ``python -m flows.deployments`` (what
``make run`` does), triggers ``prefect deployment run higgs/sample`` through the CLI and checks
what a user would look at: the final state, the artifacts in the API and the published report
and model on disk. The config is shrunk through the deployment's own parameters.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.local_run import (
    ROOT,
    LocalServer,
    api,
    inspect_flow_run,
    run_deployment,
    start_serving,
    stop_process,
    wait_for_deployments,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAMES = ["higgs/full", "higgs/sample", "higgs/retrain", "higgs-tune/tune", "higgs-paper/table"]
SMALL = ["data.synth_rows=20000", "train.epochs=2", "model.units=32", "model.blocks=2",
         "evaluate.baseline_rows=5000", "evaluate.baseline_trees=20", "train.shuffle_buffer=5000"]


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, check=False)


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    with LocalServer(home) as srv:
        yield srv


@pytest.fixture(scope="module")
def deployed(server):
    """prefect.yaml registered through Prefect's own ``prefect deploy --all``."""
    env = server.env()
    pool = _prefect(env, "work-pool", "create", "local", "--type", "process")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = _prefect(env, "deploy", "--all")
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    return {name: api(server.api_url, "GET", f"/deployments/name/{name}") for name in NAMES}


@pytest.fixture(scope="module")
def served(server, deployed, tmp_path_factory):
    """``python -m flows.deployments`` serving the same deployments (the ``make run`` path)."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "wb") as log:
        proc = start_serving(server.env(), output=log)
        try:
            wait_for_deployments(server.api_url, NAMES, proc)
            yield proc, log_path
        finally:
            stop_process(proc, sig=signal.SIGINT)


def _cron_schedules(deployment: dict) -> list[tuple[str, str, bool]]:
    return [(s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"])
            for s in deployment["schedules"]]


def _next_monday_3am_utc(now: datetime) -> datetime:
    start = now.astimezone(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    start += timedelta(days=(0 - start.weekday()) % 7)
    return start if start > now else start + timedelta(days=7)


def test_prefect_yaml_deploys_all_with_the_weekly_retrain_schedule(server, deployed):
    assert all(deployed[name] is not None for name in NAMES)
    assert {d["work_pool_name"] for d in deployed.values()} == {"local"}
    assert deployed["higgs/sample"]["parameters"] == {"preset": "sample", "source": "",
                                                      "runner": "DirectRunner"}
    assert deployed["higgs/full"]["parameters"] == {"preset": "full"}
    assert deployed["higgs-tune/tune"]["parameters"] == {"preset": "sample"}
    assert deployed["higgs-paper/table"]["parameters"] == {"preset": "paper"}
    assert _cron_schedules(deployed["higgs/retrain"]) == [("0 3 * * 1", "UTC", True)]
    assert deployed["higgs/sample"]["schedules"] == []
    assert deployed["higgs/retrain"]["parameter_openapi_schema"]["properties"]["preset"]["enum"] == \
        ["sample", "full"]
    # The server's scheduler turns the cron into runs: the next one is Monday 03:00 UTC.
    deadline = time.monotonic() + 120
    runs: list = []
    while not runs and time.monotonic() < deadline:
        runs = api(server.api_url, "POST", "/flow_runs/filter",
                   {"deployments": {"id": {"any_": [deployed["higgs/retrain"]["id"]]}},
                    "sort": "EXPECTED_START_TIME_ASC", "limit": 3})
        time.sleep(1)
    assert runs, f"no scheduled retrain runs; server log:\n{_tail(server.log_path)}"
    assert runs[0]["state"]["name"] == "Scheduled"
    first = datetime.fromisoformat(runs[0]["expected_start_time"])
    assert first == _next_monday_3am_utc(datetime.now(UTC))


def _run_sample(server, served, tmp_path: Path, params: dict, log_name: str):
    with open(tmp_path / log_name, "wb") as out:
        code, name = run_deployment(server.env(), "higgs/sample", params, timeout=600, output=out,
                                    serving=served[0])
    outcome = inspect_flow_run(server.api_url, name)
    assert outcome.state == "Completed", (outcome.message, _tail(tmp_path / log_name), _tail(served[1]))
    assert code == 0
    return outcome


def test_served_sample_deployment_runs_to_completion_and_publishes(server, served, tmp_path):
    """Two CLI-triggered runs of higgs/sample with a known blessing outcome: the first (floor
    0.5, within reach) is blessed and moves published/latest.json to it; the second (floor
    0.999, out of reach) is published too, and latest.json stays byte for byte on the first."""
    retrain = api(server.api_url, "GET", "/deployments/name/higgs/retrain")
    assert _cron_schedules(retrain) == [("0 3 * * 1", "UTC", True)]  # serving keeps the cron

    params = {"data_dir": str(tmp_path / "data"), "runs_root": str(tmp_path / "runs"),
              "publish_to": str(tmp_path / "published")}
    outcome = _run_sample(server, served, tmp_path,
                          {**params, "overrides": [*SMALL, "evaluate.auc_floor=0.5"]}, "cli-1.log")
    assert set(outcome.artifacts) == {"higgs-report", "higgs-metrics", "higgs-model"}
    assert {a["type"] for a in outcome.artifacts.values()} == {"markdown", "table"}
    table = json.loads(outcome.artifacts["higgs-metrics"]["data"])
    assert [r["rows"] for r in table] and sum(r["rows"] for r in table) == 20000

    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1 and runs[0].name.endswith("-sample")
    run = runs[0]
    published = tmp_path / "published" / run.name
    assert outcome.model == str(published / "model")
    assert outcome.report == str(published / "report" / "report.md")
    assert (published / "model" / "model.keras").is_file() and (published / "model" / "saved_model").is_dir()
    assert (published / "MANIFEST").is_file() and (published / "provenance.json").is_file()
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert f"{metrics['auc']:.4f}" in outcome.artifacts["higgs-report"]["data"]
    assert metrics["blessed"] is True
    latest = tmp_path / "published" / "latest.json"
    assert json.loads(latest.read_text())["run_id"] == run.name
    assert set(outcome.task_seconds) == {"ensure_source", "convert", "validate", "train", "evaluate",
                                         "publish"}
    # The library's own log records reach the run's logs in the API.
    logs = api(server.api_url, "POST", "/logs/filter",
               {"logs": {"flow_run_id": {"any_": [outcome.flow_run_id]}}, "limit": 200})
    assert {"pipeline.training.train", "pipeline.evaluation.evaluate"} <= {rec["name"] for rec in logs}

    before = latest.read_bytes()
    second = _run_sample(server, served, tmp_path,
                         {**params, "overrides": [*SMALL, "evaluate.auc_floor=0.999"]}, "cli-2.log")
    assert "**False**" in second.artifacts["higgs-report"]["data"]  # not blessed
    second_run = Path(second.model).parent
    assert second_run.name != run.name and (second_run / "MANIFEST").is_file()
    assert latest.read_bytes() == before
    moves = [json.loads(p.read_text()) for p in sorted((tmp_path / "published" / "history").iterdir())]
    assert [(m["from"], m["to"]) for m in moves] == [(None, run.name)]


def test_missing_source_run_fails_with_one_line_and_publishes_nothing(server, served, tmp_path):
    missing = tmp_path / "nowhere" / "HIGGS.csv.gz"
    params = {"source": str(missing), "data_dir": str(tmp_path / "data"),
              "runs_root": str(tmp_path / "runs"), "publish_to": str(tmp_path / "published")}
    with open(tmp_path / "cli.log", "wb") as out:
        code, name = run_deployment(server.env(), "higgs/sample", params, timeout=300, output=out,
                                    serving=served[0])
    outcome = inspect_flow_run(server.api_url, name)
    assert code != 0
    assert outcome.state == "Failed"
    assert outcome.message.startswith(f"ensure_source failed: source {missing} does not exist;")
    assert "\n" not in outcome.message
    assert outcome.artifacts == {}
    assert not (tmp_path / "published").exists() and not (tmp_path / "runs").exists()
