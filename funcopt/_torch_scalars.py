"""The per-step scalars ``torch.optim`` forms in Python float64, to float32 exactly.

torch computes e.g. Adam's ``lr / (1 - beta1 ** step)`` and ``(1 - beta2 ** step) ** 0.5``, or
Adagrad's ``lr / (1 + (step - 1) * lr_decay)``, in float64 from the float32 ``step`` tensor,
and rounds the result once to float32 where it meets a tensor. JAX runs without float64, and
the same expressions in float32 land an ulp off in a large share of steps (Adagrad's in 75%).
So:

* powers ``1 - b ** t`` are read from tables (:mod:`funcopt._step_table`) computed on the
  host with torch's own expression, for every step until the value stops changing (at most
  ``CAP`` steps; past a cut table a float32 formula takes over);
* quotients and sums are carried as *double-float* pairs ``hi + lo`` of float32 (about 48
  significant bits), with exact products from operands split into 12-bit halves by masking
  their bits, so XLA's fused multiply-adds cannot change them, and an optimization barrier
  where XLA would otherwise simplify ``(a + b) - a``; the final rounding to float32
  then agrees with torch's float64 value except when that lies within about 2^-44 of a
  float32 rounding boundary (once in about a million steps).

Static (Python float) hyperparameters give these exact values; traced ones (under
``optax.inject_hyperparams``) arrive rounded to float32 and use the same arithmetic on them.

>>> import jax.numpy as jnp
>>> step_size = adam_step_size(1e-3, 0.9, jnp.float32(3.0))
>>> float(step_size) == float(jnp.float32(1e-3 / (1 - 0.9 ** 3.0)))
True
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from funcopt import _step_table
from funcopt._numerics import f32, is_static, one_minus_power, unfused
from funcopt._step_table import CAP

__all__ = ["shared_step", "adam_step_size", "adam_bias_correction2_sqrt", "adagrad_clr",
           "decay_factor"]

# -- double-float arithmetic: (hi, lo) pairs of float32 -------------------------------------


def _pair(x: float) -> tuple:
    """A Python float as a double-float constant."""
    hi = np.float32(x)
    return hi, np.float32(x - float(hi))


def _split(a):
    """``a = hi + lo`` with ``hi`` the top 12 significant bits; products of halves are exact."""
    bits = jax.lax.bitcast_convert_type(a, jnp.uint32) & jnp.uint32(0xFFFFF000)
    hi = jax.lax.bitcast_convert_type(bits, f32)
    return hi, a - hi


def _two_sum(a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth). The barrier
    keeps XLA from simplifying ``(a + b) - a`` to ``b``, which it does for a constant ``a``."""
    s = jax.lax.optimization_barrier(a + b)
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _two_prod(a, b):
    """``(p, e)`` with ``p = fl(a * b)`` and ``a * b = p + e`` exactly (Dekker)."""
    p = unfused(a * b)
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _add(x, y):
    s, e = _two_sum(x[0], y[0])
    return _two_sum(s, e + (x[1] + y[1]))


def _mul(x, b):
    """A double-float times a float32."""
    p, e = _two_prod(x[0], b)
    return _two_sum(p, e + unfused(x[1] * b))


def _div(x, y):
    """``x / y`` for double-floats, as float32 (rounded once, up to the pair's precision)."""
    q = x[0] / y[0]
    r = _add(x, _mul((-y[0], -y[1]), q))
    return q + (r[0] + r[1]) / y[0]


def _as_pair(x):
    """A float scalar (Python or traced) as a double-float."""
    if is_static(x):
        return tuple(jnp.asarray(v) for v in _pair(float(x)))
    return jnp.asarray(x, f32), jnp.zeros([], f32)


# -- tables of 1 - b ** t (funcopt._step_table) --------------------------------------------


@functools.lru_cache(maxsize=32)
def _bias_correction_tables(b: float) -> tuple:
    """``1 - b ** t`` as float32 ``(hi, lo)`` tables, until ``b ** t < 2**-48`` (then 1 is
    within a double-float's precision of it)."""
    last = next((t - 1 for t in range(1, CAP + 1) if b ** float(t) < 2.0 ** -48), CAP + 1)
    hi = _step_table.over(lambda t: 1 - b ** float(t), last, 1.0)
    lo = _step_table.over(lambda t: (1 - b ** float(t)) - float(np.float32(1 - b ** float(t))),
                          last, 0.0)
    return hi, lo


@functools.lru_cache(maxsize=32)
def _sqrt_bias_correction_table(b: float, fused: bool) -> _step_table.StepTable:
    if fused:  # torch's fused kernels: std::sqrt(1 - std::pow(b, step))
        return _step_table.until_constant(lambda t: math.sqrt(1 - b ** float(t)), 1.0)
    return _step_table.until_constant(lambda t: (1 - b ** float(t)) ** 0.5, 1.0)


# -- the scalars ---------------------------------------------------------------------------


def shared_step(count):
    """torch's float32 ``step`` of every parameter at the update after ``count`` updates:
    ``count + 1``, which a float32 counter stops raising at 2**24."""
    return (jnp.minimum(count, (1 << 24) - 1) + 1).astype(f32)


def adam_step_size(learning_rate, b1, t):
    """``float32(lr / (1 - b1 ** t))`` at the float32 step ``t >= 1`` (torch's
    ``step_size``)."""
    if not is_static(b1):
        return jnp.asarray(learning_rate, f32) / one_minus_power(b1, t)
    hi, lo = _bias_correction_tables(float(b1))
    i = t.astype(jnp.int32)
    bc1 = (_step_table.read(hi, i, lambda i: one_minus_power(b1, i)),
           _step_table.read(lo, i, lambda i: jnp.zeros([], f32)))
    return _div(_as_pair(learning_rate), bc1)


def adam_bias_correction2_sqrt(b2, t, fused=False):
    """``float32((1 - b2 ** t) ** 0.5)`` at the float32 step ``t >= 1``."""
    if not is_static(b2):
        return jnp.sqrt(one_minus_power(b2, t))
    table = _sqrt_bias_correction_table(float(b2), fused)
    return _step_table.read(table, t.astype(jnp.int32),
                            lambda i: jnp.sqrt(one_minus_power(b2, i)))


def adagrad_clr(learning_rate, lr_decay, t):
    """``float32(lr / (1 + (t - 1) * lr_decay))`` at the float32 step ``t >= 1``."""
    if is_static(lr_decay) and lr_decay == 0:
        return jnp.asarray(learning_rate, f32)  # lr / 1.0
    one_plus = _add(_as_pair(1.0), _mul(_as_pair(lr_decay), t - 1))
    return _div(_as_pair(learning_rate), one_plus)


def decay_factor(learning_rate, weight_decay):
    """``float32(1 - lr * weight_decay)``, AdamW's decoupled decay multiplier."""
    if is_static(learning_rate) and is_static(weight_decay):
        return np.float32(1.0 - learning_rate * weight_decay)
    # One factor is traced (float32); the other is kept as a double-float.
    pair, traced = ((learning_rate, weight_decay) if is_static(learning_rate)
                    else (weight_decay, learning_rate))
    hi, lo = _as_pair(pair)
    return _add(_as_pair(1.0), _mul((-hi, -lo), jnp.asarray(traced, f32)))[0]
