r"""The schedule of transformers' TF ``create_optimizer``: its ``WarmUp`` and Keras'
``PolynomialDecay``.

Both compute in float32 with TensorFlow's order of operations and roundings, so they
reproduce the reference bit for bit (up to TF's and XLA's ``pow`` for powers other than 1).
A schedule is a function of the iteration (0 for the first update), traced or not.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from funcopt import _checks
from funcopt._numerics import divide, unfused

__all__ = ["warmup", "polynomial_decay"]

f32 = jnp.float32


def _steps(name, value):
    """A number of steps >= 0; an integer stays an integer (TF subtracts it from the step)."""
    v = _checks.static_number(name, value, low=0.0)
    return int(value) if isinstance(value, numbers.Integral) else v


@jax.jit
def _warmup_kernel(s, decayed, initial_learning_rate, warmup_steps, power):
    s = s.astype(f32)
    ramp = initial_learning_rate * jnp.power(divide(s, warmup_steps), power)
    return jnp.where(s < warmup_steps, ramp, decayed.astype(f32))


def _warmup(step, *, initial_learning_rate, decay_schedule_fn, warmup_steps, power):
    s = _checks.step(step)
    decayed = jnp.asarray(decay_schedule_fn(s - warmup_steps))
    return _warmup_kernel(s, decayed, np.float32(initial_learning_rate),
                          np.float32(warmup_steps), np.float32(power))


def warmup(initial_learning_rate, decay_schedule_fn, warmup_steps, power=1.0):
    r"""transformers' TF ``WarmUp``: a polynomial warmup in front of a decay schedule.

    In float32, with :math:`W` = ``warmup_steps`` and :math:`\eta_0` =
    ``initial_learning_rate``:

    .. math:: \mathrm{lr}(s) = \eta_0\, (s / W)^{\text{power}} \ (s < W), \qquad
        \mathrm{lr}(s) = \text{decay\_schedule\_fn}(s - W) \ (s \ge W).

    The decay schedule starts at the end of warmup (it sees ``s - W``). ``create_optimizer``
    puts ``polynomial_decay`` (Keras' ``PolynomialDecay``) behind it with a linear warmup
    (``power`` applies to the warmup only).

    Args:
      initial_learning_rate: the learning rate at the end of warmup, >= 0.
      decay_schedule_fn: a schedule (``step -> lr``) for after the warmup, e.g. a funcopt or
        optax schedule.
      warmup_steps: :math:`W`, a number >= 0 (with 0 the decay schedule runs from step 0).
      power: the warmup's exponent (1.0: linear).

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import get_constant_schedule, warmup
      >>> schedule = warmup(1.0, get_constant_schedule(1.0), warmup_steps=4, power=2.0)
      >>> schedule(jnp.arange(6)).tolist()
      [0.0, 0.0625, 0.25, 0.5625, 1.0, 1.0]
    """
    if not callable(decay_schedule_fn):
        raise TypeError(
            f"decay_schedule_fn must be a schedule (a callable step -> lr), got "
            f"{decay_schedule_fn!r}."
        )
    return functools.partial(
        _warmup,
        initial_learning_rate=_checks.static_number(
            "initial_learning_rate", initial_learning_rate, low=0.0
        ),
        decay_schedule_fn=decay_schedule_fn,
        warmup_steps=_steps("warmup_steps", warmup_steps),
        power=_checks.static_number("power", power, allowed="a number"),
    )


@jax.jit
def _polynomial_decay_kernel(s, initial_learning_rate, decay_steps, end_learning_rate, power):
    x = jnp.minimum(s.astype(f32), decay_steps)
    p = divide(x, decay_steps)
    decay = unfused((initial_learning_rate - end_learning_rate) * jnp.power(1 - p, power))
    return decay + end_learning_rate


def _polynomial_decay(step, *, initial_learning_rate, decay_steps, end_learning_rate, power):
    return _polynomial_decay_kernel(
        _checks.step(step), np.float32(initial_learning_rate), np.float32(decay_steps),
        np.float32(end_learning_rate), np.float32(power),
    )


def polynomial_decay(initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0):
    r"""Keras' ``PolynomialDecay`` with ``cycle=False``, in float32 like Keras.

    .. math:: x' = \min(s, D), \quad p = x' / D, \quad
        \mathrm{lr}(s) = (\eta_0 - \eta_{end}) (1 - p)^{\text{power}} + \eta_{end}.

    Used by :func:`funcopt.create_optimizer` (private: the public API is ``warmup``).

    Raises:
      ValueError: for ``decay_steps <= 0``, where Keras returns NaN (0 / 0) at every step
        (``create_optimizer`` with ``num_train_steps == num_warmup_steps``) or, below 0,
        ``end_learning_rate`` from the start (``num_train_steps < num_warmup_steps``).

    Example:
      >>> from funcopt._warmup_decay import polynomial_decay
      >>> schedule = polynomial_decay(1.0, decay_steps=4, end_learning_rate=0.0)
      >>> [float(schedule(s)) for s in range(6)]
      [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    decay_steps = _checks.static_number(
        "decay_steps", decay_steps, low=0.0, low_open=True,
        allowed="> 0 (Keras' PolynomialDecay gives NaN for 0 and only end_learning_rate below)",
    )
    return functools.partial(
        _polynomial_decay,
        initial_learning_rate=_checks.static_number(
            "initial_learning_rate", initial_learning_rate, allowed="a number"
        ),
        decay_steps=decay_steps,
        end_learning_rate=_checks.static_number(
            "end_learning_rate", end_learning_rate, allowed="a number"
        ),
        power=_checks.static_number("power", power, allowed="a number"),
    )
