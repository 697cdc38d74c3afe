"""``optimi.StableAdamW`` (package ``torch-optimi`` 0.3.3) as an optax transformation."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core, _step_table
from funcopt import _double_float as df
from funcopt._numerics import (
    divide,
    f32,
    is_static,
    learning_rate_at,
    one_minus_power,
    rounder,
    unfused,
)

__all__ = ["StableAdamWState", "stable_adamw", "second_moment"]

_LOW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class StableAdamWState(NamedTuple):
    """State of :func:`stable_adamw`, field for field optimi's.

    Attributes:
      count: int32 scalar, the number of updates made: optimi's param group ``step`` (one
        counter per group; its bias corrections use it). The group's ``setup`` flag is
        ``count > 0``.
      exp_avg, exp_avg_sq: the moments, in each parameter's dtype (optimi's
        ``state["exp_avg"]``, ``state["exp_avg_sq"]``).
      eps_sq: per parameter, a 0-d array in its dtype: ``eps ** 2`` as optimi stores it
        (``state["eps_sq"]``), the floor of the RMS denominator.
      kahan_comp: the Kahan compensation, in the parameter's dtype, for bf16/fp16 parameters
        when Kahan summation is on; None (absent) elsewhere, as optimi's ``None``.

    >>> import jax.numpy as jnp, funcopt
    >>> s = funcopt.stable_adamw(1e-3).init({"w": jnp.zeros(3, jnp.bfloat16), "b": jnp.zeros(2)})
    >>> s.kahan_comp["w"].dtype, s.kahan_comp["b"], s.eps_sq["b"].dtype
    (dtype(bfloat16), None, dtype('float32'))
    """

    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any
    eps_sq: Any
    kahan_comp: Any


def stable_adamw(
    learning_rate,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 1e-2,
    eps: float = 1e-6,
    decouple_lr: bool = False,
    max_lr=None,
    kahan_sum: bool | None = None,
    mask=None,
) -> optax.GradientTransformation:
    r"""``optimi.StableAdamW``: AdamW with debiased betas and an RMS-clipped learning rate.

    At the group step :math:`t` (``count + 1``), with :math:`\hat\beta =
    \frac{\beta^t - \beta}{\beta^t - 1}` (Adam's bias correction folded into the betas):

    .. math::
        m &\leftarrow \mathrm{lerp}(m, g, 1 - \hat\beta_1), \qquad
        v \leftarrow \hat\beta_2 v + (1 - \hat\beta_2) g^2 \\
        \eta' &= \eta / \max\!\big(1, \sqrt{\mathrm{mean}(g^2 / \max(v, \epsilon^2))}\big)
            \quad (\text{per tensor}) \\
        p &\leftarrow p\,(1 - \eta'\lambda) \;\;(\text{or } 1 - \tfrac{\eta'}{\eta_{\max}}
            \lambda \text{ with } \texttt{decouple\_lr}), \qquad
        p \leftarrow p - \eta' \frac{m}{\sqrt v + \epsilon}

    **Kahan summation** (``kahan_sum``, default None: on) acts only on bf16/fp16 parameters,
    as in optimi: the step is accumulated in a compensation buffer ``kahan_comp`` (parameter
    dtype), added to the parameter, and the part the parameter's rounding lost is kept for the
    next step. float32 parameters never use it.

    **What the Trainer passes** (``optim="stable_adamw"``): ``betas=(adam_beta1,
    adam_beta2)``, ``eps=adam_epsilon``, ``weight_decay`` by its two param groups (``mask``
    here), and from ``optim_args`` ``max_lr`` (float), ``kahan_sum`` and ``decouple_lr``;
    the Trainer parses the last two with ``bool(str)``, so any value, "False" included, turns
    them on (``funcopt.from_training_args`` does the same).

    Arithmetic is optimi's for-loop path (what runs on CPU) op by op, in the parameter's dtype;
    the scalars it forms in Python float64 (debiased betas, ``1 - lr * wd``) are tabulated
    exactly. Not bitwise: the RMS ``mean`` (torch's summation order) when it exceeds 1, and
    torch's CPU ``sqrt`` (MKL's, an ulp low on ~0.6% of float32 elements).

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr`` (required, as in optimi).
      b1, b2: the betas, in [0, 1) (static Python floats for exact parity).
      weight_decay: >= 0, applied where ``mask`` is True (optimi's default 1e-2).
      eps: >= 0; added to :math:`\sqrt v`, and :math:`\epsilon^2` floors the RMS denominator.
      decouple_lr: fully decoupled decay, :math:`1 - (\eta'/\eta_{\max})\lambda`.
      max_lr: :math:`\eta_{\max}` for ``decouple_lr``: > 0; defaults to ``learning_rate``
        (required when that is a schedule).
      kahan_sum: None or True: Kahan summation for bf16/fp16 parameters; False: never.
      mask: optional pytree of bools like the params (or callable): the leaves that decay.

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.stable_adamw(learning_rate=0.1, weight_decay=0.0)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.3, -0.4]), opt.init(w), w)
      >>> print(optax.apply_updates(w, updates).round(5))  # first step: -lr * sign(g)
      [ 0.9 -1.9]
    """
    return _core.transformation(StableAdamW.validated(
        learning_rate, b1, b2, weight_decay, eps, decouple_lr, max_lr, kahan_sum, mask))


@functools.lru_cache(maxsize=64)
def _debiased(b: float) -> tuple:
    """Tables of optimi's ``debias_beta(b, t) = (b**t - b) / (b**t - 1)`` and ``1 -`` it."""
    hat = lambda t: (b ** t - b) / (b ** t - 1)  # noqa: E731
    return (_step_table.until_constant(hat, b),
            _step_table.until_constant(lambda t: 1 - hat(t), 1 - b))


def debiased_beta(b, t) -> tuple:
    """``(b_hat, 1 - b_hat)`` at the int32 step ``t >= 1``, float32 (exact for a static b)."""
    hat = lambda t: b * one_minus_power(b, t - 1) / one_minus_power(b, t)  # noqa: E731
    comp = lambda t: (1 - jnp.asarray(b, f32)) / one_minus_power(b, t)  # noqa: E731
    if not is_static(b):
        return hat(t), comp(t)
    hat_table, comp_table = _debiased(float(b))
    return _step_table.read(hat_table, t, hat), _step_table.read(comp_table, t, comp)


def lerp(start, end, weight):
    """``torch.lerp`` on CPU: ``fma(w, end - start, start)`` for ``|w| < 0.5``, else
    ``fma(w - 1, end - start, end)`` (float32 arithmetic; XLA contracts each into an fma)."""
    small = jnp.abs(weight) < 0.5
    coeff = jnp.where(small, weight, weight - 1)
    return coeff * (end - start) + jnp.where(small, start, end)


def second_moment(g, v, b2_hat, b2_comp, rnd):
    """optimi's ``exp_avg_sq.mul_(b2_hat).addcmul_(g, g, value=b2_comp)`` for a float32 ``g``:
    ``fma(b2_comp * g, g, round(v * b2_hat))`` (XLA contracts the sum), rounded by ``rnd``."""
    return rnd((b2_comp * g) * g + rnd(unfused(v.astype(f32) * b2_hat)))


@dataclasses.dataclass(frozen=True)
class StableAdamW(_core.Rule):
    """stable_adamw's validated hyperparameters and leaf functions."""

    State: ClassVar[type] = StableAdamWState
    needs_params: ClassVar[bool] = True  # Kahan summation and the decay read the parameter
    learning_rate: Any
    b1: Any
    b2: Any
    weight_decay: Any
    eps: Any
    decouple_lr: bool
    max_lr: Any
    kahan_sum: bool | None
    mask: Any

    @classmethod
    def validated(cls, learning_rate, b1, b2, weight_decay, eps, decouple_lr, max_lr,
                  kahan_sum, mask) -> StableAdamW:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("b1", b1, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("b2", b2, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("weight_decay", weight_decay, low=0.0)
        _checks.number("eps", eps, low=0.0)
        for name, flag in (("decouple_lr", decouple_lr), ("kahan_sum", kahan_sum)):
            if not (isinstance(flag, bool) or (flag is None and name == "kahan_sum")):
                raise TypeError(f"{name} must be a bool{' or None' * (name == 'kahan_sum')}, "
                                f"got {flag!r}.")
        if decouple_lr and max_lr is None:
            if callable(learning_rate):
                raise ValueError("decouple_lr=True with a learning-rate schedule needs max_lr "
                                 "(the schedule's peak), as optimi takes its lr then.")
            max_lr = learning_rate
        if max_lr is not None:
            _checks.number("max_lr", max_lr, low=0.0, low_open=decouple_lr,
                           allowed="> 0.0 (it divides the lr)" if decouple_lr else ">= 0.0")
        return cls(learning_rate, b1, b2, weight_decay, eps, decouple_lr, max_lr, kahan_sum,
                   mask)

    def keep(self, lr):
        """The decay factor ``1 - lr * wd`` (``1 - (lr / max_lr) * wd``) for ``lr`` (a value
        or a :class:`~funcopt._double_float.DF`), in double-float arithmetic and rounded once
        to float32, as optimi forms it from Python floats (float64)."""
        ratio = lr if isinstance(lr, df.DF) else df.of(lr)
        if self.decouple_lr:
            ratio = df.div(ratio, df.of(self.max_lr))
        return df.sub(df.const(1.0), df.mul(ratio, df.of(self.weight_decay))).hi

    def scalars(self, count) -> tuple:
        """``(lr, keep, b1_comp, b2_hat, b2_comp)`` for the group step ``count + 1``; ``keep``
        is the decay factor for an unclipped ``lr`` (float64 when static)."""
        t = count + 1
        lr = learning_rate_at(self.learning_rate, count)
        statics = (self.learning_rate, self.weight_decay,
                   0.0 if self.max_lr is None else self.max_lr)
        if all(is_static(x) for x in statics):
            ratio = self.learning_rate / self.max_lr if self.decouple_lr else self.learning_rate
            keep = jnp.asarray(1 - ratio * self.weight_decay, f32)
        else:
            keep = self.keep(lr)
        return lr, keep, debiased_beta(self.b1, t)[1], *debiased_beta(self.b2, t)

    def init_leaf(self, p) -> tuple:
        """``(exp_avg, exp_avg_sq, eps_sq, kahan_comp)`` in the parameter's dtype."""
        kahan = self.kahan_sum is not False and p.dtype in _LOW
        eps_sq = (jnp.asarray(self.eps ** 2 if is_static(self.eps) else jnp.square(self.eps))
                  .astype(p.dtype))
        return (jnp.zeros_like(p), jnp.zeros_like(p), eps_sq,
                jnp.zeros_like(p) if kahan else None)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (exp_avg, exp_avg_sq, eps_sq, kahan_comp))``."""
        lr, keep, b1_comp, b2_hat, b2_comp = scalars
        m, v, eps_sq, kahan = fields
        dtype = m.dtype
        rnd = rounder(dtype)
        g = g.astype(f32)
        m = rnd(lerp(m.astype(f32), g, b1_comp))
        v = second_moment(g, v, b2_hat, b2_comp, rnd)
        lr, keep = self.stabilized(lr, keep, g, v, eps_sq, rnd)
        denom = rnd(rnd(jnp.sqrt(v)) + f32(self.eps))
        if is_static(self.eps) and self.eps == 0:
            denom = unfused(denom)  # keeps the true division (XLA would use rsqrt)
        step = (-lr * m) / denom
        if not decays and kahan is None and dtype == f32:
            return step, (m, v, eps_sq, kahan)  # p.addcdiv_: apply_updates adds it once
        p32 = p.astype(f32)
        new = rnd(unfused(p32 * keep)) if decays else p32
        if kahan is None:
            new = rnd(new + step)
        else:  # optimi: comp += step; p += comp; comp += (p_before - p_after), in bf16/fp16
            comp = rnd(kahan.astype(f32) + step)
            old, new = new, rnd(new + comp)
            kahan = rnd(comp + rnd(old - new)).astype(dtype)
        return (new - p32).astype(dtype), (m.astype(dtype), v.astype(dtype), eps_sq, kahan)

    def stabilized(self, lr, keep, g, v, eps_sq, rnd) -> tuple:
        """``(lr / max(1, rms), its decay factor)``: the per-tensor RMS of ``g / sqrt(max(v,
        eps_sq))``, in the parameter's dtype (torch's ``mean`` sums in float32)."""
        ratio = rnd(divide(rnd(g * g), rnd(jnp.maximum(v, eps_sq.astype(f32)))))
        rms = rnd(jnp.sqrt(rnd(divide(jnp.sum(ratio), f32(max(ratio.size, 1))))))
        clipped = rms > 1
        exact = self.learning_rate if isinstance(self.learning_rate, int | float) else lr
        scaled = df.div(df.of(exact), df.of(jnp.where(clipped, rms, 1)))  # optimi's float64
        return jnp.where(clipped, scaled.hi, lr), jnp.where(clipped, self.keep(scaled), keep)
