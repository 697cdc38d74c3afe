"""funcopt: Hugging Face transformers' optimization module as pure, exact JAX transformations.

Every optimizer is an ``optax.GradientTransformation``; every schedule a jit-able
``step -> learning rate`` function. The bridges (``funcopt.torch``, ``funcopt.tensorflow``) are
imported explicitly, so ``import funcopt`` needs neither torch nor TensorFlow.
"""

# Parameter names and masks.
from funcopt._adafactor import AdafactorState as AdafactorState
from funcopt._adafactor import adafactor as adafactor
from funcopt._adafactor import adafactor_learning_rates as adafactor_learning_rates
from funcopt._adam_weight_decay import AdamWeightDecayState as AdamWeightDecayState
from funcopt._adam_weight_decay import adam_weight_decay as adam_weight_decay

# Optimizers.
from funcopt._adamw import AdamWState as AdamWState
from funcopt._adamw import adamw as adamw
from funcopt._create_optimizer import create_optimizer as create_optimizer
from funcopt._names import name_mask as name_mask
from funcopt._names import param_names as param_names

__version__ = "0.1.0"
