"""Fault injection: bad inputs and kills at every stage boundary, on real files and the GCS emulator.

    .venv/bin/pytest tests/test_faults.py -q                 # all (kills are marked slow)
    .venv/bin/pytest tests/test_faults.py -q -m "not slow"   # the bad-input cases

Kills are real: a ``higgs`` subprocess dies by SIGKILL at a named point (``HIGGS_KILL_AT``,
:mod:`pipeline.core.faults`) or from outside, then the same command is run again and its
outputs are compared with what the first run had committed. Bad inputs are real files (and
emulator objects) cut, flipped or removed; each must end in one line naming the shard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.core import storage
from pipeline.core.config import load_config
from pipeline.data import dataset, records, verify

ROOT = Path(__file__).resolve().parents[1]
W = records.FRAMED_BYTES
SHARD = "training/part-00001-of-00004.tfrecord"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def _higgs(*args: str, env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- bad inputs -------------------------------------------------------------------------------


def _copy(small_dataset: str, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    return data


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x5A]))


def _truncate(path: Path, nbytes: int) -> None:
    os.truncate(path, path.stat().st_size - nbytes)


# name → (how to break DATA/SHARD, a piece of the one-line message)
BAD_INPUTS = {
    "missing": (lambda p: p.unlink(), "is missing (manifest.json lists it with 2728 records)"),
    "short_by_50_records": (lambda p: _truncate(p, 50 * W), "(50 records short)"),
    "cut_mid_record": (lambda p: _truncate(p, 100), "cut mid-record: 2,727 records and 79 bytes"),
    "one_record_too_many": (lambda p: p.write_bytes(p.read_bytes() + p.read_bytes()[:W]),
                            "1 record too many"),
    "flipped_data_byte": (lambda p: _flip(p, 1000 * W + 100), "record 1000 at byte offset 179,000"),
    "flipped_length_byte": (lambda p: _flip(p, 7 * W + 3), "record 7 at byte offset 1,253"),
    "flipped_length_crc": (lambda p: _flip(p, 2727 * W + 9), "record 2727 at byte offset 488,133"),
    "flipped_data_crc": (lambda p: _flip(p, 64 * W + W - 1), "record 64 at byte offset 11,456"),
}


def test_a_good_dataset_verifies(small_dataset: str) -> None:
    result = verify.verify_dataset(small_dataset, use_cache=False)
    manifest = dataset.load_manifest(small_dataset)
    assert result.records == sum(manifest["rows"].values()) == 12_000
    assert result.splits["training"].shards == 4 and result.bytes == 12_000 * W
    text = result.summary()
    assert "OK" in text and "10,910 records" in text and "records/s" in text


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_shard_is_named_in_one_line(small_dataset: str, tmp_path: Path, case: str) -> None:
    data = _copy(small_dataset, tmp_path)
    breaks, message = BAD_INPUTS[case]
    breaks(data / SHARD)
    with pytest.raises(verify.IntegrityError) as err:
        verify.verify_dataset(str(data))
    text = str(err.value)
    assert "\n" not in text and str(data / SHARD) in text and message in text, text
    assert "higgs convert --overwrite" in text
    # The other splits alone are fine: the check names the shard, not the dataset.
    verify.verify_dataset(str(data), splits=("validation", "test"))


def test_every_corrupt_byte_of_a_record_is_found() -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    feats = rng.normal(size=(300, 28)).astype("float32")
    chunk = records.frame_records(records.encode_examples(feats, (feats[:, 0] > 0).astype("float32")))
    assert verify.check_chunk(chunk) is None
    for offset in range(0, len(chunk), 13):
        broken = bytearray(chunk)
        broken[offset] ^= 1 << (offset % 8)
        assert verify.check_chunk(bytes(broken)) == offset // W, offset


def test_a_shard_rewritten_after_the_check_is_checked_again(small_dataset: str, tmp_path: Path) -> None:
    data = _copy(small_dataset, tmp_path)
    verify.verify_dataset(str(data))
    path = data / SHARD
    blob = bytearray(path.read_bytes())
    blob[5 * W + 50] ^= 1
    path.write_bytes(bytes(blob))  # a new mtime: the cached result no longer applies
    with pytest.raises(verify.IntegrityError, match="record 5 at byte offset 895"):
        verify.verify_dataset(str(data))


@pytest.mark.gcs
def test_bad_shards_on_gcs_are_named(gcs_bucket: str, small_dataset: str) -> None:
    data = f"gs://{gcs_bucket}/data/sample"
    for rel in storage.list_files(small_dataset):
        storage.write_bytes(storage.join(data, rel), Path(small_dataset, rel).read_bytes())
    assert verify.verify_dataset(data).records == 12_000
    uri = storage.join(data, SHARD)
    good = storage.read_bytes(uri)
    broken = bytearray(good)
    broken[2000 * W + 40] ^= 0xFF
    storage.write_bytes(uri, bytes(broken))  # a new generation
    with pytest.raises(verify.IntegrityError, match=r"gs://.*part-00001-of-00004.tfrecord is corrupt: "
                                                    r"record 2000 at byte offset 358,000"):
        verify.verify_dataset(data)
    storage.write_bytes(uri, good[:-50 * W])
    with pytest.raises(verify.IntegrityError, match="50 records short"):
        verify.verify_dataset(data, crc=False)


def test_higgs_verify_cli(small_dataset: str, tmp_path: Path) -> None:
    ok = _higgs("verify", small_dataset)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "OK — framing + CRC of every record match manifest.json" in ok.stdout
    data = _copy(small_dataset, tmp_path)
    _flip(data / SHARD, 1000 * W + 100)
    bad = _higgs("verify", str(data))
    assert bad.returncode == 2
    assert _last_line(bad) == (f"higgs verify: error: shard {data / SHARD} is corrupt: record 1000 at byte "
                               "offset 179,000 fails its TFRecord CRC; rebuild the dataset with "
                               "'higgs convert --overwrite'")


@pytest.mark.parametrize("case", ["missing", "short_by_50_records", "flipped_data_byte"])
def test_training_on_a_bad_shard_fails_in_one_line_and_writes_nothing(small_dataset: str, tmp_path: Path,
                                                                      case: str) -> None:
    data = _copy(small_dataset, tmp_path)
    breaks, message = BAD_INPUTS[case]
    breaks(data / SHARD)
    run = tmp_path / "run"
    proc = _higgs("train", "--data", str(data), "--out", str(run), "--epochs", "1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _last_line(proc)
    assert line.startswith("higgs train: error: shard ") and message in line, line
    assert "Traceback" not in proc.stderr
    assert not run.exists()  # nothing that reads as a run


def _tiny_run(data: str, run: Path) -> None:
    from pipeline.training.train import run_training

    cfg = load_config("sample", overrides=["model.blocks=1", "model.units=16", "train.epochs=1",
                                           "train.batch_size_per_replica=64", "train.steps_per_epoch=2",
                                           "train.validation_steps=1", "train.steps_per_execution=1"])
    run_training(cfg, data, str(run))


def test_evaluating_on_a_bad_test_shard_fails_before_writing_a_report(small_dataset: str,
                                                                        tmp_path: Path) -> None:
    run = tmp_path / "run"
    _tiny_run(small_dataset, run)
    data = _copy(small_dataset, tmp_path)
    _truncate(data / "test" / "part-00001-of-00002.tfrecord", 50 * W)
    proc = _higgs("evaluate", "--data", str(data), "--run", str(run), "--set", "evaluate.baseline=false")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert _last_line(proc).startswith(f"higgs evaluate: error: shard {data}/test/part-00001-of-00002")
    assert "(50 records short)" in _last_line(proc)
    assert not (run / "report").exists()


def test_a_shard_corrupted_while_training_reads_it_is_named(small_dataset: str, tmp_path: Path) -> None:
    """The check passed (cached), then a frame header changed under the same mtime: the framed
    reader's layout assertion is turned into the one line naming the shard and the offset."""
    from pipeline.training.train import run_training

    data = _copy(small_dataset, tmp_path)
    verify.verify_dataset(str(data))  # this process now trusts these file versions
    path = data / SHARD
    st = path.stat()
    _flip(path, 10 * W + 1)  # the frame header: the fast reader checks it on every record
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same inode, size and mtime
    cfg = load_config("sample", overrides=["model.blocks=1", "model.units=16", "train.epochs=1",
                                           "train.batch_size_per_replica=512", "train.steps_per_epoch=30",
                                           "train.validation_steps=1", "train.steps_per_execution=1"])
    with pytest.raises(verify.IntegrityError, match="record 10 at byte offset 1,790"):
        run_training(cfg, str(data), str(tmp_path / "run"))
    assert (tmp_path / "run" / "config.yaml").is_file()  # training had started: the read found it
    assert not (tmp_path / "run" / "model" / "model.keras").exists()


# --- training: kill at each boundary, rerun, compare -------------------------------------------

EPOCHS = 4
# Epoch 0 learns at 1e-2; from step 20 on the rate is 3.0 and the model falls apart, so epoch 0
# is (by far) the best: the final model must be epoch 0's weights even when the run that
# trained epoch 0 was killed.
TRAIN_SETTINGS = ["--preset", "sample", "--epochs", str(EPOCHS),
                  "--set", "model.blocks=2", "--set", "model.units=32",
                  "--set", "train.batch_size_per_replica=64", "--set", "train.steps_per_epoch=20",
                  "--set", "train.validation_steps=2", "--set", "train.steps_per_execution=1",
                  "--set", "train.reduce_lr=false", "--set", "train.schedule=piecewise",
                  "--set", "train.schedule_boundaries=[20]", "--set", "train.schedule_values=[0.01,3.0]"]


def _train_args(data: str, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", data, "--out", str(run), *TRAIN_SETTINGS, *extra]


def _history(run: Path) -> dict:
    return json.loads((run / "history.json").read_text())


def _validation_auc(data: str, run: Path) -> float:
    """The final model's AUC on the rows every epoch was validated on (2 batches of 64)."""
    from pipeline.core.tfk import keras
    from pipeline.training import inputs

    cfg = load_config("sample", overrides=["train.batch_size_per_replica=64"])
    ds = inputs.make_dataset(data, "validation", cfg, training=False, repeat=True, drop_remainder=True)
    model = keras.models.load_model(run / "model" / "model.keras")
    return float(model.evaluate(ds, steps=2, verbose=0, return_dict=True)["auc"])


def _no_leftovers(run: Path) -> None:
    assert not list((run / "model").glob(".model.keras.tmp-*")), list((run / "model").iterdir())
    assert not (run / "checkpoints" / "state.json").exists()
    assert not list((run / "checkpoints").glob("best-epoch-*"))
    assert not any((run / "checkpoints" / "backup").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(("point", "resumes_at"), [
    ("train.mid_epoch@1", 1),        # epoch 1 half done: lost, retrained
    ("train.before_backup@1", 1),    # epoch 1's history row written, its backup not: retrained
    ("train.after_backup@1", 2),     # epoch 1 committed: kept
    ("train.before_model_rename", None),  # fit done, model in its temporary file
    ("train.before_cleanup", None),  # model.keras in place, resumable state not yet removed
])
def test_a_killed_training_resumes_without_losing_an_epoch(small_dataset: str, tmp_path: Path,
                                                           point: str, resumes_at: int | None) -> None:
    run = tmp_path / "run"
    first = _higgs(*_train_args(small_dataset, run), env=_env(HIGGS_KILL_AT=point))
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    before = _history(run)
    committed = EPOCHS if resumes_at is None else resumes_at

    second = _higgs(*_train_args(small_dataset, run))
    assert second.returncode == 0, second.stderr[-3000:]
    after = _history(run)
    assert after["epoch"] == list(range(EPOCHS))  # contiguous, every epoch once
    assert f"{EPOCHS} epochs" in second.stdout
    for key in ("loss", "val_loss", "val_auc", "lr"):  # committed epochs are kept, not retrained
        assert after[key][:committed] == before[key][:committed], key
    trained = [line for line in second.stderr.splitlines() if f"/{EPOCHS}" in line and " epoch " in line]
    if resumes_at is None:
        assert "the backup holds the finished run" in second.stderr
        assert not trained, trained  # nothing trained again
    else:
        assert f"resumed from the backup at epoch {resumes_at + 1}/{EPOCHS}" in second.stderr
        assert f"epoch {resumes_at}/{EPOCHS}" not in second.stderr
    # Early stopping's best weights survived the kill: the saved model is epoch 0's.
    assert after["val_auc"][0] == max(after["val_auc"])
    assert _validation_auc(small_dataset, run) == pytest.approx(after["val_auc"][0], abs=1e-6)
    _no_leftovers(run)


@pytest.mark.slow
def test_a_run_that_stopped_early_stays_stopped_after_a_kill(small_dataset: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = _train_args(small_dataset, run, "--set", "train.early_stopping_patience=1")
    first = _higgs(*args, env=_env(HIGGS_KILL_AT="train.after_backup@1"))
    assert first.returncode == -signal.SIGKILL
    assert _history(run)["epoch"] == [0, 1]
    second = _higgs(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "the backup holds the finished run (epoch 2/4, early stopping)" in second.stderr
    assert _history(run)["epoch"] == [0, 1] and "2 epochs" in second.stdout
    assert _validation_auc(small_dataset, run) == pytest.approx(_history(run)["val_auc"][0], abs=1e-6)
    _no_leftovers(run)


# --- convert: foreign content, two conversions at once, a kill while publishing ----------------


def _source(small_dataset: str) -> str:
    return str(Path(small_dataset).parent / "source.csv.gz")


def _convert_cmd(source: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "convert", "--source", source, "--out", out, *extra]


def _put_tree(local: Path, uri: str) -> None:
    for rel in storage.list_files(str(local)):
        storage.write_bytes(storage.join(uri, rel), (local / rel).read_bytes())


def _out(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "local":
        return str(tmp_path / "data")
    return f"gs://{request.getfixturevalue('gcs_bucket')}/data"


@pytest.mark.parametrize("kind", ["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def test_convert_refuses_foreign_content(small_dataset: str, tmp_path: Path, kind: str,
                                        request: pytest.FixtureRequest) -> None:
    from pipeline.data import convert

    out = _out(kind, tmp_path, request)
    cfg = load_config("sample").data
    notes = storage.join(out, "training", "notes.txt")
    storage.write_bytes(notes, b"my notes")
    with pytest.raises(convert.ConvertError, match=r"files the converter did not write \(.*notes.txt\)"):
        convert.convert(_source(small_dataset), out, cfg)
    assert storage.read_bytes(notes) == b"my notes"
    assert storage.list_files(out) == ["training/notes.txt"]  # no lock, no staging left

    storage.delete_file(notes)
    convert.convert(_source(small_dataset), out, cfg)
    storage.write_bytes(notes, b"my notes")  # added to a finished dataset
    with pytest.raises(convert.ConvertError, match=r"notes\.txt"):
        convert.convert(_source(small_dataset), out, dataclasses.replace(cfg, training_shards=3),
                        overwrite=True)
    assert storage.read_bytes(notes) == b"my notes"
    assert len(dataset.load_manifest(out)["shards"]["training"]) == 4  # the old dataset is untouched


def test_overwrite_replaces_only_what_the_old_manifest_lists(small_dataset: str, tmp_path: Path) -> None:
    from pipeline.data import convert

    out = tmp_path / "data"
    cfg = load_config("sample").data
    convert.convert(_source(small_dataset), str(out), cfg)
    old = sorted(p.name for p in (out / "training").iterdir())
    rebuilt = convert.convert(_source(small_dataset), str(out),
                              dataclasses.replace(cfg, training_shards=3), overwrite=True)
    new = sorted(p.name for p in (out / "training").iterdir())
    assert len(old) == 4 and len(new) == 3 and not set(old) & set(new)
    assert [s["path"] for s in rebuilt.manifest["shards"]["training"]] == [f"training/{n}" for n in new]
    assert verify.verify_dataset(str(out)).records == 12_000
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test", "training", "validation"]


def _wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"{what}: the process ended first ({proc.returncode})"
        assert time.monotonic() < deadline, f"{what}: timed out"
        time.sleep(0.05)


HOLDER = """
import sys
from pipeline.core import locks
lock = locks.hold(sys.argv[1], "convert")
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def test_a_held_dataset_lock_refuses_or_waits(small_dataset: str, tmp_path: Path, kind: str,
                                              request: pytest.FixtureRequest) -> None:
    out = _out(kind, tmp_path, request)
    lock = storage.join(out, ".convert.lock")
    src = _source(small_dataset)
    # A live holder of DATA's lock (the code convert takes it with), idle between requests.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock], cwd=ROOT, env=_env(), text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        refused = _higgs("convert", "--source", src, "--out", out)
        assert refused.returncode == 2, refused.stderr[-2000:]
        line = _last_line(refused)
        assert line.startswith(f"higgs convert: error: {out} is in use by convert (pid {holder.pid} on host ")
        assert line.endswith("wait for it (higgs convert --wait SECONDS) or choose another --out")
        assert storage.list_files(out) == [".convert.lock"]  # the refused run wrote nothing
        waiting = subprocess.Popen(_convert_cmd(src, out, "--wait", "300"), cwd=ROOT, env=_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(5)  # it is waiting now (or still starting up): either way it must not convert yet
        assert not storage.exists(dataset.manifest_uri(out))
        holder.communicate("\n", timeout=60)
        got, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, err[-2000:]
        assert got.startswith(f"wrote {out}")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert verify.verify_dataset(out).records == 12_000
    assert not [p for p in storage.list_files(out) if p.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def test_two_conversions_into_one_out_at_once(small_dataset: str, tmp_path: Path, kind: str,
                                              request: pytest.FixtureRequest) -> None:
    out = _out(kind, tmp_path, request)
    src = _source(small_dataset)
    procs = [subprocess.Popen(_convert_cmd(src, out, *extra), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for extra in ([], [], ["--wait", "300"])]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    wrote = [r for r in results if r[0] == 0 and r[1].startswith(f"wrote {out}")]
    assert len(wrote) == 1, [(rc, o, e[-500:]) for rc, o, e in results]  # exactly one converted
    for rc, got, err in results:
        if (rc, got, err) in wrote:
            continue
        lines = [x for x in err.splitlines() if x.strip()]
        assert (rc == 0 and got.startswith(f"already complete, nothing to do: {out}")) or (
            rc == 2 and f"{out} is in use by convert (pid " in lines[-1]), (rc, got, err[-1000:])
    assert results[2][0] == 0  # the one that waits always ends well
    assert verify.verify_dataset(out).records == 12_000
    for rel in (p for p in storage.list_files(small_dataset) if p.endswith(".tfrecord")):
        assert storage.read_bytes(storage.join(out, rel)) == Path(small_dataset, rel).read_bytes(), rel
    assert not [p for p in storage.list_files(out) if p.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def test_a_killed_conversion_leaves_nothing_that_blocks_the_next(small_dataset: str, tmp_path: Path,
                                                                 kind: str,
                                                                 request: pytest.FixtureRequest) -> None:
    out = _out(kind, tmp_path, request)
    src = _source(small_dataset)
    # Killed holding the lock (a stale lock), then killed halfway through publishing.
    first = subprocess.Popen(_convert_cmd(src, out), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    _wait_for(lambda: storage.exists(storage.join(out, ".convert.lock")), first, "the lock")
    first.kill()
    first.wait()
    assert not storage.exists(dataset.manifest_uri(out))
    killed = _higgs("convert", "--source", src, "--out", out,
                    env=_env(HIGGS_KILL_AT="convert.before_manifest"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not storage.exists(dataset.manifest_uri(out))  # not a dataset...
    assert storage.exists(storage.join(out, SHARD))       # ...though its shards are in place
    again = _higgs("convert", "--source", src, "--out", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert verify.verify_dataset(out).records == 12_000
    shards = [p for p in storage.list_files(small_dataset) if p.endswith(".tfrecord")]
    assert [p for p in storage.list_files(out) if p.endswith(".tfrecord")] == shards
    for rel in shards:  # byte-identical to an uninterrupted conversion of the same source
        assert storage.read_bytes(storage.join(out, rel)) == Path(small_dataset, rel).read_bytes(), rel
    assert not [p for p in storage.list_files(out) if p.startswith(".")]  # no lock, journal, staging


# --- destinations that cannot be written: seconds, one line, nothing created -----------------


def _no_credentials_env(tmp_path: Path) -> dict[str, str]:
    env = _env(HOME=str(tmp_path / "home"), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
    for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def evaluated_run(small_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.evaluation import evaluate

    run = tmp_path_factory.mktemp("evaluated") / "run"
    _tiny_run(small_dataset, run)
    evaluate.evaluate(load_config("sample", overrides=["evaluate.baseline=false"]), small_dataset, str(run))
    return run


@pytest.mark.gcs
def test_gcs_destinations_fail_in_one_line(small_dataset: str, gcs_emulator: str, tmp_path: Path,
                                           evaluated_run: Path) -> None:
    src = _source(small_dataset)
    missing = "gs://no-such-bucket-here/data"
    no_bucket = f"{missing}: bucket gs://no-such-bucket-here does not exist"
    no_login = _no_credentials_env(tmp_path)
    run = str(evaluated_run)
    cases = {
        "convert, no bucket": (["convert", "--source", src, "--out", missing], _env(), f"--out {no_bucket}"),
        "publish, no bucket": (["publish", "--run", run, "--to", missing], _env(), f"--to {no_bucket}"),
        "convert, no credentials": (["convert", "--source", src, "--out", "gs://b/data"], no_login,
                                    "--out gs://b/data: no Google Cloud credentials"),
        "publish, no credentials": (["publish", "--run", run, "--to", "gs://b/p"], no_login,
                                    "--to gs://b/p: no Google Cloud credentials"),
    }
    for name, (args, env, message) in cases.items():
        start = time.monotonic()
        proc = _higgs(*args, env=env)
        print(f"{name}: exit {proc.returncode} after {time.monotonic() - start:.1f} s")
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert message in _last_line(proc), (name, _last_line(proc))
        assert "Traceback" not in proc.stderr, name


@pytest.mark.parametrize("where", ["file_in_the_way", "proc"])
def test_unwritable_local_destinations_fail_in_one_line(small_dataset: str, tmp_path: Path,
                                                         where: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = str(blocker / "data") if where == "file_in_the_way" else "/proc/higgs-test/data"
    message = "is a file, not a directory" if where == "file_in_the_way" else "cannot write in /proc"
    for args in (["convert", "--source", _source(small_dataset), "--out", out],
                 ["train", "--data", small_dataset, "--out", out, "--epochs", "1"]):
        proc = _higgs(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"--out {out}: " in _last_line(proc) and message in _last_line(proc), _last_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# --- multi-worker: kill -9 one worker of a real 2-process cluster ---------------------------

MW_SETTINGS = ["--preset", "sample", "--workers", "2", "--epochs", str(EPOCHS),
               "--set", "model.blocks=2", "--set", "model.units=32",
               "--set", "train.batch_size_per_replica=32", "--set", "train.steps_per_epoch=40",
               "--set", "train.validation_steps=2", "--set", "train.steps_per_execution=1",
               "--set", "train.early_stopping_patience=10"]


def _mw_cmd(data: str, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "train", "--data", data, "--out", str(run),
            *MW_SETTINGS, *extra]


def _resumed_at(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"resumed from the backup at epoch (\d+)/", text)]


def _digests(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\[worker (\d)\] .*weights_sha256=([0-9a-f]{64})", text, re.M))


@pytest.mark.slow
def test_a_killed_worker_restarts_the_cluster_and_resumes(small_dataset: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(_mw_cmd(small_dataset, run), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: any("[worker 0]" in x and f"epoch 2/{EPOCHS}" in x for x in lines), proc,
                  "worker 0 starting epoch 2", timeout=400)
        pid = int(next(x for x in lines if "worker 1: pid " in x).rsplit("pid ", 1)[1])
        time.sleep(1.0)  # into the epoch
        before = _history(run)
        os.kill(pid, signal.SIGKILL)  # kill -9 from outside, mid-epoch
        killed_at = time.monotonic()
        _wait_for(lambda: any("was killed by signal 9" in x for x in lines), proc, "the launcher noticing")
        print(f"the launcher noticed worker 1's death after {time.monotonic() - killed_at:.1f} s")
        assert proc.wait(timeout=600) == 0, "".join(lines)[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    text = "".join(lines)
    assert "restarting the cluster on fresh ports (restart 1 of 2)" in text
    ports = re.findall(r"starting 2 workers on 127.0.0.1 ports (\d+), (\d+)", text)
    assert len(ports) == 2 and not set(ports[0]) & set(ports[1]), ports  # fresh ports
    resumed = _resumed_at(text)
    assert resumed and resumed[0] in (2, 3), text[-3000:]  # only the interrupted epoch is redone
    after = _history(run)
    assert after["epoch"] == list(range(EPOCHS))
    keep = resumed[0] - 1
    for key in ("loss", "val_auc"):  # the epochs committed before the kill are kept
        assert after[key][:keep] == before[key][:keep], key
    digests = _digests(text)
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    _no_leftovers(run)
    assert not list(run.rglob("workertemp*"))


@pytest.mark.slow
def test_out_of_restarts_the_launcher_says_how_to_resume(small_dataset: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    once = tmp_path / "fired"
    kill = _env(HIGGS_KILL_AT="train.mid_epoch@1", HIGGS_KILL_WORKER="1", HIGGS_KILL_ONCE=str(once))
    failed = _higgs(*_mw_cmd(small_dataset, run, "--set", "train.max_restarts=0")[3:], env=kill)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert once.is_file()
    assert _last_line(failed) == (
        "higgs train: error: worker 1 of 2 was killed by signal 9 (see its '[worker 1]' lines above); "
        f"stopped the other workers; 0 restart(s) used (train.max_restarts=0) — resume with the same "
        f"command: it continues from {run}/checkpoints")
    assert _history(run)["epoch"] == [0]
    again = _higgs(*_mw_cmd(small_dataset, run, "--set", "train.max_restarts=0")[3:], env=kill)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _resumed_at(again.stdout + again.stderr)[:1] == [2]
    assert _history(run)["epoch"] == list(range(EPOCHS))
    _no_leftovers(run)
