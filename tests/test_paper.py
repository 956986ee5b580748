"""``higgs paper`` (pipeline.experiments.paper): Table 1 of Baldi et al. 2014, shrunk to seconds.

    .venv/bin/pytest tests/test_paper.py -q

The real command on the real code path — the CLI, the in-process trainer, evaluation with the
BDT on each feature set — with the `paper` preset shrunk to a tiny model, one epoch and a small
BDT on the 12,000-row ``small_dataset``. The flow ``higgs-paper`` runs under a real temporary
Prefect server on a copy of that output (its trainings are reused, so only evaluation reruns).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.experiments import paper

SHRINK = ["model.blocks=1", "model.units=16", "train.epochs=1", "train.steps_per_execution=4",
          "train.batch_size_per_replica=128", "train.learning_rate=0.01",
          "train.shuffle_buffer=2000", "train.strategy=one_device", "evaluate.baseline_rows=4000",
          "evaluate.baseline_trees=10", "evaluate.batch_size=2048"]


def _cli_args(data: str, out: Path | str) -> list[str]:
    args = ["paper", "--data", data, "--out", str(out)]
    for item in SHRINK:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def table_run(small_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from pipeline import cli

    out = tmp_path_factory.mktemp("paper") / "table1"
    assert cli.main(_cli_args(small_dataset, out)) == 0
    return out, small_dataset


def test_paper_writes_table_1_with_six_aucs_and_intervals(table_run, capsys) -> None:
    out, data = table_run
    table = json.loads((out / paper.TABLE_JSON).read_text())
    entries = {(e["model"], e["feature_set"]): e for e in table["entries"]}
    assert set(entries) == {(m, s) for m in ("bdt", "deep") for s in ("low", "high", "all")}
    for (model, fs), e in entries.items():
        lo, hi = e["auc_ci95"]
        assert 0.5 < lo < e["auc"] < hi < 1.0, (model, fs, e)
        assert e["paper_auc"] == paper.PAPER_AUC[model][fs]
        assert e["features"] == len(schema.FEATURE_SETS[fs])
        metrics = json.loads((Path(e["run_dir"]) / "report" / "metrics.json").read_text())
        assert metrics["feature_set"] == fs
        side = metrics if model == "deep" else metrics["baseline"]
        assert side["auc"] == e["auc"]
    assert table["test_rows"] == json.loads((Path(data) / "manifest.json").read_text())["rows"]["test"]
    assert [c["check"] for c in table["pattern"]] == [
        "deep(low) well above BDT(low)", "deep(all) >= BDT(all)", "deep(low) approaching deep(all)"]
    md = (out / paper.TABLE_MD).read_text()
    assert "| technique | low-level (21) | high-level (7) | complete (28) |" in md
    assert "| DN, paper | 0.880 | 0.800 | 0.885 |" in md and "| BDT, paper | 0.730 | 0.780 | 0.810 |" in md
    assert f"**{entries[('deep', 'low')]['auc']:.4f}**" in md and "](roc.png)" in md
    from PIL import Image

    with Image.open(out / paper.ROC_PNG) as png:
        assert png.size[0] > 800 and png.size[1] > 300
    assert load_config("paper", out / paper.CONFIG_FILE).model.units == 16


def test_each_run_serves_full_rows_whatever_its_feature_set(table_run) -> None:
    from pipeline.evaluation import export

    out, _ = table_run
    x = np.random.default_rng(0).normal(size=(9, schema.NUM_FEATURES)).astype(np.float32)
    for fs in paper.FEATURE_SETS:
        served = export.serve_predictions(Path(paper.run_dir(out, fs)) / "model" / "saved_model", x)
        assert served.shape == (9, 1) and ((served > 0) & (served < 1)).all()


def test_rerun_reuses_the_trainings_and_a_failure_leaves_no_table(table_run, tmp_path, capsys) -> None:
    from pipeline import cli

    out, data = table_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    models = {fs: (copy / fs / "model" / "model.keras").stat().st_mtime_ns for fs in paper.FEATURE_SETS}
    assert cli.main(_cli_args(data, copy)) == 0
    table = json.loads((copy / paper.TABLE_JSON).read_text())
    assert all(table["seconds"][fs]["reused"] for fs in paper.FEATURE_SETS)
    after = {fs: (copy / fs / "model" / "model.keras").stat().st_mtime_ns for fs in paper.FEATURE_SETS}
    assert after == models
    assert "deep network (wide & deep)" in capsys.readouterr().out

    # A changed config is a different experiment: that set is trained again, not reused.
    assert not paper.finished(str(copy / "low"), paper.feature_set_config(
        load_config("paper", overrides=[*SHRINK, "model.units=8"]), "low"))

    # A bad dataset: one line, exit 2, and the earlier table is gone (never a stale one).
    assert cli.main(_cli_args(str(tmp_path / "no-such-data"), copy)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "higgs paper: error:" in err and "manifest" in err
    assert not (copy / paper.TABLE_MD).exists() and not (copy / paper.TABLE_JSON).exists()
    assert (copy / "low" / "model" / "model.keras").is_file()  # the trained runs are kept


def test_remote_or_file_output_is_one_clear_line(small_dataset, tmp_path, capsys) -> None:
    from pipeline import cli

    assert cli.main(_cli_args(small_dataset, "gs://bucket/table1")) == 2
    assert "must be a local path" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(_cli_args(small_dataset, blocker)) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_pattern_checks_follow_the_stated_rules() -> None:
    def e(model, fs, auc, half=0.003):
        return {"model": model, "feature_set": fs, "auc": auc, "auc_ci95": [auc - half, auc + half]}

    paper_like = {"entries": [e("bdt", "low", 0.73), e("bdt", "all", 0.81), e("deep", "low", 0.880),
                              e("deep", "all", 0.885)]}
    assert [c["holds"] for c in paper.pattern_checks(paper_like)] == [True, True, True]
    ours = {"entries": [e("bdt", "low", 0.76), e("bdt", "all", 0.88), e("deep", "low", 0.78),
                        e("deep", "all", 0.87)]}
    checks = {c["check"]: c for c in paper.pattern_checks(ours)}
    assert checks["deep(low) well above BDT(low)"]["holds"]
    assert not checks["deep(all) >= BDT(all)"]["holds"]
    assert not checks["deep(low) approaching deep(all)"]["holds"]
    assert checks["deep(low) approaching deep(all)"]["value"] == pytest.approx(0.02 / 0.11)


async def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


@pytest.mark.slow
def test_higgs_paper_flow_runs_each_feature_set_as_a_task(table_run, tmp_path) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.paper import higgs_paper

    out, data = table_run
    copy = tmp_path / "flow"
    shutil.copytree(out, copy)
    with prefect_test_harness(server_startup_timeout=120):
        state = higgs_paper(data=data, out=str(copy), overrides=SHRINK, return_state=True)
        assert state.is_completed(), state.message
        summary = state.result()
        runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
        failed = higgs_paper(data=str(tmp_path / "nothing"), out=str(tmp_path / "o"), overrides=SHRINK,
                             return_state=True)
    names = sorted(r.name.rsplit("-", 1)[0] for r in runs if r.state.is_completed())
    assert names == ["paper-data", "paper-feature-set", "paper-feature-set", "paper-feature-set",
                     "paper-table"]
    assert set(summary["aucs"]) == {f"{m}/{s}" for m in ("bdt", "deep") for s in paper.FEATURE_SETS}
    assert summary["table"] == str(copy / paper.TABLE_MD) and (copy / paper.TABLE_MD).is_file()
    assert failed.is_failed() and "manifest" in failed.message and "\n" not in failed.message
