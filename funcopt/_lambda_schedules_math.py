r"""The arithmetic shared by the ``LambdaLR`` schedules (``_lambda_schedules_*`` modules).

Transformers evaluates a schedule's multiplier ``f`` in float64 and the optimizer rounds
``lr`` to float32 inside its kernel; here everything runs in float32, arranged so that step
differences are exact integer arithmetic, divisions are correctly rounded and a cosine's phase
is reduced exactly (for steps below 2**24): the results agree with the reference to about
2e-7 of the peak learning rate, and exactly at the boundaries (0 and the peak during warmup,
the peak at its end, restarts, 0 or ``lr_end`` at the end).

Two kinds of helpers: argument checks that run in Python when a schedule is built
(:func:`peak`, :func:`step_count`, :func:`finite`, and :func:`f32_arg`/:func:`i32_arg`, which
turn a configuration number into a kernel argument), and float32 arithmetic used inside the
jitted kernels. Every configuration number is an argument of its kernel, so one compilation
serves every schedule of a kind (and eager calls are fast).

Example:
  >>> import jax.numpy as jnp
  >>> from funcopt._lambda_schedules_math import half_turn, ratio
  >>> float(ratio(jnp.int32(1), jnp.int32(3))), float(half_turn(jnp.float32(0.5)))
  (0.3333333432674408, 0.5)
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcopt import _checks
from funcopt._numerics import divide

__all__ = [
    "peak", "step_count", "finite", "f32_arg", "i32_arg",
    "to_f32", "signed", "ratio", "half_turn", "mix", "product_mod", "split",
    "warmup_fraction", "with_warmup",
]

f32 = jnp.float32
_PI = np.float32(math.pi)


# --------------------------------------------------------------------------------------------
# Construction time: argument checks and kernel arguments.


def peak(learning_rate):
    """The peak lr as a Python float (or a tracer, left as is)."""
    _checks.number("learning_rate", learning_rate, low=0.0)
    value = _checks.concrete(learning_rate)
    return learning_rate if value is None else value


def step_count(name, value):
    """A number of steps: an integer in [0, 2**31)."""
    value = _checks.integer(name, value, low=0)
    if value >= 2**31:
        raise ValueError(f"{name}={value} is invalid: it must be < 2**31 (steps are int32).")
    return value


def finite(name, value):
    """A static finite number, as a Python float."""
    v = _checks.static_number(name, value, allowed="a finite number")
    if not math.isfinite(v):
        raise ValueError(f"{name}={value!r} is invalid: it must be a finite number.")
    return v


def f32_arg(x):
    """A float32 argument of a kernel: a NumPy scalar for a number, a traced one otherwise."""
    return np.float32(x) if isinstance(x, int | float) else jnp.asarray(x, f32)


def i32_arg(x):
    """An int32 argument of a kernel."""
    return np.int32(x)


# --------------------------------------------------------------------------------------------
# Float32 arithmetic, inside the jitted kernels.


def to_f32(x):
    return jnp.asarray(x).astype(f32)


def signed(s):
    """Integer steps as a signed type of at least 32 bits: differences exact, no wrap-around."""
    if jnp.issubdtype(s.dtype, jnp.integer):
        return s.astype(jnp.int64 if s.dtype.itemsize == 8 else jnp.int32)
    return s.astype(jnp.float64 if s.dtype.itemsize == 8 else f32)


def ratio(steps, count):
    """``steps / count`` correctly rounded in float32 (see :func:`funcopt._numerics.divide`)."""
    return divide(to_f32(steps), to_f32(count))


def _cospi(x):
    """``cos(pi * x)`` in float32, exact at multiples of 1/2 and accurate near its zeros."""
    r = lax.rem(jnp.abs(x), f32(2.0))  # exact, in [0, 2)
    r = jnp.where(r > 1, 2 - r, r)  # exact, in [0, 1]
    return jnp.where(
        r <= 0.25,
        jnp.cos(_PI * r),
        jnp.where(r >= 0.75, -jnp.cos(_PI * (1 - r)), jnp.sin(_PI * (0.5 - r))),
    )


def half_turn(x):
    """``(1 + cos(pi x)) / 2`` in float32, to a few ulps of its value (``cos(pi x / 2)**2``
    where the sum would cancel)."""
    c = _cospi(x)
    h = _cospi(0.5 * x)
    return jnp.where(c >= 0, 0.5 * (1 + c), h * h)


def mix(b, low, high, span):
    """``low + span * b`` with ``span = high - low``, exact at ``b = 0`` and ``b = 1``."""
    return jnp.where(b >= 0.5, high - span * (1 - b), low + span * b)


def _two_sum(a, b):
    """Knuth: ``a + b = total + error`` exactly."""
    total = a + b
    b_virtual = total - a
    return total, (a - (total - b_virtual)) + (b - b_virtual)


def product_mod(n, k, period):
    """``(n * k) mod period`` in ``[0, period)`` for integer steps ``n`` (``|n| < 2**24``) and
    ``k = k[0] + k[1] + k[2]`` (see :func:`split`), to float32 round-off of the result
    however large ``n * k`` is.

    With ``n`` cut in two 12-bit pieces, the four products with ``k[0]``, ``k[1]`` are exact in
    float32; each is reduced exactly (``lax.rem``) and they are summed without loss (two-sums),
    so the phase of a cosine stays exact after many periods (e.g. beyond ``T``).
    """
    n_lo = jnp.remainder(n, 4096)
    n_hi, n_lo = to_f32(n - n_lo), to_f32(n_lo)
    total, error = f32(0.0), f32(0.0)
    for a, b in ((n_hi, k[0]), (n_lo, k[0]), (n_hi, k[1]), (n_lo, k[1])):
        total, e = _two_sum(total, lax.rem(a * b, period))
        total, error = lax.rem(total, period), error + e
    result = jnp.remainder(total + (error + to_f32(n) * k[2]), period)
    return jnp.where(result < period, result, f32(0.0))  # -1e-9 mod 1 rounds to 1


def split(k):
    """``k`` as three float32s whose first two hold 12 significant bits (Python, static)."""
    parts = []
    for _ in range(2):
        if k == 0.0:
            parts.append(0.0)
            continue
        exponent = math.frexp(k)[1]
        hi = math.ldexp(round(math.ldexp(k, 12 - exponent)), exponent - 12)
        parts.append(hi)
        k -= hi
    return np.array([*parts, k], np.float32)


def warmup_fraction(s, w):
    """The warmup multiplier ``s / max(1, W)``."""
    return ratio(s, jnp.maximum(1, w))


def with_warmup(lr, s, w, factor):
    """``lr * s / max(1, W)`` during warmup, ``lr * factor`` afterwards."""
    return lr * jnp.where(s < w, warmup_fraction(s, w), factor)
