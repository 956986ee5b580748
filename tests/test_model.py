"""The wide-and-deep builder: structure, dtypes, regularization, errors.

    .venv/bin/pytest tests/test_model.py -q
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.core import schema
from pipeline.core.config import load_config


@pytest.fixture(scope="module")
def keras():
    from pipeline.core.tfk import keras

    return keras


def test_sample_model_shapes_and_names(keras):
    from pipeline.training.model import build_wide_and_deep

    cfg = load_config("sample").model
    model = build_wide_and_deep(cfg)
    assert model.input.name == schema.FEATURES_KEY
    assert model.input.shape.as_list() == [None, schema.NUM_FEATURES]
    assert model.input.dtype == "float32"
    assert model.output.shape.as_list() == [None, 1]
    names = [layer.name for layer in model.layers]
    # Wide part and every deep block are visible by name.
    assert "wide_linear" in names and "deep_logit" in names and "logit" in names
    for i in range(cfg.blocks):
        block = [n for n in names if n.startswith(f"deep{i}_")]
        assert block == [f"deep{i}_dense", f"deep{i}_bn", f"deep{i}_relu", f"deep{i}_dropout"]
    assert model.get_layer("deep0_dense").units == cfg.units
    # The wide branch reads the raw features directly.
    assert model.get_layer("wide_linear").input.name == schema.FEATURES_KEY
    probs = model(np.random.default_rng(0).normal(size=(5, 28)).astype("float32"), training=False).numpy()
    assert probs.shape == (5, 1) and ((probs > 0) & (probs < 1)).all()


def test_full_preset_is_the_reference_configuration(keras):
    from pipeline.training.model import build_wide_and_deep

    cfg = load_config("full").model
    assert (cfg.blocks, cfg.units, cfg.activation, cfg.dropout) == (5, 2048, "relu", 0.1)
    model = build_wide_and_deep(cfg)
    # 28·2048 + 4·2048² Dense kernels, 5 BN layers (4 params each), 2048+1 deep head, 28+1 wide.
    expected = 28 * 2048 + 4 * 2048 * 2048 + 5 * 4 * 2048 + 2048 + 1 + 28 + 1
    assert model.count_params() == expected


def test_mixed_bfloat16_keeps_float32_output(keras):
    from pipeline.training.model import build_wide_and_deep

    model = build_wide_and_deep(dataclasses.replace(load_config("sample").model, blocks=2, units=16),
                                dtype_policy="mixed_bfloat16")
    assert model.get_layer("deep0_dense").compute_dtype == "bfloat16"
    assert model.get_layer("deep0_dense").dtype == "float32"  # variables stay float32
    out = model(np.ones((3, 28), "float32"), training=False)
    assert out.dtype == "float32"
    # The global policy is untouched (the builder is pure).
    assert keras.mixed_precision.global_policy().name == "float32"


def test_l1_l2_add_regularization_losses_and_wide_only_model(keras):
    from pipeline.training.model import build_wide_and_deep

    cfg = dataclasses.replace(load_config("sample").model, blocks=2, units=8, l2=1e-3)
    model = build_wide_and_deep(cfg)
    # One kernel regularizer per Dense layer: 2 blocks + deep head + wide.
    assert len(model.losses) == 4
    assert all(float(loss) > 0 for loss in model.losses)
    wide_only = build_wide_and_deep(dataclasses.replace(cfg, blocks=0, l2=0.0))
    assert [layer.name for layer in wide_only.layers] == ["features", "wide_linear", "probability"]
    assert wide_only.count_params() == 29


def test_bad_model_settings_fail_clearly(keras):
    from pipeline.training.model import build_wide_and_deep

    base = load_config("sample").model
    with pytest.raises(ValueError, match="no branch"):
        build_wide_and_deep(dataclasses.replace(base, blocks=0, wide=False))
    with pytest.raises(ValueError, match="dropout"):
        build_wide_and_deep(dataclasses.replace(base, dropout=1.0))
