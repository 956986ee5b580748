"""The Prefect flow ``higgs``: tasks through ``.fn()``, the flow under ``prefect_test_harness``.

    .venv/bin/pytest tests/test_flow.py

Everything is real (Prefect's temporary server, Beam, TensorFlow) on a generated sample shrunk
through the flow's own ``overrides`` parameter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, prefect_api_url

from flows import deployments
from flows import higgs as flowmod
from flows.local_run import api
from pipeline.core.config import ConfigError
from pipeline.core.errors import PipelineError
from pipeline.publish import store

SMALL = ["data.synth_rows=20000", "train.epochs=2", "model.units=32", "model.blocks=2",
         "evaluate.baseline_rows=5000", "evaluate.baseline_trees=20", "train.shuffle_buffer=5000"]


def _flow_run_id(state) -> str:
    return str(state.state_details.flow_run_id)


# --- parameters → config ------------------------------------------------------------------


def test_flow_config_none_keeps_the_preset_and_typed_parameters_win():
    full = flowmod.flow_config("full")
    assert full.data.source.startswith("https://") and full.model.units == 2048
    cfg = flowmod.flow_config("sample", source="", data_dir="/d", runs_root="/r", publish_to="gs://b/p",
                              runner="PrismRunner", strategy="multi_worker", workers=2, epochs=3,
                              overrides=["train.epochs=9", "model.units=64"])
    assert (cfg.data.source, cfg.data.data_root, cfg.runtime.runs_root, cfg.runtime.publish_to) == \
        ("", "/d", "/r", "gs://b/p")
    assert (cfg.runtime.runner, cfg.train.strategy, cfg.train.workers) == ("PrismRunner", "multi_worker", 2)
    assert cfg.train.epochs == 3  # the typed parameter beats the generic override
    assert cfg.model.units == 64
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        flowmod.flow_config("sample", overrides=["units"])


def test_deployments_from_prefect_yaml():
    specs = deployments.load_specs()
    built = {d.name: d for d in deployments.build_deployments(specs) if d.flow_name == "higgs"}
    assert set(built) == {"full", "sample", "retrain"}
    assert built["sample"].parameters == {"preset": "sample", "source": "", "runner": "DirectRunner"}
    assert built["full"].parameters == {"preset": "full"}
    assert built["retrain"].parameters == {"preset": "full", "on_anomaly": "fail"}  # the data gate
    crons = [s.schedule.cron for s in built["retrain"].schedules]
    assert crons == ["0 3 * * 1"]
    assert not built["sample"].schedules and not built["full"].schedules
    assert built["sample"].entrypoint == "flows.higgs.higgs"
    with pytest.raises(deployments.DeploymentSpecError, match="no deployment named nightly"):
        deployments.build_deployments(specs, only=["nightly"])


def test_tune_deployment_serves_the_search_flow():
    (tune,) = deployments.build_deployments(deployments.load_specs(), only=["tune"])
    assert (tune.flow_name, tune.name) == ("higgs-tune", "tune")
    assert tune.entrypoint == "flows.tune.higgs_tune"
    assert tune.parameters == {"preset": "sample"}


def test_table_deployment_serves_the_paper_flow():
    (table,) = deployments.build_deployments(deployments.load_specs(), only=["table"])
    assert (table.flow_name, table.name) == ("higgs-paper", "table")
    assert table.entrypoint == "flows.paper.higgs_paper"
    assert table.parameters == {"preset": "paper"}


def test_deployment_spec_errors_are_one_line(tmp_path):
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: flows.higgs.higgs\n")
    with pytest.raises(deployments.DeploymentSpecError, match=r"entrypoint like flows/higgs\.py:higgs"):
        deployments.load_specs(bad)
    with pytest.raises(deployments.DeploymentSpecError, match=r"cannot import flows\.nothing"):
        deployments.flow_of("flows/nothing.py:f")
    with pytest.raises(deployments.DeploymentSpecError, match="does not name a Prefect flow"):
        deployments.flow_of("flows/higgs.py:flow_config")
    with pytest.raises(deployments.DeploymentSpecError, match="cannot read"):
        deployments.load_specs(tmp_path / "missing.yaml")


# --- tasks through .fn() ------------------------------------------------------------------


def test_ensure_source_fn_local_missing_is_not_retryable(tmp_path):
    cfg = flowmod.flow_config("sample", source=str(tmp_path / "HIGGS.csv.gz"))
    with pytest.raises(PipelineError, match="does not exist") as err:
        flowmod.ensure_source.fn(cfg)
    assert not isinstance(err.value, flowmod.RemoteIOError)
    from prefect.states import Failed

    assert flowmod._retry_unless_user_error(None, None, Failed(data=err.value)) is False


def test_ensure_source_fn_unreachable_url_is_retryable(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/HIGGS.csv.gz"  # nothing listens there
    cfg = flowmod.flow_config("full", source=url, data_dir=str(tmp_path))
    with pytest.raises(flowmod.RemoteIOError, match=r"cannot reach http://127\.0\.0\.1") as err:
        flowmod.ensure_source.fn(cfg)
    from prefect.states import Failed

    assert flowmod._retry_unless_user_error(None, None, Failed(data=err.value)) is True
    assert flowmod._retry_unless_user_error(None, None, Failed(data=OSError("disk"))) is True


def test_source_and_convert_fn_generate_then_reuse(tmp_path):
    cfg = flowmod.flow_config("sample", source="", data_dir=str(tmp_path), overrides=SMALL)
    info = flowmod.ensure_source.fn(cfg)
    assert Path(info.path).is_file() and info.bytes > 0 and len(info.sha256) == 64
    out = str(tmp_path / "ds")
    first = flowmod.convert.fn(cfg, info.path, out, [])
    assert first.skipped is False and sum(first.manifest["rows"].values()) == 20000
    second = flowmod.convert.fn(cfg, info.path, out, [])
    assert second.skipped is True and second.manifest["rows"] == first.manifest["rows"]


# --- the flow under the test harness ------------------------------------------------------


def test_flow_rejects_bad_parameters(harness):
    from prefect.exceptions import ParameterTypeError

    for bad in ({"workers": 0}, {"preset": "huge"}, {"strategy": "gpu-cluster"}):
        with pytest.raises(ParameterTypeError):
            flowmod.higgs(**bad)


def test_flow_missing_source_fails_with_one_line_and_publishes_nothing(harness, tmp_path):
    missing = tmp_path / "nowhere" / "HIGGS.csv.gz"
    state = flowmod.higgs(preset="sample", source=str(missing), data_dir=str(tmp_path / "data"),
                          runs_root=str(tmp_path / "runs"), publish_to=str(tmp_path / "pub"),
                          return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"ensure_source failed: source {missing} does not exist;")
    assert "\n" not in state.message
    assert not (tmp_path / "pub").exists() and not (tmp_path / "runs").exists()
    flow_run_id = _flow_run_id(state)
    tasks = api(prefect_api_url(), "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}},
                                                          "limit": 50})
    assert [(t["name"].rsplit("-", 1)[0], t["run_count"]) for t in tasks] == [("ensure_source", 1)]


@pytest.mark.slow
def test_flow_sample_run_publishes_and_creates_artifacts(harness, tmp_path, caplog):
    """The whole flow on a small generated sample, twice with a known blessing outcome: run
    "first" (floor within reach) is blessed and moves latest.json; run "second" (floor 0.999,
    out of reach) reuses the conversion, resumes a training of the same run id that was
    killed after its first epoch, is published, and leaves latest.json byte-identical."""
    params = dict(preset="sample", source="", data_dir=str(tmp_path / "data"),
                  runs_root=str(tmp_path / "runs"), publish_to=str(tmp_path / "published"))
    state = flowmod.higgs(**params, overrides=[*SMALL, "evaluate.auc_floor=0.5"], run_id="first",
                          return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    run, published = tmp_path / "runs" / "first", tmp_path / "published" / "first"
    assert summary["run_id"] == "first" and summary["published"] == str(published)
    assert summary["report"] == str(published / "report" / "report.md")
    assert (published / "report" / "report.md").is_file() and (published / "model" / "model.keras").is_file()
    assert (run / "model" / "model.keras").is_file() and not (run / "MANIFEST").exists()
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert summary["auc"] == metrics["auc"] and 0.5 < metrics["auc"] <= 1.0
    assert metrics["blessed"] is True and summary["latest_moved"] is True
    latest = tmp_path / "published" / "latest.json"
    assert json.loads(latest.read_text())["run_id"] == "first"
    (move,) = store.read_history(str(tmp_path / "published"))
    assert move["to"] == "first" and move["via"].startswith("prefect flow run ")
    assert summary["conversion_reused"] is False

    flow_run_id = _flow_run_id(state)
    arts = {a["key"]: a for a in api(prefect_api_url(), "POST", "/artifacts/filter",
                                     {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 50})}
    assert set(arts) == {flowmod.ARTIFACT_REPORT, flowmod.ARTIFACT_SPLITS, flowmod.ARTIFACT_MODEL}
    assert f"{metrics['auc']:.4f}" in arts[flowmod.ARTIFACT_REPORT]["data"]
    assert f"**{metrics['blessed']}**" in arts[flowmod.ARTIFACT_REPORT]["data"]
    table = json.loads(arts[flowmod.ARTIFACT_SPLITS]["data"])
    assert [r["split"] for r in table] == ["training", "validation", "test"]
    assert sum(r["rows"] for r in table) == 20000
    assert arts[flowmod.ARTIFACT_MODEL]["data"] == \
        f"[{published / 'model'}]({(published / 'model').as_uri()})"
    names: set[str] = set()
    deadline = time.monotonic() + 30  # run logs reach the API in batches
    wanted = {"pipeline.training.train", "pipeline.evaluation.evaluate"}
    while not wanted <= names and time.monotonic() < deadline:
        logs = api(prefect_api_url(), "POST", "/logs/filter",
                   {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        names = {rec["name"] for rec in logs}
        time.sleep(0.5)
    assert {"pipeline.training.train", "pipeline.evaluation.evaluate"} <= names

    # An earlier attempt of run "second" was killed mid-training (like a preempted machine).
    second = tmp_path / "runs" / "second"
    _killed_after_first_epoch(["--data", summary_data(tmp_path), "--out", str(second), "--preset", "sample",
                               "--epochs", "4", *[a for o in SMALL for a in ("--set", o)]], second)
    caplog.set_level("INFO", logger="pipeline.training.train")
    before = latest.read_bytes()
    again = flowmod.higgs(**params, overrides=[*SMALL, "evaluate.auc_floor=0.999"], epochs=4,
                          run_id="second", return_state=True)
    assert again.is_completed(), again.message
    result = again.result()
    assert result["conversion_reused"] is True
    assert result["blessed"] is False and result["latest_moved"] is False
    assert result["published"] == str(tmp_path / "published" / "second")
    assert latest.read_bytes() == before
    assert [h["to"] for h in store.read_history(str(tmp_path / "published"))] == ["first"]
    assert "resumed from the backup at epoch" in caplog.text
    assert "epoch 1/4" not in caplog.text  # the killed attempt's epoch was not trained again
    assert json.loads((second / "history.json").read_text())["epoch"] == [0, 1, 2, 3]


def summary_data(tmp_path: Path) -> str:
    """The dataset directory the flow derived for the small generated sample."""
    from pipeline import chain

    cfg = flowmod.flow_config("sample", source="", overrides=SMALL)
    return str(tmp_path / "data" / chain.dataset_name(cfg))


def _killed_after_first_epoch(train_args: list[str], run: Path) -> None:
    """Run ``higgs train`` killed (SIGKILL) right after its first epoch is committed."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HIGGS_KILL_AT="train.after_backup@0")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", *train_args], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=240)
    assert proc.returncode == -signal.SIGKILL
    done = len(json.loads((run / "history.json").read_text())["epoch"])
    assert 1 <= done < 4 and (run / "checkpoints" / "backup").is_dir()


def test_train_retries_a_crashed_worker_but_not_a_bad_config():
    from prefect.states import Failed

    from pipeline.training.train import TrainError

    crashed = Failed(data=TrainError("worker 1 of the local cluster exited with code -9"))
    assert flowmod._retry_training(None, None, crashed) is True
    assert flowmod._retry_training(None, None, Failed(data=ConfigError("train.epochs must be…"))) is False


def test_make_run_reads_report_and_model_from_the_link_artifact():
    from flows.local_run import RunOutcome

    model = "published/20261121-083000-sample/model"
    link = {"key": "higgs-model", "type": "markdown",
            "data": f"[{model}](file:///repo/{model})"}
    outcome = RunOutcome("id", "Completed", "", 1.0, artifacts={"higgs-model": link})
    assert outcome.model == model
    assert outcome.report == "published/20261121-083000-sample/report/report.md"
    assert RunOutcome("id", "Failed", "x", 1.0).report is None
