"""pipeline.chain: default locations, Beam options, the per-split table, and the whole chain.

    .venv/bin/pytest tests/test_chain.py
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline import chain
from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.publish import store

# The production sample preset shrunk so the real chain runs in well under a minute here.
SMALL = ["data.synth_rows=20000", "train.epochs=2", "model.units=32", "model.blocks=2",
         "evaluate.baseline_rows=5000", "evaluate.baseline_trees=20", "train.shuffle_buffer=5000"]


def test_run_id_is_utc_timestamp_and_preset():
    cfg = load_config("sample")
    when = datetime(2026, 11, 21, 9, 30, 0, tzinfo=timezone(timedelta(hours=1)))
    assert chain.run_id_for(cfg, when) == "20261121-083000-sample"
    assert chain.run_id_for(load_config("full"), datetime(2026, 1, 2, 3, 4, 5)) == "20260102-030405-full"


def test_dataset_name_follows_the_source():
    assert chain.dataset_name(load_config("sample")) == "higgs-synth-uci-r220000-s1"
    small = load_config("sample", overrides=["data.synth_rows=1000", "data.synth_seed=7"])
    assert chain.dataset_name(small) == "higgs-synth-uci-r1000-s7"
    assert chain.dataset_name(load_config("full")) == "higgs"  # the UCI higgs.zip
    assert chain.dataset_name(load_config("full", overrides=["data.source=/d/HIGGS.csv"])) == "HIGGS"
    cfg = load_config("full", overrides=["data.source=gs://bucket/dir/HIGGS small.csv.gz"])
    assert chain.dataset_name(cfg) == "HIGGS-small"
    # Another preset converts with another shard layout: it gets its own directory.
    assert chain.dataset_name(load_config("sample", overrides=["data.source=/d/HIGGS.csv.gz"])) == \
        "HIGGS-sample"
    generated_full = load_config("full", overrides=["data.source="])
    assert chain.dataset_name(generated_full) == "higgs-synth-uci-r220000-s1-full"


def test_default_paths_use_config_roots_and_explicit_values_win(tmp_path):
    cfg = load_config("sample", overrides=[f"data.data_root={tmp_path}/d", f"runtime.runs_root={tmp_path}/r",
                                           "runtime.publish_to=gs://b/published"])
    when = datetime(2026, 11, 21, 8, 30, tzinfo=UTC)
    paths = chain.default_paths(cfg, when=when)
    assert paths == chain.Paths(run_id="20261121-083000-sample",
                                data=f"{tmp_path}/d/higgs-synth-uci-r220000-s1",
                                run_dir=f"{tmp_path}/r/20261121-083000-sample", publish_to="gs://b/published")
    explicit = chain.default_paths(cfg, data="/x/data", run_dir="/y/runs/my-run", publish_to="/z")
    assert (explicit.run_id, explicit.data, explicit.run_dir, explicit.publish_to) == \
        ("my-run", "/x/data", "/y/runs/my-run", "/z")
    assert chain.default_paths(cfg, run_id="fixed").run_dir == f"{tmp_path}/r/fixed"


def test_beam_options_add_runner_from_config_unless_given():
    cfg = load_config("sample")
    assert chain.beam_options(cfg) == ["--runner=DirectRunner", "--direct_num_workers=1"]
    assert chain.beam_options(cfg, ["--runner=DataflowRunner", "--project=p"]) == \
        ["--runner=DataflowRunner", "--project=p"]
    assert chain.beam_options(cfg, ["--direct_num_workers=2"]) == ["--runner=DirectRunner",
                                                                   "--direct_num_workers=2"]


def test_split_table_has_rows_and_the_auc_known_per_split():
    manifest = {"rows": {"training": 100, "validation": 10, "test": 12}}
    metrics = {"auc": 0.81234567, "auc_ci95": [0.8, 0.82], "baseline": {"auc": 0.79}}
    table = chain.split_table(manifest, metrics, best_val_auc=0.805)
    assert table == [
        {"split": "training", "rows": 100, "model_auc": None, "auc_ci95": None, "baseline_auc": None},
        {"split": "validation", "rows": 10, "model_auc": 0.805, "auc_ci95": None, "baseline_auc": None},
        {"split": "test", "rows": 12, "model_auc": 0.81235, "auc_ci95": [0.8, 0.82], "baseline_auc": 0.79},
    ]
    assert chain.baseline_auc({"baseline": None}) is None


def test_defaults_keep_runs_and_the_published_store_apart():
    cfg = load_config("sample")
    assert (cfg.runtime.runs_root, cfg.runtime.publish_to) == ("runs", "published")
    paths = chain.default_paths(cfg, run_id="r1")
    assert (paths.run_dir, paths.publish_to) == ("runs/r1", "published")


@pytest.mark.slow
def test_run_chain_end_to_end_then_reuses_conversion(tmp_path):
    """The real chain on a small generated sample, twice with a known blessing outcome: the
    first run (floor within reach) is blessed and moves latest.json; the second (floor 0.999,
    out of reach) is published but leaves latest.json byte-identical; it reuses the dataset."""
    roots = [f"data.data_root={tmp_path}/data", f"runtime.runs_root={tmp_path}/runs",
             f"runtime.publish_to={tmp_path}/published"]
    cfg = load_config("sample", overrides=[*SMALL, *roots, "evaluate.auc_floor=0.5"])
    first = chain.run_chain(cfg, run_dir=str(tmp_path / "runs" / "first"))

    assert first.conversion.skipped is False
    assert set(first.seconds) == set(chain.STEPS)
    run = tmp_path / "runs" / "first"
    assert (run / "model" / "model.keras").is_file()
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert 0.5 < metrics["auc"] <= 1.0 and metrics["auc"] == first.metrics["auc"]
    assert first.metrics["blessed"] is True
    published = tmp_path / "published" / "first"
    assert first.published.uri == str(published) and (published / "MANIFEST").is_file()
    assert not (run / "MANIFEST").exists()  # the working run is not the published copy
    latest = tmp_path / "published" / "latest.json"
    assert first.published.latest_moved and json.loads(latest.read_text())["run_id"] == "first"
    summary = first.summary()
    assert str(published / "report" / "report.md") in summary and "AUC" in summary
    assert "latest.json moved from nothing to first" in summary

    before = latest.read_bytes()
    unreachable = load_config("sample", overrides=[*SMALL, *roots, "evaluate.auc_floor=0.999"])
    second = chain.run_chain(unreachable, run_dir=str(tmp_path / "runs" / "second"))
    assert second.conversion.skipped is True
    assert "reused" in second.summary()
    assert second.metrics["blessed"] is False and not second.published.latest_moved
    assert Path(second.published.uri) == tmp_path / "published" / "second"
    assert latest.read_bytes() == before
    assert [h["to"] for h in store.read_history(str(tmp_path / "published"))] == ["first"]


def test_run_chain_missing_source_publishes_nothing(tmp_path):
    cfg = load_config("sample", overrides=[f"data.source={tmp_path}/nope/HIGGS.csv.gz",
                                           f"runtime.runs_root={tmp_path}/runs",
                                           f"runtime.publish_to={tmp_path}/published"])
    with pytest.raises(PipelineError, match=r"nope/HIGGS\.csv\.gz does not exist"):
        chain.run_chain(cfg)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "published").exists()


def test_beam_options_for_dataflow_come_from_runtime_config():
    cfg = load_config("full", overrides=["runtime.runner=DataflowRunner", "runtime.gcp_project=proj-x",
                                         "runtime.gcp_region=europe-west4",
                                         "runtime.temp_location=gs://bucket-x/tmp",
                                         "runtime.image=europe-west4-docker.pkg.dev/p/r/higgs:1"])
    args = chain.beam_options(cfg, ["--max_num_workers=3"])
    assert "--runner=DataflowRunner" in args and "--project=proj-x" in args
    assert "--sdk_container_image=europe-west4-docker.pkg.dev/p/r/higgs:1" in args
    assert args[-1] == "--max_num_workers=3"  # explicit options come last and win
    assert not any(a.startswith("--direct_num_workers") for a in args)
    missing_region = load_config("full", overrides=["runtime.runner=DataflowRunner",
                                                    "runtime.gcp_project=proj-x"])
    with pytest.raises(PipelineError, match=r"runtime\.gcp_region is empty"):
        chain.beam_options(missing_region)


def test_step_convert_presplits_the_source_when_configured(tmp_path):
    from pipeline.data import synth

    source = tmp_path / "src.csv.gz"
    synth.write_csv(source, rows=4400, seed=3)
    base = load_config("sample", overrides=[f"data.data_root={tmp_path}"])
    whole = chain.step_convert(base, str(source), str(tmp_path / "whole"))
    parted_cfg = load_config("sample", overrides=[f"data.data_root={tmp_path}", "runtime.presplit_parts=3"])
    parted = chain.step_convert(parted_cfg, str(source), str(tmp_path / "parted"))
    assert parted.manifest["source"]["uri"].endswith("*.csv.gz")
    assert len(list((tmp_path / "parts" / "src").glob("part-*.csv.gz"))) == 3
    assert parted.manifest["rows"] == whole.manifest["rows"]
    for split in ("training", "validation", "test"):
        a = b"".join(p.read_bytes() for p in sorted((tmp_path / "whole" / split).iterdir()))
        b = b"".join(p.read_bytes() for p in sorted((tmp_path / "parted" / split).iterdir()))
        assert a == b, split
