"""bitsandbytes' ``AdamW``, with 32-bit (``adamw_bnb``) and 8-bit (``adamw_8bit``) state."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _bnb8, _checks, _core, _step_table
from funcopt._bnb32 import as_update, complement, lr_scalars
from funcopt._numerics import divide, f32, is_static, one_minus_power, unfused

__all__ = ["AdamWBnbState", "AdamW8bitState", "adamw_bnb", "adamw_8bit"]


class AdamWBnbState(NamedTuple):
    """State of :func:`adamw_bnb`, field for field bitsandbytes' per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, bitsandbytes' ``state["step"]``.
      state1, state2: the first and second moments, float32 whatever the parameter's dtype.

    >>> import jax.numpy as jnp, funcopt
    >>> funcopt.adamw_bnb().init({"w": jnp.zeros(3, jnp.bfloat16)}).state2["w"].dtype
    dtype('float32')
    """

    count: jax.Array
    step: Any
    state1: Any
    state2: Any


class AdamW8bitState(NamedTuple):
    """State of :func:`adamw_8bit`, field for field bitsandbytes' per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, bitsandbytes' ``state["step"]``.
      state1: the first moment: ``uint8`` codes into the signed dynamic map, the parameter's
        shape (float32 values for a leaf below ``min_8bit_size``).
      state2: the second moment: codes into the unsigned map (or float32 values).
      absmax1, absmax2: float32, the scale of each block of 256 elements of the flattened
        parameter: ``(*shape[:-1], shape[-1] // 256)`` when the last axis is a multiple of
        256, else ``(blocks,)`` (``reshape(-1)`` is bitsandbytes' ``absmax``, see
        :mod:`funcopt._bnb8`); None on a leaf below ``min_8bit_size``.

    The maps are constants (``funcopt._quantize.dynamic_map``), not state.

    >>> import jax.numpy as jnp, funcopt
    >>> params = {"w": jnp.zeros((64, 100)), "v": jnp.zeros((8, 512)), "b": jnp.zeros(9)}
    >>> state = funcopt.adamw_8bit().init(params)
    >>> state.state1["w"].dtype, state.absmax1["w"].shape, state.absmax1["v"].shape
    (dtype('uint8'), (25,), (8, 2))
    >>> state.state1["b"].dtype, state.absmax1["b"]  # below min_8bit_size: 32-bit
    (dtype('float32'), None)
    """

    count: jax.Array
    step: Any
    state1: Any
    state2: Any
    absmax1: Any
    absmax2: Any


def adamw_bnb(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    mask=None,
) -> optax.GradientTransformation:
    r"""bitsandbytes' ``AdamW`` with 32-bit state (``bnb.optim.AdamW(optim_bits=32)``, the
    Trainer's ``paged_adamw_32bit``).

    At the parameter's step :math:`t`, with :math:`c_1 = 1 - \beta_1^t`,
    :math:`c_2 = \sqrt{1 - \beta_2^t}`:

    .. math::
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        p &\leftarrow p\,(1 - \eta\lambda) - \frac{\eta c_2}{c_1}
        \frac{m}{\sqrt v + \epsilon c_2}

    The same formula as ``torch.optim.AdamW`` but not the same numbers: bitsandbytes folds
    the bias corrections into one float64 step size and scales :math:`\epsilon` by
    :math:`c_2`, where torch divides :math:`\sqrt v` by :math:`c_2` (after 30 steps about 5%
    of torch's and bitsandbytes' elements differ by an ulp or more). The arithmetic is
    bitsandbytes' CPU path in float32 for every parameter dtype, op for op; the per-step
    scalars are its float64 values (see :mod:`funcopt._step_table`), so float32 results are
    bitwise equal to it for a constant ``learning_rate`` and static hyperparameters.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1, b2: the moments' decays, in [0, 1) (bitsandbytes' ``betas``).
      eps: >= 0, added to :math:`\sqrt v` after scaling by :math:`c_2`.
      weight_decay: decoupled decay rate, >= 0, applied where ``mask`` is True.
      mask: optional pytree of bools like the params (or a callable ``params -> mask``).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.adamw_bnb(learning_rate=0.1, weight_decay=0.0)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.5, -0.5]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)  # the first step moves each weight by about lr
      Array([ 0.90000004, -1.9       ], dtype=float32)
    """
    return _core.transformation(AdamWBnb.validated(learning_rate, b1, b2, eps, weight_decay,
                                                   mask))


def adamw_8bit(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    min_8bit_size: int = 4096,
    mask=None,
) -> optax.GradientTransformation:
    r"""bitsandbytes' 8-bit ``AdamW`` (``bnb.optim.AdamW(optim_bits=8)`` = ``AdamW8bit``, the
    Trainer's ``adamw_8bit``, ``adamw_bnb_8bit`` and ``paged_adamw_8bit``).

    Each update dequantizes the moments, steps in float32 and requantizes them (blockwise
    dynamic quantization, :mod:`funcopt._quantize`), exactly as bitsandbytes' CPU path:

    .. math::
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        p &\leftarrow p\,(1 - \eta\lambda) - \frac{\eta}{c_1}
        \frac{m}{\sqrt v / c_2 + \epsilon}

    (:math:`c_1 = 1 - \beta_1^t`, :math:`c_2 = \sqrt{1 - \beta_2^t}`; note the 8-bit path's
    :math:`\epsilon` is not scaled, unlike its 32-bit one). A parameter with fewer than
    ``min_8bit_size`` elements keeps float32 moments and takes :func:`adamw_bnb`'s formulas, as
    in bitsandbytes. State: about 2.03 bytes per parameter (one code per moment, one float32
    absmax per 256 elements), against 8 for float32 Adam. For float32 parameters and a constant
    ``learning_rate`` every code and absmax equals bitsandbytes'.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1, b2: the moments' decays, in [0, 1) (bitsandbytes' ``betas``).
      eps: >= 0, added to the corrected :math:`\sqrt v`.
      weight_decay: decoupled decay rate, >= 0, applied where ``mask`` is True.
      min_8bit_size: parameters with fewer elements keep 32-bit states (an integer >= 0;
        it fixes the state's layout: under ``optax.inject_hyperparams`` with a jitted
        ``init``, list it in ``static_args``).
      mask: optional pytree of bools like the params (or a callable ``params -> mask``).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.adamw_8bit(learning_rate=0.1, weight_decay=0.0, min_8bit_size=1)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.5, -0.25]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)
      Array([ 0.90000004, -1.9       ], dtype=float32)
      >>> state.state1, state.absmax1  # m = [0.05, -0.025]: codes into the signed map
      (Array([255,  35], dtype=uint8), Array([0.05], dtype=float32))
    """
    base = AdamWBnb.validated(learning_rate, b1, b2, eps, weight_decay, mask)
    return _core.transformation(AdamW8bit(**_bnb8.fields(base),
                                          min_8bit_size=_bnb8.min_8bit_size(min_8bit_size)))


def _static(*values) -> bool:
    return all(is_static(v) for v in values)


@functools.lru_cache(maxsize=64)
def _table(kind: str, lr: float, b1: float, b2: float, eps: float):
    """A per-step scalar's float32 values from bitsandbytes' float64 expression, up to the
    step where ``b**t`` no longer reaches float64's last bit (then it stays constant)."""
    def value(t):
        c1, c2 = 1.0 - b1**t, math.sqrt(1.0 - b2**t)
        return {"step_size": -lr * c2 / c1, "eps_c2": eps * c2,
                "lr_c1": -lr / c1, "c2": c2}[kind]

    last = max([1] + [math.ceil(-60 * math.log(2) / math.log(b)) for b in (b1, b2) if b > 0])
    return _step_table.over(value, last, value(last + 1))


@dataclasses.dataclass(frozen=True)
class AdamWBnb(_core.Rule):
    """adamw_bnb's validated hyperparameters and leaf functions (also the 32-bit path of
    adamw_8bit)."""

    State: ClassVar[type] = AdamWBnbState
    needs_params: ClassVar[bool] = True  # the step is fused into the parameter (p.add_)
    learning_rate: Any
    b1: Any
    b2: Any
    eps: Any
    weight_decay: Any
    mask: Any

    @classmethod
    def validated(cls, learning_rate, b1, b2, eps, weight_decay, mask) -> AdamWBnb:
        _checks.learning_rate("learning_rate", learning_rate)
        for name, b in (("b1", b1), ("b2", b2)):
            _checks.number(name, b, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("eps", eps, low=0.0)
        _checks.number("weight_decay", weight_decay, low=0.0)
        return cls(learning_rate, b1, b2, eps, weight_decay, mask)

    def scalars(self, count) -> tuple:
        """``(-lr, 1 - lr * weight_decay)`` in float32."""
        return lr_scalars(self.learning_rate, self.weight_decay, count)

    def init_leaf(self, p) -> tuple:
        """``(step, state1, state2)``: the moments in float32, as bitsandbytes."""
        shape = jnp.shape(p)
        return jnp.zeros([], jnp.int32), jnp.zeros(shape, f32), jnp.zeros(shape, f32)

    def per_step(self, kind: str, neg_lr, t):
        """A per-step scalar at the leaf's step ``t`` in float32: ``step_size`` (``-lr c2 /
        c1``), ``eps_c2``, ``lr_c1`` (``-lr / c1``) or ``c2``. With static hyperparameters it
        is bitsandbytes' float64 value rounded once; with a schedule, ``-lr`` times the
        float64 ratio; traced betas or eps take float32 formulas."""
        lr, b1, b2, eps = self.learning_rate, self.b1, self.b2, self.eps
        if not _static(b1, b2, eps):
            return self.per_step_f32(kind, neg_lr, t)
        with_lr = kind in ("step_size", "lr_c1")
        if with_lr and not is_static(lr):
            ratio = _table(kind, -1.0, float(b1), float(b2), float(eps))
            return neg_lr * _step_table.read(ratio, t,
                                             lambda t: self.per_step_f32(kind, f32(1), t))
        table = _table(kind, float(lr) if with_lr else 0.0, float(b1), float(b2), float(eps))
        return _step_table.read(table, t, lambda t: self.per_step_f32(kind, neg_lr, t))

    def per_step_f32(self, kind: str, neg_lr, t):
        c1 = one_minus_power(self.b1, t)
        c2 = jnp.sqrt(one_minus_power(self.b2, t))
        return {"step_size": lambda: neg_lr * c2 / c1, "eps_c2": lambda: self.eps * c2,
                "lr_c1": lambda: neg_lr / c1, "c2": lambda: c2}[kind]()

    def moments(self, g, m, v) -> tuple:
        """``m.mul_(b1).add_(g, alpha=1 - b1)``, ``v.mul_(b2).addcmul_(g, g, value=1 - b2)``:
        XLA contracts each ``product + rounded`` into the reference's fused multiply-add."""
        b1, one_minus_b1 = complement(self.b1)
        b2, one_minus_b2 = complement(self.b2)
        return one_minus_b1 * g + unfused(m * b1), (one_minus_b2 * g) * g + unfused(v * b2)

    def float32_update(self, scalars, t, g, p, moments, decays) -> tuple:
        """bitsandbytes' 32-bit step on float32 arrays: ``(new_p, (state1, state2))``:
        ``p.mul_(1 - lr * wd)``; ``p.add_(m / (v.sqrt() + eps * c2), alpha=step_size)``."""
        neg_lr, keep = scalars
        m, v = self.moments(g, *moments)
        if decays:
            p = unfused(p * keep)
        denom = jnp.sqrt(v) + self.per_step("eps_c2", neg_lr, t)
        if is_static(self.eps) and self.eps == 0:
            denom = unfused(denom)  # keeps XLA from rewriting m / sqrt(v) as m * rsqrt(v)
        return (m / denom) * self.per_step("step_size", neg_lr, t) + p, (m, v)

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, state1, state2))``."""
        t, m, v = fields
        t = optax.safe_increment(t)
        new, moments = self.float32_update(scalars, t, g.astype(f32), p.astype(f32), (m, v),
                                           decays)
        return as_update(new, p), (t, *moments)


@dataclasses.dataclass(frozen=True)
class AdamW8bit(_bnb8.EightBit, AdamWBnb):
    """adamw_8bit: bitsandbytes' 8-bit Adam path on quantized leaves, AdamWBnb's otherwise."""

    State: ClassVar[type] = AdamW8bitState
    signs: ClassVar[tuple[bool, ...]] = (True, False)

    def update_8bit(self, scalars, t, g, p, moments, decays) -> tuple:
        """``denom = (v.sqrt() / c2).add_(eps)``; ``p.mul_(1 - lr * wd)``;
        ``p.addcdiv_(m, denom, value=-lr / c1)`` (``p + (value * m) / denom``)."""
        neg_lr, keep = scalars
        m, v = self.moments(g, *moments)
        denom = divide(jnp.sqrt(v), self.per_step("c2", neg_lr, t)) + jnp.asarray(self.eps, f32)
        if is_static(self.eps) and self.eps == 0:
            denom = unfused(denom)
        if decays:
            p = unfused(p * keep)
        return p + (self.per_step("lr_c1", neg_lr, t) * m) / denom, (m, v)

