"""bitsandbytes' ``Lion`` (``optim_bits=32``) as an optax transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt._bnb32 import as_update, complement, lr_scalars
from funcopt._in_place import after
from funcopt._numerics import f32, unfused

__all__ = ["LionState", "lion"]


class LionState(NamedTuple):
    """State of :func:`lion`, field for field bitsandbytes' per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, bitsandbytes' ``state["step"]``.
      state1: the momentum, float32 whatever the parameter's dtype (bitsandbytes'
        ``state["state1"]``).

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.lion().init({"w": jnp.zeros((2, 3), jnp.bfloat16)})
    >>> state.state1["w"].dtype, int(state.step["w"])
    (dtype('float32'), 0)
    """

    count: jax.Array
    step: Any
    state1: Any


def lion(
    learning_rate=1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 0.0,
    mask=None,
) -> optax.GradientTransformation:
    r"""bitsandbytes' ``Lion`` with 32-bit state (``bnb.optim.Lion(optim_bits=32)``).

    For each parameter :math:`p` with gradient :math:`g` and momentum :math:`m`, with
    learning rate :math:`\eta` (``learning_rate`` at ``count``) and decay :math:`\lambda`:

    .. math::
        p &\leftarrow p\,(1 - \eta\lambda), \qquad
        p \leftarrow p - \eta\,\mathrm{sign}(\beta_1 m + (1 - \beta_1) g) \\
        m &\leftarrow \beta_2 m + (1 - \beta_2) g

    The decay multiplies the parameter *before* the signed step, by ``1 - lr * wd`` rounded
    once, as bitsandbytes does; ``optax.lion`` adds ``wd * p`` to the direction instead, so its
    numbers differ. The arithmetic is bitsandbytes' CPU path in float32 for every parameter
    dtype (bf16 parameters keep a float32 momentum), op for op, so results are bitwise equal
    to it (measured: float32 and bf16, 0-D to 4-D; with weight decay, a step that carries a
    parameter across zero can land an ulp off, see :mod:`funcopt._bnb32`). The Trainer's
    ``lion_32bit`` passes ``betas=(adam_beta1, adam_beta2)`` (0.9, 0.999), not these
    defaults, which are the class's.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1: interpolation between momentum and gradient for the step, in [0, 1).
      b2: the momentum's decay, in [0, 1). Give betas as Python floats for exact parity:
        under ``optax.inject_hyperparams`` they arrive rounded to float32 and ``1 - b`` is
        then formed in float32.
      weight_decay: decoupled decay rate, >= 0, applied where ``mask`` is True.
      mask: optional pytree of bools like the params (or a callable ``params -> mask``)
        selecting the parameters that decay.

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.lion(learning_rate=0.125, weight_decay=0.5)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.3, 0.0]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)  # w * (1 - 0.125 * 0.5) - 0.125 * sign(0.1 * g)
      Array([ 0.8125, -1.875 ], dtype=float32)
    """
    return _core.transformation(Lion.validated(learning_rate, b1, b2, weight_decay, mask))


@dataclasses.dataclass(frozen=True)
class Lion(_core.Rule):
    """lion's validated hyperparameters and leaf functions (also the float32 core of an 8-bit
    Lion)."""

    State: ClassVar[type] = LionState
    learning_rate: Any
    b1: Any
    b2: Any
    weight_decay: Any
    mask: Any

    @classmethod
    def validated(cls, learning_rate, b1, b2, weight_decay, mask) -> Lion:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("b1", b1, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("b2", b2, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("weight_decay", weight_decay, low=0.0)
        return cls(learning_rate, b1, b2, weight_decay, mask)

    def scalars(self, count) -> tuple:
        """``(-lr, 1 - lr * weight_decay)`` in float32."""
        return lr_scalars(self.learning_rate, self.weight_decay, count)

    def init_leaf(self, p) -> tuple:
        """``(step, state1)``: the momentum in float32, as bitsandbytes."""
        return jnp.zeros([], jnp.int32), jnp.zeros(jnp.shape(p), f32)

    def direction(self, g, m) -> tuple:
        """``(sign(b1 m + (1 - b1) g), b2 m + (1 - b2) g)`` on float32 ``g`` and ``m``.

        torch's ``m.mul(b).add(g, alpha=1 - b)`` rounds ``b * m`` and fuses the rest into one
        multiply-add: XLA contracts the left product below, the right one stays rounded."""
        b1, one_minus_b1 = complement(self.b1)
        b2, one_minus_b2 = complement(self.b2)
        d = jnp.sign(one_minus_b1 * g + unfused(m * b1))
        return d, one_minus_b2 * g + unfused(m * b2)

    def step(self, scalars, d, p, decays):
        """The new float32 parameter from the direction ``d``: ``p.mul_(1 - lr * wd)`` (if
        decaying), ``p.add_(d, alpha=-lr)``."""
        neg_lr, keep = scalars
        if decays:
            p = unfused(p * keep)
        return p + neg_lr * d

    def float32_update(self, scalars, t, g, p, moments, decays) -> tuple:
        """bitsandbytes' float32 step on float32 arrays: ``(new_p, (new_state1,))``."""
        d, m = self.direction(g, moments[0])
        return self.step(scalars, d, p, decays), (m,)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, state1))``.

        The parameter's step needs the old momentum and the new one overwrites it; so that
        XLA does so in place rather than copying the momentum first (see
        :mod:`funcopt._in_place`), the direction is written once as bfloat16 (exact: it is
        +-1, +-0 or NaN), the step reads it, and the momentum's loop waits for it."""
        t, m = fields
        t = optax.safe_increment(t)
        d, m = self.direction(g.astype(f32), m)
        d = d.astype(jnp.bfloat16)
        m = after(m, d)
        d = d.astype(f32)
        if p is None or (not decays and p.dtype == f32):
            # -lr * sign is exact, so p + it rounds once, like the reference's p.add_ (float32
            # for a bf16 gradient: apply_updates then adds in float32 and rounds to bf16 once
            # more, as the reference's write-back does).
            u = scalars[0] * d
            return (u if jnp.finfo(g.dtype).bits < 32 else u.astype(g.dtype)), (t, m)
        return as_update(self.step(scalars, d, p.astype(f32), decays), p), (t, m)
