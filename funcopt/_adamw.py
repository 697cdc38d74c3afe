"""Hugging Face ``transformers.AdamW`` (the implementation removed in 4.50) as an optax
transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt._numerics import (
    f32,
    is_static,
    learning_rate_at,
    one_minus_power,
    rounder,
    unfused,
)

__all__ = ["AdamWState", "adamw"]


class AdamWState(NamedTuple):
    """State of :func:`adamw`, field for field the per-parameter state of ``transformers.AdamW``.

    Attributes:
      count: int32 scalar, the number of updates made; it drives a learning-rate schedule the
        way ``LambdaLR.last_epoch`` does.
      step: pytree like the params of int32 scalars, torch's per-parameter ``state["step"]``
        (bias correction uses it).
      exp_avg: first moment, in each parameter's dtype (as in the reference, bf16 for bf16).
      exp_avg_sq: second moment, same shapes and dtypes.

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.adamw().init({"w": jnp.zeros((2, 3))})
    >>> state.exp_avg["w"].shape, int(state.step["w"]), int(state.count)
    ((2, 3), 0, 0)
    """

    count: jax.Array
    step: Any
    exp_avg: Any
    exp_avg_sq: Any


def adamw(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    correct_bias: bool = True,
    mask=None,
) -> optax.GradientTransformation:
    r"""``transformers.AdamW``: Adam with "epsilon-hat" and weight decay after the step.

    For each parameter :math:`p` with gradient :math:`g`, at its step :math:`t = 1, 2, \dots`
    and learning rate :math:`\eta` (``learning_rate`` evaluated at ``count``):

    .. math::
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        p' &= p - \eta \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t} \frac{m}{\sqrt{v} + \epsilon},
        \qquad p_{\text{new}} = p' - \eta\,\lambda\,p'

    Unlike ``torch.optim.AdamW``/``optax.adamw``: :math:`\epsilon` is added to the
    *uncorrected* :math:`\sqrt v`, and the decay :math:`\lambda` (``weight_decay``, applied
    only when > 0 and where ``mask`` is True) acts on the already-updated :math:`p'` with the
    plain learning rate. ``correct_bias=False`` drops the bias correction (BERT-TF style).
    Arithmetic follows the reference's order in float32 (in the parameter's dtype for bf16
    parameters, whose moments are bf16 as in torch), so results match to round-off.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1, b2: the betas, in [0, 1). Give them as Python floats for exact parity: under
        ``optax.inject_hyperparams`` they arrive already rounded to float32
        (0.9999 -> 0.99989998), which shifts the bias correction.
      eps: added to :math:`\sqrt v`, >= 0.
      weight_decay: decoupled decay rate, >= 0.
      correct_bias: whether to apply Adam's bias correction.
      mask: optional pytree of bools like the params (or a callable ``params -> mask``)
        selecting the parameters that decay, e.g. ``lambda p: funcopt.name_mask(p,
        exclude=["bias", "LayerNorm"])``. Under ``optax.inject_hyperparams`` list a callable
        mask in ``static_args`` (optax would otherwise take it for a schedule).

    Example (transformers' own AdamW test problem; the reference ends at
    [0.40117839, 0.20173755, -0.50173759]):
      >>> import jax, jax.numpy as jnp, optax, funcopt
      >>> target = jnp.array([0.4, 0.2, -0.5])
      >>> loss = lambda w: jnp.mean((w - target) ** 2)
      >>> w = jnp.array([0.1, -0.2, -0.1])
      >>> opt = funcopt.adamw(learning_rate=0.2)
      >>> state = opt.init(w)
      >>> for _ in range(100):
      ...     updates, state = opt.update(jax.grad(loss)(w), state, w)
      ...     w = optax.apply_updates(w, updates)
      >>> print(w.round(6))
      [ 0.401178  0.201738 -0.501738]
    """
    return _core.transformation(
        AdamW.validated(learning_rate, b1, b2, eps, weight_decay, correct_bias, mask))


@dataclasses.dataclass(frozen=True)
class AdamW(_core.Rule):
    """adamw's validated hyperparameters and leaf functions (also run by ``fused_adamw``)."""

    State: ClassVar[type] = AdamWState
    learning_rate: Any
    b1: Any
    b2: Any
    eps: Any
    weight_decay: Any
    correct_bias: bool
    mask: Any

    @classmethod
    def validated(cls, learning_rate, b1, b2, eps, weight_decay, correct_bias, mask) -> AdamW:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("b1", b1, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("b2", b2, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("eps", eps, low=0.0)
        _checks.number(
            "weight_decay", weight_decay, low=0.0,
            allowed=">= 0.0 (transformers.AdamW silently ignores a negative value)",
        )
        if not isinstance(correct_bias, bool):
            raise TypeError(f"correct_bias must be a bool, got {correct_bias!r}.")
        return cls(learning_rate, b1, b2, eps, weight_decay, correct_bias, mask)

    def scalars(self, count) -> tuple:
        """``(lr, decay_factor)``: the learning rate at ``count`` and ``-lr * weight_decay``
        (the reference's float64 product, applied when weight_decay > 0), float32."""
        lr = learning_rate_at(self.learning_rate, count)
        wd = jnp.asarray(self.weight_decay, f32)
        return lr, jnp.where(wd > 0, -lr * wd, f32(0))

    def init_leaf(self, p) -> tuple:
        """``(step, exp_avg, exp_avg_sq)``: moments in the parameter's dtype, as torch."""
        return jnp.zeros([], jnp.int32), jnp.zeros_like(p), jnp.zeros_like(p)

    def coefficients(self) -> tuple:
        """``(b1, 1 - b1, b2, 1 - b2)`` as the float32 multipliers the moment updates use."""
        b1, b2 = self.b1, self.b2
        one_minus_b1 = f32(1.0 - b1) if is_static(b1) else 1 - jnp.asarray(b1, f32)
        one_minus_b2 = f32(1.0 - b2) if is_static(b2) else 1 - jnp.asarray(b2, f32)
        return f32(b1), one_minus_b1, f32(b2), one_minus_b2

    def step_size(self, lr, t):
        """The learning rate with the bias correction of step ``t`` (already incremented)."""
        if not self.correct_bias:
            return lr
        return lr * jnp.sqrt(one_minus_power(self.b2, t)) / one_minus_power(self.b1, t)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, exp_avg, exp_avg_sq))``."""
        # torch's CPU kernels, op by op: x.mul_(b) rounds b*x; x.add_(y, alpha=a) is one fused
        # multiply-add fma(a, y, x) with a rounded to x's dtype; x.addcmul_(y, z, value=c) is
        # fma(c*y, z, x). XLA contracts ``lhs_product + rhs`` into fma(lhs), so each sum below
        # puts the reference's fused product on the left. bf16 moments round after every op.
        lr, decay_factor = scalars
        t, m, v = fields
        dtype = m.dtype
        rnd = rounder(dtype)
        t = optax.safe_increment(t)
        g = g.astype(f32)
        b1, one_minus_b1, b2, one_minus_b2 = self.coefficients()
        m32 = rnd(rnd(one_minus_b1) * g + rnd(m.astype(f32) * b1))
        v32 = rnd((one_minus_b2 * g) * g + rnd(v.astype(f32) * b2))
        denom = rnd(rnd(jnp.sqrt(v32)) + f32(self.eps))
        if is_static(self.eps) and self.eps == 0:
            # XLA would fold the + 0 and rewrite x / sqrt(v) as x * rsqrt(v), an ulp off
            # torch's true division; the select keeps the division.
            denom = unfused(denom)
        # p.addcdiv_(exp_avg, denom, value=-step_size): the update is (-step_size * m) / denom.
        u = (-self.step_size(lr, t) * m32) / denom
        if p is not None and (decays or dtype != f32):
            # Form the new parameter exactly as the reference's in-place ops round it, then
            # hand back new - p, which apply_updates adds back without a second rounding.
            p32 = p.astype(f32)
            new = rnd(p32 + u)
            if decays:
                new = rnd(rnd(decay_factor) * new + new)
            u = new - p32
        return u.astype(dtype), (t, m32.astype(dtype), v32.astype(dtype))
