"""``torch.optim.Adagrad`` as an optax transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt._numerics import f32, is_static, learning_rate_at
from funcopt._torch_ops import Kernels, scalar
from funcopt._torch_scalars import adagrad_clr, shared_step

__all__ = ["AdagradState", "adagrad"]


class AdagradState(NamedTuple):
    """State of :func:`adagrad`, field for field torch's per-parameter ``Adagrad`` state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of float32 scalars, torch's ``state["step"]``.
      sum: the running sum of squared gradients, in each parameter's dtype, starting at
        ``initial_accumulator_value`` (torch's ``state["sum"]``).

    >>> import jax.numpy as jnp, funcopt
    >>> funcopt.adagrad(initial_accumulator_value=0.1).init({"w": jnp.ones(2)}).sum["w"]
    Array([0.1, 0.1], dtype=float32)
    """

    count: jax.Array
    step: Any
    sum: Any


def adagrad(
    learning_rate=1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    mask=None,
) -> optax.GradientTransformation:
    r"""``torch.optim.Adagrad``.

    For each parameter :math:`p` with gradient :math:`g` (negated with ``maximize``), at its
    step :math:`t = 1, 2, \dots`, with learning rate :math:`\eta` (``learning_rate`` at
    ``count``) and decay :math:`\lambda` (where ``mask`` is True):

    .. math::
        g &\leftarrow g + \lambda p, \qquad
        s \leftarrow s + g^2, \qquad
        p \leftarrow p - \frac{\eta}{1 + (t - 1)\,\delta} \, \frac{g}{\sqrt{s} + \epsilon}

    with :math:`\delta` = ``lr_decay``. torch's rounding, op by op, the decayed learning rate
    equal to torch's float64 value rounded to float32 (:mod:`funcopt._torch_scalars`), the
    sum in the parameter's dtype. Bitwise equal to torch for bf16 parameters (but for its
    scalar tail with ``weight_decay``); for float32 the sum is bitwise and the parameters
    within an ulp per step, because torch's x86 builds take ``sum.sqrt()`` from MKL, whose
    square root is not correctly rounded. Updates are float32.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      lr_decay: the learning-rate decay per step, >= 0.
      weight_decay: L2 decay added to the gradient, >= 0.
      initial_accumulator_value: the sum's starting value, >= 0.
      eps: added to :math:`\sqrt s`, >= 0.
      maximize: ascend instead of descend.
      mask: optional pytree of bools like the params (or a callable ``params -> mask``)
        selecting the parameters that decay; all by default (torch's single group).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.adagrad(learning_rate=0.1)
      >>> w = jnp.array([1.0, 2.0])
      >>> updates, state = opt.update(jnp.array([3.0, -4.0]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)  # w - 0.1 * g / |g|
      Array([0.9, 2.1], dtype=float32)
    """
    return _core.transformation(Adagrad.validated(
        learning_rate, lr_decay, weight_decay, initial_accumulator_value, eps, maximize, mask))


@dataclasses.dataclass(frozen=True)
class Adagrad(_core.Rule):
    """torch's Adagrad: validated hyperparameters and leaf functions."""

    State: ClassVar[type] = AdagradState
    learning_rate: Any
    lr_decay: Any
    weight_decay: Any
    initial_accumulator_value: Any
    eps: Any
    maximize: bool
    mask: Any

    @classmethod
    def validated(cls, learning_rate, lr_decay, weight_decay, initial_accumulator_value, eps,
                  maximize, mask) -> Adagrad:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("lr_decay", lr_decay, low=0.0)
        _checks.number("weight_decay", weight_decay, low=0.0)
        _checks.number("initial_accumulator_value", initial_accumulator_value, low=0.0)
        _checks.number("eps", eps, low=0.0)
        if not isinstance(maximize, bool):
            raise TypeError(f"maximize must be a bool, got {maximize!r}.")
        return cls(learning_rate, lr_decay, weight_decay, initial_accumulator_value, eps,
                   maximize, mask)

    def scalars(self, count) -> tuple:
        """``(lr, t, -clr)``: the learning rate after ``count`` updates, the step ``t`` of
        every leaf then, and torch's decayed ``-lr / (1 + (t - 1) * lr_decay)`` at it."""
        lr = learning_rate_at(self.learning_rate, count)
        exact_lr = self.learning_rate if is_static(self.learning_rate) else lr
        t = shared_step(count)
        return lr, t, -adagrad_clr(exact_lr, self.lr_decay, t)

    def init_leaf(self, p) -> tuple:
        """``(step, sum)``: the sum filled with ``initial_accumulator_value`` in the
        parameter's dtype."""
        return jnp.zeros([], f32), jnp.full_like(p, self.initial_accumulator_value)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, sum))``."""
        t, s = fields
        dtype = s.dtype
        k = Kernels(dtype)
        t = t + 1
        g = g.astype(f32)
        if self.maximize:
            g = -g
        if decays:  # grad = grad.add(param, alpha=weight_decay)
            g = k.add(g, p.astype(f32), scalar(self.weight_decay))
        lr, shared_t, neg_clr = scalars
        if not (is_static(self.lr_decay) and self.lr_decay == 0):  # clr depends on the step
            # A leaf whose step is not count + 1 (loaded from a torch optimizer in which it
            # skipped steps) takes the float32 formula.
            neg_clr = jnp.where(t == shared_t, neg_clr, -lr / ((t - 1) * self.lr_decay + 1))
        s = k.addcmul(s.astype(f32), g, g, scalar(1.0))
        std = k.add_scalar(k.sqrt(s), scalar(self.eps))
        # param.addcdiv_(grad, std, value=-clr) adds this quotient to the parameter in
        # float32 and rounds once, as apply_updates does with a float32 update.
        return (neg_clr * g) / std, (t, s.astype(dtype))
