"""``torch.optim.SGD`` as an optax transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt._numerics import f32, is_static, learning_rate_at
from funcopt._torch_ops import Kernels, complement, scalar

__all__ = ["SGDState", "sgd"]


class SGDState(NamedTuple):
    """State of :func:`sgd`, field for field torch's per-parameter ``SGD`` state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule; the
        first update, ``count == 0``, starts the momentum buffer).
      momentum_buffer: the momentum, in each parameter's dtype; None when ``momentum`` is 0
        (torch then keeps no state). torch creates ``state["momentum_buffer"]`` at the first
        step as a copy of the gradient; here it is zeros until then (``count == 0``).

    >>> import jax.numpy as jnp, funcopt
    >>> funcopt.sgd(momentum=0.9).init({"w": jnp.ones(2)}).momentum_buffer["w"]
    Array([0., 0.], dtype=float32)
    >>> funcopt.sgd().init({"w": jnp.ones(2)}).momentum_buffer is None
    True
    """

    count: jax.Array
    momentum_buffer: Any


def sgd(
    learning_rate=1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    mask=None,
) -> optax.GradientTransformation:
    r"""``torch.optim.SGD``: stochastic gradient descent with momentum and L2 decay.

    For each parameter :math:`p` with gradient :math:`g` (negated with ``maximize``),
    learning rate :math:`\eta` (``learning_rate`` at ``count``), momentum :math:`\mu`,
    dampening :math:`\tau` and decay :math:`\lambda` (where ``mask`` is True):

    .. math::
        g &\leftarrow g + \lambda p, \qquad
        b \leftarrow \begin{cases} g & \text{first step} \\
                     \mu b + (1 - \tau) g & \text{after} \end{cases} \\
        g &\leftarrow g + \mu b \ \text{(nesterov)} \quad\text{or}\quad g \leftarrow b,
        \qquad p \leftarrow p - \eta g

    (the momentum lines only when :math:`\mu \ne 0`). torch's rounding, op by op (each
    ``add_(..., alpha=a)`` is one fused multiply-add, ``a`` rounded to bf16 for bf16
    parameters), with the buffer in the parameter's dtype. The update is the float32
    product :math:`-\eta g`: ``optax.apply_updates`` fuses it with the parameter into torch's
    ``fma`` when update and apply run in one ``jit`` (bitwise equal to torch then, float32 and
    bf16 but for torch's bf16 scalar tail); applied apart, the product is rounded first.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr`` (torch's default 1e-3; the
        Trainer always passes its ``learning_rate``).
      momentum: the momentum factor, >= 0.
      dampening: the momentum's dampening (any float, as torch).
      weight_decay: L2 decay added to the gradient, >= 0.
      nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
      maximize: ascend instead of descend.
      mask: optional pytree of bools like the params (or a callable ``params -> mask``)
        selecting the parameters that decay; all by default (torch's single group).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.sgd(learning_rate=0.5, momentum=0.9)
      >>> w, state = jnp.array([1.0, 2.0]), None
      >>> state = opt.init(w)
      >>> for _ in range(2):
      ...     updates, state = opt.update(jnp.array([1.0, -1.0]), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> w  # b = g, then 0.9 b + g = 1.9 g
      Array([-0.45,  3.45], dtype=float32)
    """
    return _core.transformation(
        SGD.validated(learning_rate, momentum, dampening, weight_decay, nesterov, maximize,
                      mask))


@dataclasses.dataclass(frozen=True)
class SGD(_core.Rule):
    """torch's SGD: validated hyperparameters and leaf functions."""

    State: ClassVar[type] = SGDState
    learning_rate: Any
    momentum: Any
    dampening: Any
    weight_decay: Any
    nesterov: bool
    maximize: bool
    mask: Any

    @classmethod
    def validated(cls, learning_rate, momentum, dampening, weight_decay, nesterov, maximize,
                  mask) -> SGD:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("momentum", momentum, low=0.0)
        _checks.number("dampening", dampening, allowed="a real number (not NaN)")
        _checks.number("weight_decay", weight_decay, low=0.0)
        for name, flag in (("nesterov", nesterov), ("maximize", maximize)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}.")
        if nesterov:
            mu, tau = _checks.concrete(momentum), _checks.concrete(dampening)
            if (mu is not None and mu <= 0) or (tau is not None and tau != 0):
                raise ValueError(
                    f"nesterov=True needs momentum > 0 and dampening == 0 (torch's rule), got "
                    f"momentum={momentum!r}, dampening={dampening!r}.")
        return cls(learning_rate, momentum, dampening, weight_decay, nesterov, maximize, mask)

    def has_buffer(self) -> bool:
        """Whether the state keeps a momentum buffer (not for a static momentum of 0)."""
        return not (is_static(self.momentum) and self.momentum == 0)

    def scalars(self, count):
        """``(lr, first)``: the learning rate at ``count`` and whether this is step 1."""
        return learning_rate_at(self.learning_rate, count), count == 0

    def init_leaf(self, p) -> tuple:
        """``(momentum_buffer,)`` in the parameter's dtype, or ``(None,)``."""
        return (jnp.zeros_like(p) if self.has_buffer() else None,)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (momentum_buffer,))``."""
        lr, first = scalars
        (buf,) = fields
        dtype = (g if p is None else p).dtype
        k = Kernels(dtype)
        g = g.astype(f32)
        if self.maximize:
            g = -g
        if decays:  # grad = grad.add(param, alpha=weight_decay)
            g = k.add(g, p.astype(f32), scalar(self.weight_decay))
        if buf is not None:
            buf, g = self._momentum(k, first, buf.astype(f32), g)
            buf = buf.astype(dtype)
        neg_lr = scalar(-self.learning_rate) if is_static(self.learning_rate) else -lr
        # param.add_(grad, alpha=-lr) is fma(-lr, grad, param): apply_updates' p + u forms
        # the same fused multiply-add when it is jitted with the update.
        return k.round(neg_lr) * g, (buf,)

    def _momentum(self, k, first, buf, g):
        """``(new buffer, direction)``: torch's momentum lines."""
        mu = scalar(self.momentum)
        buf = jnp.where(first, g, k.add(k.mul(buf, mu), g, complement(self.dampening)))
        direction = k.add(g, buf, mu) if self.nesterov else buf
        if not is_static(self.momentum):  # traced: torch skips the lines for momentum 0
            return buf, jnp.where(mu != 0, direction, g)
        return buf, direction
