"""Gradient accumulation: TF ``GradientAccumulator`` semantics as pure functions, and k-step
accumulation for any optimizer the way HF's ``Trainer`` does it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks

__all__ = [
    "GradientAccumulatorState",
    "accumulate",
    "accumulator_init",
    "accumulator_reset",
    "gradient_accumulation",
]


class GradientAccumulatorState(NamedTuple):
    """State of the TF-style accumulator (:func:`accumulator_init`).

    Attributes:
      gradients: the running sums, a pytree like the gradients given to
        :func:`accumulator_init`, each sum in its gradient's dtype; a ``None`` slot stays
        ``None`` for good.
      step: int32 scalar, the number of :func:`accumulate` calls since the last reset (TF's
        ``step``, int64 there).

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import accumulator_init
      >>> state = accumulator_init([jnp.zeros(2), None])
      >>> state.gradients, state.step
      ([Array([0., 0.], dtype=float32), None], Array(0, dtype=int32))
    """

    gradients: Any
    step: jax.Array


def _is_none(x):
    return x is None


def accumulator_init(gradients) -> GradientAccumulatorState:
    """A zero accumulator shaped like ``gradients`` (TF creates it on its first call).

    ``gradients`` is a list of arrays as in TF, with ``None`` for a variable without
    gradient, or any pytree of arrays (``None`` leaves allowed).

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import accumulate, accumulator_init
      >>> state = accumulator_init([jnp.zeros(2), None])
      >>> for g in ([1.0, 2.0], [-2.0, 1.0], [-1.0, 2.0]):
      ...     state = accumulate(state, [jnp.array(g), None])
      >>> state.gradients[0], state.gradients[1], int(state.step)
      (Array([-2.,  5.], dtype=float32), None, 3)
    """
    zeros = jax.tree.map(jnp.zeros_like, gradients)
    return GradientAccumulatorState(gradients=zeros, step=jnp.zeros([], jnp.int32))


def accumulate(state: GradientAccumulatorState, gradients) -> GradientAccumulatorState:
    """Adds ``gradients`` to the sums and counts one step: TF ``GradientAccumulator.__call__``.

    A ``None`` gradient adds nothing, and a gradient arriving for a ``None`` slot is dropped,
    as in TF. The sums are not averaged: divide by ``state.step`` if needed.

    Raises:
      ValueError: "Expected N gradients, but got M" (TF's message) for a list of the wrong
        length, checked before anything is accumulated; and, where TF would fail inside its
        ``assign_add``, for a gradient of another shape or a pytree of another structure.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import accumulate, accumulator_init
      >>> state = accumulate(accumulator_init({"w": jnp.zeros(2)}), {"w": jnp.ones(2)})
      >>> state = accumulate(state, {"w": jnp.array([0.5, -1.0])})
      >>> state.gradients["w"], int(state.step)
      (Array([1.5, 0. ], dtype=float32), 2)
      >>> accumulate(accumulator_init([jnp.zeros(2)]), [jnp.ones(2), jnp.ones(2)])
      Traceback (most recent call last):
      ValueError: Expected 1 gradients, but got 2
    """
    sums = state.gradients
    if isinstance(sums, list | tuple) and isinstance(gradients, list | tuple):
        if len(gradients) != len(sums):
            raise ValueError(f"Expected {len(sums)} gradients, but got {len(gradients)}")

    paths_and_sums, treedef = jax.tree_util.tree_flatten_with_path(sums, is_leaf=_is_none)
    try:
        flat_gradients = treedef.flatten_up_to(gradients)
    except (ValueError, TypeError) as err:
        raise ValueError(f"The gradients do not have the accumulator's structure: {err}") from None
    new = []
    for (path, total), gradient in zip(paths_and_sums, flat_gradients, strict=True):
        if total is not None and gradient is not None:
            if not jax.tree_util.treedef_is_leaf(jax.tree.structure(gradient)):
                raise ValueError(
                    "The gradients do not have the accumulator's structure: at "
                    f"{jax.tree_util.keystr(path) or 'the root'} an array is expected, got "
                    f"{gradient!r}."
                )
            if jnp.shape(gradient) != total.shape:
                raise ValueError(
                    f"The gradient at {jax.tree_util.keystr(path) or 'the root'} has shape "
                    f"{jnp.shape(gradient)}, but the accumulated one has shape {total.shape}."
                )
            total = total + jnp.asarray(gradient, total.dtype)
        new.append(total)
    sums = jax.tree_util.tree_unflatten(treedef, new)
    return GradientAccumulatorState(gradients=sums, step=optax.safe_increment(state.step))


def accumulator_reset(state: GradientAccumulatorState) -> GradientAccumulatorState:
    """Zero sums and step 0 (TF ``GradientAccumulator.reset``); ``None`` slots stay ``None``.

    Example:
      >>> import jax.numpy as jnp
      >>> from funcopt import accumulate, accumulator_init, accumulator_reset
      >>> state = accumulate(accumulator_init([jnp.zeros(2), None]), [jnp.ones(2), None])
      >>> state = accumulator_reset(state)
      >>> state.gradients, int(state.step)
      ([Array([0., 0.], dtype=float32), None], 0)
    """
    return accumulator_init(state.gradients)


def gradient_accumulation(optimizer: optax.GradientTransformation, steps: int,
                          use_grad_mean: bool = True) -> optax.GradientTransformationExtraArgs:
    """Runs ``optimizer`` once every ``steps`` micro-batches, on their mean gradient: HF
    ``Trainer`` with ``gradient_accumulation_steps=steps``.

    The Trainer divides each micro-batch loss by ``steps``, calls ``backward`` on each (so the
    gradients add up to their mean), then makes one optimizer step and one scheduler step. Here
    each call to ``update`` takes one micro-batch's gradients; the first ``steps - 1`` calls
    return zero updates, the last the optimizer's update for the mean. The optimizer's state,
    and so its learning-rate schedule (its ``count``), advances once per ``steps`` calls.

    This is ``optax.MultiSteps(optimizer, steps)`` summing each micro-batch's gradient divided
    by ``steps``, in order, as torch accumulates the Trainer's ``loss / steps`` gradients
    (bitwise the Trainer's sum when ``steps`` is a power of two; optax's own
    ``use_grad_mean=True`` is a running average that rounds differently), with its state
    ``optax.MultiStepsState``: an optimizer step happened on a call
    after which ``state.mini_step == 0``. Like ``MultiSteps``, it computes the inner update on
    every call and keeps it on the last (less memory than a branch, ``steps`` times the
    optimizer's arithmetic). Extra arguments (e.g. ``value`` for
    :func:`reduce_on_plateau`) are passed on to ``optimizer``.

    With ``use_grad_mean=False`` the gradients are summed instead: what the Trainer (4.46+)
    does for models that normalize their loss over all micro-batches' tokens
    (``num_items_in_batch``); then give the per-micro-batch gradients of that loss.

    Args:
      optimizer: any optax transformation, e.g. :func:`funcopt.adamw` with a schedule.
      steps: the number of micro-batches per optimizer step, an int >= 1.
      use_grad_mean: average (True, the Trainer's ``loss / steps``) or sum the gradients.

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.gradient_accumulation(optax.sgd(1.0), steps=2)
      >>> params = {"w": jnp.zeros(2)}
      >>> state = opt.init(params)
      >>> for g in ([1.0, 3.0], [3.0, 5.0]):
      ...     updates, state = opt.update({"w": jnp.array(g)}, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> params["w"]
      Array([-2., -4.], dtype=float32)
    """
    steps = _checks.integer("steps", steps, low=1)
    if not isinstance(use_grad_mean, bool):
        raise TypeError(f"use_grad_mean must be a bool, got {use_grad_mean!r}.")
    # The mean as the Trainer forms it: each micro-batch's gradient of loss / steps, added up in
    # order (optax's own mean is a running average, which rounds differently).
    multi = optax.MultiSteps(optimizer, every_k_schedule=steps, use_grad_mean=False)
    if not use_grad_mean or steps == 1:
        return optax.GradientTransformationExtraArgs(multi.init, multi.update)

    def update(grads, state, params=None, **extra_args):
        scaled = jax.tree.map(lambda g: g / jnp.asarray(steps, g.dtype), grads)
        return multi.update(scaled, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(multi.init, update)
