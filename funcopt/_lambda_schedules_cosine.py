r"""Hugging Face's ``LambdaLR`` schedules of the cosine family, as jit-able ``step -> lr``
functions: a cosine wave after a linear warmup (to 0 or to a minimum learning rate), its hard
restarts, and transformers 5.x's ``get_cosine_with_min_lr_schedule_with_warmup_lr_rate``.

Each ``get_*`` function takes the peak learning rate where transformers takes the optimizer
and returns a schedule ``step -> lr`` (step 0 is the first update, like ``LambdaLR`` before its
first ``step()``), a ``functools.partial`` of a module-level function, so it pickles. The
cosine's phase is reduced exactly, so the values stay accurate after many periods (steps below
2**24): see :mod:`funcopt._lambda_schedules_math` for the float32 arithmetic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from funcopt import _checks
from funcopt._lambda_schedules_math import (
    f32_arg,
    finite,
    half_turn,
    i32_arg,
    mix,
    peak,
    product_mod,
    ratio,
    signed,
    split,
    step_count,
    with_warmup,
)
from funcopt._numerics import f32

__all__ = [
    "get_cosine_schedule_with_warmup",
    "get_cosine_with_hard_restarts_schedule_with_warmup",
    "get_cosine_with_min_lr_schedule_with_warmup",
    "get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
]


# --------------------------------------------------------------------------------------------
# The kernels (jitted) and the schedules' module-level functions (so that schedules pickle).


@jax.jit
def _cosine_kernel(s, lr, w, k, low, span):
    s = signed(s)
    g = half_turn(product_mod(s - w, k, f32(2.0)))  # (1 + cos(2 pi c p)) / 2
    return with_warmup(lr, s, w, jnp.maximum(0.0, mix(g, low, f32(1.0), span)))


def _cosine(step, *, learning_rate, num_warmup_steps, num_training_steps, num_cycles,
            min_lr_rate=0.0):
    k = split(2.0 * num_cycles / max(1, num_training_steps - num_warmup_steps))
    return _cosine_kernel(_checks.step(step), f32_arg(learning_rate), i32_arg(num_warmup_steps),
                          k, f32_arg(min_lr_rate), f32_arg(1.0 - min_lr_rate))


@functools.partial(jax.jit, static_argnames="missed_restarts")
def _hard_restarts_kernel(s, lr, w, length, k, num_cycles, missed_restarts):
    s = signed(s)
    n = s - w
    turns = product_mod(n, k, f32(1.0))  # (c p) mod 1
    factor = jnp.where(n >= length, 0.0, half_turn(turns))
    if missed_restarts:  # restart m happens at n = m L / c; transformers returns 0 there
        m = n * num_cycles
        missed = (m % length == 0) & jnp.isin(m // length, jnp.array(missed_restarts))
        factor = jnp.where(missed, 0.0, factor)
    return with_warmup(lr, s, w, factor)


def _hard_restarts(step, *, learning_rate, num_warmup_steps, num_training_steps, num_cycles):
    length = max(1, num_training_steps - num_warmup_steps)
    missed = _missed_restarts(num_cycles)
    return _hard_restarts_kernel(_checks.step(step), f32_arg(learning_rate),
                                 i32_arg(num_warmup_steps), i32_arg(length),
                                 split(num_cycles / length),
                                 i32_arg(num_cycles if missed else 0), missed_restarts=missed)


def _missed_restarts(num_cycles):
    """The restarts ``m`` that transformers' float64 arithmetic misses: there its
    ``(c * (n / L)) % 1`` is ``1 - 2**-53`` instead of 0, so the lr is 0 instead of the peak.
    It happens only for integer ``c >= 22`` (e.g. ``c = 22``, ``m = 15``)."""
    if num_cycles != int(num_cycles) or num_cycles < 2:
        return ()
    return tuple(m for m in range(1, int(num_cycles))
                 if (num_cycles * (m / num_cycles)) % 1.0 > 0.5)


@functools.partial(jax.jit, static_argnames="rate_warmup")
def _cosine_lr_rate_kernel(s, lr, w, k, low, span, warm_low, warm_span, rate_warmup):
    s = signed(s)
    g = half_turn(product_mod(s - w + 1, k, f32(2.0)))  # one step ahead of _cosine_kernel
    decay = jnp.maximum(0.0, mix(g, low, f32(1.0), span))
    if rate_warmup:  # warmup_lr_rate + (1 - warmup_lr_rate) s / max(1, W - 1)
        warm = mix(ratio(s, jnp.maximum(1, w - 1)), warm_low, f32(1.0), warm_span)
    else:  # (s + 1) / max(1, W)
        warm = ratio(s + 1, jnp.maximum(1, w))
    return lr * jnp.where(s < w, warm, decay)


def _cosine_lr_rate(step, *, learning_rate, num_warmup_steps, num_training_steps, num_cycles,
                    min_lr_rate, warmup_lr_rate):
    k = split(2.0 * num_cycles / max(1, num_training_steps - num_warmup_steps))
    rate = 0.0 if warmup_lr_rate is None else warmup_lr_rate
    return _cosine_lr_rate_kernel(
        _checks.step(step), f32_arg(learning_rate), i32_arg(num_warmup_steps), k,
        f32_arg(min_lr_rate), f32_arg(1.0 - min_lr_rate), f32_arg(rate), f32_arg(1.0 - rate),
        rate_warmup=warmup_lr_rate is not None,
    )


def _min_lr_rate(learning_rate, min_lr, min_lr_rate):
    """transformers' choice between ``min_lr`` and ``min_lr_rate``, with its messages."""
    if min_lr is not None and min_lr_rate is not None:
        raise ValueError("Only one of min_lr or min_lr_rate should be set")
    elif min_lr is not None:
        min_lr = finite("min_lr", min_lr)
        if not isinstance(learning_rate, float):
            raise TypeError("min_lr needs a concrete learning_rate; use min_lr_rate instead.")
        if learning_rate == 0:
            raise ValueError(
                "min_lr needs learning_rate > 0 (it is divided by it); use min_lr_rate instead."
            )
        min_lr_rate = min_lr / learning_rate
    elif min_lr_rate is None:
        raise ValueError(
            "One of min_lr or min_lr_rate should be set through the `lr_scheduler_kwargs`"
        )
    return finite("min_lr_rate", min_lr_rate)


# --------------------------------------------------------------------------------------------
# The public constructors.


def get_cosine_schedule_with_warmup(learning_rate, num_warmup_steps, num_training_steps,
                                    num_cycles=0.5):
    r"""Linear warmup, then a cosine wave (by default half of one, from the peak to 0).

    With progress :math:`p = (s - W) / \max(1, T - W)`, for :math:`s \ge W`:

    .. math:: f(s) = \max\big(0, \tfrac12 (1 + \cos(2 \pi c\, p))\big)

    As in transformers, :math:`p` is not clamped: after :math:`T` the wave goes on (with the
    default :math:`c = 1/2` the learning rate rises again).

    Args:
      learning_rate: the peak learning rate, >= 0.
      num_warmup_steps: :math:`W`, an integer >= 0.
      num_training_steps: :math:`T`, an integer >= 0.
      num_cycles: :math:`c`, the number of cosine periods over :math:`[W, T]`.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_cosine_schedule_with_warmup
      >>> get_cosine_schedule_with_warmup(10.0, 2, 10)(jnp.array([0, 1, 2, 6, 10]))
      Array([ 0.,  5., 10.,  5.,  0.], dtype=float32)
    """
    return functools.partial(
        _cosine, learning_rate=peak(learning_rate),
        num_warmup_steps=step_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=step_count("num_training_steps", num_training_steps),
        num_cycles=finite("num_cycles", num_cycles),
    )


def get_cosine_with_hard_restarts_schedule_with_warmup(learning_rate, num_warmup_steps,
                                                       num_training_steps, num_cycles=1):
    r"""Linear warmup, then ``num_cycles`` cosine decays from the peak to 0, each restarting
    at the peak.

    With :math:`p = (s - W) / \max(1, T - W)`, for :math:`s \ge W`: :math:`f(s) = 0` when
    :math:`p \ge 1`, else

    .. math:: f(s) = \tfrac12 \big(1 + \cos(\pi\, ((c\, p) \bmod 1))\big).

    Args:
      learning_rate: the peak learning rate, >= 0.
      num_warmup_steps: :math:`W`, an integer >= 0.
      num_training_steps: :math:`T`, an integer >= 0.
      num_cycles: :math:`c`, the number of cosine decays (usually an integer). With an
        integer :math:`c \ge 22`, transformers' float64 rounding skips a few restarts (the lr
        is 0 at those steps instead of the peak, e.g. the 15th of 22); this is reproduced.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_cosine_with_hard_restarts_schedule_with_warmup
      >>> schedule = get_cosine_with_hard_restarts_schedule_with_warmup(10.0, 2, 10, num_cycles=2)
      >>> schedule(jnp.array([2, 4, 6, 8, 10]))
      Array([10.,  5., 10.,  5.,  0.], dtype=float32)
    """
    num_cycles = finite("num_cycles", num_cycles)
    return functools.partial(
        _hard_restarts, learning_rate=peak(learning_rate),
        num_warmup_steps=step_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=step_count("num_training_steps", num_training_steps),
        num_cycles=num_cycles,
    )


def get_cosine_with_min_lr_schedule_with_warmup(learning_rate, num_warmup_steps,
                                                num_training_steps, num_cycles=0.5,
                                                min_lr=None, min_lr_rate=None):
    r"""Linear warmup from 0, then a cosine wave down to a minimum learning rate.

    With :math:`m` = ``min_lr_rate`` (or ``min_lr / learning_rate``) and
    :math:`p = (s - W) / \max(1, T - W)` (unclamped), for :math:`s \ge W`:

    .. math:: f(s) = \max\big(0, \tfrac12 (1 + \cos(2 \pi c\, p)) (1 - m) + m\big).

    Args:
      learning_rate: the peak learning rate, >= 0 (> 0 when ``min_lr`` is given).
      num_warmup_steps: :math:`W`, an integer >= 0.
      num_training_steps: :math:`T`, an integer >= 0.
      num_cycles: :math:`c`, the number of cosine periods over :math:`[W, T]`.
      min_lr: the minimum learning rate; or
      min_lr_rate: the minimum as a fraction of the peak. Exactly one of the two is required.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_cosine_with_min_lr_schedule_with_warmup
      >>> schedule = get_cosine_with_min_lr_schedule_with_warmup(10.0, 2, 10, min_lr=1.0)
      >>> schedule(jnp.array([0, 1, 2, 6, 10]))
      Array([ 0. ,  5. , 10. ,  5.5,  1. ], dtype=float32)
    """
    learning_rate = peak(learning_rate)
    min_lr_rate = _min_lr_rate(learning_rate, min_lr, min_lr_rate)
    return functools.partial(
        _cosine, learning_rate=learning_rate,
        num_warmup_steps=step_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=step_count("num_training_steps", num_training_steps),
        num_cycles=finite("num_cycles", num_cycles), min_lr_rate=min_lr_rate,
    )


def get_cosine_with_min_lr_schedule_with_warmup_lr_rate(learning_rate, num_warmup_steps,
                                                        num_training_steps, num_cycles=0.5,
                                                        min_lr=None, min_lr_rate=None,
                                                        warmup_lr_rate=None):
    r"""transformers 5.x's cosine to a minimum, one step ahead, with a warmup floor.

    New in transformers 5.0 (``SchedulerType.COSINE_WARMUP_WITH_MIN_LR``,
    ``"cosine_warmup_with_min_lr"``). With :math:`m` = ``min_lr_rate`` (or ``min_lr /
    learning_rate``), :math:`r` = ``warmup_lr_rate`` and :math:`p = (s - W + 1) / \max(1, T -
    W)` (unclamped):

    .. math:: f(s) = \begin{cases}
        (s + 1) / \max(1, W) & s < W,\ r \text{ not given} \\
        r + (1 - r)\, s / \max(1, W - 1) & s < W \\
        \max\big(0, \tfrac12 (1 + \cos(2 \pi c\, p)) (1 - m) + m\big) & s \ge W.
        \end{cases}

    Unlike :func:`get_cosine_with_min_lr_schedule_with_warmup` (which it otherwise equals one
    step later), the first update already has a learning rate (:math:`1/W` of the peak, or
    :math:`r`), the peak is reached at step :math:`W - 1`, the first decayed value is at step
    :math:`W`, and the minimum (for :math:`c = 1/2`) at step :math:`T - 1`.

    Args:
      learning_rate: the peak learning rate, >= 0 (> 0 when ``min_lr`` is given).
      num_warmup_steps: :math:`W`, an integer >= 0.
      num_training_steps: :math:`T`, an integer >= 0.
      num_cycles: :math:`c`, the number of cosine periods over :math:`[W, T]`.
      min_lr: the minimum learning rate; or
      min_lr_rate: the minimum as a fraction of the peak. Exactly one of the two is required.
      warmup_lr_rate: :math:`r \ge 0`, the learning rate of the first update as a fraction of
        the peak; None for :math:`1/W`. (transformers accepts a negative one, and then returns
        a negative learning rate during warmup: here that is an error.)

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_cosine_with_min_lr_schedule_with_warmup_lr_rate as schedule
      >>> schedule(10.0, 2, 10, min_lr=1.0)(jnp.array([0, 1, 5, 9])).tolist()
      [5.0, 10.0, 5.5, 1.0]
      >>> schedule(10.0, 3, 10, min_lr=1.0, warmup_lr_rate=0.2)(jnp.arange(3)).tolist()
      [2.0, 6.0, 10.0]
    """
    learning_rate = peak(learning_rate)
    min_lr_rate = _min_lr_rate(learning_rate, min_lr, min_lr_rate)
    if warmup_lr_rate is not None:
        warmup_lr_rate = finite("warmup_lr_rate", warmup_lr_rate)
        _checks.number("warmup_lr_rate", warmup_lr_rate, low=0.0,
                       allowed=">= 0 (a fraction of the peak learning rate) or None")
    return functools.partial(
        _cosine_lr_rate, learning_rate=learning_rate,
        num_warmup_steps=step_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=step_count("num_training_steps", num_training_steps),
        num_cycles=finite("num_cycles", num_cycles), min_lr_rate=min_lr_rate,
        warmup_lr_rate=warmup_lr_rate,
    )
