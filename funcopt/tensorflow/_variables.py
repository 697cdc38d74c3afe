"""Matching a list of TF variables with the leaves of a pytree (count, shape, dtype)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from funcopt import _names
from funcopt.tensorflow._tf import tf


def as_variable_list(variables) -> list:
    """``variables`` as a list of ``tf.Variable``, or a ``TypeError`` saying what is wrong."""
    if isinstance(variables, tf.Variable) or not isinstance(variables, Sequence):
        raise TypeError(
            "variables must be a list (or tuple) of tf.Variable, in the order of the params' "
            f"leaves, got {type(variables).__name__}."
        )
    for i, v in enumerate(variables):
        if not isinstance(v, tf.Variable):
            raise TypeError(f"variables[{i}] must be a tf.Variable, got {type(v).__name__}.")
    return list(variables)


def dtype_name(x) -> str:
    """The dtype's name, alike for TF and JAX (``float32``, ``bfloat16``, ...)."""
    dtype = x.dtype
    return dtype.name if isinstance(dtype, tf.DType) else np.dtype(dtype).name


def check_match(variables: list, tree, what: str) -> list:
    """Checks that ``tree``'s leaves (``jax.tree.leaves`` order) are ``variables`` in order:
    same count, shapes and dtypes. Returns the leaves."""
    leaves = jax.tree.leaves(tree)
    names = jax.tree.leaves(_names.param_names(tree))
    if len(leaves) != len(variables):
        raise ValueError(
            f"{what} has {len(leaves)} leaves but variables has {len(variables)} entries: the "
            f"leaves of {what} (jax.tree.leaves order: {names}) must be the variables in order "
            f"({[v.name for v in variables]})."
        )
    for i, (v, leaf, name) in enumerate(zip(variables, leaves, names, strict=True)):
        if tuple(v.shape) != tuple(np.shape(leaf)):
            raise ValueError(
                f"variables[{i}] ({v.name!r}) has shape {tuple(v.shape)} but the matching "
                f"leaf {name!r} of {what} has shape {tuple(np.shape(leaf))}."
            )
        if dtype_name(v) != dtype_name(leaf):
            raise ValueError(
                f"variables[{i}] ({v.name!r}) has dtype {dtype_name(v)} but the matching "
                f"leaf {name!r} of {what} has dtype {dtype_name(leaf)}."
            )
    return leaves
