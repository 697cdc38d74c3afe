r"""Hugging Face's ``LambdaLR`` learning-rate schedules as jit-able ``step -> lr`` functions.

Each ``get_*`` function takes the peak learning rate where transformers takes the optimizer
and returns a schedule: a function of the number of updates already made (step 0 is the first
update, like ``LambdaLR`` before its first ``step()``) that returns the float32 learning rate
``learning_rate * f(step)``. ``step`` may be a Python int, a NumPy or JAX integer (traced under
``jit``/``vmap``) or an array of steps, evaluated elementwise.

Transformers evaluates ``f`` in float64 and the optimizer rounds ``lr`` to float32 inside its
kernel; here everything runs in float32, arranged so that step differences are exact integer
arithmetic, divisions are correctly rounded and a cosine's phase is reduced exactly (for steps
below 2**24): the results agree with the reference to about 2e-7 of the peak learning rate,
and exactly at the boundaries (0 and the peak during warmup, the peak at its end, restarts,
0 or ``lr_end`` at the end). Inside an outer ``jit`` XLA may fuse a multiply and an add, which
moves a value by at most an ulp.

With ``W = num_warmup_steps``, every warmup below is linear: :math:`f(s) = s / \max(1, W)` for
:math:`s < W`. A bad argument raises at construction, naming the argument and what is allowed.
The schedules are ``functools.partial`` objects of module-level functions, so they pickle.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcopt import _checks
from funcopt._numerics import divide

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
    value = _checks.integer(name, value, low=0)
    if value >= 2**31:
        raise ValueError(f"{name}={value} is invalid: it must be < 2**31 (steps are int32).")
    return value


def _finite(name, value):
    """A static finite number, as a Python float."""
    v = _checks.static_number(name, value, allowed="a finite number")
    if not math.isfinite(v):
        raise ValueError(f"{name}={value!r} is invalid: it must be a finite number.")
    return v


def _f32(x):
    """A float32 argument of a kernel: a NumPy scalar for a number, a traced one otherwise."""
    return np.float32(x) if isinstance(x, int | float) else jnp.asarray(x, f32)


def _i32(x):
    return np.int32(x)


# --------------------------------------------------------------------------------------------
# Float32 arithmetic, inside the jitted kernels. Every configuration number is an argument of
# the kernel, so one compilation serves every schedule of a kind (and eager calls are fast).


def _f(x):
    return jnp.asarray(x).astype(f32)


def _signed(s):
    """Integer steps as a signed type of at least 32 bits: differences exact, no wrap-around."""
    if jnp.issubdtype(s.dtype, jnp.integer):
        return s.astype(jnp.int64 if s.dtype.itemsize == 8 else jnp.int32)
    return s.astype(jnp.float64 if s.dtype.itemsize == 8 else f32)


def _ratio(steps, count):
    """``steps / count`` correctly rounded in float32 (see :func:`funcopt._numerics.divide`)."""
    return divide(_f(steps), _f(count))


def _cospi(x):
    """``cos(pi * x)`` in float32, exact at multiples of 1/2 and accurate near its zeros."""
    r = lax.rem(jnp.abs(x), f32(2.0))  # exact, in [0, 2)
    r = jnp.where(r > 1, 2 - r, r)  # exact, in [0, 1]
    return jnp.where(
        r <= 0.25,
        jnp.cos(_PI * r),
        jnp.where(r >= 0.75, -jnp.cos(_PI * (1 - r)), jnp.sin(_PI * (0.5 - r))),
    )


def _half_turn(x):
    """``(1 + cos(pi x)) / 2`` in float32, to a few ulps of its value (``cos(pi x / 2)**2``
    where the sum would cancel)."""
    c = _cospi(x)
    h = _cospi(0.5 * x)
    return jnp.where(c >= 0, 0.5 * (1 + c), h * h)


def _mix(b, low, high, span):
    """``low + span * b`` with ``span = high - low``, exact at ``b = 0`` and ``b = 1``."""
    return jnp.where(b >= 0.5, high - span * (1 - b), low + span * b)


def _two_sum(a, b):
    """Knuth: ``a + b = total + error`` exactly."""
    total = a + b
    b_virtual = total - a
    return total, (a - (total - b_virtual)) + (b - b_virtual)


def _product_mod(n, k, period):
    """``(n * k) mod period`` in ``[0, period)`` for integer steps ``n`` (``|n| < 2**24``) and
    ``k = k[0] + k[1] + k[2]`` (see :func:`_split`), to float32 round-off of the result
    however large ``n * k`` is.

    With ``n`` cut in two 12-bit pieces, the four products with ``k[0]``, ``k[1]`` are exact in
    float32; each is reduced exactly (``lax.rem``) and they are summed without loss (two-sums),
    so the phase of a cosine stays exact after many periods (e.g. beyond ``T``).
    """
    n_lo = jnp.remainder(n, 4096)
    n_hi, n_lo = _f(n - n_lo), _f(n_lo)
    total, error = f32(0.0), f32(0.0)
    for a, b in ((n_hi, k[0]), (n_lo, k[0]), (n_hi, k[1]), (n_lo, k[1])):
        total, e = _two_sum(total, lax.rem(a * b, period))
        total, error = lax.rem(total, period), error + e
    result = jnp.remainder(total + (error + _f(n) * k[2]), period)
    return jnp.where(result < period, result, f32(0.0))  # -1e-9 mod 1 rounds to 1


def _split(k):
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


def _warmup(s, w):
    """The warmup multiplier ``s / max(1, W)``."""
    return _ratio(s, jnp.maximum(1, w))


def _with_warmup(lr, s, w, factor):
    """``lr * s / max(1, W)`` during warmup, ``lr * factor`` afterwards."""
    return lr * jnp.where(s < w, _warmup(s, w), factor)


# --------------------------------------------------------------------------------------------
# The kernels (jitted) and the schedules' module-level functions (so that schedules pickle).


@jax.jit
def _constant_kernel(s, lr):
    return jnp.broadcast_to(lr, s.shape)


def _constant(step, *, learning_rate):
    return _constant_kernel(_checks.step(step), _f32(learning_rate))


@jax.jit
def _constant_with_warmup_kernel(s, lr, w):
    s = _signed(s)
    return _with_warmup(lr, s, w, f32(1.0))


def _constant_with_warmup(step, *, learning_rate, num_warmup_steps):
    return _constant_with_warmup_kernel(
        _checks.step(step), _f32(learning_rate), _i32(num_warmup_steps)
    )


@jax.jit
def _linear_kernel(s, lr, w, t):
    s = _signed(s)
    decay = _ratio(t - s, jnp.maximum(1, t - w))
    return _with_warmup(lr, s, w, jnp.maximum(0.0, decay))


def _linear(step, *, learning_rate, num_warmup_steps, num_training_steps):
    return _linear_kernel(_checks.step(step), _f32(learning_rate), _i32(num_warmup_steps),
                          _i32(num_training_steps))


@jax.jit
def _cosine_kernel(s, lr, w, k, low, span):
    s = _signed(s)
    g = _half_turn(_product_mod(s - w, k, f32(2.0)))  # (1 + cos(2 pi c p)) / 2
    return _with_warmup(lr, s, w, jnp.maximum(0.0, _mix(g, low, f32(1.0), span)))


def _cosine(step, *, learning_rate, num_warmup_steps, num_training_steps, num_cycles,
            min_lr_rate=0.0):
    k = _split(2.0 * num_cycles / max(1, num_training_steps - num_warmup_steps))
    return _cosine_kernel(_checks.step(step), _f32(learning_rate), _i32(num_warmup_steps), k,
                          _f32(min_lr_rate), _f32(1.0 - min_lr_rate))


@functools.partial(jax.jit, static_argnames="missed_restarts")
def _hard_restarts_kernel(s, lr, w, length, k, num_cycles, missed_restarts):
    s = _signed(s)
    n = s - w
    turns = _product_mod(n, k, f32(1.0))  # (c p) mod 1
    factor = jnp.where(n >= length, 0.0, _half_turn(turns))
    if missed_restarts:  # restart m happens at n = m L / c; transformers returns 0 there
        m = n * num_cycles
        missed = (m % length == 0) & jnp.isin(m // length, jnp.array(missed_restarts))
        factor = jnp.where(missed, 0.0, factor)
    return _with_warmup(lr, s, w, factor)


def _hard_restarts(step, *, learning_rate, num_warmup_steps, num_training_steps, num_cycles):
    length = max(1, num_training_steps - num_warmup_steps)
    missed = _missed_restarts(num_cycles)
    return _hard_restarts_kernel(_checks.step(step), _f32(learning_rate), _i32(num_warmup_steps),
                                 _i32(length), _split(num_cycles / length),
                                 _i32(num_cycles if missed else 0), missed_restarts=missed)


def _missed_restarts(num_cycles):
    """The restarts ``m`` that transformers' float64 arithmetic misses: there its
    ``(c * (n / L)) % 1`` is ``1 - 2**-53`` instead of 0, so the lr is 0 instead of the peak.
    It happens only for integer ``c >= 22`` (e.g. ``c = 22``, ``m = 15``)."""
    if num_cycles != int(num_cycles) or num_cycles < 2:
        return ()
    return tuple(m for m in range(1, int(num_cycles))
                 if (num_cycles * (m / num_cycles)) % 1.0 > 0.5)


@jax.jit
def _polynomial_kernel(s, lr, w, t, lr_end, span, power, zero_power):
    s = _signed(s)
    remaining = jnp.maximum(_ratio(t - s, t - w), 0.0)  # < 0 only in branches not taken
    # 0 ** power is 0 for a power > 0, also one that float32 flushes to 0 (and 1 for 0).
    scaled = jnp.where(remaining == 0, _f(zero_power), jnp.power(remaining, power))
    lr_at = jnp.where(s > t, lr_end, _mix(scaled, lr_end, lr, span))
    return jnp.where(s < w, lr * _warmup(s, w), lr_at)


def _polynomial(step, *, learning_rate, num_warmup_steps, num_training_steps, lr_end, power):
    return _polynomial_kernel(
        _checks.step(step), _f32(learning_rate), _i32(num_warmup_steps), _i32(num_training_steps),
        _f32(lr_end), _f32(learning_rate - lr_end), _f32(power), np.bool_(power == 0),
    )


@jax.jit
def _inverse_sqrt_kernel(s, lr, w, timescale):
    s = _signed(s)
    if jnp.issubdtype(timescale.dtype, jnp.integer):
        shifted = _f(s - w + timescale)
    else:
        shifted = _f(s - w) + timescale
    decay = jnp.sqrt(_f(timescale) / jnp.maximum(shifted, _f(timescale)))  # s >= W
    return _with_warmup(lr, s, w, decay)


def _inverse_sqrt(step, *, learning_rate, num_warmup_steps, timescale):
    timescale = _i32(timescale) if isinstance(timescale, int) else _f32(timescale)
    return _inverse_sqrt_kernel(_checks.step(step), _f32(learning_rate), _i32(num_warmup_steps),
                                timescale)


@functools.partial(jax.jit, static_argnames=("warmup_type", "decay_type"))
def _wsd_kernel(s, lr, w, stable, d, k, ratio, span, warmup_type, decay_type):
    s = _signed(s)
    decay_start = w + stable
    rest = _ratio(w - s, jnp.maximum(1, w))  # 1 - q, exact numerator
    if warmup_type == "linear":
        warm = _warmup(s, w)
    elif warmup_type == "cosine":  # (1 - cos(pi q)) / 2 = (1 + cos(pi (1 - q))) / 2
        warm = _half_turn(rest)
    else:  # "1-sqrt" (the clamps only keep NaNs out of the branches not taken)
        warm = 1 - jnp.sqrt(jnp.maximum(rest, 0.0))
    if decay_type == "linear":
        decay = _ratio(d - (s - decay_start), jnp.maximum(1, d))
    elif decay_type == "cosine":
        decay = _half_turn(_product_mod(s - decay_start, k, f32(2.0)))
    else:  # "1-sqrt"
        decay = 1 - jnp.sqrt(_ratio(jnp.maximum(s - decay_start, 0), jnp.maximum(1, d)))
    floor = lambda base: jnp.maximum(0.0, _mix(base, ratio, f32(1.0), span))
    f = jnp.where(
        s < w, floor(warm),
        jnp.where(s < decay_start, f32(1.0),
                  jnp.where(s < decay_start + d, floor(decay), ratio)),
    )
    return lr * f


def _wsd(step, *, learning_rate, num_warmup_steps, num_stable_steps, num_decay_steps,
         warmup_type, decay_type, min_lr_ratio, num_cycles):
    return _wsd_kernel(
        _checks.step(step), _f32(learning_rate), _i32(num_warmup_steps), _i32(num_stable_steps),
        _i32(num_decay_steps), _split(2.0 * num_cycles / max(1, num_decay_steps)),
        _f32(min_lr_ratio), _f32(1.0 - min_lr_ratio), warmup_type=warmup_type,
        decay_type=decay_type,
    )


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
    num_cycles = _finite("num_cycles", num_cycles)
    return functools.partial(
        _hard_restarts, learning_rate=_peak(learning_rate),
        num_warmup_steps=_count("num_warmup_steps", num_warmup_steps),
        num_training_steps=_count("num_training_steps", num_training_steps),
        num_cycles=num_cycles,
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
    learning_rate = _peak(learning_rate)
    num_warmup_steps = _count("num_warmup_steps", num_warmup_steps)
    num_training_steps = _count("num_training_steps", num_training_steps)
    lr_end = _finite("lr_end", lr_end)
    power = _finite("power", power)
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
    num_warmup_steps = _count("num_warmup_steps", num_warmup_steps)
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    if isinstance(timescale, numbers.Integral) and not isinstance(timescale, bool):
        timescale = int(timescale)
    else:
        timescale = _finite("timescale", timescale)
    _checks.number("timescale", timescale, low=0.0, low_open=True)
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
      >>> schedule(jnp.arange(12)).tolist()
      [0.0, 5.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 5.0, 0.0, 0.0]
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
        _checks.integer("num_training_steps", num_training_steps, low=0, allow_none=True)
        num_stable_steps = _count("num_stable_steps", num_stable_steps)
    min_lr_ratio = _finite("min_lr_ratio", min_lr_ratio)
    _checks.number("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0)
    return functools.partial(
        _wsd, learning_rate=_peak(learning_rate), num_warmup_steps=num_warmup_steps,
        num_stable_steps=num_stable_steps, num_decay_steps=num_decay_steps,
        warmup_type=warmup_type, decay_type=decay_type, min_lr_ratio=min_lr_ratio,
        num_cycles=_finite("num_cycles", num_cycles),
    )
