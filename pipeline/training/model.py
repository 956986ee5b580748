"""The wide-and-deep classifier for the 28 HIGGS features (a small, pure builder).

    python -c "from pipeline.core.config import load_config; \
from pipeline.training.model import build_wide_and_deep; \
build_wide_and_deep(load_config('sample').model).summary()"

The input is always float32 ``features`` [None, 28] (the serving contract). With
``model.features`` = ``low`` or ``high`` a :class:`SelectFeatures` layer right after the input
keeps the 21 low-level or the 7 high-level columns (``pipeline.core.schema.FEATURE_SETS``), so
a model trained on a subset still serves full rows. Two branches read the selected columns:

* **wide** — one linear unit over the raw features (a logistic regression);
* **deep** — ``blocks`` × :func:`deep_block` (Dense → BatchNormalization → activation →
  Dropout), then one linear unit.

Their logits are added and one sigmoid turns the sum into the signal probability [None, 1].
The sigmoid layer always computes in float32, so under mixed precision (``mixed_float16`` /
``mixed_bfloat16``) the probabilities and the loss stay float32. The builder takes the
dtype policy as an argument instead of setting Keras' global policy, so it has no side
effects. Importing this module imports TensorFlow (training code paths only).
"""

from __future__ import annotations

from typing import Any

from pipeline.core import schema
from pipeline.core.config import ModelConfig
from pipeline.core.tfk import keras
from pipeline.training.optim import kernel_regularizer

OUTPUT_NAME = "probability"


@keras.saving.register_keras_serializable(package="higgs")
class SelectFeatures(keras.layers.Layer):
    """Keep the given columns of a [batch, 28] input (a gather inside the graph).

    Registered with Keras, so ``model.keras`` files that contain it load wherever this module
    is imported (:func:`pipeline.evaluation.export.load_model` imports it); the SavedModel
    export needs nothing but TensorFlow.

    Args:
        columns: 0-based indices into the 28 features, in output order.
    """

    def __init__(self, columns: tuple[int, ...] | list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns = tuple(int(c) for c in columns)
        if not self.columns:
            raise ValueError("SelectFeatures needs at least one column")

    def call(self, inputs: Any) -> Any:
        """Return ``inputs[:, columns]``."""
        import tensorflow as tf

        return tf.gather(inputs, self.columns, axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        """Same batch dimension, ``len(columns)`` features."""
        return (*tuple(input_shape)[:-1], len(self.columns))

    def get_config(self) -> dict[str, Any]:
        """The layer config plus ``columns`` (for saving)."""
        return {**super().get_config(), "columns": list(self.columns)}


def deep_block(
    x: Any,
    units: int,
    *,
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = True,
    regularizer: keras.regularizers.Regularizer | None = None,
    dtype: str | None = None,
    name: str = "block",
) -> Any:
    """One block of the deep branch: Dense → BatchNormalization → activation → Dropout.

    The Dense layer has no bias when batch normalization follows (its shift makes the bias
    redundant).

    Args:
        x: the block's input tensor.
        units: width of the Dense layer.
        activation: Keras activation name applied after normalization.
        dropout: dropout rate (0 disables the layer).
        batch_norm: whether to normalize the Dense output.
        regularizer: kernel regularizer of the Dense layer (L1/L2 from the config).
        dtype: dtype policy name for the block's layers (None = Keras' global policy).
        name: prefix of the block's layer names.

    Returns:
        The block's output tensor.
    """
    x = keras.layers.Dense(units, use_bias=not batch_norm, kernel_regularizer=regularizer,
                           dtype=dtype, name=f"{name}_dense")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(dtype=dtype, name=f"{name}_bn")(x)
    x = keras.layers.Activation(activation, dtype=dtype, name=f"{name}_{activation}")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, dtype=dtype, name=f"{name}_dropout")(x)
    return x


def build_wide_and_deep(model_cfg: ModelConfig, *, dtype_policy: str | None = None,
                        name: str = "wide_and_deep") -> keras.Model:
    """Build the (uncompiled) wide-and-deep model described by ``model_cfg``.

    Args:
        model_cfg: the ``model`` section: ``blocks``, ``units``, ``activation``, ``dropout``,
            ``batch_norm``, ``l1``/``l2`` (kernel regularizers of all Dense layers),
            ``wide`` (False drops the linear branch) and ``features`` (``all``, or the
            ``low``/``high`` columns selected by a :class:`SelectFeatures` layer).
        dtype_policy: Keras dtype policy for the hidden layers, e.g. ``"mixed_bfloat16"``;
            None uses the global policy. The output sigmoid is float32 either way.
        name: model name.

    Returns:
        A functional ``keras.Model``: input ``features`` float32 [None, 28] → output
        ``probability`` float32 [None, 1], whatever the feature set.

    Raises:
        ValueError: ``blocks`` < 1 with ``wide`` false (no branch left), or bad sizes.
    """
    if model_cfg.blocks < 0 or (model_cfg.blocks > 0 and model_cfg.units < 1):
        raise ValueError(f"model.blocks must be >= 0 and model.units >= 1, got "
                         f"{model_cfg.blocks} and {model_cfg.units}")
    if model_cfg.blocks == 0 and not model_cfg.wide:
        raise ValueError("model.blocks=0 with model.wide=false leaves no branch; enable one")
    if not 0.0 <= model_cfg.dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {model_cfg.dropout}")
    regularizer = kernel_regularizer(model_cfg)
    features = keras.Input(shape=(schema.NUM_FEATURES,), dtype="float32", name=schema.FEATURES_KEY)
    selected = features
    if model_cfg.features != "all":
        # float32: a gather of input columns, nothing to compute in a lower precision.
        selected = SelectFeatures(schema.feature_columns(model_cfg.features), dtype="float32",
                                  name=f"select_{model_cfg.features}")(features)

    logits = []
    if model_cfg.wide:
        wide = keras.layers.Dense(1, kernel_regularizer=regularizer, dtype=dtype_policy,
                                  name="wide_linear")(selected)
        logits.append(wide)

    if model_cfg.blocks > 0:
        x = selected
        for i in range(model_cfg.blocks):
            x = deep_block(x, model_cfg.units, activation=model_cfg.activation,
                           dropout=model_cfg.dropout, batch_norm=model_cfg.batch_norm,
                           regularizer=regularizer, dtype=dtype_policy, name=f"deep{i}")
        logits.append(keras.layers.Dense(1, kernel_regularizer=regularizer, dtype=dtype_policy,
                                         name="deep_logit")(x))

    logit = logits[0] if len(logits) == 1 else keras.layers.Add(dtype=dtype_policy, name="logit")(logits)
    # float32 here keeps the probabilities (and the loss computed from them) out of
    # float16/bfloat16, whose rounding near 0 and 1 would wreck log-loss.
    probability = keras.layers.Activation("sigmoid", dtype="float32", name=OUTPUT_NAME)(logit)
    return keras.Model(inputs=features, outputs=probability, name=name)
