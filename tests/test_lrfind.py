"""LR range test: the real model, optimizer, tf.data input and strategy on a tiny dataset.

    .venv/bin/pytest tests/test_lrfind.py -q

The dataset is written with the project's own record encoder (``pipeline.data.records``) in the
contract layout, small enough that each sweep takes a few seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.core import schema
from pipeline.core.config import ConfigError, load_config
from pipeline.data import records
from pipeline.training.lrfind import lr_find, suggest

TINY = ["model.blocks=2", "model.units=32", "train.batch_size_per_replica=64", "train.shuffle_buffer=1000",
        "train.strategy=one_device"]


def write_tiny_dataset(out: Path, rows: int = 6000, seed: int = 0) -> Path:
    """Write a learnable 28-feature dataset (2 shards per split) plus its manifest."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, schema.NUM_FEATURES)).astype(np.float32)
    score = x[:, :6] @ np.array([1.0, -1.0, 0.5, 0.8, -0.6, 0.4]) + 0.5 * rng.normal(size=rows)
    y = (score > 0).astype(np.float32)
    n = rows // 10
    splits = {"training": slice(0, rows - 2 * n), "validation": slice(rows - 2 * n, rows - n),
              "test": slice(rows - n, rows)}
    shards, counts = {}, {}
    for split, sl in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        xs, ys = x[sl], y[sl]
        shards[split] = []
        for i, idx in enumerate(np.array_split(np.arange(len(ys)), 2)):
            rel = f"{split}/part-{i:05d}-of-00002.tfrecord"
            (out / rel).write_bytes(records.frame_records(records.encode_examples(xs[idx], ys[idx])))
            shards[split].append({"path": rel, "records": len(idx)})
        counts[split] = len(ys)
    manifest = {"rows": counts, "bad_rows": 0, "source": {"uri": "generated", "bytes": 0, "sha256": ""},
                "shards": shards, "features": list(schema.FEATURES)}
    (out / schema.MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    return str(write_tiny_dataset(tmp_path_factory.mktemp("tiny")))


def test_cli_lr_find_writes_plot_json_and_prints_the_suggestion(tiny_data, tmp_path, capsys):
    out = tmp_path / "lrfind"
    code = cli.main(["lr-find", "--data", tiny_data, "--out", str(out), "--min-lr", "1e-4", "--max-lr", "10",
                     "--steps", "40", *[a for o in TINY for a in ("--set", o)],
                     "--set", "train.optimizer=sgd"])
    assert code == 0
    printed = capsys.readouterr().out
    payload = json.loads((out / "lr_find.json").read_text())
    assert f"{payload['suggested_lr']:.3g}" in printed and str(out / "lr_find.png") in printed
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.yaml").read_text().count("optimizer: sgd") == 1
    lrs = np.array(payload["lrs"])
    assert lrs[0] == pytest.approx(1e-4)
    assert 10 <= len(lrs) <= 40 and len(payload["losses"]) == len(lrs) == len(payload["smoothed"])
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, (10 / 1e-4) ** (1 / 39), rtol=1e-9)  # exponential sweep
    assert payload["suggested_lr"] == pytest.approx(payload["min_loss_lr"] / 10)
    assert payload["suggestion_rule"].startswith("rate at the minimum of the smoothed loss")
    smoothed = np.array([v for v in payload["smoothed"] if v is not None])
    # A real run: with rates up to 10, plain SGD makes the loss drop well below its start.
    assert smoothed.min() < 0.8 * smoothed[0]


def test_lr_find_stops_on_divergence(tiny_data, tmp_path):
    cfg = load_config("sample", overrides=[*TINY, "train.optimizer=sgd", "train.momentum=0.9"])
    result = lr_find(cfg, tiny_data, str(tmp_path), min_lr=1e-3, max_lr=1e5, steps=60)
    assert result.diverged
    assert len(result.losses) < 60
    last = result.losses[-1]
    best = min(v for v in result.smoothed if math.isfinite(v))
    assert not math.isfinite(last) or result.smoothed[-1] > 4 * best
    assert Path(result.plot_path).is_file() and json.loads(Path(result.json_path).read_text())["diverged"]


def test_suggest_on_a_known_curve():
    lrs = list(np.logspace(-5, 0, 51))
    # Loss falls fastest around 1e-3 (a logistic step in log10 rate), minimum at 1e-1, then rises.
    x = np.log10(lrs)
    loss = 1.0 - 0.5 / (1 + np.exp(-4 * (x + 3))) + 0.2 * np.clip(x + 1, 0, None) ** 2
    suggested, steepest, at_min = suggest(lrs, list(loss))
    assert at_min == pytest.approx(0.1, rel=0.3)
    assert suggested == pytest.approx(at_min / 10)
    assert steepest == pytest.approx(1e-3, rel=0.3)


@pytest.mark.parametrize(
    ("overrides", "kwargs", "fragment"),
    [
        (["train.optimizer=cg", "train.learning_rate=0.99", "train.reduce_lr=false"], {},
         "does not apply to train.optimizer=cg"),
        ([], {"min_lr": 1.0, "max_lr": 0.1}, "0 < min_lr < max_lr"),
        ([], {"steps": 3}, "at least 10 steps"),
        (["train.workers=2"], {}, "lr-find runs in one process"),
    ],
)
def test_lr_find_rejects_bad_requests_before_training(overrides, kwargs, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment):
        lr_find(load_config("sample", overrides=overrides), str(tmp_path / "nodata"), str(tmp_path), **kwargs)


def test_cli_lr_find_on_a_missing_dataset_is_one_line(tmp_path, capsys):
    code = cli.main(["lr-find", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                     "--set", "train.strategy=one_device"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "is not a dataset" in err and "higgs convert" in err
