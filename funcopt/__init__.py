"""funcopt: Hugging Face transformers' optimization module as pure, exact JAX transformations.

Every optimizer is an ``optax.GradientTransformation``; every schedule a jit-able
``step -> learning rate`` function. The bridges (``funcopt.torch``, ``funcopt.tensorflow``) are
imported explicitly, so ``import funcopt`` needs neither torch nor TensorFlow.
"""

# Parameter names and masks.
from funcopt._names import name_mask as name_mask
from funcopt._names import param_names as param_names

# Optimizers.
from funcopt._adamw import AdamWState as AdamWState
from funcopt._adamw import adamw as adamw

__version__ = "0.1.0"
