"""TensorFlow and tf_keras (Keras 2, the Keras transformers uses), imported once, and the
zero-copy exchange of arrays between TF and JAX (DLPack)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

try:
    import tensorflow as tf
    import tf_keras
except ImportError as err:  # pragma: no cover - exercised only without TensorFlow
    raise ImportError(
        "funcopt.tensorflow needs TensorFlow and tf_keras (Keras 2, as transformers uses): "
        "pip install 'funcopt[tf]'."
    ) from err

import jax
import jax.numpy as jnp

__all__ = ["tf", "tf_keras", "to_jax", "to_tf"]


def to_jax(x) -> jax.Array:
    """A TF tensor, or a snapshot of a ``tf.Variable``'s value, as a JAX array (zero-copy on
    the same device; TF copies on its next in-place write while JAX holds the buffer)."""
    if isinstance(x, tf.Variable):
        x = x.value()
    return jax.dlpack.from_dlpack(x)


def to_tf(x) -> tf.Tensor:
    """A JAX array as a TF tensor (zero-copy on the same device)."""
    return tf.experimental.dlpack.from_dlpack(jnp.asarray(x).__dlpack__())
