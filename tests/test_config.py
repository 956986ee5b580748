"""Config presets, YAML and --set overrides, type checking and round trips."""

from pathlib import Path

import pytest

from pipeline.core import config as C  # noqa: N812 — short alias reads better in tables of cases


def test_full_preset_is_the_reference_run() -> None:
    cfg = C.load_config("full")
    assert (cfg.model.blocks, cfg.model.units, cfg.model.dropout) == (5, 2048, 0.1)
    assert cfg.train.batch_size_per_replica == 2048
    assert cfg.train.optimizer == "adam"
    # The UCI page's current download, and the legacy path with the real file's size and sha256.
    assert cfg.data.source == "https://archive.ics.uci.edu/static/public/280/higgs.zip"
    assert (cfg.data.sha256, cfg.data.expected_bytes) == ("", 0)  # published nowhere: not checked
    assert cfg.data.mirror.endswith("/00280/HIGGS.csv.gz")
    assert cfg.data.mirror_bytes == 2_816_407_858 and cfg.data.mirror_sha256.startswith("ea302c18")


def test_sample_preset_is_smaller_than_full() -> None:
    full, sample = C.load_config("full"), C.load_config("sample")
    assert sample.preset == "sample"
    assert sample.model.units * sample.model.blocks < full.model.units * full.model.blocks
    assert sample.data.source == ""  # generated data by default


def test_set_overrides_are_typed() -> None:
    cfg = C.load_config("sample", overrides=["train.epochs=3", "train.learning_rate=0.02",
                                             "model.wide=false", "train.steps_per_epoch=7",
                                             "data.source=gs://b/HIGGS.csv.gz"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.learning_rate == 0.02
    assert cfg.model.wide is False
    assert cfg.train.steps_per_epoch == 7
    assert cfg.data.source == "gs://b/HIGGS.csv.gz"


def test_int_given_where_float_expected_becomes_float() -> None:
    cfg = C.load_config("sample", overrides=["train.learning_rate=1"])
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)


def test_optional_accepts_null() -> None:
    cfg = C.load_config("sample", overrides=["train.steps_per_epoch=5"])
    cfg = C.apply_overrides(cfg, ["train.steps_per_epoch=null"])
    assert cfg.train.steps_per_epoch is None


def test_tuple_fields_from_list_and_comma_string() -> None:
    cfg = C.load_config("sample", overrides=["train.schedule_boundaries=[100, 200]",
                                             "train.schedule_values=0.1,0.01,0.001"])
    assert cfg.train.schedule_boundaries == (100, 200)
    assert cfg.train.schedule_values == (0.1, 0.01, 0.001)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochz=3", r"unknown config key train\.epochz; keys in 'train' are: .*epochs"),
        ("trian.epochs=3", r"unknown config section 'trian'; sections are: data, model"),
        ("train.epochs=three", r"train\.epochs must be an integer, got 'three'"),
        ("train.epochs=2.5", r"train\.epochs must be an integer"),
        ("model.wide=yes please", r"model\.wide must be true or false"),
        ("train.learning_rate=fast", r"train\.learning_rate must be a number"),
        ("epochs=3", r"must look like section\.key=value"),
        ("train.epochs", r"must look like section\.key=value"),
    ],
)
def test_bad_overrides_fail_with_one_clear_line(override: str, message: str) -> None:
    with pytest.raises(C.ConfigError, match=message) as info:
        C.load_config("sample", overrides=[override])
    assert "\n" not in str(info.value)


def test_unknown_preset() -> None:
    with pytest.raises(C.ConfigError, match="unknown preset 'huge'; choose one of: full, paper, sample"):
        C.load_config("huge")


def test_yaml_file_layer_and_precedence(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("preset: sample\ntrain:\n  epochs: 4\n  optimizer: sgd\nmodel:\n  units: 64\n")
    cfg = C.load_config("full", path, overrides=["train.epochs=6"])
    assert cfg.preset == "sample"          # the file names its preset
    assert cfg.model.blocks == 3           # from the sample preset
    assert cfg.model.units == 64           # the file beats the preset
    assert cfg.train.optimizer == "sgd"
    assert cfg.train.epochs == 6           # --set beats the file


def test_yaml_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(C.ConfigError, match="cannot read config file"):
        C.load_config("sample", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(C.ConfigError, match="is not valid YAML"):
        C.load_config("sample", bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("- 1\n- 2\n")
    with pytest.raises(C.ConfigError, match="must hold a mapping"):
        C.load_config("sample", wrong)


def test_written_config_reads_back_identically(tmp_path: Path) -> None:
    cfg = C.load_config("sample", overrides=["train.schedule_boundaries=[10,20]", "train.epochs=2"])
    path = C.write_config(cfg, tmp_path / "run" / "config.yaml")
    assert path.is_file()
    assert C.read_config(path) == cfg


def test_config_is_frozen() -> None:
    cfg = C.load_config("sample")
    with pytest.raises(AttributeError):
        cfg.train.epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.mixed_precision=fp8", r"unknown train\.mixed_precision 'fp8'; choose one of: auto, float32"),
        ("train.strategy=gpu", r"unknown train\.strategy 'gpu'; choose one of: auto, tpu, multi_worker"),
        ("train.optimizer=lion", r"unknown train\.optimizer 'lion'; choose one of: adam"),
        ("runtime.backend=k8s", r"unknown runtime\.backend 'k8s'; choose one of: local, vertex"),
        ("runtime.tpu_type=v9-8", r"unknown runtime\.tpu_type 'v9-8'"),
        ("train.epochs=0", r"train\.epochs must be >= 1, got 0"),
        ("train.batch_size_per_replica=-4", r"train\.batch_size_per_replica must be >= 1, got -4"),
        ("train.steps_per_execution=0", r"train\.steps_per_execution must be >= 1"),
        ("data.training_shards=0", r"data\.training_shards must be >= 1, got 0"),
        ("data.max_bad_rows=-1", r"data\.max_bad_rows must be >= 0, got -1"),
        ("model.dropout=1.5", r"model\.dropout must be in \[0, 1\)"),
        ("evaluate.auc_floor=2", r"evaluate\.auc_floor must be in \[0, 1\]"),
        ("train.reduce_lr_min_lr=0.5", r"reduce_lr_min_lr=0\.5 must be below train\.learning_rate"),
    ],
)
def test_bad_values_fail_when_the_config_is_loaded(override: str, message: str) -> None:
    with pytest.raises(C.ConfigError, match=message) as info:
        C.load_config("sample", overrides=[override])
    assert "\n" not in str(info.value)


def test_workers_need_a_multi_worker_strategy() -> None:
    with pytest.raises(C.ConfigError, match="--workers 2 runs MultiWorkerMirroredStrategy"):
        C.load_config("sample", overrides=["train.workers=2", "train.strategy=tpu"])


def test_a_written_config_with_a_bad_value_is_rejected_on_read(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    text = C.to_yaml(C.load_config("sample"))
    assert "  epochs: 12\n" in text
    path.write_text(text.replace("  epochs: 12\n", "  epochs: 0\n", 1))
    with pytest.raises(C.ConfigError, match=r"train\.epochs must be >= 1"):
        C.read_config(path)


def test_a_bad_value_stops_higgs_run_before_any_io(tmp_path: Path) -> None:
    """`higgs run` with a bad value: one line, exit 2, and nothing generated, converted or trained."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--preset", "sample",
         "--set", "train.mixed_precision=fp8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["higgs run: error: unknown train.mixed_precision 'fp8'; choose one of: auto, float32, "
                     "mixed_float16, mixed_bfloat16"]
    assert list(tmp_path.iterdir()) == []  # no data/, no runs/


def test_a_new_source_drops_the_checks_and_mirror_of_the_old_one() -> None:
    own = C.load_config("full", overrides=["data.source=https://example.org/mine.csv.gz"])
    assert (own.data.mirror, own.data.mirror_sha256, own.data.mirror_bytes) == ("", "", 0)
    given = C.load_config("full", overrides=["data.source=https://example.org/mine.csv.gz",
                                             "data.sha256=" + "ab" * 32, "data.mirror=https://m/x.zip"])
    assert given.data.sha256 == "ab" * 32 and given.data.mirror == "https://m/x.zip"
    assert given.data.mirror_sha256 == ""  # not given with the new source
    same = C.load_config("full", overrides=["data.block_rows=100"])
    assert same.data.mirror_bytes == 2_816_407_858  # the source did not change
