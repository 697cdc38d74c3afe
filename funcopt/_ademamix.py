"""bitsandbytes' ``AdEMAMix`` (``optim_bits=32``) as an optax transformation."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _checks, _core, _step_table
from funcopt._bnb32 import as_update, complement, lr_scalars
from funcopt._numerics import divide, f32, is_static, one_minus_power, unfused

__all__ = ["AdEMAMixState", "ademamix"]


class AdEMAMixState(NamedTuple):
    """State of :func:`ademamix`, field for field bitsandbytes' per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, bitsandbytes' ``state["step"]`` (the bias
        corrections and the warmups use it).
      state1: float32, shape ``(2, *param.shape)``: the fast EMA ``m1`` (``state1[0]``) and the
        slow EMA ``m2`` (``state1[1]``) stacked, exactly bitsandbytes' ``state["state1"]``.
      state2: float32, the second moment ``nu`` (bitsandbytes' ``state["state2"]``).

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.ademamix().init({"w": jnp.zeros((4, 3), jnp.bfloat16)})
    >>> state.state1["w"].shape, state.state1["w"].dtype, state.state2["w"].shape
    ((2, 4, 3), dtype('float32'), (4, 3))
    """

    count: jax.Array
    step: Any
    state1: Any
    state2: Any


def ademamix(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    alpha: float = 5.0,
    t_alpha: int | None = None,
    t_beta3: int | None = None,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    mask=None,
) -> optax.GradientTransformation:
    r"""bitsandbytes' ``AdEMAMix`` with 32-bit state (``bnb.optim.AdEMAMix(optim_bits=32)``).

    AdEMAMix (Pagliardini et al., 2024) mixes a fast and a slow EMA of the gradient. For each
    parameter at its step :math:`t = 1, 2, \dots`, with learning rate :math:`\eta`:

    .. math::
        m_1 &\leftarrow \beta_1 m_1 + (1 - \beta_1) g, \quad
        m_2 \leftarrow \beta_3(t) m_2 + (1 - \beta_3(t)) g, \quad
        \nu \leftarrow \beta_2 \nu + (1 - \beta_2) g^2 \\
        p &\leftarrow p\,(1 - \eta\lambda) - \eta\,
        \frac{m_1 / (1 - \beta_1^t) + \alpha(t)\, m_2}{\sqrt{\nu} / \sqrt{1 - \beta_2^t}
        + \epsilon}

    with the warmups :math:`\alpha(t) = \min(t\alpha / T_\alpha, \alpha)` (when ``t_alpha``
    is set) and :math:`\beta_3(t) = \min(\exp(\frac{\ln\beta_1 \ln\beta_3}
    {(1 - t/T_{\beta_3}) \ln\beta_3 + (t/T_{\beta_3}) \ln\beta_1}), \beta_3)` (when
    ``t_beta3`` is set), else :math:`\alpha` and :math:`\beta_3`. The decay multiplies the
    parameter by ``1 - lr * wd`` (bitsandbytes' order; ``optax.contrib.ademamix`` adds it to
    the update). The arithmetic is bitsandbytes' CPU path in float32 for every parameter
    dtype, op for op. The per-step scalars (bias corrections, warmups) are computed in
    float64 as bitsandbytes does when the hyperparameters are Python numbers (see
    :mod:`funcopt._step_table`), so the states are bitwise equal to it and the parameters
    too, but where torch's CPU square root is an ulp low (see :mod:`funcopt._bnb32`);
    traced hyperparameters (``inject_hyperparams``) fall back to float32 formulas for those
    scalars, an ulp or two away, and arrive rounded to float32 (0.9999 -> 0.99989998): give
    betas as Python floats for exact parity. bf16 parameters keep float32 states.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1, b2, b3: the fast EMA's, the second moment's and the slow EMA's decay, in [0, 1)
        (bitsandbytes' ``betas``).
      alpha: the slow EMA's weight.
      t_alpha: steps of the linear warmup of ``alpha``; None or 0: no warmup. Needs
        ``alpha >= 0``.
      t_beta3: steps of the warmup of ``b3`` from ``b1``; None or 0: no warmup. Needs
        ``0 < b1 <= b3`` (the formula takes their logs).
      eps: added to the corrected :math:`\sqrt\nu`, >= 0.
      weight_decay: decoupled decay rate, >= 0, applied where ``mask`` is True.
      mask: optional pytree of bools like the params (or a callable ``params -> mask``).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.ademamix(learning_rate=0.1, weight_decay=0.0, t_alpha=10)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.5, -0.5]), opt.init(w), w)
      >>> # step 1: m1 / c1 = g, sqrt(nu) / c2 = |g|, alpha(1) = 5 / 10, m2 = 1e-4 * g
      >>> optax.apply_updates(w, updates)  # w - 0.1 * (g + 0.5 * 1e-4 * g) / |g|
      Array([ 0.899995, -1.899995], dtype=float32)
    """
    return _core.transformation(AdEMAMix.validated(
        learning_rate, b1, b2, b3, alpha, t_alpha, t_beta3, eps, weight_decay, mask))


def _warmup_steps(name, value):
    """None, or a number of steps >= 0 (0 = off, as in bitsandbytes); a traced int passes."""
    if value is None or isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, bool) or not np.issubdtype(np.asarray(value).dtype, np.integer):
        raise TypeError(f"{name} must be None or an integer number of steps, got {value!r}.")
    if np.ndim(value) != 0 or int(value) < 0:
        raise ValueError(f"{name}={value!r} is invalid: it must be None or an integer >= 0 "
                         "(0 and None turn the warmup off).")
    return int(value) if is_static(value) else value


class _PerStep(NamedTuple):
    """The scalars that depend on the leaf's step: ``m2``'s ``(b3, 1 - b3)``, ``alpha`` and
    the bias corrections ``c1 = 1 - b1**t``, ``c2 = sqrt(1 - b2**t)``."""

    b3: Any
    one_minus_b3: Any
    alpha: Any
    c1: Any
    c2: Any


def _beta3_at(b1: float, b3: float, t_beta3: int):
    """bitsandbytes' beta3 warmup at step ``t``, in float64, its expression verbatim."""
    ln_beta1, ln_beta3 = math.log(b1), math.log(b3)

    def beta3_t(step):
        step_scale = step / t_beta3
        return min(math.exp((ln_beta1 * ln_beta3)
                            / (((1 - step_scale) * ln_beta3) + (step_scale * ln_beta1))), b3)

    return beta3_t


@functools.lru_cache(maxsize=32)
def _correction_table(b: float, root: bool):
    """bitsandbytes' bias correction ``1.0 - b**step`` (``root``: its ``math.sqrt``)."""
    fn = (lambda t: math.sqrt(1.0 - b**t)) if root else (lambda t: 1.0 - b**t)
    return _step_table.until_constant(fn, 1.0)


@functools.lru_cache(maxsize=32)
def _alpha_table(alpha: float, t_alpha: int):
    return _step_table.over(lambda t: min(t * alpha / t_alpha, alpha), t_alpha, alpha)


@functools.lru_cache(maxsize=32)
def _beta3_tables(b1: float, b3: float, t_beta3: int) -> tuple:
    beta3_t = _beta3_at(b1, b3, t_beta3)
    return (_step_table.over(beta3_t, t_beta3, b3),
            _step_table.over(lambda t: 1.0 - beta3_t(t), t_beta3, 1.0 - b3))


def _on(steps) -> bool | None:
    """Whether a warmup length turns the warmup on: a bool when static, None when traced."""
    if steps is None:
        return False
    return steps > 0 if is_static(steps) else None


@dataclasses.dataclass(frozen=True)
class AdEMAMix(_core.Rule):
    """ademamix's validated hyperparameters and leaf functions (also the float32 core of an
    8-bit AdEMAMix)."""

    State: ClassVar[type] = AdEMAMixState
    needs_params: ClassVar[bool] = True  # the step is fused into the parameter (p.add_)
    learning_rate: Any
    b1: Any
    b2: Any
    b3: Any
    alpha: Any
    t_alpha: Any
    t_beta3: Any
    eps: Any
    weight_decay: Any
    mask: Any

    @classmethod
    def validated(cls, learning_rate, b1, b2, b3, alpha, t_alpha, t_beta3, eps, weight_decay,
                  mask) -> AdEMAMix:
        _checks.learning_rate("learning_rate", learning_rate)
        for name, b in (("b1", b1), ("b2", b2), ("b3", b3)):
            _checks.number(name, b, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("alpha", alpha)
        _checks.number("eps", eps, low=0.0)
        _checks.number("weight_decay", weight_decay, low=0.0)
        t_alpha, t_beta3 = _warmup_steps("t_alpha", t_alpha), _warmup_steps("t_beta3", t_beta3)
        if _on(t_alpha) and is_static(alpha) and alpha < 0:
            raise ValueError(f"alpha={alpha!r} is invalid with t_alpha={t_alpha!r}: the warmup "
                             "needs alpha >= 0 (bitsandbytes' min(t * alpha / t_alpha, alpha) "
                             "would grow without bound after t_alpha steps).")
        if _on(t_beta3) and is_static(b1) and is_static(b3) and not 0 < b1 <= b3:
            raise ValueError(f"b1={b1!r}, b3={b3!r} are invalid with t_beta3={t_beta3!r}: the "
                             "beta3 warmup needs 0 < b1 <= b3 (it takes their logs and raises "
                             "beta3 from b1 to b3).")
        return cls(learning_rate, b1, b2, b3, alpha, t_alpha, t_beta3, eps, weight_decay, mask)

    def scalars(self, count) -> tuple:
        """``(-lr, 1 - lr * weight_decay)`` in float32."""
        return lr_scalars(self.learning_rate, self.weight_decay, count)

    def init_leaf(self, p) -> tuple:
        """``(step, state1, state2)``: the two EMAs stacked and nu, float32, as bitsandbytes."""
        shape = jnp.shape(p)
        return jnp.zeros([], jnp.int32), jnp.zeros((2, *shape), f32), jnp.zeros(shape, f32)

    def per_step(self, t) -> _PerStep:
        """The step-dependent scalars at the leaf's step ``t`` (int32, >= 1), float32."""
        return _PerStep(*self.beta3_at(t), self.alpha_at(t), self.correction(self.b1, False, t),
                        self.correction(self.b2, True, t))

    @staticmethod
    def correction(b, root: bool, t):
        """``1 - b**t`` (``root``: its square root), as bitsandbytes rounds it."""
        def formula(t):
            c = one_minus_power(b, t)
            return jnp.sqrt(c) if root else c

        if is_static(b):
            return _step_table.read(_correction_table(b, root), t, formula)
        return formula(t)

    def alpha_at(self, t):
        """``alpha``, or bitsandbytes' ``min(t * alpha / t_alpha, alpha)`` during its warmup."""
        alpha, t_alpha, on = self.alpha, self.t_alpha, _on(self.t_alpha)
        if on is False:
            return jnp.asarray(alpha, f32)
        a, n = jnp.asarray(alpha, f32), jnp.asarray(t_alpha, f32)
        formula = lambda t: jnp.minimum(t.astype(f32) * a / n, a)  # noqa: E731
        if on and is_static(alpha):
            return _step_table.read(_alpha_table(alpha, t_alpha), t, formula)
        return jnp.where(n > 0, formula(t), a)

    def beta3_at(self, t) -> tuple:
        """``(b3, 1 - b3)`` at step ``t``: bitsandbytes' warmup from ``b1`` during ``t_beta3``
        steps, else ``b3``."""
        b1, b3, n_steps, on = self.b1, self.b3, self.t_beta3, _on(self.t_beta3)
        plain = complement(b3)
        if on is False:
            return plain

        def formula(t):
            ln1, ln3 = (f32(math.log(b)) if is_static(b) else jnp.log(jnp.asarray(b, f32))
                        for b in (b1, b3))
            s = t.astype(f32) / jnp.asarray(n_steps, f32)
            x = ln1 * ln3 / ((1 - s) * ln3 + s * ln1)
            return jnp.minimum(jnp.exp(x), plain[0]), jnp.maximum(-jnp.expm1(x), plain[1])

        if on and is_static(b1) and is_static(b3):
            tables = _beta3_tables(b1, b3, n_steps)
            return tuple(_step_table.read(table, t, lambda t, i=i: formula(t)[i])
                         for i, table in enumerate(tables))
        warm = formula(t)
        return tuple(jnp.where(jnp.asarray(n_steps) > 0, w, p)
                     for w, p in zip(warm, plain, strict=True))

    def float32_update(self, scalars, t, g, p, moments, decays) -> tuple:
        """bitsandbytes' float32 step on float32 arrays: ``(new_p, (new_state1, new_state2))``.

        Op by op (torch's in-place ops; XLA contracts each ``product + rounded`` below into
        the reference's fused multiply-add and ``unfused`` keeps the rounded products)::

            m1.mul_(beta1).add_(g, alpha=1 - beta1); m2.mul_(beta3).add_(g, alpha=1 - beta3)
            nu.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.mul_(1 - lr * wd)                                       # if decaying
            p.add_(((m1 / c1) + (alpha * m2)) / ((nu.sqrt() / c2) + eps), alpha=-lr)
        """
        neg_lr, keep = scalars
        k = self.per_step(t)
        b1, one_minus_b1 = complement(self.b1)
        b2, one_minus_b2 = complement(self.b2)
        m12, nu = moments
        # Both EMAs in one elementwise op on the stacked state (row 0: b1, row 1: b3), so that
        # XLA updates state1 in place and the step reads the new values (stacking two
        # separately computed EMAs made it copy the donated state first).
        rows = (2,) + (1,) * jnp.ndim(g)
        b = jnp.stack([jnp.asarray(b1, f32), k.b3]).reshape(rows)
        one_minus_b = jnp.stack([jnp.asarray(one_minus_b1, f32), k.one_minus_b3]).reshape(rows)
        m12 = one_minus_b * g[None] + unfused(m12 * b)
        m1, m2 = m12[0], m12[1]
        nu = (one_minus_b2 * g) * g + unfused(nu * b2)
        if decays:
            p = unfused(p * keep)
        mixed = divide(m1, k.c1) + unfused(k.alpha * m2)
        adaptive = divide(jnp.sqrt(nu), k.c2) + jnp.asarray(self.eps, f32)
        if is_static(self.eps) and self.eps == 0:
            adaptive = unfused(adaptive)  # keeps XLA from rewriting x / (y / c) as x * c / y
        return neg_lr * (mixed / adaptive) + p, (m12, nu)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, state1, state2))``."""
        t, m12, nu = fields
        t = optax.safe_increment(t)
        new, moments = self.float32_update(scalars, t, g.astype(f32), p.astype(f32), (m12, nu),
                                           decays)
        return as_update(new, p), (t, *moments)
