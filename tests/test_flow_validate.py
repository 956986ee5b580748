"""The flow's data gate under a real Prefect server: a published model, then changed and clean data.

    .venv/bin/pytest tests/test_flow_validate.py -q

One model is published from a generated sample; the same sample with ``lepton_pT`` × 1.3 then
stops the flow before training (``on_anomaly=fail``) with the table as an artifact, trains but
is not blessed with ``on_anomaly=warn``, and a sample of another seed passes the gate. Sources
are real CSV.gz files (``pipeline.data.synth``, ``pipeline.data.variants``), converted by the
flow's own convert task; ``higgs validate --against`` reads the same published store.
"""

from __future__ import annotations

import json

import pytest
from conftest import prefect_api_url

from flows import higgs as flowmod
from flows.local_run import api
from pipeline import cli
from pipeline.data import synth, variants

SMALL = ["train.epochs=2", "model.units=32", "model.blocks=2", "train.shuffle_buffer=5000",
         "evaluate.baseline=false",
         # the gate, not the model, is under test: the first model must be published
         "evaluate.auc_floor=0.5"]


def _run_info(state) -> tuple[list[str], dict[str, dict]]:
    """Task names (in start order) and artifacts by key of a finished flow run."""
    flow_run_id = str(state.state_details.flow_run_id)
    tasks = api(prefect_api_url(), "POST", "/task_runs/filter",
                {"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC",
                 "limit": 50})
    arts = api(prefect_api_url(), "POST", "/artifacts/filter",
               {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 50})
    return [t["name"].rsplit("-", 1)[0] for t in tasks], {a["key"]: a for a in arts}


@pytest.mark.slow
def test_flow_gate_stops_warns_and_passes_against_the_published_model(harness, tmp_path, capsys):
    src = tmp_path / "sources"
    synth.write_csv(src / "base.csv.gz", rows=20_000, seed=1)
    synth.write_csv(src / "clean.csv.gz", rows=20_000, seed=2)
    variants.make(src / "base.csv.gz", src / "scaled.csv.gz", rescale_by=("lepton_pT", 1.3))
    runs, published = tmp_path / "runs", tmp_path / "published"
    params = dict(preset="sample", data_dir=str(tmp_path / "data"), runs_root=str(runs),
                  publish_to=str(published), overrides=SMALL)

    # 1. Nothing published yet: nothing to compare with, the run trains and publishes.
    first = flowmod.higgs(**params, source=str(src / "base.csv.gz"), run_id="first", return_state=True)
    assert first.is_completed(), first.message
    skipped = first.result()["validation"]
    assert skipped.startswith("validation of ") and "skipped: no model is published" in skipped
    names, arts = _run_info(first)
    assert "validate" in names and flowmod.ARTIFACT_VALIDATION not in arts
    assert json.loads((published / "latest.json").read_text())["run_id"] == "first"

    # 2. lepton_pT × 1.3: the run stops before training, the table shows why.
    stopped = flowmod.higgs(**params, source=str(src / "scaled.csv.gz"), run_id="scaled", return_state=True)
    assert stopped.is_failed()
    assert stopped.message.startswith("validate failed: 6 data anomalies in ")
    assert "against " in stopped.message and "(published run first)" in stopped.message
    assert "worst: lepton_pT psi (" in stopped.message and "\n" not in stopped.message
    names, arts = _run_info(stopped)
    assert names == ["ensure_source", "convert", "validate"]  # no train, evaluate or publish
    table = json.loads(arts[flowmod.ARTIFACT_VALIDATION]["data"])
    flagged = {(r["feature"], r["statistic"], r["scope"]) for r in table if r["status"] == "ANOMALY"}
    assert flagged == {("lepton_pT", s, c) for s in ("psi", "mean_shift")
                       for c in ("overall", "signal", "background")}
    assert not (runs / "scaled").exists()
    assert json.loads((published / "latest.json").read_text())["run_id"] == "first"
    scaled_data = tmp_path / "data" / "scaled-sample"
    report = json.loads((scaled_data / "validation.json").read_text())
    assert report["baseline"] == str(tmp_path / "data" / "base-sample") and report["baseline_run"] == "first"

    # The CLI finds the same baseline through the published store.
    assert cli.main(["validate", "--data", str(scaled_data), "--against", str(published)]) == 2
    assert "(published run first)" in capsys.readouterr().err

    # 3. warn: the same data trains, the report carries the anomalies, the blessing says no.
    warned = flowmod.higgs(**params, source=str(src / "scaled.csv.gz"), on_anomaly="warn",
                           run_id="scaled-warn", return_state=True)
    assert warned.is_completed(), warned.message
    assert warned.result()["blessed"] is False and warned.result()["latest_moved"] is False
    run = runs / "scaled-warn"
    blessing = json.loads((run / "report" / "blessing.json").read_text())
    assert blessing["reasons"][0].startswith("data validation failed: 6 data anomalies")
    assert blessing["data_validation"]["anomalies"][0]["feature"] == "lepton_pT"
    report_md = (run / "report" / "report.md").read_text()
    assert "## Data validation" in report_md and "| lepton_pT | psi |" in report_md
    names, arts = _run_info(warned)
    assert names == ["ensure_source", "convert", "validate", "train", "evaluate", "publish"]
    assert flowmod.ARTIFACT_VALIDATION in arts and "**ANOMALIES**" in arts[flowmod.ARTIFACT_REPORT]["data"]
    assert json.loads((published / "latest.json").read_text())["run_id"] == "first"

    # 4. Another seed of the same generator: clean, trained, and the gate says so.
    clean = flowmod.higgs(**params, source=str(src / "clean.csv.gz"), run_id="clean", return_state=True)
    assert clean.is_completed(), clean.message
    assert " matches " in clean.result()["validation"] and "no anomaly" in clean.result()["validation"]
    blessing = json.loads((runs / "clean" / "report" / "blessing.json").read_text())
    assert blessing["reasons"][0].startswith("data validation passed:")
    _, arts = _run_info(clean)
    assert {r["status"] for r in json.loads(arts[flowmod.ARTIFACT_VALIDATION]["data"])} == {"OK"}
    assert cli.main(["validate", "--data", str(tmp_path / "data" / "clean-sample"),
                     "--against", str(published)]) == 0
