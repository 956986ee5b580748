"""Export a trained Keras model as a SavedModel for serving, and check the export.

    python -c "from pipeline.evaluation import export; export.export_run('runs/try')"

The SavedModel (``RUN/model/saved_model/``, contract) has one serving signature,
``serving_default``: input ``features`` float32 [None, 28] in the UCI column order, output
``probability`` float32 [None, 1] (the signal probability). TensorFlow Serving, Vertex AI
prediction and ``tf.saved_model.load`` all read it without this package installed.
:func:`check_reload` loads the export back and compares its predictions with the Keras
model's on real rows — an export that silently drops a normalization layer or changes
dtype would fail here, not in production.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import rundir, schema
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
# float32 models agree to ~1e-7; a mixed-precision model's float16 head needs more room.
RELOAD_ATOL = 1e-5


class ExportError(PipelineError):
    """The SavedModel could not be written or does not reproduce the model's predictions."""


def saved_model_dir(run_dir: str | Path) -> Path:
    """Where a run's SavedModel lives: ``RUN/model/saved_model``."""
    return Path(rundir.saved_model_dir(run_dir))


def export_saved_model(model: Any, path: str | Path) -> Path:
    """Write ``model`` as a SavedModel with the serving signature, atomically.

    The export is written next to ``path`` under a temporary name and renamed, so a
    crash never leaves a half-written directory that a later "export if missing" trusts.

    Args:
        model: a ``tf_keras`` model taking float32 [batch, 28] and returning [batch, 1]
            probabilities.
        path: the SavedModel directory to create (replaced if it exists).

    Returns:
        The SavedModel directory.
    """
    import tensorflow as tf

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    @tf.function(input_signature=[tf.TensorSpec([None, schema.NUM_FEATURES], tf.float32,
                                                name=INPUT_NAME)])
    def serve(features: tf.Tensor) -> dict[str, tf.Tensor]:
        # Cast: a mixed-precision model may output float16/bfloat16; the contract is float32.
        probability = tf.cast(model(features, training=False), tf.float32)
        return {OUTPUT_NAME: tf.reshape(probability, [-1, 1])}

    tf.saved_model.save(model, str(tmp), signatures={SIGNATURE: serve})
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    log.info("exported SavedModel to %s", path)
    return path


def serve_predictions(path: str | Path, features: np.ndarray) -> np.ndarray:
    """Load a SavedModel and run its serving signature on ``features``.

    Args:
        path: SavedModel directory.
        features: float32 [N, 28].

    Returns:
        float32 [N, 1] probabilities.

    Raises:
        ExportError: the directory has no ``serving_default`` signature.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ExportError(f"{path} has no {SIGNATURE!r} signature; re-export with 'higgs evaluate'")
    fn = loaded.signatures[SIGNATURE]
    out = fn(**{INPUT_NAME: tf.constant(features, tf.float32)})
    return out[OUTPUT_NAME].numpy()


def check_reload(path: str | Path, model: Any, features: np.ndarray,
                 atol: float = RELOAD_ATOL) -> float:
    """Compare the SavedModel's serving output with ``model.predict`` on the same rows.

    Args:
        path: SavedModel directory.
        model: the Keras model it was exported from.
        features: float32 [N, 28] real rows (e.g. the first test batch).
        atol: largest absolute difference accepted.

    Returns:
        The largest absolute difference found.

    Raises:
        ExportError: shapes differ or a prediction differs by more than ``atol``.
    """
    served = serve_predictions(path, features)
    expected = np.asarray(model.predict(features, batch_size=4096, verbose=0), np.float32)
    if served.shape != (features.shape[0], 1) or expected.reshape(-1).shape != (features.shape[0],):
        raise ExportError(f"{path}: serving output has shape {served.shape}, model.predict "
                          f"{expected.shape}; expected [{features.shape[0]}, 1]")
    diff = float(np.max(np.abs(served.reshape(-1) - expected.reshape(-1))))
    if not diff <= atol:
        raise ExportError(f"{path} predicts differently from the Keras model (max |diff| {diff:.3g} "
                          f"> {atol:g}); the export is broken, delete it and re-run 'higgs evaluate'")
    return diff


def export_run(run_dir: str | Path, features: np.ndarray | None = None,
               model: Any = None, force: bool = False) -> dict[str, Any]:
    """Export ``RUN/model/model.keras`` to ``RUN/model/saved_model`` if missing or older, then check it.

    Older: a model trained again into the same run directory is newer than its export, which
    is then written again (an old export would fail the reload check, or worse, be served).

    Args:
        run_dir: the run directory.
        features: rows for the reload check (default: 1,024 standard-normal rows).
        model: the already loaded Keras model (loaded from the run when omitted).
        force: re-export even if an up-to-date SavedModel exists.

    Returns:
        ``{"path", "exported" (False if an up-to-date one existed), "reload_max_abs_diff",
        "reload_rows"}``.
    """
    path = saved_model_dir(run_dir)
    if model is None:
        model = load_model(rundir.model_path(run_dir))
    pb, keras_file = path / "saved_model.pb", Path(rundir.model_path(run_dir))
    exported = (force or not pb.is_file()
                or (keras_file.is_file() and pb.stat().st_mtime_ns < keras_file.stat().st_mtime_ns))
    if exported:
        export_saved_model(model, path)
    if features is None:
        features = np.random.default_rng(0).normal(size=(1024, schema.NUM_FEATURES)).astype(np.float32)
    diff = check_reload(path, model, features)
    return {"path": str(path), "exported": exported, "reload_max_abs_diff": diff,
            "reload_rows": int(features.shape[0])}


def load_model(path: str | Path) -> Any:
    """Load a run's ``model.keras`` for inference (no optimizer state needed).

    Raises:
        ExportError: the file is missing or unreadable.
    """
    from pipeline.core.tfk import keras

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} is missing; train a model first with "
                          f"'higgs train --out {path.parent.parent}'")
    _register_custom_objects()
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ExportError(f"cannot load {path}: {str(exc).splitlines()[0]}") from None


def _register_custom_objects() -> None:
    """Import the model builder so any custom layers it registers are known to Keras."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("pipeline.training.model") is not None:
        importlib.import_module("pipeline.training.model")
