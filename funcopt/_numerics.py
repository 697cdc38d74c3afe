"""Small numerical helpers shared by the optimizers (float32 arithmetic, reference order)."""

from __future__ import annotations

import math

import jax.numpy as jnp

f32 = jnp.float32

NO_PARAMS = (
    "This transformation needs the current parameters: call update(grads, state, params)."
)


def is_static(x) -> bool:
    """True for a Python number (known at construction), False for an array or tracer."""
    return isinstance(x, int | float)


def learning_rate_at(learning_rate, count):
    """The float32 learning rate for the update that has ``count`` updates before it."""
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.asarray(lr, f32)


def one_minus_power(b, t):
    """``1 - b**t`` in float32, accurate to round-off even for ``b`` close to 1.

    The reference computes it in float64; rounding ``b = 0.9999`` to float32 first would be
    off by 1.7e-4 relative at ``t = 1``. With a static ``b`` the log is taken in float64 and
    ``-expm1(t * log b)`` keeps the relative accuracy. A traced ``b`` (``inject_hyperparams``)
    has already been rounded to float32, so its digits are gone; pass betas statically for
    exact parity.
    """
    t = jnp.asarray(t, f32)
    if is_static(b):
        if b == 0.0:
            return jnp.ones_like(t)
        return -jnp.expm1(t * f32(math.log(b)))
    return -jnp.expm1(t * jnp.log(jnp.asarray(b, f32)))


def unfused(product):
    """``product``, rounded to float32 on its own before anything is added to it.

    XLA on CPU contracts ``a * b + c`` into one fused multiply-add; a reference that rounds
    the product first (TF's kernels, torch's separate ``mul``/``add`` kernels) then differs in
    the last bit. An identity select between the two keeps them apart (NaN stays NaN).
    """
    return jnp.where(product == product, product, jnp.nan)


def divide(x, d):
    """``x / d`` correctly rounded, for a ``d`` broadcast against ``x``.

    XLA rewrites a division by a broadcast value into a multiplication by its reciprocal,
    which is off by an ulp; dividing by an elementwise copy of ``d`` keeps the true division
    (NaN stays NaN).
    """
    return x / jnp.where(x == x, d, jnp.nan)


def rounder(dtype):
    """Rounds a float32 value through ``dtype`` and back: where torch ends a kernel in bf16."""
    if jnp.dtype(dtype) == jnp.dtype(f32):
        return lambda x: x
    return lambda x: x.astype(dtype).astype(f32)


def find_state(state, cls):
    """The first ``cls`` instance inside an optax state (``chain``, ``inject_hyperparams``,
    ``MultiSteps`` ...), or None."""
    if isinstance(state, cls):
        return state
    if isinstance(state, dict):
        children = state.values()
    elif isinstance(state, tuple | list):
        children = state
    else:
        children = getattr(state, "__dict__", {}).values()
    for child in children:
        found = find_state(child, cls)
        if found is not None:
            return found
    return None
