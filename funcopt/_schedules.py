r"""Hugging Face's ``LambdaLR`` learning-rate schedules as jit-able ``step -> lr`` functions.

Each ``get_*`` function takes the peak learning rate where transformers takes the optimizer
and returns a schedule: a function of the number of updates already made (step 0 is the first
update, like ``LambdaLR`` before its first ``step()``) that returns the float32 learning rate
``learning_rate * f(step)``. ``step`` may be a Python int, a NumPy or JAX integer (traced under
``jit``/``vmap``) or an array of steps, evaluated elementwise.

Transformers evaluates ``f`` in float64 and the optimizer rounds ``lr`` to float32 inside its
kernel; here everything runs in float32, arranged so that step differences are exact integer
arithmetic and cosines are exact at multiples of a quarter turn: the results agree with the
reference to a few float32 ulps of the peak learning rate, and exactly where the reference
value is a "round" number (0, the peak, the end of warmup, a restart).

With ``W = num_warmup_steps``, every warmup below is linear: :math:`f(s) = s / \max(1, W)` for
:math:`s < W`. A bad argument raises at construction, naming the argument and what is allowed.
The schedules are ``functools.partial`` objects of module-level functions, so they pickle.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcopt import _checks

__all__ = [
    "get_constant_schedule",
    "get_constant_schedule_with_warmup",
    "get_linear_schedule_with_warmup",
    "get_cosine_schedule_with_warmup",
    "get_cosine_with_hard_restarts_schedule_with_warmup",
    "get_polynomial_decay_schedule_with_warmup",
    "get_inverse_sqrt_schedule",
    "get_cosine_with_min_lr_schedule_with_warmup",
    "get_wsd_schedule",
]

f32 = jnp.float32
_PI = np.float32(math.pi)
_WSD_TYPES = ("linear", "cosine", "1-sqrt")


# --------------------------------------------------------------------------------------------
# Helpers: argument checks and float32 arithmetic.


def _peak(learning_rate):
    """The peak lr as a Python float (or a tracer, left as is)."""
    _checks.number("learning_rate", learning_rate, low=0.0)
    value = _checks.concrete(learning_rate)
    return learning_rate if value is None else value


def _count(name, value):
    return _checks.integer(name, value, low=0)


def _finite(name, value):
    value = _checks.number(name, value)
    v = _checks.concrete(value)
    if v is not None and not math.isfinite(v):
        raise ValueError(f"{name}={value!r} is invalid: it must be a finite number.")
    return value if v is None else v


def _step(step):
    """The step as an integer (or float) JAX array; differences stay exact integers."""
    s = jnp.asarray(step)
    if s.dtype == jnp.bool_ or not (
        jnp.issubdtype(s.dtype, jnp.integer) or jnp.issubdtype(s.dtype, jnp.floating)
    ):
        raise TypeError(f"step must be an integer (the number of updates made), got {step!r}.")
    return s


def _f(x):
    return jnp.asarray(x).astype(f32)


def _cospi(x):
    """``cos(pi * x)`` in float32, exact at multiples of 1/2 and accurate near its zeros."""
    r = lax.rem(jnp.abs(x), f32(2.0))  # exact, in [0, 2)
    r = jnp.where(r > 1, 2 - r, r)  # exact, in [0, 1]
    return jnp.where(
        r <= 0.25,
        jnp.cos(_PI * r),
        jnp.where(r >= 0.75, -jnp.cos(_PI * (1 - r)), jnp.sin(_PI * (0.5 - r))),
    )


def _warmup(s, num_warmup_steps):
    """The warmup multiplier ``s / max(1, W)``."""
    return _f(s) / f32(max(1, num_warmup_steps))


def _with_warmup(learning_rate, s, num_warmup_steps, factor):
    """``lr * (s / max(1, W))`` during warmup, ``lr * factor`` afterwards."""
    f = jnp.where(s < num_warmup_steps, _warmup(s, num_warmup_steps), factor)
    return (f32(learning_rate) * f).astype(f32)


def _half_cosine(s, start, length, num_cycles):
    """``(1 + cos(2 pi c p)) / 2`` with ``p = (s - start) / max(1, length)``, unclamped."""
    x = _f(s - start) * f32(2.0 * num_cycles) / f32(max(1, length))
    return 0.5 * (1 + _cospi(x))


# --------------------------------------------------------------------------------------------
# The multipliers, one module-level function each (so that the partials pickle).


def _constant(step, *, learning_rate):
    return jnp.broadcast_to(f32(learning_rate), jnp.shape(step)).astype(f32)


def _constant_with_warmup(step, *, learning_rate, num_warmup_steps):
    s = _step(step)
    return _with_warmup(learning_rate, s, num_warmup_steps, f32(1.0))


def _linear(step, *, learning_rate, num_warmup_steps, num_training_steps):
    s = _step(step)
    decay = _f(num_training_steps - s) / f32(max(1, num_training_steps - num_warmup_steps))
    return _with_warmup(learning_rate, s, num_warmup_steps, jnp.maximum(0.0, decay))


def _cosine(step, *, learning_rate, num_warmup_steps, num_training_steps, num_cycles,
            min_lr_rate=0.0):
    s = _step(step)
    g = _half_cosine(s, num_warmup_steps, num_training_steps - num_warmup_steps, num_cycles)
    factor = g if min_lr_rate == 0.0 else g * f32(1.0 - min_lr_rate) + f32(min_lr_rate)
    return _with_warmup(learning_rate, s, num_warmup_steps, jnp.maximum(0.0, factor))


def _hard_restarts(step, *, learning_rate, num_warmup_steps, num_training_steps, num_cycles):
    s = _step(step)
    length = max(1, num_training_steps - num_warmup_steps)
    turns = jnp.remainder(_f(s - num_warmup_steps) * f32(num_cycles) / f32(length), f32(1.0))
    factor = jnp.where(s - num_warmup_steps >= length, 0.0, 0.5 * (1 + _cospi(turns)))
    return _with_warmup(learning_rate, s, num_warmup_steps, jnp.maximum(0.0, factor))


def _polynomial(step, *, learning_rate, num_warmup_steps, num_training_steps, lr_end, power):
    s = _step(step)
    remaining = _f(num_training_steps - s) / f32(num_training_steps - num_warmup_steps)
    decay = f32(learning_rate - lr_end) * jnp.power(remaining, f32(power)) + f32(lr_end)
    lr = jnp.where(s > num_training_steps, f32(lr_end), decay)
    warm = f32(learning_rate) * _warmup(s, num_warmup_steps)
    return jnp.where(s < num_warmup_steps, warm, lr).astype(f32)


def _inverse_sqrt(step, *, learning_rate, num_warmup_steps, timescale):
    s = _step(step)
    if isinstance(timescale, int):
        shifted = _f(s - num_warmup_steps + timescale)
    else:
        shifted = _f(s - num_warmup_steps) + f32(timescale)
    decay = jnp.sqrt(f32(timescale) / shifted)
    return _with_warmup(learning_rate, s, num_warmup_steps, decay)


def _wsd(step, *, learning_rate, num_warmup_steps, num_stable_steps, num_decay_steps,
         warmup_type, decay_type, min_lr_ratio, num_cycles):
    s = _step(step)
    w, d = num_warmup_steps, num_decay_steps
    decay_start = w + num_stable_steps
    if warmup_type == "linear":
        warm = _warmup(s, w)
    elif warmup_type == "cosine":
        warm = 0.5 * (1 - _cospi(_warmup(s, w)))
    else:  # "1-sqrt": 1 - sqrt(1 - q), with 1 - q = (W - s) / max(1, W)
        warm = 1 - jnp.sqrt(_f(w - s) / f32(max(1, w)) if w >= 1 else 1 - _f(s))
    if decay_type == "linear":
        decay = _f(d - (s - decay_start)) / f32(max(1, d))
    elif decay_type == "cosine":
        decay = _half_cosine(s, decay_start, d, num_cycles)
    else:  # "1-sqrt"
        decay = 1 - jnp.sqrt(_f(s - decay_start) / f32(max(1, d)))
    ratio = lambda base: jnp.maximum(0.0, base * f32(1.0 - min_lr_ratio) + f32(min_lr_ratio))
    f = jnp.where(
        s < w, ratio(warm),
        jnp.where(s < decay_start, f32(1.0),
                  jnp.where(s < decay_start + d, ratio(decay), f32(min_lr_ratio))),
    )
    return (f32(learning_rate) * f).astype(f32)


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
    return functools.partial(_constant, learning_rate=_peak(learning_rate))


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
        _constant_with_warmup, learning_rate=_peak(learning_rate),
        num_warmup_steps=_count("num_warmup_steps", num_warmup_steps),
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
        _linear, learning_rate=_peak(learning_rate),
        num_warmup_steps=_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=_count("num_training_steps", num_training_steps),
    )


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
        _cosine, learning_rate=_peak(learning_rate),
        num_warmup_steps=_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=_count("num_training_steps", num_training_steps),
        num_cycles=_finite("num_cycles", num_cycles),
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
      num_cycles: :math:`c`, the number of cosine decays (usually an integer).

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_cosine_with_hard_restarts_schedule_with_warmup
      >>> schedule = get_cosine_with_hard_restarts_schedule_with_warmup(10.0, 2, 10, num_cycles=2)
      >>> schedule(jnp.array([2, 4, 6, 8, 10]))
      Array([10.,  5., 10.,  5.,  0.], dtype=float32)
    """
    return functools.partial(
        _hard_restarts, learning_rate=_peak(learning_rate),
        num_warmup_steps=_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=_count("num_training_steps", num_training_steps),
        num_cycles=_finite("num_cycles", num_cycles),
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
      >>> schedule(jnp.arange(8))
      Array([0.    , 0.5   , 1.    , 0.5625, 0.25  , 0.0625, 0.    , 0.    ], dtype=float32)
    """
    learning_rate = _peak(learning_rate)
    num_warmup_steps = _count("num_warmup_steps", num_warmup_steps)
    num_training_steps = _count("num_training_steps", num_training_steps)
    lr_end = _finite("lr_end", lr_end)
    power = _finite("power", power)
    if not isinstance(learning_rate, float | int) or not isinstance(lr_end, float | int):
        pass  # traced: the comparison below cannot be made in Python
    elif not learning_rate > lr_end:
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
    num_warmup_steps = _count("num_warmup_steps", num_warmup_steps)
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    _checks.number("timescale", timescale, low=0.0, low_open=True)
    if _checks.concrete(timescale) is None:
        raise TypeError("timescale must be a Python number (it is static), got a tracer.")
    if not isinstance(timescale, int):
        timescale = float(timescale)
    return functools.partial(
        _inverse_sqrt, learning_rate=_peak(learning_rate), num_warmup_steps=num_warmup_steps,
        timescale=timescale,
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
    learning_rate = _peak(learning_rate)
    if min_lr is not None and min_lr_rate is not None:
        raise ValueError("Only one of min_lr or min_lr_rate should be set")
    elif min_lr is not None:
        min_lr = _finite("min_lr", min_lr)
        if learning_rate == 0:
            raise ValueError(
                "min_lr needs learning_rate > 0 (it is divided by it); use min_lr_rate instead."
            )
        min_lr_rate = min_lr / learning_rate
    elif min_lr_rate is None:
        raise ValueError(
            "One of min_lr or min_lr_rate should be set through the `lr_scheduler_kwargs`"
        )
    min_lr_rate = _finite("min_lr_rate", min_lr_rate)
    return functools.partial(
        _cosine, learning_rate=learning_rate,
        num_warmup_steps=_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=_count("num_training_steps", num_training_steps),
        num_cycles=_finite("num_cycles", num_cycles), min_lr_rate=min_lr_rate,
    )


def get_wsd_schedule(learning_rate, num_warmup_steps, num_decay_steps, num_training_steps=None,
                     num_stable_steps=None, warmup_type="linear", decay_type="cosine",
                     min_lr_ratio=0, num_cycles=0.5):
    r"""Warmup-stable-decay (transformers 4.49): warmup, constant peak, decay to a floor.

    With :math:`r` = ``min_lr_ratio``, :math:`S` = ``num_stable_steps`` (default
    :math:`T - W - D`, which may be negative as in transformers), :math:`D` =
    ``num_decay_steps`` and :math:`g(b) = \max(0, b (1 - r) + r)`:

    * warmup, :math:`s < W`, :math:`q = s / \max(1, W)`: :math:`f = g(b)` with :math:`b = q`
      (``"linear"``), :math:`\frac12(1 - \cos \pi q)` (``"cosine"``) or
      :math:`1 - \sqrt{1 - q}` (``"1-sqrt"``); it starts at :math:`r`, not 0;
    * stable, :math:`s < W + S`: :math:`f = 1`;
    * decay, :math:`s < W + S + D`, :math:`q = (s - W - S) / \max(1, D)`: :math:`f = g(b)`
      with :math:`b = 1 - q`, :math:`\frac12(1 + \cos 2\pi c q)` or :math:`1 - \sqrt q`;
    * afterwards :math:`f = r`.

    Raises:
      ValueError: if neither ``num_training_steps`` nor ``num_stable_steps`` is given, or for an
        unknown warmup/decay type (transformers' messages).

    Warns:
      UserWarning: when both are given (``num_stable_steps`` is used), as transformers does.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_wsd_schedule
      >>> schedule = get_wsd_schedule(10.0, 2, num_decay_steps=2, num_training_steps=10,
      ...                             decay_type="linear")
      >>> schedule(jnp.arange(12))
      Array([ 0.,  5., 10., 10., 10., 10., 10., 10., 10.,  5.,  0.,  0.], dtype=float32)
    """
    if num_training_steps is None and num_stable_steps is None:
        raise ValueError("Either num_training_steps or num_stable_steps must be specified.")
    if num_training_steps is not None and num_stable_steps is not None:
        warnings.warn(
            "Both num_training_steps and num_stable_steps are specified. num_stable_steps will "
            "be used.", UserWarning, stacklevel=2,
        )
    if warmup_type not in _WSD_TYPES:
        raise ValueError(
            f"Unknown warmup type: {warmup_type}, expected 'linear', 'cosine' or '1-sqrt'"
        )
    if decay_type not in _WSD_TYPES:
        raise ValueError(
            f"Unknown decay type: {decay_type}, expected 'linear', 'cosine' or '1-sqrt'"
        )
    num_warmup_steps = _count("num_warmup_steps", num_warmup_steps)
    num_decay_steps = _count("num_decay_steps", num_decay_steps)
    if num_stable_steps is None:
        num_training_steps = _count("num_training_steps", num_training_steps)
        num_stable_steps = num_training_steps - num_warmup_steps - num_decay_steps
    else:
        num_stable_steps = _count("num_stable_steps", num_stable_steps)
    min_lr_ratio = _checks.number("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0)
    if _checks.concrete(min_lr_ratio) is None:
        raise TypeError("min_lr_ratio must be a Python number (it is static), got a tracer.")
    return functools.partial(
        _wsd, learning_rate=_peak(learning_rate), num_warmup_steps=num_warmup_steps,
        num_stable_steps=num_stable_steps, num_decay_steps=num_decay_steps,
        warmup_type=warmup_type, decay_type=decay_type, min_lr_ratio=float(min_lr_ratio),
        num_cycles=_finite("num_cycles", num_cycles),
    )
