"""funcopt's TensorFlow / Keras bridge (tf_keras, i.e. Keras 2, as transformers uses it).

* :func:`state_from_keras` / :func:`state_to_keras`: the state of ``transformers.AdamWeightDecay``
  (legacy tf_keras Adam) and of the new tf_keras ``Adam`` that ``transformers.create_optimizer``
  returns without weight decay, to and from :class:`funcopt.AdamWeightDecayState`.
* :func:`learning_rate_schedule`: a Keras ``LearningRateSchedule`` running any funcopt schedule.
* :class:`Optimizer`: a tf_keras optimizer applying any funcopt transformation to TF variables
  (``model.fit`` included).

Importing this module sets ``TF_USE_LEGACY_KERAS=1`` (unless already set) before TensorFlow,
as transformers does. Arrays cross between TF and JAX by DLPack, zero-copy.
"""

from funcopt.tensorflow._learning_rate_schedule import (
    learning_rate_schedule as learning_rate_schedule,
)
from funcopt.tensorflow._optimizer import Optimizer as Optimizer
from funcopt.tensorflow._state import state_from_keras as state_from_keras
from funcopt.tensorflow._state import state_to_keras as state_to_keras

__all__ = ["Optimizer", "learning_rate_schedule", "state_from_keras", "state_to_keras"]
