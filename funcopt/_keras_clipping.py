"""Keras' gradient clipping (``clipvalue``, ``clipnorm``, ``global_clipnorm``) with TF's exact
formulas, for :func:`funcopt.adam_weight_decay` and :func:`funcopt.create_optimizer`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcopt import _checks
from funcopt._numerics import divide, f32, unfused

__all__ = ["check_clips", "clip", "clip_by_global_norm", "clip_by_norm", "clip_by_value"]


def clip_by_value(grads, clip):
    """``tf.clip_by_value(g, -clip, clip)`` on every leaf."""
    return jax.tree.map(lambda g: jnp.clip(g, -clip, clip), grads)


def clip_by_norm(grads, clip):
    """``tf.clip_by_norm`` on every leaf: ``g * clip / max(||g||, clip)``."""

    def one(g):
        sq = jnp.sum(g * g)
        norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1)), sq)
        return divide(g * clip, jnp.maximum(norm, jnp.asarray(clip, g.dtype)))

    return jax.tree.map(one, grads)


def clip_by_global_norm(grads, clip):
    """``tf.clip_by_global_norm``: ``g * clip * min(1/norm, 1/clip)`` (NaN for a non-finite
    norm, as in TF)."""
    leaves = jax.tree.leaves(grads)
    half_squares = jnp.stack([jnp.sum(unfused(g * g)) * f32(0.5) for g in leaves])
    norm = jnp.sqrt(jnp.sum(half_squares) * 2)
    clip = jnp.asarray(clip, f32)
    scale = clip * jnp.minimum(1 / norm, 1 / clip) + (norm - norm)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def check_clips(clipnorm, clipvalue, global_clipnorm, prefix: str = "") -> None:
    """Each given value > 0; ``clipnorm`` and ``global_clipnorm`` not both (Keras refuses the
    pair). ``prefix`` is the arguments' prefix in error messages (``"adam_"``)."""
    for name, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                        ("global_clipnorm", global_clipnorm)):
        if value is not None:
            _checks.number(prefix + name, value, low=0.0, low_open=True, allowed="> 0 or None")
    if clipnorm is not None and global_clipnorm is not None:
        raise ValueError(
            f"{prefix}clipnorm={clipnorm!r} and {prefix}global_clipnorm={global_clipnorm!r} "
            "cannot both be set (Keras refuses the pair): choose per-tensor or global norm "
            "clipping."
        )


def clip(grads, clipvalue=None, clipnorm=None, global_clipnorm=None):
    """The legacy Keras optimizer's order: ``clipvalue``, then ``clipnorm`` (per tensor), then
    ``global_clipnorm``; None skips one. (The new Keras optimizer applies ``clipnorm``, else
    ``global_clipnorm``: the same once :func:`check_clips` has refused the pair.)"""
    if clipvalue is not None:
        grads = clip_by_value(grads, clipvalue)
    if clipnorm is not None:
        grads = clip_by_norm(grads, clipnorm)
    if global_clipnorm is not None:
        grads = clip_by_global_norm(grads, global_clipnorm)
    return grads
