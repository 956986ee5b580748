"""Hyperparameter search: the tune config, Optuna ask/tell orchestration, and a real `higgs tune`.

    .venv/bin/pytest tests/test_tune.py -q

The fast tests drive the real Optuna study with an injected trial runner (a plain function
scoring each point), so the orchestration, failure handling, resume and outputs are checked
without training; real `higgs train` trials run in tests/test_tune_flow.py (Prefect tasks).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, load_config
from pipeline.training import tune


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["tune.trials=0"], "must be >= 1"),
        (["tune.sampler=grid"], "unknown tune.sampler 'grid'"),
        (["tune.optimizers=[adam,cg]"], "unknown tune.optimizers 'cg'"),
        (["tune.units=[]"], "tune.units must list at least one choice"),
        (["tune.dropout_min=0.5", "tune.dropout_max=0.2"], "tune.dropout_min <= tune.dropout_max"),
        (["tune.learning_rate_min=1e-7"], "must exceed train.reduce_lr_min_lr"),
    ],
)
def test_bad_tune_config_is_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("sample", overrides=overrides)  # rejected when the config is loaded
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_trial_config_applies_the_point_and_round_trips_through_yaml(tmp_path):
    import optuna

    base = load_config("sample", overrides=["train.epochs=7"])
    params = tune.suggest(optuna.trial.FixedTrial({"blocks": 2, "units": 64, "dropout": 0.25,
                                                   "learning_rate": 3e-3, "optimizer": "adamw",
                                                   "batch_size": 256}), base.tune)
    cfg = tune.trial_config(base, params, epochs=2)
    assert (cfg.model.blocks, cfg.model.units, cfg.model.dropout) == (2, 64, 0.25)
    assert cfg.train.optimizer == "adamw" and cfg.train.learning_rate == 3e-3
    assert cfg.train.batch_size_per_replica == 256
    assert cfg.train.weight_decay == tune.ADAMW_DEFAULT_DECAY  # adamw needs a decay
    assert cfg.train.epochs == 2 and tune.trial_config(base, params).train.epochs == 7
    from pipeline.core.config import write_config

    path = write_config(cfg, tmp_path / "c.yaml")
    assert load_config("sample", path) == cfg  # what `higgs train --config` reads


def _score(cfg) -> float:
    """A deterministic objective of the point: prefers 2 blocks, 64 units and a rate near 3e-3."""
    import math

    return 0.8 - 0.01 * abs(cfg.model.blocks - 2) - 0.0001 * abs(cfg.model.units - 64) \
        - 0.01 * abs(math.log10(cfg.train.learning_rate / 3e-3))


def test_study_orchestration_failures_resume_and_outputs(tmp_path, small_dataset):
    cfg = load_config("sample", overrides=["tune.trials=6", "tune.parallel=2", "tune.sampler=random",
                                           "tune.blocks=[1,2,3]", "tune.units=[32,64]"])
    seen: list[tuple[str, int]] = []

    def runner(batch):
        seen.append((batch[0][1], len(batch)))
        # Trial 1 fails like a crashed training process would; the others score their point.
        return [tune.TuneError("trial 001 failed (exit 1): boom") if run_dir.endswith("001") else _score(c)
                for c, run_dir in batch]

    result = tune.tune(cfg, small_dataset, str(tmp_path), runner=runner)
    assert [n for _, n in seen] == [2, 2, 2]  # tune.parallel trials per batch
    assert len(result.trials) == 6
    failed = [t for t in result.trials if t.value is None]
    assert [t.number for t in failed] == [1] and "boom" in failed[0].error
    ok = [t for t in result.trials if t.value is not None]
    assert result.best_value == max(t.value for t in ok)
    best = next(t for t in ok if t.value == result.best_value)
    assert result.best_params == best.params
    written = load_config("sample", result.best_config_path)
    assert written.model.blocks == best.params["blocks"] and written.train.epochs == cfg.train.epochs
    assert len(json.loads(Path(result.trials_path).read_text())) == 6
    event_dirs = {p.parent.name for p in Path(result.hparams_dir).rglob("events.out.tfevents.*")}
    assert event_dirs == {"hparams", *(f"trial-{t.number:03d}" for t in ok)}

    # Same directory again: the journal resumes the finished study; 2 more trials on top.
    seen.clear()
    cfg8 = load_config("sample", overrides=["tune.trials=8", "tune.parallel=2", "tune.sampler=random",
                                            "tune.blocks=[1,2,3]", "tune.units=[32,64]"])
    more = tune.tune(cfg8, small_dataset, str(tmp_path), runner=runner)
    assert [n for _, n in seen] == [2] and len(more.trials) == 8


def test_all_trials_failing_is_one_clear_error(tmp_path, small_dataset):
    cfg = load_config("sample", overrides=["tune.trials=2"])
    with pytest.raises(tune.TuneError, match="all 2 trials failed; first: trial 000 failed"):
        tune.tune(cfg, small_dataset, str(tmp_path),
                  runner=lambda batch: [tune.TuneError(f"trial {Path(d).name} failed (exit 2): x")
                                        for _, d in batch])


def test_cli_tune_bad_dataset_is_one_line(tmp_path, capsys):
    from pipeline import cli

    code = cli.main(["tune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "t"),
                     "--trials", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is not a dataset" in err


@pytest.mark.slow  # two trial processes import TensorFlow (~25 s each on a busy 2-core box)
def test_thread_runner_runs_a_batch_and_reports_failed_trials(tmp_path):
    # Real trial processes that fail fast (no dataset): the runner returns each one's error.
    cfg = load_config("sample")
    runner = tune.thread_runner(parallel=2, timeout_s=120, data=str(tmp_path / "missing"))
    results = runner([(cfg, str(tmp_path / "000")), (cfg, str(tmp_path / "001"))])
    assert [type(r) for r in results] == [tune.TuneError, tune.TuneError]
    assert "trial 001 failed (exit 2)" in str(results[1]) and "is not a dataset" in str(results[1])
