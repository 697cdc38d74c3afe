"""``torch.optim.RMSprop`` as an optax transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt._numerics import f32, is_static
from funcopt._torch_ops import Kernels, complement, scalar

__all__ = ["RMSpropState", "rmsprop"]


class RMSpropState(NamedTuple):
    """State of :func:`rmsprop`, field for field torch's per-parameter ``RMSprop`` state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of float32 scalars, torch's ``state["step"]``.
      square_avg: running average of squared gradients, in each parameter's dtype.
      momentum_buffer: the momentum (``momentum > 0``), else None, as in torch.
      grad_avg: running average of gradients (``centered=True``), else None.

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.rmsprop(centered=True).init({"w": jnp.ones(2)})
    >>> state.grad_avg["w"], state.momentum_buffer
    (Array([0., 0.], dtype=float32), None)
    """

    count: jax.Array
    step: Any
    square_avg: Any
    momentum_buffer: Any
    grad_avg: Any


def rmsprop(
    learning_rate=1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
    mask=None,
) -> optax.GradientTransformation:
    r"""``torch.optim.RMSprop``.

    For each parameter :math:`p` with gradient :math:`g` (negated with ``maximize``), with
    learning rate :math:`\eta` (``learning_rate`` at ``count``) and decay :math:`\lambda`
    (where ``mask`` is True):

    .. math::
        g &\leftarrow g + \lambda p, \qquad
        v \leftarrow \alpha v + (1 - \alpha) g^2, \qquad
        a = \sqrt{v - \bar g^{\,2}} + \epsilon \ \ \text{with}\ \
        \bar g \leftarrow \bar g + (1 - \alpha)(g - \bar g) \ \ \text{(centered)},
        \ \text{else}\ a = \sqrt v + \epsilon \\
        b &\leftarrow \mu b + g / a, \quad p \leftarrow p - \eta b \ \ (\mu > 0), \qquad
        \text{else}\ p \leftarrow p - \eta\, g / a

    torch's rounding, op by op, with all state in the parameter's dtype. Bitwise equal to
    torch for bf16 parameters (but for torch's scalar tail with ``weight_decay``); for float32
    ``square_avg`` and ``grad_avg`` are bitwise and the parameters (and ``momentum_buffer``)
    within an ulp per step, because torch's x86 builds take the square root from MKL, which
    is not correctly rounded. Updates are float32; with momentum the update is
    ``-lr * momentum_buffer``, which ``optax.apply_updates`` fuses with the parameter as torch
    does when both run in one ``jit``.
    Unlike :func:`funcopt.rmsprop_bnb`, which rounds differently.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      alpha: the smoothing constant, >= 0 (torch checks no upper bound).
      eps: added to the root, >= 0.
      weight_decay: L2 decay added to the gradient, >= 0.
      momentum: the momentum factor, >= 0.
      centered: normalise by the estimated variance (state ``grad_avg``).
      maximize: ascend instead of descend.
      mask: optional pytree of bools like the params (or a callable ``params -> mask``)
        selecting the parameters that decay; all by default (torch's single group).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.rmsprop(learning_rate=0.01, alpha=0.75, eps=0.0)
      >>> w = jnp.array([1.0, 2.0])
      >>> updates, state = opt.update(jnp.array([3.0, -4.0]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)  # w - 0.01 * g / sqrt(0.25 g^2)
      Array([0.98, 2.02], dtype=float32)
    """
    return _core.transformation(RMSprop.validated(
        learning_rate, alpha, eps, weight_decay, momentum, centered, maximize, mask))


@dataclasses.dataclass(frozen=True)
class RMSprop(_core.Rule):
    """torch's RMSprop: validated hyperparameters and leaf functions."""

    State: ClassVar[type] = RMSpropState
    learning_rate: Any
    alpha: Any
    eps: Any
    weight_decay: Any
    momentum: Any
    centered: bool
    maximize: bool
    mask: Any

    @classmethod
    def validated(cls, learning_rate, alpha, eps, weight_decay, momentum, centered, maximize,
                  mask) -> RMSprop:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("alpha", alpha, low=0.0)
        _checks.number("eps", eps, low=0.0)
        _checks.number("weight_decay", weight_decay, low=0.0)
        _checks.number("momentum", momentum, low=0.0)
        for name, flag in (("centered", centered), ("maximize", maximize)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}.")
        return cls(learning_rate, alpha, eps, weight_decay, momentum, centered, maximize, mask)

    def has_buffer(self) -> bool:
        """Whether the state keeps a momentum buffer (torch: ``momentum > 0``; always for a
        traced momentum)."""
        return not (is_static(self.momentum) and self.momentum <= 0)

    def init_leaf(self, p) -> tuple:
        """``(step, square_avg, momentum_buffer, grad_avg)`` in the parameter's dtype."""
        zeros = jnp.zeros_like(p)
        return (jnp.zeros([], f32), zeros, zeros if self.has_buffer() else None,
                zeros if self.centered else None)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, square_avg, momentum_buffer, grad_avg))``."""
        t, v, buf, gavg = fields
        dtype = v.dtype
        k = Kernels(dtype)
        g = g.astype(f32)
        if self.maximize:
            g = -g
        if decays:  # grad = grad.add(param, alpha=weight_decay)
            g = k.add(g, p.astype(f32), scalar(self.weight_decay))
        v = k.addcmul(k.mul(v.astype(f32), scalar(self.alpha)), g, g, complement(self.alpha))
        if self.centered:
            gavg = k.lerp(gavg.astype(f32), g, complement(self.alpha))
            avg = k.sqrt(k.addcmul(v, gavg, gavg, scalar(-1.0)))
        else:
            avg = k.sqrt(v)
        avg = k.add_scalar(avg, scalar(self.eps))
        neg_lr = scalar(-self.learning_rate) if is_static(self.learning_rate) else -scalars
        # Without momentum: param.addcdiv_(grad, avg, value=-lr), a quotient added to the
        # parameter in float32 and rounded once, as apply_updates does with it.
        update = (neg_lr * g) / avg
        if buf is not None:  # buf.mul_(momentum).addcdiv_(grad, avg); p.add_(buf, alpha=-lr)
            buf = k.addcdiv(k.mul(buf.astype(f32), scalar(self.momentum)), g, avg, 1.0)
            # param.add_(buf, alpha=-lr) is fma(-lr, buf, param): apply_updates' p + u
            # forms the same fused multiply-add when it is jitted with the update.
            with_momentum = k.round(neg_lr) * buf
            update = (with_momentum if is_static(self.momentum)
                      else jnp.where(self.momentum > 0, with_momentum, update))
            buf = buf.astype(dtype)
        fields = (t + 1, v.astype(dtype), buf, None if gavg is None else gavg.astype(dtype))
        return update, fields
