"""pipeline.publish.store to a local directory: layout, verification, the latest.json rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.core import checksums, storage
from pipeline.publish import store as publish


def make_evaluated_run(root: Path, run_id: str, auc: float, blessed: bool) -> Path:
    """Write the files of an evaluated run (contract layout) with distinct contents.

    The model bytes are arbitrary: publishing copies and verifies files, it does not load
    them (export and reload are tested in test_evaluate.py).
    """
    run = root / run_id
    (run / "model" / "saved_model" / "variables").mkdir(parents=True)
    (run / "report").mkdir()
    (run / "checkpoints").mkdir()
    (run / "config.yaml").write_text(f"preset: sample\n# {run_id}\n")
    (run / "model" / "model.keras").write_bytes(os.urandom(200_000))
    (run / "model" / "saved_model" / "saved_model.pb").write_bytes(os.urandom(5_000))
    (run / "model" / "saved_model" / "variables" / "variables.data-00000-of-00001").write_bytes(
        os.urandom(70_000))
    (run / "checkpoints" / "ckpt-1.index").write_bytes(b"not published")
    (run / "report" / "metrics.json").write_text(json.dumps(
        {"auc": auc, "auc_ci95": [auc - 0.01, auc + 0.01], "accuracy": 0.7, "log_loss": 0.5,
         "test_rows": 1000}))
    (run / "report" / "blessing.json").write_text(json.dumps(
        {"blessed": blessed, "reasons": ["test"], "candidate_auc": auc, "published_auc": None,
         "floor": 0.6}))
    (run / "report" / "report.md").write_text(f"# {run_id}\n")
    return run


def test_publish_copies_verifies_and_moves_latest(tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path / "runs", "run-a", 0.81, blessed=True)
    out = tmp_path / "published"
    result = publish.publish(str(run), str(out))

    expected = ["config.yaml", "model/model.keras", "model/saved_model/saved_model.pb",
                "model/saved_model/variables/variables.data-00000-of-00001",
                "report/blessing.json", "report/metrics.json", "report/report.md"]
    assert result == publish.PublishResult(uri=str(out / "run-a"), run_id="run-a", files=7,
                                           latest_moved=True)
    assert storage.list_files(str(out / "run-a")) == sorted([*expected, "MANIFEST"])
    manifest = json.loads((out / "run-a" / "MANIFEST").read_text())
    assert [e["path"] for e in manifest["files"]] == expected
    for entry in manifest["files"]:
        copy = checksums.file_checksums(out / "run-a" / entry["path"])
        assert (copy.size, copy.sha256) == (entry["size"], entry["sha256"])
        assert copy.sha256 == checksums.file_checksums(run / entry["path"]).sha256
    latest = json.loads((out / "latest.json").read_text())
    assert latest["run_id"] == "run-a" and latest["auc"] == 0.81
    assert latest["uri"] == str((out / "run-a").resolve())
    assert publish.published_metrics(str(out))["auc"] == 0.81


def test_unblessed_run_is_published_but_latest_stays(tmp_path: Path) -> None:
    out = tmp_path / "published"
    publish.publish(str(make_evaluated_run(tmp_path, "good", 0.82, blessed=True)), str(out))
    before = (out / "latest.json").read_bytes()
    result = publish.publish(str(make_evaluated_run(tmp_path, "worse", 0.70, blessed=False)), str(out))
    assert not result.latest_moved and result.files == 7
    assert (out / "worse" / "model" / "model.keras").is_file()
    assert (out / "latest.json").read_bytes() == before


def test_failure_midway_leaves_latest_untouched(tmp_path: Path) -> None:
    out = tmp_path / "published"
    publish.publish(str(make_evaluated_run(tmp_path, "old", 0.80, blessed=True)), str(out))
    before = (out / "latest.json").read_bytes()
    run = make_evaluated_run(tmp_path, "new", 0.85, blessed=True)
    victim = "report/metrics.json"
    done: list[str] = []

    def remove_victim_after_first_file(rel: str) -> None:
        done.append(rel)
        if len(done) == 2:  # listed at the start, gone before its turn: a real ENOENT
            (run / victim).unlink()

    with pytest.raises(publish.PublishError, match=r"publishing report/metrics\.json of run new") as err:
        publish.publish(str(run), str(out), progress=remove_victim_after_first_file)
    assert "latest.json was not changed" in str(err.value) and "\n" not in str(err.value)
    assert (out / "latest.json").read_bytes() == before
    assert (out / "new" / "model" / "model.keras").is_file()  # earlier files did go
    assert not (out / "new" / "MANIFEST").exists()


def test_in_place_publish_copies_nothing_and_moves_latest(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = make_evaluated_run(runs, "run-x", 0.83, blessed=True)
    model = run / "model" / "model.keras"
    stat_before = model.stat()
    result = publish.publish(str(run), str(runs))
    assert result.latest_moved and result.files == 7
    stat_after = model.stat()
    assert (stat_after.st_ino, stat_after.st_mtime_ns) == (stat_before.st_ino, stat_before.st_mtime_ns)
    assert json.loads((runs / "latest.json").read_text())["run_id"] == "run-x"
    manifest = json.loads((run / "MANIFEST").read_text())
    assert {e["path"] for e in manifest["files"]} >= {"model/model.keras", "config.yaml"}
    # Nothing but the pointer was added next to the run; no nested copy of the run.
    assert sorted(p.name for p in runs.iterdir()) == ["latest.json", "run-x"]
    assert not (run / "run-x").exists()


def test_unevaluated_run_fails_with_one_line(tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "raw", 0.8, blessed=True)
    (run / "report" / "blessing.json").unlink()
    with pytest.raises(publish.PublishError, match="higgs evaluate") as err:
        publish.publish(str(run), str(tmp_path / "out"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(publish.PublishError, match="does not exist"):
        publish.publish(str(tmp_path / "nope"), str(tmp_path / "out"))


def test_model_newer_than_its_blessing_is_refused(tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "retrained", 0.8, blessed=True)
    later = (run / "report" / "blessing.json").stat().st_mtime + 60
    os.utime(run / "model" / "model.keras", (later, later))  # as if training ran again
    with pytest.raises(publish.PublishError, match=r"changed after .*blessing\.json"):
        publish.publish(str(run), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_publish_prints_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import cli

    run = make_evaluated_run(tmp_path, "cli-run", 0.8, blessed=True)
    assert cli.main(["publish", "--run", str(run), "--to", str(tmp_path / "out")]) == 0
    assert "published 7 files" in capsys.readouterr().out
    (tmp_path / "out" / "latest.json").write_text("{broken")
    assert cli.main(["publish", "--run", str(run), "--to", str(tmp_path / "out")]) == 0
    assert publish.read_latest(str(tmp_path / "out"))["run_id"] == "cli-run"  # pointer repaired
    assert cli.main(["publish", "--run", str(tmp_path / "missing"), "--to", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
