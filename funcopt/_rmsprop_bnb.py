"""bitsandbytes' ``RMSprop`` (``optim_bits=32``) as an optax transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt._bnb32 import as_update, complement, lr_scalars
from funcopt._numerics import f32, is_static, unfused

__all__ = ["RMSpropBnbState", "rmsprop_bnb"]


class RMSpropBnbState(NamedTuple):
    """State of :func:`rmsprop_bnb`, field for field bitsandbytes' per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, bitsandbytes' ``state["step"]``.
      state1: the running average of squared gradients, float32 whatever the parameter's
        dtype (bitsandbytes' ``state["state1"]``; torch's RMSprop calls it ``square_avg``).

    >>> import jax.numpy as jnp, funcopt
    >>> funcopt.rmsprop_bnb().init({"w": jnp.zeros(3)}).state1["w"]
    Array([0., 0., 0.], dtype=float32)
    """

    count: jax.Array
    step: Any
    state1: Any


def rmsprop_bnb(
    learning_rate=1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    mask=None,
) -> optax.GradientTransformation:
    r"""bitsandbytes' ``RMSprop`` with 32-bit state (``bnb.optim.RMSprop(optim_bits=32)``).

    For each parameter :math:`p` with gradient :math:`g`, learning rate :math:`\eta` and
    decay :math:`\lambda` (L2, added to the gradient where ``mask`` is True):

    .. math::
        g \leftarrow g + \lambda p, \qquad
        v \leftarrow \alpha v + (1 - \alpha) g^2, \qquad
        p \leftarrow p - \eta \, \frac{g}{\sqrt v + \epsilon}

    The same formula as ``torch.optim.RMSprop`` (:func:`funcopt.rmsprop`) but not the same
    numbers: bitsandbytes divides first and fuses the step into the parameter
    (``p.add_(g / (v.sqrt() + eps), alpha=-lr)``) where torch rounds ``-lr * g`` first
    (``addcdiv_``); after one step about 15% of the elements differ by an ulp, after 25
    steps 44%. The arithmetic is bitsandbytes' CPU path in float32 for every parameter dtype,
    op for op: the state is bitwise equal to it, and the parameters too, but where torch's
    CPU square root is an ulp low (see :mod:`funcopt._bnb32`). bf16 parameters keep a float32
    state.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      alpha: the squared-gradient average's decay, in (0, 1) (bitsandbytes rejects 0).
      eps: added to :math:`\sqrt v`, >= 0.
      weight_decay: L2 coefficient, >= 0, added to the gradient where ``mask`` is True.
      momentum: must be 0: bitsandbytes' 32-bit RMSprop accepts a momentum and ignores it,
        funcopt refuses it rather than ignore it silently (``funcopt.rmsprop`` has one).
      centered: must be False, as bitsandbytes raises on it.
      mask: optional pytree of bools like the params (or a callable ``params -> mask``).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.rmsprop_bnb(learning_rate=0.1, alpha=0.75, eps=0.0)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.5, -4.0]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)  # w - 0.1 * g / sqrt(0.25 * g**2)
      Array([ 0.8, -1.8], dtype=float32)
    """
    return _core.transformation(RMSpropBnb.validated(
        learning_rate, alpha, eps, weight_decay, momentum, centered, mask))


@dataclasses.dataclass(frozen=True)
class RMSpropBnb(_core.Rule):
    """rmsprop_bnb's validated hyperparameters and leaf functions (also the float32 core of
    an 8-bit RMSprop)."""

    State: ClassVar[type] = RMSpropBnbState
    needs_params: ClassVar[bool] = True  # the step is fused into the parameter (p.add_)
    learning_rate: Any
    alpha: Any
    eps: Any
    weight_decay: Any
    mask: Any

    @classmethod
    def validated(cls, learning_rate, alpha, eps, weight_decay, momentum, centered,
                  mask) -> RMSpropBnb:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True,
                       allowed="in (0.0, 1.0) (bitsandbytes does not support alpha == 0)")
        _checks.number("eps", eps, low=0.0)
        _checks.number("weight_decay", weight_decay, low=0.0)
        _checks.number("momentum", momentum, low=0.0, high=0.0,
                       allowed="0.0: bitsandbytes' 32-bit RMSprop ignores momentum (use "
                               "funcopt.rmsprop, torch.optim.RMSprop's numbers, for one)")
        if centered is not False:
            raise ValueError(f"centered={centered!r} is invalid: bitsandbytes' RMSprop does not "
                             "support centered=True (use funcopt.rmsprop, torch.optim.RMSprop's "
                             "numbers, for it).")
        return cls(learning_rate, alpha, eps, weight_decay, mask)

    def scalars(self, count) -> tuple:
        """``(-lr, weight_decay)`` in float32."""
        return lr_scalars(self.learning_rate, 0.0, count)[0], jnp.asarray(self.weight_decay, f32)

    def init_leaf(self, p) -> tuple:
        """``(step, state1)``: the squared-gradient average in float32, as bitsandbytes."""
        return jnp.zeros([], jnp.int32), jnp.zeros(jnp.shape(p), f32)

    def float32_update(self, scalars, t, g, p, moments, decays) -> tuple:
        """bitsandbytes' float32 step on float32 arrays: ``(new_p, (new_state1,))``.

        Op by op: ``g = g.add(p, alpha=wd)`` (if decaying), ``v.mul_(alpha).addcmul_(g, g,
        value=1 - alpha)``, ``p.add_(g / (v.sqrt() + eps), alpha=-lr)``; XLA contracts each
        ``product + rounded`` below into the reference's fused multiply-add."""
        neg_lr, wd = scalars
        a, one_minus_a = complement(self.alpha)
        d = p * wd + g if decays else g
        v = (one_minus_a * d) * d + unfused(moments[0] * a)
        denom = jnp.sqrt(v) + jnp.asarray(self.eps, f32)
        if is_static(self.eps) and self.eps == 0:
            denom = unfused(denom)  # keeps XLA from rewriting g / sqrt(v) as g * rsqrt(v)
        if not decays:
            return neg_lr * (g / denom) + p, (v,)
        # The step forms -d from negated operands (the same numbers: each op is sign-symmetric)
        # and adds lr * (-d / denom): a separate expression, so that XLA computes it in the
        # parameter's loop rather than writing d to memory for both loops.
        return -neg_lr * ((-p * wd - g) / denom) + p, (v,)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, state1))``."""
        t, v = fields
        t = optax.safe_increment(t)
        new, (v,) = self.float32_update(scalars, t, g.astype(f32), p.astype(f32), (v,), decays)
        return as_update(new, p), (t, v)
