"""Local multi-worker training: real MultiWorkerMirroredStrategy workers on 127.0.0.1.

    .venv/bin/pytest tests/test_multiworker.py -q

The launcher starts plain subprocesses (no ``multi_process_runner``); the slow test runs the
real ``higgs train --workers 2`` and compares the two workers' final weights bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cloud import launch
from pipeline.core.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]


def test_tf_config_and_ports():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    cfg = launch.tf_config_for(ports, 2)
    assert cfg["cluster"]["worker"] == [f"127.0.0.1:{p}" for p in ports]
    assert cfg["task"] == {"type": "worker", "index": 2}


def test_a_failing_worker_stops_the_others():
    # Real processes standing in for workers: one fails at once, one would run for a minute.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    start = time.monotonic()
    try:
        with pytest.raises(launch.LaunchError, match="worker 1 of 2 failed with exit code 3"):
            launch._wait([sleeper, failing], timeout=30)
    finally:
        launch._kill([sleeper, failing])
    assert sleeper.poll() is not None  # killed, not left behind
    assert time.monotonic() - start < 20


def test_cluster_timeout_is_reported():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        with pytest.raises(launch.LaunchError, match="did not finish within 1 s"):
            launch._wait([sleeper], timeout=1)
    finally:
        launch._kill([sleeper])
    assert sleeper.poll() is not None


@pytest.mark.slow
def test_two_workers_train_in_sync_and_the_chief_writes_the_run(small_dataset, tmp_path):
    run = tmp_path / "run"
    worker_tmp = tmp_path / "tmp"
    worker_tmp.mkdir()
    # TMPDIR: where the non-chief worker puts (and must remove) its private outputs.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(worker_tmp))
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--data", small_dataset, "--out", str(run),
           "--preset", "sample", "--workers", "2", "--epochs", "2",
           "--set", "model.blocks=2", "--set", "model.units=32",
           "--set", "train.batch_size_per_replica=64", "--set", "train.steps_per_epoch=8",
           "--set", "train.validation_steps=2", "--set", "train.steps_per_execution=4"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    print(f"2-worker MWMS run took {elapsed:.1f} s")

    # Each worker's log is streamed with its prefix; both ran MWMS with 2 replicas in sync.
    for i in (0, 1):
        assert re.search(rf"^\[worker {i}\] .*CollectiveAllReduceStrategy: 2 replica\(s\) in sync", out, re.M)
    digests = dict(re.findall(r"^\[worker (\d)\] .*weights_sha256=([0-9a-f]{64})", out, re.M))
    assert set(digests) == {"0", "1"}, out[-3000:]
    assert digests["0"] == digests["1"]  # synchronous training: bit-identical weights

    # Only the chief's outputs exist, in the run directory; worker 1 cleaned up after itself.
    assert (run / "config.yaml").is_file()
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [0, 1]
    assert not list(worker_tmp.glob("higgs-worker*"))
    assert not list(run.rglob("workertemp*"))  # Keras' per-worker checkpoint copies are gone too
    from pipeline.core.tfk import keras
    from pipeline.training.train import weights_digest

    model = keras.models.load_model(run / "model" / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == 16
    # The chief's saved model holds exactly the weights both workers ended with.
    assert weights_digest(model) == digests["0"]
