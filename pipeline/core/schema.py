"""The one schema of the HIGGS data: column order, record layout and record spec.

Every other module (the Beam writer, the tf.data reader, the model, the generator and
the tests) imports names from here instead of spelling them again.

    python -c "from pipeline.core import schema; print(len(schema.FEATURES), schema.FEATURES[:3])"

Source rows are ``label, 28 features`` in the UCI order, no header; label 1.0 is signal.
One ``tf.train.Example`` per event carries ``features`` (bytes: ``tf.io.serialize_tensor``
of a float32[28]) and ``label`` (float_list of one value), the layout of the public Kaggle
HIGGS TFRecords. This module does not import TensorFlow at import time.
"""

from __future__ import annotations

from typing import Any

# The 21 low-level (detector) features, in the UCI column order.
LOW_LEVEL_FEATURES: tuple[str, ...] = (
    "lepton_pT",
    "lepton_eta",
    "lepton_phi",
    "missing_energy_magnitude",
    "missing_energy_phi",
    "jet1_pt",
    "jet1_eta",
    "jet1_phi",
    "jet1_btag",
    "jet2_pt",
    "jet2_eta",
    "jet2_phi",
    "jet2_btag",
    "jet3_pt",
    "jet3_eta",
    "jet3_phi",
    "jet3_btag",
    "jet4_pt",
    "jet4_eta",
    "jet4_phi",
    "jet4_btag",
)

# The 7 high-level features physicists derive from the low-level ones.
HIGH_LEVEL_FEATURES: tuple[str, ...] = (
    "m_jj",
    "m_jjj",
    "m_lv",
    "m_jlv",
    "m_bb",
    "m_wbb",
    "m_wwbb",
)

FEATURES: tuple[str, ...] = LOW_LEVEL_FEATURES + HIGH_LEVEL_FEATURES
NUM_FEATURES = len(FEATURES)  # 28

# The feature sets of Baldi et al. 2014 (Table 1: low-level, high-level, complete), by the
# name ``model.features`` uses. Records always carry all 28; a model reads one set of them.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "all": FEATURES,
    "low": LOW_LEVEL_FEATURES,
    "high": HIGH_LEVEL_FEATURES,
}

def _kind(name: str) -> str:
    for suffix in ("eta", "phi", "btag"):
        if name.endswith(f"_{suffix}"):
            return suffix
    return "energy"


# What each column measures, which fixes its value range (the UCI file's scaling):
# "energy" = a transverse momentum, missing energy or invariant mass, >= 0 and divided so its
# mean is ~1; "eta" = pseudorapidity (|eta| < ~2.7); "phi" = azimuth scaled to |phi| <= 1.7433;
# "btag" = the three-level b-tag (0 and two per-column values up to ~3.1).
FEATURE_KINDS: dict[str, str] = {name: _kind(name) for name in FEATURES}
CSV_COLUMNS: tuple[str, ...] = ("label", *FEATURES)  # the source file's 29 columns

LABEL_KEY = "label"
FEATURES_KEY = "features"
SIGNAL, BACKGROUND = 1.0, 0.0

# Split names, in the order rows are assigned (training first, test last).
SPLITS: tuple[str, ...] = ("training", "validation", "test")
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".tfrecord"

# Fixed byte layout of ``tf.io.serialize_tensor(float32[28])`` (a TensorProto):
# dtype=DT_FLOAT (08 01), tensor_shape {dim {size: 28}} (12 04 12 02 08 1c),
# tensor_content length 112 (22 70), then 112 bytes of little-endian float32.
TENSOR_HEADER = bytes.fromhex("080112041202081c2270")
TENSOR_PAYLOAD_BYTES = 4 * NUM_FEATURES  # 112
SERIALIZED_TENSOR_BYTES = len(TENSOR_HEADER) + TENSOR_PAYLOAD_BYTES  # 122
# The whole Example: two features around the tensor and the label (measured against
# tf.train.Example.SerializeToString in tests/test_records.py; 152 in early notes was wrong).
EXAMPLE_BYTES = 163


def feature_index(name: str) -> int:
    """Return the column index of a feature name.

    Args:
        name: one of :data:`FEATURES`.

    Returns:
        Its 0-based position among the 28 features.

    Raises:
        KeyError: with the list of valid names when ``name`` is unknown.
    """
    try:
        return FEATURES.index(name)
    except ValueError:
        raise KeyError(f"unknown feature {name!r}; valid names: {', '.join(FEATURES)}") from None


def feature_columns(feature_set: str) -> tuple[int, ...]:
    """Return the column indices (into the 28 features) of a feature set.

    Args:
        feature_set: a key of :data:`FEATURE_SETS` (``all``, ``low`` or ``high``).

    Returns:
        The 0-based indices, in the UCI column order (``low`` = 0…20, ``high`` = 21…27).

    Raises:
        KeyError: with the valid names when ``feature_set`` is unknown.
    """
    try:
        names = FEATURE_SETS[feature_set]
    except KeyError:
        raise KeyError(f"unknown feature set {feature_set!r}; choose one of: "
                       f"{', '.join(FEATURE_SETS)}") from None
    return tuple(feature_index(name) for name in names)


def feature_spec() -> dict[str, Any]:
    """The ``tf.io.parse_example`` spec of one record (imports TensorFlow on call).

    Returns:
        ``{"features": FixedLenFeature([], tf.string), "label": FixedLenFeature([], tf.float32)}``
        — exactly what a reader of the public Kaggle HIGGS TFRecords uses.
    """
    import tensorflow as tf

    return {
        FEATURES_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.float32),
    }
