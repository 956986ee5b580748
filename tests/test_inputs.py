"""The tf.data input pipeline on a real converted dataset (the ``small_dataset`` fixture).

    .venv/bin/pytest tests/test_inputs.py -q
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.core.config import Config, load_config
from pipeline.data import dataset, records, verify


def _cfg(**train) -> Config:
    cfg = load_config("sample")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def _per_record(data: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split decoded record by record (the Kaggle-style reader), in file order."""
    import tensorflow as tf

    files = dataset.shard_paths(data, split)
    ds = tf.data.TFRecordDataset(files).map(records.decode_record).batch(4096)
    return _collect(ds)


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    feats, labels = zip(*[(f.numpy(), y.numpy()) for f, y in ds], strict=True)
    return np.concatenate(feats), np.concatenate(labels)


def _rows(feats: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in feats}


def test_evaluation_pass_equals_record_by_record_decoding(small_dataset):
    from pipeline.training.inputs import make_dataset

    ds = make_dataset(small_dataset, "validation", _cfg(batch_size_per_replica=100), training=False)
    first_f, first_y = next(iter(ds))
    assert first_f.dtype == "float32" and first_f.shape == (100, 28)
    assert first_y.dtype == "float32" and first_y.shape == (100, 1)
    feats, labels = _collect(ds)
    ref_f, ref_y = _per_record(small_dataset, "validation")
    # Not training: one ordered pass, the last partial batch kept, bit-identical values.
    assert feats.shape == ref_f.shape == (dataset.split_rows(dataset.load_manifest(small_dataset),
                                                              "validation"), 28)
    np.testing.assert_array_equal(feats, ref_f)
    np.testing.assert_array_equal(labels[:, 0], ref_y)


def test_training_shuffles_repeats_and_drops_remainder(small_dataset):
    from pipeline.training.inputs import make_dataset

    manifest = dataset.load_manifest(small_dataset)
    rows = dataset.split_rows(manifest, "training")
    cfg = _cfg(batch_size_per_replica=1000, shuffle_buffer=rows, cache=True)
    ds = make_dataset(small_dataset, "training", cfg, training=True)
    batches = list(ds.take(2 * (rows // 1000) + 2))  # beyond one pass: it repeats
    assert all(b[0].shape == (1000, 28) for b in batches)
    first_pass = np.concatenate([b[0].numpy() for b in batches[: rows // 1000]])
    ref_f, _ = _per_record(small_dataset, "training")
    assert _rows(first_pass) <= _rows(ref_f)  # real rows, no duplicates within one pass
    assert len(_rows(first_pass)) == first_pass.shape[0]
    assert not np.array_equal(first_pass, ref_f[: first_pass.shape[0]])  # shuffled


def test_deterministic_mode_repeats_the_same_order(small_dataset):
    from pipeline.training.inputs import make_dataset

    cfg = _cfg(batch_size_per_replica=256, deterministic=True, seed=3, shuffle_buffer=2000)
    a = [b[0].numpy() for b in make_dataset(small_dataset, "training", cfg).take(5)]
    b = [b[0].numpy() for b in make_dataset(small_dataset, "training", cfg).take(5)]
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=4))
    c = [b[0].numpy() for b in make_dataset(small_dataset, "training", other).take(5)]
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))


@pytest.mark.parametrize(("split", "pipelines", "by_file"), [("training", 2, True), ("validation", 3, False)])
def test_input_context_shards_by_file_or_by_record(small_dataset, split, pipelines, by_file):
    import tensorflow as tf

    from pipeline.training.inputs import make_dataset

    manifest = dataset.load_manifest(small_dataset)
    n_files = len(manifest["shards"][split])
    assert (n_files >= pipelines) == by_file  # the fixture has 4 training / 2 validation shards
    cfg = _cfg(batch_size_per_replica=64)
    parts = []
    for i in range(pipelines):
        ctx = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=i,
                                         num_replicas_in_sync=pipelines)
        feats, _ = _collect(make_dataset(small_dataset, split, cfg, ctx, training=False))
        parts.append(_rows(feats))
    ref = _rows(_per_record(small_dataset, split)[0])
    assert set().union(*parts) == ref  # together they read every record ...
    assert sum(len(p) for p in parts) == len(ref)  # ... exactly once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= (len(ref) if by_file else 1) and min(sizes) > 0


def test_steps_and_missing_dataset(tmp_path, small_dataset):
    from pipeline.data.dataset import DatasetError
    from pipeline.training.inputs import global_batch_size, make_dataset, steps_for

    manifest = dataset.load_manifest(small_dataset)
    cfg = _cfg(batch_size_per_replica=512)
    assert global_batch_size(cfg, 2) == 1024
    assert steps_for(manifest, "training", 1024) == dataset.split_rows(manifest, "training") // 1024
    with pytest.raises(DatasetError, match="not a dataset"):
        make_dataset(str(tmp_path), "training", cfg)


# --- the framed-record fast path and its fallback ------------------------------------------------


def test_converted_shards_take_the_framed_path_and_every_record_comes_once(small_dataset):
    from pipeline.training.inputs import make_dataset

    manifest = dataset.load_manifest(small_dataset)
    shards = manifest["shards"]["training"]
    paths = dataset.shard_paths(small_dataset, "training", manifest)
    assert all(records.is_framed_file(p, s["records"]) for p, s in zip(paths, shards, strict=True))
    assert any(s["records"] % 16 for s in shards)  # a short last block is part of the test
    assert not records.is_framed_file(paths[0], shards[0]["records"] + 1)  # size must match
    for cache in (False, True):
        cfg = _cfg(batch_size_per_replica=300, cache=cache)
        ds = make_dataset(small_dataset, "training", cfg, training=True, repeat=False, drop_remainder=False)
        feats, labels = _collect(ds)
        ref_f, ref_y = _per_record(small_dataset, "training")
        assert feats.shape == ref_f.shape  # one pass: every record once, none lost ...
        assert _rows(feats) == _rows(ref_f)  # ... bit for bit
        assert not np.array_equal(feats, ref_f)  # and shuffled
        assert labels.sum() == ref_y.sum()


def _write_shard(path, feats, labels, extra: bool) -> None:
    """Real tf.train.Example records; ``extra`` adds a third feature (a valid but other layout)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for x, y in zip(feats, labels, strict=True):
            feature = {
                "features": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.serialize_tensor(tf.constant(x)).numpy()])),
                "label": tf.train.Feature(float_list=tf.train.FloatList(value=[y])),
            }
            if extra:
                feature["source"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"kaggle"]))
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            # deterministic: map entries in key order (otherwise protobuf may put "label" first).
            writer.write(example.SerializeToString(deterministic=True))


def _tiny_dataset(root, extra: bool):
    import json

    from pipeline.core import schema

    rng = np.random.default_rng(5)
    feats = rng.normal(size=(70, 28)).astype(np.float32)
    labels = (rng.random(70) < 0.5).astype(np.float32)
    (root / "validation").mkdir(parents=True)
    shards = []
    for i, part in enumerate(np.array_split(np.arange(70), 2)):
        rel = f"validation/part-{i:05d}-of-00002.tfrecord"
        _write_shard(root / rel, feats[part], labels[part], extra)
        shards.append({"path": rel, "records": len(part)})
    manifest = {"rows": {"training": 0, "validation": 70, "test": 0}, "bad_rows": 0,
                "source": {"uri": "test", "bytes": 0, "sha256": ""}, "features": list(schema.FEATURES),
                "shards": {"training": [], "validation": shards, "test": []}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root), feats, labels


@pytest.mark.parametrize("extra", [False, True])
def test_other_writers_records_read_the_same(tmp_path, extra):
    """TensorFlow's own (deterministic) serialization gives our frames and takes the fast path;
    another layout falls back to parse_example. Both read the same values."""
    from pipeline.training.inputs import make_dataset

    data, feats, labels = _tiny_dataset(tmp_path / "d", extra)
    shard = dataset.load_manifest(data)["shards"]["validation"][0]
    assert records.is_framed_file(str(tmp_path / "d" / shard["path"]), shard["records"]) is not extra
    got_f, got_y = _collect(make_dataset(data, "validation", _cfg(batch_size_per_replica=16), training=False))
    np.testing.assert_array_equal(got_f, feats)
    np.testing.assert_array_equal(got_y[:, 0], labels)


def test_a_corrupt_record_inside_a_framed_file_stops_the_read(tmp_path):

    from pipeline.training.inputs import make_dataset

    data, _, _ = _tiny_dataset(tmp_path / "d", extra=False)
    path = tmp_path / "d" / "validation" / "part-00000-of-00002.tfrecord"
    raw = bytearray(path.read_bytes())
    raw[5 * records.FRAMED_BYTES + 20] ^= 0xFF  # inside the 6th record's Example prefix
    path.write_bytes(bytes(raw))
    shard = dataset.load_manifest(data)["shards"]["validation"][0]
    assert records.is_framed_file(str(path), shard["records"])  # size and first record still look right
    # The check before the read names the record; the reader's own layout assertion is the
    # second line of defence (tests/test_faults.py corrupts a shard after the check).
    with pytest.raises(verify.IntegrityError, match="record 5 at byte offset 895 fails its TFRecord CRC"):
        _collect(make_dataset(data, "validation", _cfg(batch_size_per_replica=16), training=False))
