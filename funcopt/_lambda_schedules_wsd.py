r"""Hugging Face's warmup-stable-decay ``LambdaLR`` schedule (``get_wsd_schedule``) as a
jit-able ``step -> lr`` function: a warmup (linear, cosine or 1-sqrt), a constant peak, and a
decay (linear, cosine or 1-sqrt) to a floor.

Like the other ``LambdaLR`` families (:mod:`funcopt._lambda_schedules_power`,
:mod:`funcopt._lambda_schedules_cosine`) it takes the peak learning rate where transformers
takes the optimizer, runs in float32 (:mod:`funcopt._lambda_schedules_math`) and pickles.
"""

from __future__ import annotations

import functools
import warnings

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
    warmup_fraction,
)
from funcopt._numerics import f32

__all__ = ["get_wsd_schedule"]

_WSD_TYPES = ("linear", "cosine", "1-sqrt")


@functools.partial(jax.jit, static_argnames=("warmup_type", "decay_type"))
def _wsd_kernel(s, lr, w, stable, d, k, min_ratio, span, warmup_type, decay_type):
    s = signed(s)
    decay_start = w + stable
    rest = ratio(w - s, jnp.maximum(1, w))  # 1 - q, exact numerator
    if warmup_type == "linear":
        warm = warmup_fraction(s, w)
    elif warmup_type == "cosine":  # (1 - cos(pi q)) / 2 = (1 + cos(pi (1 - q))) / 2
        warm = half_turn(rest)
    else:  # "1-sqrt" (the clamps only keep NaNs out of the branches not taken)
        warm = 1 - jnp.sqrt(jnp.maximum(rest, 0.0))
    if decay_type == "linear":
        decay = ratio(d - (s - decay_start), jnp.maximum(1, d))
    elif decay_type == "cosine":
        decay = half_turn(product_mod(s - decay_start, k, f32(2.0)))
    else:  # "1-sqrt"
        decay = 1 - jnp.sqrt(ratio(jnp.maximum(s - decay_start, 0), jnp.maximum(1, d)))
    floor = lambda base: jnp.maximum(0.0, mix(base, min_ratio, f32(1.0), span))
    f = jnp.where(
        s < w, floor(warm),
        jnp.where(s < decay_start, f32(1.0),
                  jnp.where(s < decay_start + d, floor(decay), min_ratio)),
    )
    return lr * f


def _wsd(step, *, learning_rate, num_warmup_steps, num_stable_steps, num_decay_steps,
         warmup_type, decay_type, min_lr_ratio, num_cycles):
    return _wsd_kernel(
        _checks.step(step), f32_arg(learning_rate), i32_arg(num_warmup_steps),
        i32_arg(num_stable_steps), i32_arg(num_decay_steps),
        split(2.0 * num_cycles / max(1, num_decay_steps)), f32_arg(min_lr_ratio),
        f32_arg(1.0 - min_lr_ratio), warmup_type=warmup_type, decay_type=decay_type,
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
    num_warmup_steps = step_count("num_warmup_steps", num_warmup_steps)
    num_decay_steps = step_count("num_decay_steps", num_decay_steps)
    if num_stable_steps is None:
        num_training_steps = step_count("num_training_steps", num_training_steps)
        num_stable_steps = num_training_steps - num_warmup_steps - num_decay_steps
    else:
        _checks.integer("num_training_steps", num_training_steps, low=0, allow_none=True)
        num_stable_steps = step_count("num_stable_steps", num_stable_steps)
    min_lr_ratio = finite("min_lr_ratio", min_lr_ratio)
    _checks.number("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0)
    return functools.partial(
        _wsd, learning_rate=peak(learning_rate), num_warmup_steps=num_warmup_steps,
        num_stable_steps=num_stable_steps, num_decay_steps=num_decay_steps,
        warmup_type=warmup_type, decay_type=decay_type, min_lr_ratio=min_lr_ratio,
        num_cycles=finite("num_cycles", num_cycles),
    )
