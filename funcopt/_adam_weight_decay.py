"""TF ``transformers.AdamWeightDecay`` (legacy Keras Adam + decoupled decay) and the Keras
``Adam`` that ``create_optimizer`` builds without weight decay."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _names
from funcopt._numerics import NO_PARAMS, divide, f32, is_static, learning_rate_at, unfused

__all__ = ["AdamWeightDecayState", "adam_weight_decay"]


class AdamWeightDecayState(NamedTuple):
    """State of :func:`adam_weight_decay`, named after the Keras slots.

    Attributes:
      iterations: int32 scalar, Keras' ``optimizer.iterations`` (0-based, the schedule's step).
      m, v: first and second moments, pytrees like the params.
      vhat: running maximum of ``v`` with ``amsgrad``, else None.

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.adam_weight_decay(amsgrad=True).init({"kernel": jnp.zeros((2, 2))})
    >>> int(state.iterations), state.vhat["kernel"].shape
    (0, (2, 2))
    """

    iterations: jax.Array
    m: Any
    v: Any
    vhat: Any


# --- TF's gradient clipping, with TF's exact formulas -----------------------------------

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


def _check_clips(clipnorm, clipvalue, global_clipnorm):
    for name, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                        ("global_clipnorm", global_clipnorm)):
        if value is not None:
            _checks.number(name, value, low=0.0, low_open=True, allowed="> 0 or None")
    if clipnorm is not None and global_clipnorm is not None:
        raise ValueError(
            f"clipnorm={clipnorm!r} and global_clipnorm={global_clipnorm!r} cannot both be set "
            "(Keras refuses the pair): choose per-tensor or global norm clipping."
        )


def keras_adam(
    learning_rate, b1, b2, eps, amsgrad, weight_decay_rate, decay_mask: Callable | None,
    clip: Callable, legacy: bool,
) -> optax.GradientTransformation:
    """The Keras Adam kernel (epsilon-hat form), with optional decoupled decay applied first.

    ``legacy`` picks the legacy kernel's ``1 - float32(beta)`` over the new optimizer's
    ``float32(1 - beta)``; ``clip`` transforms the gradients first; ``decay_mask(params)``
    lists, per leaf, whether it decays.
    """

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)
        return AdamWeightDecayState(
            iterations=jnp.zeros([], jnp.int32),
            m=jax.tree.map(zeros, params),
            v=jax.tree.map(zeros, params),
            vhat=jax.tree.map(zeros, params) if amsgrad else None,
        )

    def one_minus(b):
        if not is_static(b):
            return 1 - jnp.asarray(b, f32)
        return 1 - f32(b) if legacy else f32(1.0 - b)

    def update(grads, state, params=None):
        decayed = decay_mask is not None
        if decayed and params is None:
            raise ValueError(NO_PARAMS)
        grads = clip(grads)
        lr = learning_rate_at(learning_rate, state.iterations)
        k = optax.safe_increment(state.iterations).astype(f32)
        b1p = jnp.power(jnp.asarray(b1, f32), k)
        b2p = jnp.power(jnp.asarray(b2, f32), k)
        alpha = lr * jnp.sqrt(1 - b2p) / (1 - b1p)
        c1, c2, eps32 = one_minus(b1), one_minus(b2), jnp.asarray(eps, f32)
        wd = jnp.asarray(weight_decay_rate, f32)

        treedef = jax.tree.structure(grads)
        n = treedef.num_leaves
        mask = decay_mask(params) if decayed else [False] * n
        p_l = treedef.flatten_up_to(params) if params is not None else [None] * n
        vhat_l = treedef.flatten_up_to(state.vhat) if amsgrad else [None] * n
        out = []
        for g, p, m, v, vhat, decays in zip(
            treedef.flatten_up_to(grads), p_l, treedef.flatten_up_to(state.m),
            treedef.flatten_up_to(state.v), vhat_l, mask, strict=True,
        ):
            # TF's Eigen kernels round every product: keep XLA from fusing multiply-adds.
            g = g.astype(f32)
            m = m + unfused((g - m.astype(f32)) * c1)
            v = v + unfused((unfused(g * g) - v.astype(f32)) * c2)
            if amsgrad:
                vhat = jnp.maximum(vhat, v)
            step = (m * alpha) / (jnp.sqrt(vhat if amsgrad else v) + eps32)
            if decays:
                p32 = p.astype(f32)
                new = (p32 - (lr * p32) * wd) - step
                u = new - p32
            else:
                u = -step
            dtype = p.dtype if p is not None else g.dtype
            out.append((u.astype(dtype), m.astype(dtype), v.astype(dtype),
                        None if vhat is None else vhat.astype(dtype)))
        field = lambda i: jax.tree_util.tree_unflatten(treedef, [o[i] for o in out])
        new_state = AdamWeightDecayState(
            optax.safe_increment(state.iterations), field(1), field(2),
            field(3) if amsgrad else None,
        )
        return field(0), new_state

    return optax.GradientTransformation(init, update)


def adam_weight_decay(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-7,
    amsgrad: bool = False,
    weight_decay_rate: float = 0.0,
    include_in_weight_decay: Sequence[str] | None = None,
    exclude_from_weight_decay: Sequence[str] | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
) -> optax.GradientTransformation:
    r"""TF ``transformers.AdamWeightDecay``: decoupled decay, then the legacy Keras Adam step.

    With :math:`\eta = ` ``learning_rate(iterations)`` and :math:`k = ` iterations + 1, for each
    parameter :math:`\theta` (in float32, in this order):

    .. math::
        \theta &\leftarrow \theta - (\eta\,\theta)\,\lambda \quad\text{(if the name is selected)}\\
        m &\leftarrow m + (g - m)(1 - \beta_1), \qquad v \leftarrow v + (g^2 - v)(1 - \beta_2)\\
        \theta &\leftarrow \theta - \frac{m\,\alpha}{\sqrt{v} + \epsilon}, \qquad
        \alpha = \eta\,\sqrt{1 - \beta_2^k} / (1 - \beta_1^k)

    (``amsgrad``: :math:`\hat v = \max(\hat v, v)` replaces :math:`v` in the denominator.)
    Gradients are first clipped as the legacy Keras optimizer does: ``clipvalue``, then
    ``clipnorm`` (per tensor), then ``global_clipnorm``, with TF's formulas. A parameter's
    name is its ``/``-joined pytree path (:func:`param_names`); it decays when
    ``weight_decay_rate`` != 0 and either an ``include_in_weight_decay`` regex
    ``re.search``-matches it, or no ``exclude_from_weight_decay`` regex does (include wins).
    Powers :math:`\beta^k` are taken in float32, as TF does.

    Example:
      >>> import jax.numpy as jnp, funcopt
      >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
      >>> opt = funcopt.adam_weight_decay(0.1, weight_decay_rate=0.1,
      ...                                 exclude_from_weight_decay=["bias"])
      >>> grads = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> updates["dense"]["bias"]
      Array([-0.09999968, -0.09999968], dtype=float32)
    """
    _checks.learning_rate("learning_rate", learning_rate)
    _checks.number("b1", b1, low=0.0, high=1.0, allowed="in [0.0, 1.0]")
    _checks.number("b2", b2, low=0.0, high=1.0, allowed="in [0.0, 1.0]")
    _checks.number("eps", eps, low=0.0)
    _checks.number("weight_decay_rate", weight_decay_rate, low=0.0)
    if not isinstance(amsgrad, bool):
        raise TypeError(f"amsgrad must be a bool, got {amsgrad!r}.")
    _check_clips(clipnorm, clipvalue, global_clipnorm)
    include = _names._compile(include_in_weight_decay, "include_in_weight_decay")
    exclude = _names._compile(exclude_from_weight_decay, "exclude_from_weight_decay")

    def clip(grads):
        if clipvalue is not None:
            grads = clip_by_value(grads, clipvalue)
        if clipnorm is not None:
            grads = clip_by_norm(grads, clipnorm)
        if global_clipnorm is not None:
            grads = clip_by_global_norm(grads, global_clipnorm)
        return grads

    def decay_mask(params):
        names = jax.tree.leaves(_names.param_names(params))
        return [_names.decays(name, include, exclude) for name in names]

    no_decay = is_static(weight_decay_rate) and weight_decay_rate == 0.0
    return keras_adam(learning_rate, b1, b2, eps, amsgrad, weight_decay_rate,
                      None if no_decay else decay_mask, clip, legacy=True)
