"""TF ``transformers.AdamWeightDecay`` (legacy Keras Adam + decoupled decay) and the Keras
``Adam`` that ``create_optimizer`` builds without weight decay."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core, _keras_clipping, _names
from funcopt._numerics import f32, is_static, learning_rate_at, unfused

__all__ = ["AdamWeightDecayState", "KerasAdam", "adam_weight_decay"]


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


class KerasScalars(NamedTuple):
    """What every leaf of one :class:`KerasAdam` update shares (float32 scalars): the learning
    rate, ``alpha = lr * sqrt(1 - b2**k) / (1 - b1**k)``, ``1 - b1``, ``1 - b2``, ``eps`` and the
    decay rate."""

    lr: jax.Array
    alpha: jax.Array
    one_minus_b1: jax.Array
    one_minus_b2: jax.Array
    eps: jax.Array
    weight_decay: jax.Array


@dataclasses.dataclass(frozen=True)
class KerasAdam(_core.Rule):
    """The Keras Adam kernel (epsilon-hat form): validated hyperparameters and leaf functions.

    Decoupled decay (``weight_decay``, where ``mask`` selects) is applied first, as
    ``AdamWeightDecay`` does; the gradients are clipped first of all (:meth:`transform_grads`,
    ``funcopt._keras_clipping.clip``). ``legacy`` picks the legacy kernel's
    ``1 - float32(beta)`` over the new optimizer's ``float32(1 - beta)``. Moments live in the
    parameter's dtype (Keras' slots), computed in float32.
    """

    State: ClassVar[type] = AdamWeightDecayState
    learning_rate: Any
    b1: Any
    b2: Any
    eps: Any
    amsgrad: bool
    weight_decay: Any
    mask: Any
    clipvalue: Any
    clipnorm: Any
    global_clipnorm: Any
    legacy: bool

    def transform_grads(self, grads):
        """Keras' clipping: ``clipvalue``, ``clipnorm``, ``global_clipnorm``."""
        return _keras_clipping.clip(grads, self.clipvalue, self.clipnorm, self.global_clipnorm)

    def _one_minus(self, b):
        if not is_static(b):
            return 1 - jnp.asarray(b, f32)
        return 1 - f32(b) if self.legacy else f32(1.0 - b)

    def scalars(self, count) -> KerasScalars:
        """The float32 values every leaf of the update after ``count`` updates uses."""
        lr = learning_rate_at(self.learning_rate, count)
        k = optax.safe_increment(count).astype(f32)
        b1p = jnp.power(jnp.asarray(self.b1, f32), k)
        b2p = jnp.power(jnp.asarray(self.b2, f32), k)
        return KerasScalars(
            lr=lr, alpha=lr * jnp.sqrt(1 - b2p) / (1 - b1p),
            one_minus_b1=self._one_minus(self.b1), one_minus_b2=self._one_minus(self.b2),
            eps=jnp.asarray(self.eps, f32), weight_decay=jnp.asarray(self.weight_decay, f32))

    def init_leaf(self, p) -> tuple:
        """``(m, v, vhat)``, zeros in the parameter's dtype (``vhat`` only with amsgrad)."""
        return jnp.zeros_like(p), jnp.zeros_like(p), jnp.zeros_like(p) if self.amsgrad else None

    def update_leaf(self, s: KerasScalars, g, p, fields, decays):
        """One leaf's ``(update, (m, v, vhat))``."""
        m, v, vhat = fields
        dtype = m.dtype
        # TF's Eigen kernels round every product: keep XLA from fusing multiply-adds.
        g = g.astype(f32)
        m = m + unfused((g - m.astype(f32)) * s.one_minus_b1)
        v = v + unfused((unfused(g * g) - v.astype(f32)) * s.one_minus_b2)
        if self.amsgrad:
            vhat = jnp.maximum(vhat, v)
        step = (m * s.alpha) / (jnp.sqrt(vhat if self.amsgrad else v) + s.eps)
        if decays:
            p32 = p.astype(f32)
            new = (p32 - (s.lr * p32) * s.weight_decay) - step
            u = new - p32
        else:
            u = -step
        return u.astype(dtype), (m.astype(dtype), v.astype(dtype),
                                 vhat.astype(dtype) if self.amsgrad else None)


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
    _keras_clipping.check_clips(clipnorm, clipvalue, global_clipnorm)
    include = _names.compile_patterns(include_in_weight_decay, "include_in_weight_decay")
    exclude = _names.compile_patterns(exclude_from_weight_decay, "exclude_from_weight_decay")
    mask = functools.partial(_names.name_mask, include=include, exclude=exclude)
    return _core.transformation(KerasAdam(
        learning_rate, b1, b2, eps, amsgrad, weight_decay_rate, mask, clipvalue, clipnorm,
        global_clipnorm, legacy=True))
