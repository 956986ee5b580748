"""The one place the Keras implementation is chosen: ``tf_keras`` (the Keras 2 API).

    python -c "from pipeline.core.tfk import keras; print(keras.__version__)"

Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy and with steps_per_execution > 1
on several replicas (keras-team/keras#20585, #19246); ``tf_keras`` matching TensorFlow's
version runs both. Every module imports ``keras`` from here, so a later switch is one line.
Importing this module imports TensorFlow; modules on the Beam or CLI path import it lazily.
"""

import tf_keras as keras

__all__ = ["keras"]
