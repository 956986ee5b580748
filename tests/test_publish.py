"""pipeline.publish.store: immutable published models, latest.json by compare-and-swap, the registry.

    .venv/bin/pytest tests/test_publish.py

Each case of issue 14 is reproduced as written and must now end as the store's rules say;
most run against a local directory *and* the GCS emulator (parameter ``store``). Concurrency
and kills use real processes (``python -m pipeline.cli publish``), no mocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core import checksums, provenance, rundir, storage
from pipeline.publish import store as publish

DATASET = "d" * 64  # the manifest fingerprint the fixture runs were "trained" and "evaluated" on


def make_evaluated_run(root: Path, run_id: str, auc: float, blessed: bool, *, model_bytes: int = 200_000,
                       floor: float = 0.6, evaluated_on: str = DATASET) -> Path:
    """Write the files of a trained, evaluated run (contract layout) with distinct contents.

    What ``higgs train`` and ``higgs evaluate`` leave: ``provenance.json`` naming the dataset
    the model was trained on, and a ``blessing.json`` that records the model's sha256 and the
    dataset's fingerprint. The model bytes are arbitrary: publishing copies and verifies
    files, it does not load them (export and reload are tested in test_evaluate.py).
    """
    run = root / run_id
    (run / "model" / "saved_model" / "variables").mkdir(parents=True)
    (run / "report").mkdir()
    (run / "checkpoints").mkdir()
    (run / "config.yaml").write_text(f"preset: sample\n# {run_id}\n")
    (run / "model" / "model.keras").write_bytes(os.urandom(model_bytes))
    (run / "model" / "saved_model" / "saved_model.pb").write_bytes(os.urandom(5_000))
    (run / "model" / "saved_model" / "variables" / "variables.data-00000-of-00001").write_bytes(
        os.urandom(70_000))
    (run / "checkpoints" / "ckpt-1.index").write_bytes(b"not published")
    rundir.write_provenance(run, {
        "code": provenance.code_version(), "packages": provenance.package_versions(),
        "dataset": {"uri": "data/sample", "fingerprint": DATASET}, "config_sha256": "c" * 64,
        "preset": "sample", "strategy": "_DefaultDistributionStrategy", "replicas": 1, "workers": 1,
        "host": "test-host", "user": "test", "created_at": "2026-11-21T08:30:00+00:00"})
    (run / "report" / "metrics.json").write_text(json.dumps(
        {"auc": auc, "auc_ci95": [auc - 0.01, auc + 0.01], "accuracy": 0.7, "log_loss": 0.5,
         "test_rows": 1000}))
    model_sha = hashlib.sha256((run / "model" / "model.keras").read_bytes()).hexdigest()
    (run / "report" / "blessing.json").write_text(json.dumps(
        {"blessed": blessed, "reasons": ["test"], "candidate_auc": auc, "published_auc": None,
         "floor": floor, "max_auc_regression": 0.002, "model_sha256": model_sha,
         "dataset_fingerprint": evaluated_on}))
    (run / "report" / "report.md").write_text(f"# {run_id}\n")
    return run


PUBLISHED = ["config.yaml", "provenance.json", "model/model.keras", "model/saved_model/saved_model.pb",
             "model/saved_model/variables/variables.data-00000-of-00001",
             "report/blessing.json", "report/metrics.json", "report/report.md"]


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty published store: a local directory, or a prefix in a GCS emulator bucket."""
    if request.param == "gcs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/models"
    return str(tmp_path / "published")


def snapshot(out: str) -> dict[str, bytes]:
    """Every file under the store with its bytes (what must not change)."""
    return {rel: storage.read_bytes(storage.join(out, rel)) for rel in storage.list_files(out)}


def history(out: str) -> list[tuple[str | None, str, str]]:
    return [(h["from"], h["to"], h["action"]) for h in publish.read_history(out)]


def latest_bytes(out: str) -> bytes:
    return storage.read_bytes(storage.join(out, "latest.json"))


# --- publishing, the registry's records ------------------------------------------------------


def test_publish_copies_verifies_records_and_moves_latest(store: str, tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path / "runs", "run-a", 0.81, blessed=True)
    result = publish.publish(str(run), store, via="test")

    assert (result.uri, result.run_id, result.files, result.latest_moved, result.copied) == \
        (storage.join(store, "run-a"), "run-a", 8, True, 8)
    assert result.latest_reason == "latest.json moved from nothing to run-a"
    assert storage.list_files(storage.join(store, "run-a")) == sorted([*PUBLISHED, "MANIFEST"])
    manifest = publish.read_manifest(store, "run-a")
    assert [e["path"] for e in manifest["files"]] == PUBLISHED
    for entry in manifest["files"]:
        stored = checksums.stored_checksums(storage.join(store, "run-a", entry["path"]))
        assert stored.same_bytes(checksums.file_checksums(run / entry["path"]))
        assert (stored.size, stored.md5, stored.crc32c) == (entry["size"], entry["md5"], entry["crc32c"])
    assert manifest["auc"] == 0.81 and manifest["blessed"] is True and manifest["via"] == "test"
    assert manifest["dataset_fingerprint"] == DATASET and manifest["provenance"]["host"] == "test-host"
    assert manifest["published_by"] == provenance.actor()
    latest = publish.read_latest(store)
    assert latest["run_id"] == "run-a" and latest["auc"] == 0.81 and latest["blessed"] is True
    assert latest["uri"] == (storage.join(store, "run-a") if storage.is_gcs(store)
                             else str(Path(store, "run-a").resolve()))
    assert publish.published_metrics(store)["auc"] == 0.81
    (move,) = publish.read_history(store)
    assert (move["action"], move["from"], move["to"], move["to_auc"], move["via"]) == \
        ("publish", None, "run-a", 0.81, "test")
    assert move["by"] == provenance.actor() and move == latest["move"]
    assert storage.exists(storage.join(store, publish.STORE_MARKER))


def test_unblessed_run_is_published_but_latest_stays(store: str, tmp_path: Path) -> None:
    publish.publish(str(make_evaluated_run(tmp_path, "good", 0.82, blessed=True)), store)
    before = latest_bytes(store)
    result = publish.publish(str(make_evaluated_run(tmp_path, "worse", 0.70, blessed=False)), store)
    assert not result.latest_moved and result.files == 8
    assert result.latest_reason.startswith("run is not blessed (test)")
    assert storage.exists(storage.join(store, "worse", "model", "model.keras"))
    assert publish.read_manifest(store, "worse")["blessed"] is False
    assert latest_bytes(store) == before and history(store) == [(None, "good", "publish")]


def test_same_named_run_cannot_overwrite_a_published_model(store: str, tmp_path: Path) -> None:
    """Issue 14, case 1: an unblessed run whose directory has the same name as a published
    blessed run replaced OUT/<id>/model.keras behind latest.json. Now: one line, nothing changes."""
    publish.publish(str(make_evaluated_run(tmp_path / "a", "try", 0.82, blessed=True)), store)
    before = snapshot(store)
    other = make_evaluated_run(tmp_path / "b", "try", 0.53, blessed=False)
    with open(other / "config.yaml", "a") as fh:  # retrained with other settings: config differs too
        fh.write("# retrained\n")
    with pytest.raises(publish.PublishError, match=r"already published with different contents "
                                                   r"\(model/model\.keras differs\)") as err:
        publish.publish(str(other), store)
    assert "\n" not in str(err.value) and "new run directory" in str(err.value)
    assert snapshot(store) == before  # every byte, latest.json and MANIFEST included


def test_republishing_the_identical_run_is_a_verified_no_op(store: str, tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "same", 0.8, blessed=True)
    publish.publish(str(run), store)
    before = snapshot(store)
    again = publish.publish(str(run), store)
    assert (again.copied, again.files, again.latest_moved) == (0, 8, False)
    assert again.latest_reason == "latest.json already points at same"
    assert snapshot(store) == before and len(publish.read_history(store)) == 1


def test_stale_blessing_cannot_roll_latest_back(store: str, tmp_path: Path) -> None:
    """Issue 14, case 2: a run blessed at evaluate time (nothing published then, AUC 0.61),
    published after a better model (0.78), moved latest.json back. Now the rule is applied
    again at publish time against what latest.json points at then."""
    weak = make_evaluated_run(tmp_path, "weak", 0.61, blessed=True)  # evaluated first, blessed
    publish.publish(str(make_evaluated_run(tmp_path, "strong", 0.78, blessed=True)), store)
    before = latest_bytes(store)
    result = publish.publish(str(weak), store)
    assert not result.latest_moved and "\n" not in result.latest_reason
    assert "AUC 0.6100 is worse than published run strong 0.7800" in result.latest_reason
    assert latest_bytes(store) == before
    assert history(store) == [(None, "strong", "publish")]
    # A candidate within the allowed regression does move it (the same rule, not a new one).
    close = publish.publish(str(make_evaluated_run(tmp_path, "close", 0.779, blessed=True)), store)
    assert close.latest_moved and publish.read_latest(store)["run_id"] == "close"
    assert history(store)[-1] == ("strong", "close", "publish")


def test_floor_is_reapplied_at_publish_time(tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "low", 0.61, blessed=True, floor=0.7)  # a stale "yes"
    result = publish.publish(str(run), str(tmp_path / "out"))
    assert not result.latest_moved and "below the floor 0.7000" in result.latest_reason
    assert not (tmp_path / "out" / "latest.json").exists()


def test_failure_midway_leaves_latest_untouched_and_the_next_publish_completes(
        store: str, tmp_path: Path) -> None:
    publish.publish(str(make_evaluated_run(tmp_path, "old", 0.80, blessed=True)), store)
    before = latest_bytes(store)
    run = make_evaluated_run(tmp_path, "new", 0.85, blessed=True)
    saved = (run / "report" / "metrics.json").read_bytes()
    done: list[str] = []

    def remove_a_later_file(rel: str) -> None:
        done.append(rel)
        if len(done) == 2:  # listed at the start, gone before its turn: a real ENOENT
            (run / "report" / "metrics.json").unlink()

    with pytest.raises(publish.PublishError, match=r"publishing report/metrics\.json of run new") as err:
        publish.publish(str(run), store, progress=remove_a_later_file)
    assert "latest.json was not changed" in str(err.value) and "\n" not in str(err.value)
    assert latest_bytes(store) == before
    assert storage.exists(storage.join(store, "new", "model", "model.keras"))  # earlier files did go
    assert not storage.exists(storage.join(store, "new", "report", "metrics.json"))
    listed = {m.run_id: m for m in publish.list_models(store)}
    assert listed["new"].complete is False and listed["old"].complete is True

    (run / "report" / "metrics.json").write_bytes(saved)  # the same bytes: the same model
    result = publish.publish(str(run), store)
    assert result.latest_moved and result.copied == 2  # metrics.json and report.md; nothing twice
    assert storage.list_files(storage.join(store, "new")) == sorted([*PUBLISHED, "MANIFEST"])


def test_a_source_file_changed_midway_is_never_published(tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "moving", 0.8, blessed=True)
    out = tmp_path / "out"

    def change_the_report(rel: str) -> None:
        if rel == "config.yaml":
            (run / "report" / "report.md").write_text("# edited while publishing\n")

    with pytest.raises(publish.PublishError, match=r"report/report\.md .*changed"):
        publish.publish(str(run), str(out), progress=change_the_report)
    assert not (out / "moving" / "report" / "report.md").exists()
    assert not list(out.rglob("*.tmp-*")) and not (out / "latest.json").exists()


# --- runs and the store are apart -------------------------------------------------------------


def test_readme_layout_cannot_make_a_run_directory_the_published_copy(tmp_path: Path, capsys) -> None:
    """Issue 14, case 3: with the README's own layout (``--out runs/try``, publish to ``runs``)
    the run directory was the published copy, and retraining into it changed what latest.json
    pointed at. Now publishing into the directory that holds the run is refused, the store
    lives apart (``published/``), and training or evaluating inside it is refused."""
    from pipeline import chain, cli
    from pipeline.core.config import load_config

    runs = tmp_path / "runs"
    run = make_evaluated_run(runs, "try", 0.8, blessed=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(publish.PublishError, match=r"is inside the publish destination .*apart") as err:
        publish.publish(str(run), str(runs))
    assert "\n" not in str(err.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written

    out = tmp_path / "published"
    assert publish.publish(str(run), str(out)).latest_moved
    published_bytes = snapshot(str(out))
    for target in (out / "try", out / "other-run", out / "try" / "nested"):
        assert cli.main(["train", "--data", str(tmp_path / "data"), "--out", str(target)]) == 2
        err_text = capsys.readouterr().err
        assert err_text.count("\n") == 1 and ("published model" in err_text or "published store" in err_text)
    with pytest.raises(publish.PublishedLocationError, match="it has a MANIFEST"):
        chain.step_evaluate(load_config("sample"), str(tmp_path / "data"), str(out / "try"), str(out))
    assert snapshot(str(out)) == published_bytes
    publish.refuse_published(str(runs / "try"), "train")  # the working run stays usable


def test_report_of_another_model_or_dataset_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    retrained = make_evaluated_run(tmp_path, "retrained", 0.8, blessed=True)
    (retrained / "model" / "model.keras").write_bytes(os.urandom(1000))  # trained again after evaluate
    with pytest.raises(publish.PublishError, match=r"not the model its report judged .*higgs evaluate"):
        publish.publish(str(retrained), str(out))
    elsewhere = make_evaluated_run(tmp_path, "elsewhere", 0.8, blessed=True, evaluated_on="e" * 64)
    with pytest.raises(publish.PublishError, match=r"computed on another dataset .*data/sample"):
        publish.publish(str(elsewhere), str(out))
    no_provenance = make_evaluated_run(tmp_path, "old-run", 0.8, blessed=True)
    (no_provenance / "provenance.json").unlink()
    with pytest.raises(publish.PublishError, match=r"provenance\.json is missing"):
        publish.publish(str(no_provenance), str(out))
    assert not out.exists()


def test_unevaluated_run_fails_with_one_line(tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "raw", 0.8, blessed=True)
    (run / "report" / "blessing.json").unlink()
    with pytest.raises(publish.PublishError, match="higgs evaluate") as err:
        publish.publish(str(run), str(tmp_path / "out"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(publish.PublishError, match="does not exist"):
        publish.publish(str(tmp_path / "nope"), str(tmp_path / "out"))


def test_a_foreign_directory_under_the_store_is_never_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(publish.PublishError, match=r"not a published model \(no MANIFEST\)"):
        publish.publish(str(make_evaluated_run(tmp_path, "mine", 0.8, blessed=True)), str(out))
    assert sorted(p.name for p in (out / "mine").iterdir()) == ["notes.txt"]


# --- the registry: rollback, listing, history ------------------------------------------------


def test_rollback_models_listing_and_history(store: str, tmp_path: Path, capsys) -> None:
    from pipeline import cli

    publish.publish(str(make_evaluated_run(tmp_path, "a", 0.80, blessed=True)), store)
    b = make_evaluated_run(tmp_path, "b", 0.81, blessed=True)
    publish.publish(str(b), store)
    publish.publish(str(make_evaluated_run(tmp_path, "c", 0.50, blessed=False)), store)
    assert publish.read_latest(store)["run_id"] == "b"

    assert cli.main(["rollback", "--to", store, "--run", "a"]) == 0
    assert capsys.readouterr().out.strip() == "latest.json moved from b to a"
    assert publish.read_latest(store)["run_id"] == "a"
    assert history(store) == [(None, "a", "publish"), ("a", "b", "publish"), ("b", "a", "rollback")]
    assert publish.read_history(store)[-1]["via"] == f"higgs rollback --to {store} --run a"

    before = latest_bytes(store)
    for run_id, message in (("c", r"run c was not blessed \(test\)"),
                            ("zzz", r"no published model 'zzz' .*\(published: a, b, c\)")):
        assert cli.main(["rollback", "--to", store, "--run", run_id]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        import re

        assert re.search(message, err), err
    assert latest_bytes(store) == before
    assert publish.rollback(store, "a") == (False, "latest.json already points at a")
    # Republishing b (unchanged) does not undo the rollback; only a rollback moves it back.
    again = publish.publish(str(b), store)
    assert not again.latest_moved and "higgs rollback" in again.latest_reason
    assert latest_bytes(store) == before

    assert cli.main(["models", "--to", store, "--history"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["run", "id", "AUC", "±", "95%", "CI", "blessed", "dataset", "code",
                                "published", "(UTC)", "latest"]
    rows = {line.split()[0]: line for line in table[2:5]}
    assert set(rows) == {"a", "b", "c"}
    assert "0.8000 ± 0.0100" in rows["a"] and "← latest" in rows["a"] and "← latest" not in rows["b"]
    assert " yes " in rows["b"] and " no " in rows["c"] and DATASET[:12] in rows["c"]
    assert provenance.code_label(json.loads((b / "provenance.json").read_text())) in rows["b"]
    assert [line.split()[1] for line in table[5:]] == ["publish", "publish", "rollback"]


def test_models_lists_nothing_and_broken_latest_is_repaired_by_rollback(tmp_path: Path, capsys) -> None:
    from pipeline import cli

    out = tmp_path / "out"
    assert cli.main(["models", "--to", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"no published models in {out}"
    run = make_evaluated_run(tmp_path, "cli-run", 0.8, blessed=True)
    assert cli.main(["publish", "--run", str(run), "--to", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (f"published 8 files to {out / 'cli-run'}; "
                                               "latest.json moved from nothing to cli-run")
    (out / "latest.json").write_text("{broken")
    other = make_evaluated_run(tmp_path, "next", 0.9, blessed=True)
    assert cli.main(["publish", "--run", str(other), "--to", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid JSON" in err and "higgs rollback" in err
    assert (out / "latest.json").read_text() == "{broken"  # a refused move changes nothing
    assert cli.main(["rollback", "--to", str(out), "--run", "cli-run"]) == 0
    assert publish.read_latest(str(out))["run_id"] == "cli-run"
    assert cli.main(["publish", "--run", str(tmp_path / "missing"), "--to", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_move_whose_history_file_was_lost_is_recorded_by_the_next_one(store: str, tmp_path: Path) -> None:
    publish.publish(str(make_evaluated_run(tmp_path, "first", 0.80, blessed=True)), store)
    record = publish.read_latest(store)["history"]
    if storage.is_gcs(store):
        bucket, name = storage.split_gcs(storage.join(store, record))
        storage.gcs_client().bucket(bucket).blob(name).delete()
    else:
        Path(store, record).unlink()  # as if killed between the swap and the history write
    assert publish.read_history(store) == []
    publish.publish(str(make_evaluated_run(tmp_path, "second", 0.85, blessed=True)), store)
    assert history(store) == [(None, "first", "publish"), ("first", "second", "publish")]


# --- real processes: two publishers at once, kill -9 midway ----------------------------------


def _publish_cmd(run: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "publish", "--run", str(run), "--to", out]


def _run_together(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]


def test_concurrent_publishers_exactly_one_moves_latest(store: str, tmp_path: Path) -> None:
    """Four processes publish the same run at once (say, retried flow runs): one claims it,
    the others verify it; exactly one moves latest.json and the history has one entry."""
    run = make_evaluated_run(tmp_path, "race", 0.8, blessed=True, model_bytes=3_000_000)
    done = _run_together([_publish_cmd(run, store)] * 4)
    assert [d.returncode for d in done] == [0] * 4, [d.stderr for d in done]
    moved = [d for d in done if "moved from nothing to race" in d.stdout]
    assert len(moved) == 1, [d.stdout for d in done]
    assert history(store) == [(None, "race", "publish")]
    (model,) = publish.list_models(store)
    assert model.complete and model.latest
    for entry in model.manifest["files"]:
        assert checksums.stored_checksums(storage.join(store, "race", entry["path"])).same_bytes(
            checksums.file_checksums(run / entry["path"]))


def test_concurrent_publishers_of_different_runs_keep_a_consistent_chain(store: str, tmp_path: Path) -> None:
    """Two better-than-nothing runs at once: whichever swaps first, the other decides again
    against it — the better one ends latest, and the history is one unbroken chain."""
    better = make_evaluated_run(tmp_path, "better", 0.82, blessed=True, model_bytes=2_000_000)
    worse = make_evaluated_run(tmp_path, "worse", 0.70, blessed=True, model_bytes=2_000_000)
    done = _run_together([_publish_cmd(better, store), _publish_cmd(worse, store)])
    assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]
    assert publish.read_latest(store)["run_id"] == "better"
    moves = history(store)
    assert moves in ([(None, "better", "publish")],
                     [(None, "worse", "publish"), ("worse", "better", "publish")]), moves
    if len(moves) == 1:
        assert "worse than published run better" in done[1].stdout


def test_kill_9_midway_through_a_big_model_then_rerun_is_clean(store: str, tmp_path: Path) -> None:
    """``kill -9`` while model.keras (200 MB) is being copied: latest.json untouched; the
    rerun finishes the same publish and leaves no temporary file or stray object."""
    run = make_evaluated_run(tmp_path, "big", 0.8, blessed=True, model_bytes=200_000_000)
    model_dir = storage.join(store, "big", "model")
    proc = subprocess.Popen(_publish_cmd(run, store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    caught = ""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if storage.is_gcs(store):
            if storage.exists(storage.join(store, "big", "provenance.json")):
                caught = "upload"  # MANIFEST claimed, small files done; model.keras on its way
        else:
            temps = list(Path(model_dir).glob(".model.keras.tmp-*")) if Path(model_dir).is_dir() else []
            caught = "copy" if temps and temps[0].stat().st_size > 0 else ""
        if caught:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    assert caught and proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not storage.exists(storage.join(store, "latest.json"))
    assert not storage.exists(storage.join(model_dir, "model.keras"))  # it really was midway
    if not storage.is_gcs(store):
        assert list(Path(model_dir).glob(".model.keras.tmp-*"))  # what the kill left behind
    listed = publish.list_models(store)
    assert [(m.run_id, m.complete) for m in listed] == [("big", False)]

    rerun = subprocess.run(_publish_cmd(run, store), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "moved from nothing to big" in rerun.stdout
    assert rerun.stdout.startswith(f"completed {storage.join(store, 'big')}: copied ")  # not all of them
    assert storage.list_files(storage.join(store, "big")) == sorted([*PUBLISHED, "MANIFEST"])
    assert not [f for f in storage.list_files(store) if ".tmp-" in f]
    (model,) = publish.list_models(store)
    assert model.complete and model.latest and history(store) == [(None, "big", "publish")]
    stored = checksums.stored_checksums(storage.join(model_dir, "model.keras"))
    assert stored.same_bytes(checksums.file_checksums(run / "model" / "model.keras"))


def test_a_kill_while_claiming_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    """Killed between writing the MANIFEST's temporary file and linking it: the next publish
    claims the id anyway and removes the leftover."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    out = tmp_path / "out"
    leftover = out / "claim" / f".MANIFEST.tmp-{int(dead.stdout)}"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{half")
    result = publish.publish(str(make_evaluated_run(tmp_path, "claim", 0.8, blessed=True)), str(out))
    assert result.latest_moved and not leftover.exists()
    assert storage.list_files(str(out / "claim")) == sorted([*PUBLISHED, "MANIFEST"])


def test_published_dataset_is_the_one_the_model_was_trained_on(tmp_path: Path) -> None:
    """Validation's baseline comes from the published model's provenance, checked by fingerprint."""
    from pipeline.data import dataset

    data = tmp_path / "data" / "sample"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text('{"rows": 1}\n')
    fp = dataset.fingerprint(str(data))
    run = make_evaluated_run(tmp_path / "runs", "run-d", 0.8, blessed=True, evaluated_on=fp)
    prov = rundir.read_provenance(run)
    rundir.write_provenance(run, {**prov, "dataset": {"uri": str(data), "fingerprint": fp}})
    out = str(tmp_path / "published")
    assert publish.published_dataset(out) is None  # nothing published yet
    publish.publish(str(run), out, via="test")
    assert publish.published_dataset(out) == (str(data), "run-d")

    (data / "manifest.json").write_text('{"rows": 2}\n')  # reconverted in place since
    with pytest.raises(publish.PublishError, match=r"no longer holds the dataset published run run-d"):
        publish.published_dataset(out)
    shutil.rmtree(data)
    with pytest.raises(publish.PublishError, match=r"is gone; pass the baseline explicitly"):
        publish.published_dataset(out)
