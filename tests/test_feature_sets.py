"""Feature sets (``model.features = all | low | high``): schema, config, model, export, baseline, report.

    .venv/bin/pytest tests/test_feature_sets.py -q
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import schema
from pipeline.core.config import ConfigError, load_config


def test_feature_sets_come_from_the_schema() -> None:
    assert schema.feature_columns("low") == tuple(range(21))
    assert schema.feature_columns("high") == tuple(range(21, 28))
    assert schema.feature_columns("all") == tuple(range(28))
    assert [schema.FEATURES[i] for i in schema.feature_columns("high")] == list(schema.HIGH_LEVEL_FEATURES)
    assert schema.FEATURES[schema.feature_columns("high")[0]] == "m_jj"
    with pytest.raises(KeyError, match="low, high"):
        schema.feature_columns("mid")


def test_config_field_is_a_checked_choice() -> None:
    assert load_config("sample").model.features == "all"
    assert load_config("full").model.features == "all"
    assert load_config("sample", overrides=["model.features=high"]).model.features == "high"
    with pytest.raises(ConfigError, match=r"unknown model\.features 'mid'; choose one of: all, low, high"):
        load_config("sample", overrides=["model.features=mid"])
    with pytest.raises(ConfigError, match=r"model\.features"):
        load_config("sample", overrides=["model.features=3"])


@pytest.mark.parametrize("feature_set", ["low", "high"])
def test_model_reads_only_its_columns_and_keeps_the_serving_signature(feature_set: str,
                                                                     tmp_path: Path) -> None:
    import tensorflow as tf

    from pipeline.evaluation import export
    from pipeline.training.model import build_wide_and_deep

    cfg = dataclasses.replace(load_config("sample").model, blocks=2, units=16, features=feature_set)
    model = build_wide_and_deep(cfg)
    assert model.input.shape.as_list() == [None, 28]
    assert model.get_layer(f"select_{feature_set}").columns == schema.feature_columns(feature_set)
    n_in = len(schema.FEATURE_SETS[feature_set])
    assert model.get_layer("deep0_dense").kernel.shape[0] == n_in
    assert model.get_layer("wide_linear").kernel.shape[0] == n_in

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 28)).astype(np.float32)
    other = [i for i in range(28) if i not in schema.feature_columns(feature_set)]
    changed = x.copy()
    changed[:, other] = rng.normal(size=(64, len(other))) * 10
    before = model.predict(x, verbose=0)
    assert np.array_equal(before, model.predict(changed, verbose=0))  # the other columns are ignored
    touched = x.copy()
    touched[:, schema.feature_columns(feature_set)[0]] += 3.0
    assert not np.allclose(before, model.predict(touched, verbose=0))  # its own columns are read

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = export.load_model(path)
    assert np.array_equal(before, loaded.predict(x, verbose=0))
    saved = export.export_saved_model(loaded, tmp_path / "saved_model")
    signature = tf.saved_model.load(str(saved)).signatures[export.SIGNATURE]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.shape.as_list() == [None, 28] and spec.dtype == tf.float32
    assert signature.structured_outputs[export.OUTPUT_NAME].shape.as_list() == [None, 1]
    assert export.check_reload(saved, loaded, changed) <= export.RELOAD_ATOL


def test_baseline_reads_the_same_columns() -> None:
    from pipeline.evaluation import baseline

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 28)).astype(np.float32)
    y = (x[:, 22] + 0.3 * rng.normal(size=4000) > 0).astype(np.float32)  # m_jjj decides
    ecfg = dataclasses.replace(load_config("sample").evaluate, baseline_trees=20)
    high = baseline.fit(x[:3000], y[:3000], ecfg, feature_set="high")
    low = baseline.fit(x[:3000], y[:3000], ecfg, feature_set="low")
    assert high.booster.num_feature() == 7 and low.booster.num_feature() == 21
    assert high.describe()["feature_set"] == "high" and high.describe()["features"] == 7
    scrambled = x.copy()
    scrambled[:, :21] = rng.normal(size=(4000, 21))
    assert np.array_equal(high.predict(x), high.predict(scrambled))
    from sklearn.metrics import roc_auc_score

    test = slice(3000, None)  # held-out rows: the low-level set knows nothing about m_jjj
    assert roc_auc_score(y[test], high.predict(x[test])) > 0.9
    assert roc_auc_score(y[test], low.predict(x[test])) < 0.6
    with pytest.raises(baseline.BaselineError, match="rows of 28 features"):
        high.predict(x[:, :21])


def test_metrics_and_report_name_the_feature_set(tmp_path: Path) -> None:
    """A run trained on the low-level set: metrics.json, the baseline and report.md say so,
    even when evaluated with a config that does not (the run's config.yaml wins)."""
    from test_evaluate import train_small_run, write_dataset

    from pipeline.evaluation import evaluate

    data, arrays = write_dataset(tmp_path / "data")
    cfg = load_config("sample", overrides=["evaluate.baseline_rows=4000", "evaluate.baseline_trees=10",
                                           "evaluate.batch_size=1000", "model.blocks=1", "model.units=16",
                                           "model.features=low"])
    run = tmp_path / "run"
    train_small_run(run, *arrays["training"], cfg)
    plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, features="all"))
    result = evaluate.evaluate_run(plain, str(data), str(run))
    on_disk = json.loads((run / "report" / "metrics.json").read_text())
    assert on_disk["feature_set"] == "low" and on_disk["feature_names"] == list(schema.LOW_LEVEL_FEATURES)
    assert on_disk["baseline"]["description"]["feature_set"] == "low"
    assert result.labels.shape == result.deep.shape == result.baseline.shape == (3000,)
    md = (run / "report" / "report.md").read_text()
    assert "Features: **low-level** (`model.features=low`, 21 of 28 columns" in md
    assert "| model | features | `low` |" in md
