"""Byte-level tests of pipeline.data.records against real TensorFlow serialization and readers.

    .venv/bin/pytest tests/test_records.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core import schema
from pipeline.data import records


def _awkward_batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 bit patterns plus the values a text round trip likes to break."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, size=(n, schema.NUM_FEATURES), dtype=np.uint64).astype(np.uint32)
    features = bits.view(np.float32).copy()
    features[~np.isfinite(features)] = 1.5  # NaN/inf never reach the writer (bad rows)
    specials = np.array([-0.0, 0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38,
                         1.0, -1.0, 0.1, 7.0e-39], dtype=np.float32)
    features[0, : len(specials)] = specials
    features[1, :] = -0.0
    labels = (rng.random(n) < 0.5).astype(np.float32)
    return features, labels


def _tf_example(features: np.ndarray, label: float) -> bytes:
    tensor = tf.io.serialize_tensor(tf.constant(features, dtype=tf.float32)).numpy()
    example = tf.train.Example(features=tf.train.Features(feature={
        schema.FEATURES_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[tensor])),
        schema.LABEL_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=[label])),
    }))
    # Map fields have no fixed wire order; deterministic serialization sorts keys, which is
    # the layout we write (any order parses the same).
    return example.SerializeToString(deterministic=True)


def test_layout_constants_match_schema() -> None:
    assert records.EXAMPLE_BYTES == schema.EXAMPLE_BYTES == 163
    assert records.EXAMPLE_PREFIX.endswith(schema.TENSOR_HEADER)
    assert records.FEATURES_OFFSET == 32 and records.LABEL_OFFSET == 159


def test_encode_matches_tf_example_bytes_exactly() -> None:
    features, labels = _awkward_batch(64)
    encoded = records.encode_examples(features, labels)
    assert encoded.shape == (64, schema.EXAMPLE_BYTES) and encoded.dtype == np.uint8
    for i in range(64):
        assert encoded[i].tobytes() == _tf_example(features[i], float(labels[i])), f"row {i}"


def test_kaggle_reader_and_batch_decoder_give_identical_bits(tmp_path) -> None:
    features, labels = _awkward_batch(300, seed=1)
    path = tmp_path / "part.tfrecord"
    path.write_bytes(records.frame_records(records.encode_examples(features, labels)))

    per_record = list(tf.data.TFRecordDataset(str(path)).map(records.decode_record))
    got = np.stack([f.numpy() for f, _ in per_record])
    got_labels = np.array([lab.numpy() for _, lab in per_record])
    assert got.view(np.uint32).tolist() == features.view(np.uint32).tolist()  # -0.0, subnormals
    assert got_labels.tolist() == labels.tolist()

    batched = tf.data.TFRecordDataset(str(path)).batch(128).map(records.decode_batch)
    got_b = np.concatenate([f.numpy() for f, _ in batched])
    got_bl = np.concatenate([lab.numpy() for _, lab in batched])
    assert got_b.shape == (300, schema.NUM_FEATURES)
    assert np.array_equal(got_b.view(np.uint32), features.view(np.uint32))
    assert np.array_equal(got_bl, labels)


def test_framing_is_read_by_tf_with_crc_checks(tmp_path) -> None:
    features, labels = _awkward_batch(50, seed=2)
    encoded = records.encode_examples(features, labels)
    data = records.frame_records(encoded)
    assert len(data) == 50 * records.FRAMED_BYTES
    path = tmp_path / "x.tfrecord"
    path.write_bytes(data)
    # TFRecordDataset verifies both CRCs of every record (a wrong mask fails with DataLossError).
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert read == [row.tobytes() for row in encoded]
    assert np.array_equal(records.unframe_records(data), encoded)

    # ...and TensorFlow's own writer produces the very same file bytes.
    tf_path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(tf_path)) as writer:
        for row in encoded:
            writer.write(row.tobytes())
    assert tf_path.read_bytes() == data


def test_corrupted_frame_is_detected() -> None:
    features, labels = _awkward_batch(3, seed=3)
    data = bytearray(records.frame_records(records.encode_examples(features, labels)))
    data[records.FRAMED_BYTES + 40] ^= 0x01  # flip one bit in the 2nd record's payload
    with pytest.raises(ValueError, match="CRC"):
        records.unframe_records(bytes(data))


def test_numpy_decode_inverts_encode() -> None:
    features, labels = _awkward_batch(20, seed=4)
    f, lab = records.decode_examples(records.encode_examples(features, labels))
    assert np.array_equal(f.view(np.uint32), features.view(np.uint32))
    assert np.array_equal(lab, labels)
    with pytest.raises(ValueError, match="layout"):
        records.decode_examples(np.zeros((1, records.EXAMPLE_BYTES), np.uint8))


def test_encode_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="features"):
        records.encode_examples(np.zeros((2, 27), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="labels"):
        records.encode_examples(np.zeros((2, 28), np.float32), np.zeros(3, np.float32))
