"""The schema's constants and the manifest reader's refusal of incomplete datasets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import schema
from pipeline.data import dataset


def test_feature_order_matches_uci() -> None:
    assert schema.NUM_FEATURES == 28
    assert schema.FEATURES[0] == "lepton_pT" and schema.FEATURES[20] == "jet4_btag"
    assert schema.FEATURES[21:] == ("m_jj", "m_jjj", "m_lv", "m_jlv", "m_bb", "m_wbb", "m_wwbb")
    assert schema.CSV_COLUMNS[0] == "label" and len(schema.CSV_COLUMNS) == 29
    assert len(set(schema.FEATURES)) == 28


def test_feature_index_names_valid_choices() -> None:
    assert schema.feature_index("m_bb") == 25
    with pytest.raises(KeyError, match="valid names: lepton_pT"):
        schema.feature_index("m_higgs")


def test_serialized_tensor_layout_matches_tensorflow() -> None:
    import numpy as np
    import tensorflow as tf

    values = np.arange(28, dtype=np.float32) * np.float32(0.5) - 3
    raw = tf.io.serialize_tensor(tf.constant(values)).numpy()
    assert len(raw) == schema.SERIALIZED_TENSOR_BYTES
    assert raw[: len(schema.TENSOR_HEADER)] == schema.TENSOR_HEADER
    assert raw[len(schema.TENSOR_HEADER):] == values.astype("<f4").tobytes()


def test_directory_without_manifest_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "part-00000-of-00001.tfrecord").write_bytes(b"")
    with pytest.raises(dataset.DatasetError, match=r"is not a dataset \(no manifest.json\); create it"):
        dataset.load_manifest(str(tmp_path))


def test_manifest_shard_paths_are_relative_to_the_dataset(tmp_path: Path) -> None:
    manifest = {
        "rows": {"training": 3, "validation": 1, "test": 1},
        "bad_rows": 0,
        "features": list(schema.FEATURES),
        "shards": {"training": [{"path": "training/part-00000-of-00001.tfrecord", "records": 3}],
                   "validation": [], "test": []},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    paths = dataset.shard_paths(str(tmp_path), "training")
    assert paths == [str(tmp_path / "training" / "part-00000-of-00001.tfrecord")]
    with pytest.raises(dataset.DatasetError, match="has no validation shards"):
        dataset.shard_paths(str(tmp_path), "validation")
    with pytest.raises(dataset.DatasetError, match="unknown split 'train'"):
        dataset.shard_paths(str(tmp_path), "train")


def test_manifest_with_other_features_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"rows": {}, "shards": {}, "features": ["a"]}))
    with pytest.raises(dataset.DatasetError, match="other features"):
        dataset.load_manifest(str(tmp_path))


def test_cli_reports_user_errors_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "evaluate", "--data", str(tmp_path), "--run", str(tmp_path),
         "--set", "train.epochz=1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("higgs evaluate: error: unknown config key train.epochz; keys in 'train'")
