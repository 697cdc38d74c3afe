"""Construction-time argument checks shared by every transformation and schedule.

A value that is a JAX tracer (a hyperparameter injected with ``optax.inject_hyperparams`` and
traced under ``jit``) cannot be checked in Python and is let through; concrete values are
checked at once, with a message naming the argument, the value and what is allowed.
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np


def concrete(value):
    """``float(value)`` for a Python or concrete array scalar; None for a tracer."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Number | np.ndarray | jax.Array):
        raise TypeError(f"expected a real number, got {value!r} of type {type(value).__name__}")
    if np.ndim(value) != 0:
        raise TypeError(f"expected a scalar, got an array of shape {np.shape(value)}")
    return float(value)


def number(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
           allowed: str | None = None):
    """Checks ``low <= value <= high`` (open ends where asked); returns the value unchanged."""
    try:
        v = concrete(value)
    except TypeError as err:
        raise TypeError(f"{name}: {err}.") from None
    if v is None:
        return value
    bad = math.isnan(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        if allowed is None:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            allowed = " and ".join(s for s in (lo, hi) if s)
        raise ValueError(f"{name}={value!r} is invalid: it must be {allowed}.")
    return value


def integer(name: str, value, *, low=None, allow_none=False):
    """Checks that ``value`` is a Python/NumPy integer (not a bool), at least ``low``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if low is not None and value < low:
        raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= {low}.")
    return int(value)


def learning_rate(name: str, value):
    """A learning rate: a schedule (any callable ``step -> lr``) or a number ``>= 0``."""
    if callable(value):
        return value
    if value is None:
        raise TypeError(f"{name} must be a number >= 0 or a schedule, got None.")
    return number(name, value, low=0.0, allowed=">= 0.0 (or a schedule step -> lr)")


def static_number(name: str, value, **bounds) -> float:
    """A number that configures a schedule (static, known before jit), checked against
    ``bounds`` as in :func:`number`, as a Python float."""
    number(name, value, **bounds)
    v = concrete(value)
    if v is None:
        raise TypeError(f"{name} must be a concrete number (it is static), got a tracer.")
    return v


def step(value):
    """A schedule's step as a JAX array: an integer (or float) scalar or array, traced or not."""
    import jax.numpy as jnp

    try:
        s = jnp.asarray(value)
    except TypeError:
        s = None
    if s is None or s.dtype == jnp.bool_ or not (
        jnp.issubdtype(s.dtype, jnp.integer) or jnp.issubdtype(s.dtype, jnp.floating)
    ):
        raise TypeError(f"step must be an integer (the number of updates made), got {value!r}.")
    return s


def choice(name: str, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid: it must be one of {list(allowed)}.")
    return value
