"""The strategy factory: names, TPU-absent error, TF_CONFIG handling, chief detection.

    .venv/bin/pytest tests/test_strategy.py -q

MultiWorkerMirroredStrategy itself is exercised in real worker processes by
tests/test_multiworker.py (creating it here would reconfigure this test process's runtime).
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from pipeline.core.config import load_config
from pipeline.training import strategy as strategy_lib
from pipeline.training.strategy import StrategyError, make_strategy


def _train(**changes):
    return dataclasses.replace(load_config("sample").train, **changes)


@pytest.fixture()
def no_tpu_env(monkeypatch):
    for key in ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TF_CONFIG"):
        monkeypatch.delenv(key, raising=False)


def test_one_device_and_auto_on_this_machine(no_tpu_env):
    import tensorflow as tf

    one = make_strategy(_train(strategy="one_device"))
    assert one.num_replicas_in_sync == 1
    # Keras' BackupAndRestore accepts the default strategy (not OneDeviceStrategy).
    assert one is tf.distribute.get_strategy()
    auto = make_strategy(_train(strategy="auto"))
    assert auto.num_replicas_in_sync == 1
    assert strategy_lib.task_info(auto) == ("worker", 0, True)


def test_mirrored_without_gpu_mirrors_the_cpu(no_tpu_env):
    import tensorflow as tf

    mirrored = make_strategy(_train(strategy="mirrored"))
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 1
    assert mirrored.extended.worker_devices[0].endswith("CPU:0")


def test_tpu_absent_is_one_clear_line(no_tpu_env):
    start = time.monotonic()
    with pytest.raises(StrategyError) as err:
        make_strategy(_train(strategy="tpu"))
    message = str(err.value)
    assert "no TPU reachable" in message and "train.tpu" in message and "\n" not in message
    assert time.monotonic() - start < 5  # no network probing, no hang


def test_named_tpu_that_does_not_resolve_is_one_clear_line(no_tpu_env):
    with pytest.raises(StrategyError) as err:
        make_strategy(_train(strategy="tpu", tpu="no-such-tpu-higgs-test"))
    message = str(err.value)
    assert "cannot reach TPU 'no-such-tpu-higgs-test'" in message and "\n" not in message


def test_unknown_name_and_multi_worker_without_cluster(no_tpu_env, monkeypatch):
    with pytest.raises(StrategyError, match=r"unknown strategy 'gpu'.*one_device"):
        make_strategy(_train(strategy="gpu"))
    with pytest.raises(StrategyError, match=r"TF_CONFIG.*--workers"):
        make_strategy(_train(strategy="multi_worker"))
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(StrategyError, match="TF_CONFIG is not valid JSON"):
        make_strategy(_train(strategy="multi_worker"))


def test_tf_config_parsing_and_auto_choice(no_tpu_env, monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert strategy_lib.cluster_workers() == 2
    assert strategy_lib.is_worker_process()
    assert strategy_lib._auto_name(_train()) == "multi_worker"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert not strategy_lib.is_worker_process()
    assert strategy_lib._auto_name(_train()) == "one_device"
    monkeypatch.setenv("TPU_NAME", "some-tpu")
    assert strategy_lib._auto_name(_train()) == "tpu"
