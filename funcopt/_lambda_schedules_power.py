r"""Hugging Face's ``LambdaLR`` schedules of the power-law family, as jit-able ``step -> lr``
functions: constant (power 0), linear (power 1) and polynomial decay (power ``p``), and the
inverse square root (power -1/2), each behind a linear warmup.

Each ``get_*`` function takes the peak learning rate where transformers takes the optimizer
and returns a schedule: a function of the number of updates already made (step 0 is the first
update, like ``LambdaLR`` before its first ``step()``) that returns the float32 learning rate
``learning_rate * f(step)``. ``step`` may be a Python int, a NumPy or JAX integer (traced under
``jit``/``vmap``) or an array of steps, evaluated elementwise. The float32 arithmetic and its
accuracy (about 2e-7 of the peak, exact at the boundaries) are described in
:mod:`funcopt._lambda_schedules_math`. Inside an outer ``jit`` XLA may fuse a multiply and an
add, which moves a value by at most an ulp.

With ``W = num_warmup_steps``, every warmup below is linear: :math:`f(s) = s / \max(1, W)` for
:math:`s < W`. A bad argument raises at construction, naming the argument and what is allowed.
The schedules are ``functools.partial`` objects of module-level functions, so they pickle.
The other families: :mod:`funcopt._lambda_schedules_cosine`, :mod:`funcopt._lambda_schedules_wsd`.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from funcopt import _checks
from funcopt._lambda_schedules_math import (
    f32_arg,
    finite,
    i32_arg,
    mix,
    peak,
    ratio,
    signed,
    step_count,
    to_f32,
    warmup_fraction,
    with_warmup,
)
from funcopt._numerics import f32

__all__ = [
    "get_constant_schedule",
    "get_constant_schedule_with_warmup",
    "get_linear_schedule_with_warmup",
    "get_polynomial_decay_schedule_with_warmup",
    "get_inverse_sqrt_schedule",
]


# --------------------------------------------------------------------------------------------
# The kernels (jitted) and the schedules' module-level functions (so that schedules pickle).


@jax.jit
def _constant_kernel(s, lr):
    return jnp.broadcast_to(lr, s.shape)


def _constant(step, *, learning_rate):
    return _constant_kernel(_checks.step(step), f32_arg(learning_rate))


@jax.jit
def _constant_with_warmup_kernel(s, lr, w):
    s = signed(s)
    return with_warmup(lr, s, w, f32(1.0))


def _constant_with_warmup(step, *, learning_rate, num_warmup_steps):
    return _constant_with_warmup_kernel(
        _checks.step(step), f32_arg(learning_rate), i32_arg(num_warmup_steps)
    )


@jax.jit
def _linear_kernel(s, lr, w, t):
    s = signed(s)
    decay = ratio(t - s, jnp.maximum(1, t - w))
    return with_warmup(lr, s, w, jnp.maximum(0.0, decay))


def _linear(step, *, learning_rate, num_warmup_steps, num_training_steps):
    return _linear_kernel(_checks.step(step), f32_arg(learning_rate), i32_arg(num_warmup_steps),
                          i32_arg(num_training_steps))


@jax.jit
def _polynomial_kernel(s, lr, w, t, lr_end, span, power, zero_power):
    s = signed(s)
    remaining = jnp.maximum(ratio(t - s, t - w), 0.0)  # < 0 only in branches not taken
    # 0 ** power is 0 for a power > 0, also one that float32 flushes to 0 (and 1 for 0).
    scaled = jnp.where(remaining == 0, to_f32(zero_power), jnp.power(remaining, power))
    lr_at = jnp.where(s > t, lr_end, mix(scaled, lr_end, lr, span))
    return jnp.where(s < w, lr * warmup_fraction(s, w), lr_at)


def _polynomial(step, *, learning_rate, num_warmup_steps, num_training_steps, lr_end, power):
    return _polynomial_kernel(
        _checks.step(step), f32_arg(learning_rate), i32_arg(num_warmup_steps),
        i32_arg(num_training_steps), f32_arg(lr_end), f32_arg(learning_rate - lr_end),
        f32_arg(power), np.bool_(power == 0),
    )


@jax.jit
def _inverse_sqrt_kernel(s, lr, w, timescale):
    s = signed(s)
    if jnp.issubdtype(timescale.dtype, jnp.integer):
        shifted = to_f32(s - w + timescale)
    else:
        shifted = to_f32(s - w) + timescale
    decay = jnp.sqrt(to_f32(timescale) / jnp.maximum(shifted, to_f32(timescale)))  # s >= W
    return with_warmup(lr, s, w, decay)


def _inverse_sqrt(step, *, learning_rate, num_warmup_steps, timescale):
    timescale = i32_arg(timescale) if isinstance(timescale, int) else f32_arg(timescale)
    return _inverse_sqrt_kernel(_checks.step(step), f32_arg(learning_rate),
                                i32_arg(num_warmup_steps), timescale)


# --------------------------------------------------------------------------------------------
# The public constructors.


def get_constant_schedule(learning_rate):
    """A constant learning rate: :math:`f(s) = 1`.

    Args:
      learning_rate: the learning rate, >= 0.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_constant_schedule
      >>> get_constant_schedule(0.1)(jnp.arange(3))
      Array([0.1, 0.1, 0.1], dtype=float32)
    """
    return functools.partial(_constant, learning_rate=peak(learning_rate))


def get_constant_schedule_with_warmup(learning_rate, num_warmup_steps):
    r"""Linear warmup from 0, then constant.

    .. math:: f(s) = s / \max(1, W) \text{ for } s < W, \qquad 1 \text{ otherwise.}

    Args:
      learning_rate: the peak learning rate, >= 0.
      num_warmup_steps: :math:`W`, an integer >= 0.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_constant_schedule_with_warmup
      >>> get_constant_schedule_with_warmup(10.0, num_warmup_steps=4)(jnp.arange(6))
      Array([ 0. ,  2.5,  5. ,  7.5, 10. , 10. ], dtype=float32)
    """
    return functools.partial(
        _constant_with_warmup, learning_rate=peak(learning_rate),
        num_warmup_steps=step_count("num_warmup_steps", num_warmup_steps),
    )


def get_linear_schedule_with_warmup(learning_rate, num_warmup_steps, num_training_steps):
    r"""Linear warmup from 0 to the peak, then linear decay to 0 at ``num_training_steps``.

    .. math:: f(s) = \max\Big(0, \frac{T - s}{\max(1, T - W)}\Big) \text{ for } s \ge W

    (and the linear warmup before); it stays at 0 after :math:`T`.

    Args:
      learning_rate: the peak learning rate, >= 0.
      num_warmup_steps: :math:`W`, an integer >= 0.
      num_training_steps: :math:`T`, an integer >= 0.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_linear_schedule_with_warmup
      >>> schedule = get_linear_schedule_with_warmup(10.0, 2, 10)
      >>> schedule(jnp.arange(12))
      Array([ 0.  ,  5.  , 10.  ,  8.75,  7.5 ,  6.25,  5.  ,  3.75,  2.5 ,
              1.25,  0.  ,  0.  ], dtype=float32)
    """
    return functools.partial(
        _linear, learning_rate=peak(learning_rate),
        num_warmup_steps=step_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=step_count("num_training_steps", num_training_steps),
    )


def get_polynomial_decay_schedule_with_warmup(learning_rate, num_warmup_steps,
                                              num_training_steps, lr_end=1e-7, power=1.0):
    r"""Linear warmup, then polynomial decay from the peak :math:`\eta` to ``lr_end``.

    For :math:`W \le s \le T`, with :math:`\eta_{end}` = ``lr_end`` and :math:`P` = ``power``:

    .. math:: \mathrm{lr}(s) = (\eta - \eta_{end}) \Big(\frac{T - s}{T - W}\Big)^{P}
        + \eta_{end},

    and :math:`\eta_{end}` after :math:`T`. As in transformers, the decay starts from the peak
    ``learning_rate`` (there: the optimizer's default lr).

    Raises:
      ValueError: if ``lr_end >= learning_rate`` (as transformers); also, where transformers
        would fail later (ZeroDivisionError), if ``num_training_steps == num_warmup_steps`` or
        ``power < 0``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_polynomial_decay_schedule_with_warmup
      >>> schedule = get_polynomial_decay_schedule_with_warmup(1.0, 2, 6, lr_end=0.0, power=2.0)
      >>> schedule(jnp.arange(8)).tolist()
      [0.0, 0.5, 1.0, 0.5625, 0.25, 0.0625, 0.0, 0.0]
    """
    learning_rate = peak(learning_rate)
    num_warmup_steps = step_count("num_warmup_steps", num_warmup_steps)
    num_training_steps = step_count("num_training_steps", num_training_steps)
    lr_end = finite("lr_end", lr_end)
    power = finite("power", power)
    if isinstance(learning_rate, float) and not learning_rate > lr_end:
        raise ValueError(f"lr_end ({lr_end}) must be smaller than initial lr ({learning_rate})")
    if lr_end < 0:
        raise ValueError(f"lr_end={lr_end!r} is invalid: it must be >= 0.")
    if num_training_steps == num_warmup_steps:
        raise ValueError(
            f"num_training_steps={num_training_steps} equals num_warmup_steps: the decay would "
            "last 0 steps (transformers divides by zero at that step). Make num_training_steps "
            "larger than num_warmup_steps."
        )
    if power < 0:
        raise ValueError(
            f"power={power!r} is invalid: it must be >= 0 (transformers raises "
            "ZeroDivisionError at step num_training_steps for a negative power)."
        )
    return functools.partial(
        _polynomial, learning_rate=learning_rate, num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps, lr_end=lr_end, power=power,
    )


def get_inverse_sqrt_schedule(learning_rate, num_warmup_steps, timescale=None):
    r"""Linear warmup, then decay with the inverse square root of the step.

    With the timescale :math:`\tau` (default: ``num_warmup_steps``, or 10000 when that is 0),
    for :math:`s \ge W`:

    .. math:: f(s) = 1 / \sqrt{(s - W + \tau) / \tau}

    so :math:`f(W) = 1`.

    Args:
      learning_rate: the peak learning rate, >= 0.
      num_warmup_steps: :math:`W`, an integer >= 0.
      timescale: :math:`\tau > 0`, or None for the default.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_inverse_sqrt_schedule
      >>> get_inverse_sqrt_schedule(10.0, 2)(jnp.array([0, 1, 2, 4, 8]))
      Array([ 0.      ,  5.      , 10.      ,  7.071068,  5.      ], dtype=float32)
    """
    num_warmup_steps = step_count("num_warmup_steps", num_warmup_steps)
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    if isinstance(timescale, numbers.Integral) and not isinstance(timescale, bool):
        timescale = int(timescale)
    else:
        timescale = finite("timescale", timescale)
    _checks.number("timescale", timescale, low=0.0, low_open=True)
    return functools.partial(
        _inverse_sqrt, learning_rate=peak(learning_rate), num_warmup_steps=num_warmup_steps,
        timescale=timescale,
    )
