"""pipeline.evaluation.evaluate end to end on a small real dataset and a real trained tf_keras model.

Also: the blessing rule, SavedModel export/reload equality and the report files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.core import checksums, schema
from pipeline.core.config import EvaluateConfig, load_config, write_config
from pipeline.data import records
from pipeline.evaluation import evaluate, export
from pipeline.publish import store as publish

ROWS = {"training": 8000, "validation": 1000, "test": 3000}


def _events(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """HIGGS-shaped rows whose label depends on a few features (learnable, not separable)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, schema.NUM_FEATURES)).astype(np.float32)
    logit = 1.2 * x[:, 0] - 0.8 * x[:, 5] + 0.6 * x[:, 21] * x[:, 22] + 0.5 * x[:, 27] ** 2 - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return x, y


def write_dataset(root: Path, seed: int = 0) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Write a contract-shaped dataset (2 shards per split + manifest) with pipeline.data.records."""
    arrays, shards = {}, {}
    for i, (split, n) in enumerate(ROWS.items()):
        x, y = _events(n, seed + i)
        arrays[split] = (x, y)
        (root / split).mkdir(parents=True)
        shards[split] = []
        for k, part in enumerate(np.array_split(np.arange(n), 2)):
            rel = f"{split}/part-{k:05d}-of-00002{schema.SHARD_SUFFIX}"
            (root / rel).write_bytes(records.frame_records(records.encode_examples(x[part], y[part])))
            shards[split].append({"path": rel, "records": len(part)})
    x_train = arrays["training"][0]
    manifest = {"rows": dict(ROWS), "bad_rows": 3, "features": list(schema.FEATURES),
                "source": {"uri": "generated:test", "bytes": 12345, "sha256": "0" * 64},
                "shards": shards, "bad_rows_by_kind": {"columns": 2, "non_numeric": 1, "label": 0},
                "signal_fraction": {s: float(a[1].mean()) for s, a in arrays.items()},
                "feature_stats": {n: {"mean": float(x_train[:, i].mean()), "std": float(x_train[:, i].std())}
                                  for i, n in enumerate(schema.FEATURES)}}
    (root / schema.MANIFEST_NAME).write_text(json.dumps(manifest))
    return root, arrays


def train_small_run(run: Path, x: np.ndarray, y: np.ndarray, cfg) -> object:
    """Fit the project's wide-and-deep model (small config) a few epochs; lay out a run dir.

    Fitting in-process on arrays keeps this fixture fast; ``test_e2e_*`` below goes
    through ``run_training`` on a converted dataset instead.
    """
    import tensorflow as tf

    from pipeline.core.tfk import keras
    from pipeline.training.model import build_wide_and_deep

    tf.keras.utils.set_random_seed(0)
    model = build_wide_and_deep(cfg.model)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc"), "accuracy"])
    fit = model.fit(x, y, batch_size=256, epochs=3, validation_split=0.1, verbose=0,
                    callbacks=[keras.callbacks.LearningRateScheduler(lambda e, lr: lr * 0.5 ** e)])
    (run / "model").mkdir(parents=True)
    model.save(run / "model" / "model.keras")
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    history["epoch"] = list(range(len(history["loss"])))
    (run / "history.json").write_text(json.dumps(history))
    write_config(cfg, run / "config.yaml")
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("evaluate")
    data, arrays = write_dataset(root / "data")
    cfg = load_config("sample", overrides=["evaluate.baseline_rows=5000", "evaluate.baseline_trees=30",
                                           "evaluate.batch_size=1000", "evaluate.auc_floor=0.6",
                                           "model.blocks=1", "model.units=32"])
    model = train_small_run(root / "runs" / "run-1", *arrays["training"], cfg)
    return cfg, data, root / "runs" / "run-1", arrays, model


@pytest.fixture(scope="module")
def evaluated(trained):
    cfg, data, run, _arrays, _model = trained
    published = publish.published_metrics(str(run.parent / "published"))
    result = evaluate.evaluate(cfg, str(data), str(run), published)
    return result, trained


def test_metrics_json_contract_and_exact_auc(evaluated) -> None:
    result, (_cfg, _data, run, arrays, model) = evaluated
    x, y = arrays["test"]
    expected = model.predict(x, batch_size=1000, verbose=0).reshape(-1)
    on_disk = json.loads((run / "report" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for key in ("auc", "auc_ci95", "accuracy", "log_loss", "test_rows", "keras_auc",
                "keras_auc_diff", "working_points", "baseline", "blessed"):
        assert key in on_disk, key
    assert on_disk["test_rows"] == ROWS["test"]
    # Same rows, same order: the exact AUC is scikit-learn's on an independent predict().
    assert on_disk["auc"] == pytest.approx(roc_auc_score(y, expected), abs=1e-6)
    lo, hi = on_disk["auc_ci95"]
    assert lo < on_disk["auc"] < hi and hi - lo < 0.1
    assert on_disk["accuracy"] == pytest.approx(np.mean((expected >= 0.5) == y), abs=1e-3)
    assert 0.0 < on_disk["log_loss"] < 0.7
    assert abs(on_disk["keras_auc_diff"]) < 0.01
    assert on_disk["keras_auc_diff"] == pytest.approx(on_disk["auc"] - on_disk["keras_auc"])
    wp = on_disk["working_points"]
    assert set(wp["signal_efficiency_at_background_rejection"]) == {"0.9", "0.99", "0.999"}
    eff = list(wp["signal_efficiency_at_background_rejection"].values())
    assert eff == sorted(eff, reverse=True)  # more rejection → less signal kept


def test_baseline_is_trained_and_scored_on_same_rows(evaluated) -> None:
    result, _ = evaluated
    base = result["baseline"]
    assert base["description"]["train_rows"] == 5000 and base["description"]["trees"] == 30
    assert 0.65 < base["auc"] < 1.0
    assert base["auc_ci95"][0] < base["auc"] < base["auc_ci95"][1]
    assert "working_points" in base


def test_report_files_and_pngs(evaluated) -> None:
    from PIL import Image

    result, (_cfg, _data, run, arrays, _model) = evaluated
    out = run / "report"
    for name in ("roc.png", "scores.png", "history.png"):
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 400 and img.height > 300
    md = (out / "report.md").read_text()
    for heading in ("## Data", "## Configuration", "## Training history",
                    "## Metrics: deep model vs BDT baseline", "## Blessing", "## Export", "## Provenance"):
        assert heading in md, heading
    assert "has no `provenance.json`" in md  # the fixture fits in-process, not via higgs train
    test_fraction = float(arrays["test"][1].mean())
    assert f"| test | {ROWS['test']:,} | {100 * test_fraction:.1f}% | 2 |" in md
    assert "bad rows dropped by the converter: 3 (columns: 2, non_numeric: 1)" in md
    assert "| m_wwbb | " in md  # per-feature statistics table
    assert f"**{result['auc']:.4f}**" in md and f"{result['baseline']['auc']:.4f}" in md
    assert md.count("\n| 3 |") == 1  # three epochs in the history table
    assert "statistically loose" in md  # ~1.5 background events pass at 99.9% rejection


def test_blessing_file_and_export(evaluated) -> None:
    result, (_cfg, _data, run, arrays, model) = evaluated
    blessing = json.loads((run / "report" / "blessing.json").read_text())
    assert blessing["blessed"] is result["blessed"] is True
    assert blessing["published_auc"] is None and blessing["floor"] == 0.6
    # What the decision was about, for publish to check: this model file, this dataset.
    from pipeline.data import dataset

    assert blessing["model_sha256"] == result["model_sha256"] == \
        checksums.file_checksums(run / "model" / "model.keras").sha256
    assert blessing["dataset_fingerprint"] == result["dataset_fingerprint"] == \
        dataset.fingerprint(str(_data))
    assert any("no model is published" in r for r in blessing["reasons"])
    saved = run / "model" / "saved_model"
    assert (saved / "saved_model.pb").is_file()
    x = arrays["test"][0][:500]
    served = export.serve_predictions(saved, x)
    assert served.shape == (500, 1) and served.dtype == np.float32
    np.testing.assert_allclose(served, model.predict(x, verbose=0), atol=1e-6)
    assert result["export"]["reload_max_abs_diff"] <= 1e-5


def test_export_check_fails_for_a_different_model(trained, tmp_path: Path) -> None:
    _cfg, _data, _run, arrays, model = trained
    from pipeline.core.tfk import keras

    other = keras.models.clone_model(model)  # same architecture, fresh weights
    saved = export.export_saved_model(other, tmp_path / "saved_model")
    x = arrays["test"][0][:256]
    np.testing.assert_allclose(export.serve_predictions(saved, x), other.predict(x, verbose=0),
                               atol=1e-6)
    with pytest.raises(export.ExportError, match="predicts differently"):
        export.check_reload(saved, model, x)


def test_a_model_trained_again_is_exported_again(trained, tmp_path: Path) -> None:
    """Training into the same run directory again must not leave the old SavedModel in place."""
    import os
    import shutil

    _cfg, _data, run, arrays, model = trained
    from pipeline.core.tfk import keras

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("saved_model"))
    x = arrays["test"][0][:256]
    assert export.export_run(copy, features=x, model=model)["exported"] is True
    assert export.export_run(copy, features=x, model=model)["exported"] is False  # up to date
    retrained = keras.models.clone_model(model)  # the run directory's model, trained again
    retrained.save(copy / "model" / "model.keras")
    later = (copy / "model" / "saved_model" / "saved_model.pb").stat().st_mtime_ns + 1_000_000
    os.utime(copy / "model" / "model.keras", ns=(later, later))
    result = export.export_run(copy, features=x)
    assert result["exported"] is True and result["reload_max_abs_diff"] <= export.RELOAD_ATOL
    np.testing.assert_allclose(export.serve_predictions(copy / "model" / "saved_model", x),
                               retrained.predict(x, verbose=0), atol=1e-6)


BLESS_CFG = EvaluateConfig(auc_floor=0.70, max_auc_regression=0.002)


@pytest.mark.parametrize(
    ("candidate", "published_auc", "blessed", "reason"),
    [
        (0.75, None, True, "the floor alone decides"),
        (0.65, None, False, "below the floor"),
        (0.80, 0.78, True, "within the allowed regression"),
        (0.7790, 0.78, True, "within the allowed regression"),  # inside the tolerance
        (0.77, 0.78, False, "worse than published run"),
        (0.69, 0.60, False, "below the floor"),
    ],
)
def test_blessing_rules(candidate, published_auc, blessed, reason) -> None:
    published = None if published_auc is None else {"auc": published_auc, "run_id": "prev"}
    decision = evaluate.bless(candidate, published, BLESS_CFG)
    assert decision["blessed"] is blessed
    assert any(reason in r for r in decision["reasons"]), decision["reasons"]
    assert decision["published_auc"] == published_auc and decision["floor"] == 0.70


def test_blessing_reads_the_published_model(evaluated, tmp_path: Path) -> None:
    """A real publish of a better run: evaluating against it refuses the weaker candidate."""
    from test_publish import make_evaluated_run

    result, (cfg, _data, _run, _arrays, _model) = evaluated
    out = tmp_path / "published"
    publish.publish(str(make_evaluated_run(tmp_path, "champion", 0.999, blessed=True)), str(out))
    published = publish.published_metrics(str(out))
    decision = evaluate.bless(result["auc"], published, cfg.evaluate, published_at=str(out))
    assert not decision["blessed"] and decision["published_run_id"] == "champion"
    assert any("worse than published run champion" in r for r in decision["reasons"])


def test_evaluate_against_published_and_without_baseline(trained, tmp_path: Path) -> None:
    """Second evaluation (baseline off, bootstrap on) against a published run."""
    cfg, data, run, _arrays, _model = trained
    cfg = load_config("sample", overrides=["evaluate.baseline=false", "evaluate.batch_size=512",
                                           "evaluate.auc_floor=0.6", "evaluate.bootstrap=30"])
    out = tmp_path / "published"
    from test_publish import make_evaluated_run

    publish.publish(str(make_evaluated_run(tmp_path, "older", 0.61, blessed=True)), str(out))
    result = evaluate.evaluate(cfg, str(data), str(run), publish.published_metrics(str(out)), str(out))
    assert result["baseline"] is None and result["blessed"] is True
    assert result["published_auc"] == 0.61
    md = (run / "report" / "report.md").read_text()
    assert "BDT baseline (off)" in md and "published run older" in md
    lo, hi = result["auc_ci95_bootstrap"]
    assert lo < result["auc"] < hi and "AUC 95% interval (bootstrap)" in md


def test_missing_model_is_one_clear_line(trained, tmp_path: Path, capsys) -> None:
    from pipeline import cli

    _cfg, data, _run, _arrays, _model = trained
    with pytest.raises(evaluate.EvaluateError, match="higgs train"):
        evaluate.evaluate(load_config("sample"), str(data), str(tmp_path / "no-run"))
    assert cli.main(["evaluate", "--data", str(tmp_path / "no-data"), "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


@pytest.mark.e2e
@pytest.mark.slow
def test_e2e_train_evaluate_publish_via_cli(small_dataset: str, tmp_path: Path, capsys) -> None:
    """Converted dataset → run_training → `higgs evaluate` → `higgs publish` to a separate store.

    The provenance recorded at train time reaches report.md and the published MANIFEST, and
    publish accepts the report because it was computed for this model file and dataset."""
    from PIL import Image

    from pipeline import cli
    from pipeline.data import dataset
    from pipeline.training import train

    overrides = ["train.epochs=2", "model.blocks=1", "model.units=32", "train.batch_size_per_replica=256",
                 "train.steps_per_execution=4", "evaluate.baseline_rows=4000",
                 "evaluate.baseline_trees=20", "evaluate.auc_floor=0.55"]
    runs, out = tmp_path / "runs", tmp_path / "published"
    run = runs / "e2e-run"
    train.run_training(load_config("sample", overrides=overrides), small_dataset, str(run))
    sets = [arg for o in overrides for arg in ("--set", o)]
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["dataset"]["fingerprint"] == dataset.fingerprint(small_dataset)
    assert prov["strategy"] and prov["replicas"] == 1 and len(prov["config_sha256"]) == 64
    assert prov["packages"]["tensorflow"] and prov["packages"]["tf_keras"] and prov["packages"]["prefect"]
    assert prov["code"]["git_commit"] or prov["code"]["package_version"]

    assert cli.main(["evaluate", "--data", small_dataset, "--run", str(run),
                     "--published", str(out), *sets]) == 0
    printed = capsys.readouterr().out
    assert "AUC 0." in printed and "Keras estimate 0." in printed and "BDT baseline 0." in printed
    m = json.loads((run / "report" / "metrics.json").read_text())
    assert m["test_rows"] == dataset.split_rows(dataset.load_manifest(small_dataset), "test")
    assert m["auc_ci95"][0] < m["auc"] < m["auc_ci95"][1] and m["auc"] > 0.55
    assert m["baseline"]["auc"] > 0.55 and m["blessed"] is True
    for name in ("roc.png", "scores.png", "history.png"):
        with Image.open(run / "report" / name) as img:
            assert img.format == "PNG"
    md = (run / "report" / "report.md").read_text()
    assert "| 2 |" in md  # both epochs in the history
    assert f"| dataset trained on | `{prov['dataset']['fingerprint']}`" in md and "the same dataset" in md
    assert (run / "model" / "saved_model" / "saved_model.pb").is_file()

    assert cli.main(["publish", "--run", str(run), "--to", str(out)]) == 0
    assert "latest.json moved from nothing to e2e-run" in capsys.readouterr().out
    assert publish.read_latest(str(out))["run_id"] == "e2e-run"
    manifest = publish.read_manifest(str(out), "e2e-run")
    assert manifest["provenance"] == prov
    assert manifest["dataset_fingerprint"] == prov["dataset"]["fingerprint"]
    assert not (run / "MANIFEST").exists()
    assert cli.main(["models", "--to", str(out)]) == 0
    assert "← latest" in capsys.readouterr().out


def test_failed_reevaluation_leaves_no_stale_blessing(trained, tmp_path: Path) -> None:
    """A dataset whose shards hold fewer test rows than its manifest says: one-line error,
    and the old blessing.json is gone, so `higgs publish` refuses the run."""
    import shutil

    cfg, _data, run, _arrays, _model = trained
    data, _ = write_dataset(tmp_path / "data", seed=5)
    manifest = json.loads((data / schema.MANIFEST_NAME).read_text())
    manifest["rows"]["test"] += 10
    (data / schema.MANIFEST_NAME).write_text(json.dumps(manifest))
    copy = tmp_path / "run-copy"
    shutil.copytree(run, copy)
    (copy / "report").mkdir(exist_ok=True)
    (copy / "report" / "blessing.json").write_text('{"blessed": true, "reasons": ["old"]}')
    cfg = load_config("sample", overrides=["evaluate.baseline=false"])
    with pytest.raises(evaluate.EvaluateError, match="manifest says 3010"):
        evaluate.evaluate(cfg, str(data), str(copy), publish.published_metrics(str(tmp_path / "pub")))
    assert not (copy / "report" / "blessing.json").exists()
    with pytest.raises(publish.PublishError, match="blessing"):
        publish.publish(str(copy), str(tmp_path / "pub"))
