"""``torch.optim.AdamW`` and ``torch.optim.Adam`` (for-loop and fused CPU paths) as optax
transformations."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt._numerics import f32, is_static, learning_rate_at, one_minus_power, rounder, unfused
from funcopt._torch_ops import Kernels, complement, scalar, update_to
from funcopt._torch_scalars import (
    adam_bias_correction2_sqrt,
    adam_step_size,
    decay_factor,
    shared_step,
)

__all__ = ["AdamTorchState", "adamw_torch", "adamw_torch_fused", "adam_torch"]


class AdamTorchState(NamedTuple):
    """State of :func:`adamw_torch`, :func:`adamw_torch_fused` and :func:`adam_torch`, field
    for field torch's per-parameter ``Adam``/``AdamW`` state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of float32 scalars, torch's ``state["step"]`` (a float32
        tensor in torch too; it stops growing at 2**24, as torch's does).
      exp_avg: first moment, in each parameter's dtype (bf16 for bf16, as torch).
      exp_avg_sq: second moment, same shapes and dtypes.
      max_exp_avg_sq: the running maximum of ``exp_avg_sq`` with ``amsgrad=True``, else None
        (torch has no such key then).

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.adamw_torch(amsgrad=True).init({"w": jnp.zeros(3, jnp.bfloat16)})
    >>> state.step["w"].dtype, state.max_exp_avg_sq["w"].dtype
    (dtype('float32'), dtype(bfloat16))
    """

    count: jax.Array
    step: Any
    exp_avg: Any
    exp_avg_sq: Any
    max_exp_avg_sq: Any


_MATH = r"""
    For each parameter :math:`p` with gradient :math:`g` (negated with ``maximize``), at its
    step :math:`t = 1, 2, \dots`, with learning rate :math:`\eta` (``learning_rate`` at
    ``count``) and decay :math:`\lambda` (where ``mask`` is True):

    .. math::
        {decay} \\
        m &\leftarrow m + (1 - \beta_1)(g - m), \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2
        \qquad (v_{{\max}} \leftarrow \max(v_{{\max}}, v) \text{{ with amsgrad}}) \\
        p &\leftarrow p - \frac{{\eta}}{{1 - \beta_1^t}} \,
        \frac{{m}}{{\sqrt{{v}} / \sqrt{{1 - \beta_2^t}} + \epsilon}}
"""
_DECOUPLED = r"p &\leftarrow p\,(1 - \eta\lambda)"
_L2 = r"g &\leftarrow g + \lambda p"

_ARGS = """
    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1, b2: torch's ``betas``, each in [0, 1). Give them (and ``learning_rate``) as Python
        floats for bitwise parity: the step scalars are then torch's own float64 values;
        under ``optax.inject_hyperparams`` betas arrive rounded to float32.
      eps: added to the bias-corrected :math:`\\sqrt v`, >= 0.
      weight_decay: the decay rate, >= 0{wd_default}.
      amsgrad: normalise by the running maximum of :math:`v` (state ``max_exp_avg_sq``).
      maximize: ascend instead of descend (the gradient is negated first).
      mask: optional pytree of bools like the params (or a callable ``params -> mask``)
        selecting the parameters that decay (torch: those in a group with
        ``weight_decay > 0``); by default all decay, as in torch's single group.
"""


def adamw_torch(learning_rate=1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False,
                mask=None) -> optax.GradientTransformation:
    return _core.transformation(AdamTorch.validated(
        learning_rate, b1, b2, eps, weight_decay, amsgrad, maximize, mask,
        decoupled=True, fused=False))


def adamw_torch_fused(learning_rate=1e-3, b1: float = 0.9, b2: float = 0.999,
                      eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                      maximize: bool = False, mask=None) -> optax.GradientTransformation:
    return _core.transformation(AdamTorch.validated(
        learning_rate, b1, b2, eps, weight_decay, amsgrad, maximize, mask,
        decoupled=True, fused=True))


def adam_torch(learning_rate=1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False,
               mask=None, *, fused: bool = False) -> optax.GradientTransformation:
    return _core.transformation(AdamTorch.validated(
        learning_rate, b1, b2, eps, weight_decay, amsgrad, maximize, mask,
        decoupled=False, fused=fused))


adamw_torch.__doc__ = r"""``torch.optim.AdamW`` (its for-loop/foreach path, torch's default on
    CPU): Adam with decoupled weight decay.
""" + _MATH.format(decay=_DECOUPLED) + r"""
    torch's rounding, op by op (see :mod:`funcopt._torch_ops`), with the step scalars
    (``lr / (1 - b1**t)``, ``sqrt(1 - b2**t)``, ``1 - lr * wd``) equal to torch's float64
    values rounded to float32. Moments live in the parameter's dtype and bf16 parameters are
    rounded after every in-place op, as torch does. Exactness (under ``jit``): bitwise for
    bf16 parameters; for float32 the moments are bitwise and the parameters within an ulp
    per step, because torch's x86 builds take ``exp_avg_sq.sqrt()`` from MKL, whose square
    root is not correctly rounded (about 0.7% of elements an ulp low);
    :func:`adamw_torch_fused` has no such difference. Updates are float32 (``new - p``, also
    for bf16 parameters); with decay, a float32 parameter stepping across zero can land an
    ulp of ``p`` off torch's (see :func:`funcopt._torch_ops.update_to`). Unlike
    :func:`funcopt.adamw`
    (``transformers.AdamW``), :math:`\epsilon` is added to the bias-corrected
    :math:`\sqrt v` and the decay multiplies :math:`p` before the step.
""" + _ARGS.format(wd_default=" (torch's AdamW default 1e-2)") + r"""
    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.adamw_torch(learning_rate=0.1)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.5, -0.5]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)  # w (1 - 0.001) - 0.1 sign(g), as torch rounds it
      Array([ 0.89900005, -1.898     ], dtype=float32)
"""

adamw_torch_fused.__doc__ = r"""``torch.optim.AdamW(fused=True)``: torch's fused CPU kernel
    (the Trainer's default ``optim`` with torch >= 2.8).
""" + _MATH.format(decay=_DECOUPLED) + r"""
    The same formula as :func:`adamw_torch`, computed the way the fused kernel
    (``aten/src/ATen/native/cpu/FusedAdamKernel.cpp``) does: in float32 whatever the
    parameter's dtype, with the moments and the parameter rounded to bf16 only when stored,
    and a correctly rounded square root (its scalar tail, the last ``numel % 8`` float32
    elements, fuses one product differently, which is followed too). Bitwise equal to torch
    for float32 and bf16 parameters under ``jit``, but that with decay a float32 parameter
    stepping across zero can land an ulp of ``p`` off (the additive update ``new - p`` cannot
    always reach torch's product). For float32 its numbers equal :func:`adamw_torch`'s;
    torch's two paths differ
    (in ~4% of elements by an ulp after 30 steps) only through MKL's square root in the
    for-loop path. For bf16 they differ more: the for-loop path rounds after every op.
""" + _ARGS.format(wd_default=" (torch's AdamW default 1e-2)") + r"""
    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.adamw_torch_fused(learning_rate=0.1, weight_decay=0.0)
      >>> w = jnp.array([1.0, -2.0], jnp.bfloat16)
      >>> updates, state = opt.update(jnp.array([0.5, -0.5], jnp.bfloat16), opt.init(w), w)
      >>> optax.apply_updates(w, updates)
      Array([0.898438, -1.89844], dtype=bfloat16)
"""

adam_torch.__doc__ = r"""``torch.optim.Adam``: Adam with L2 weight decay added to the
    gradient.
""" + _MATH.format(decay=_L2) + r"""
    The decay enters the moments (torch's ``grad.add(param, alpha=weight_decay)``), unlike
    AdamW's. The arithmetic, exactness and dtype behaviour are :func:`adamw_torch`'s (and
    :func:`adamw_torch_fused`'s with ``fused=True``). The Trainer's ``optim`` menu has no
    torch ``Adam``; this is its reference class for direct use.
""" + _ARGS.format(wd_default=" (L2, torch's default 0)") + r"""
      fused: follow torch's fused CPU kernel (``torch.optim.Adam(fused=True)``) instead of
        its for-loop path.

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.adam_torch(learning_rate=0.1, amsgrad=True)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.5, -0.5]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)  # torch.optim.Adam gives the same float32 values
      Array([ 0.90000004, -1.9       ], dtype=float32)
"""


@dataclasses.dataclass(frozen=True)
class AdamTorch(_core.Rule):
    """torch's Adam/AdamW: validated hyperparameters and leaf functions."""

    State: ClassVar[type] = AdamTorchState
    learning_rate: Any
    b1: Any
    b2: Any
    eps: Any
    weight_decay: Any
    amsgrad: bool
    maximize: bool
    mask: Any
    decoupled: bool  # AdamW (decay multiplies p) or Adam (L2 on the gradient)
    fused: bool  # the fused CPU kernel (float32 arithmetic, rounding on store)

    @classmethod
    def validated(cls, learning_rate, b1, b2, eps, weight_decay, amsgrad, maximize, mask, *,
                  decoupled, fused) -> AdamTorch:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("b1", b1, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("b2", b2, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("eps", eps, low=0.0)
        _checks.number("weight_decay", weight_decay, low=0.0)
        for name, flag in (("amsgrad", amsgrad), ("maximize", maximize), ("fused", fused)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}.")
        return cls(learning_rate, b1, b2, eps, weight_decay, amsgrad, maximize, mask,
                   decoupled, fused)

    def init_leaf(self, p) -> tuple:
        """``(step, exp_avg, exp_avg_sq, max_exp_avg_sq)``: moments in the parameter's
        dtype, ``max_exp_avg_sq`` only with amsgrad."""
        # One array per field: a state that shares buffers cannot be donated.
        return (jnp.zeros([], f32), jnp.zeros_like(p), jnp.zeros_like(p),
                jnp.zeros_like(p) if self.amsgrad else None)

    def _second_moment(self, k, v, g, float32_fused):
        """``v.mul_(b2).addcmul_(g, g, value=1 - b2)``: ``fma(c * g, g, round(b2 * v))``.

        The fused float32 kernel computes the same in its vectorized body, but in its scalar
        tail (the last ``numel % 8`` elements: x86 builds vectorize the rest, 8 or 16 wide)
        GCC fuses the other product: ``fma(v, b2, round(round(c * g) * g))``. (For bf16 the
        two forms round to the same bf16 value but in rare ties; the body's is used.)
        """
        b2, c = scalar(self.b2), complement(self.b2)
        n = v.size
        if not (float32_fused and n % 8):
            return k.addcmul(k.mul(v, b2), g, g, c)
        # Flat slices, computed apart: a select between the two forms lets XLA share
        # ``v * b2`` and lose the tail's fused multiply-add.
        cut = n - n % 8
        v, shape, g = v.reshape(-1), v.shape, g.reshape(-1)
        body = k.addcmul(k.mul(v[:cut], b2), g[:cut], g[:cut], c)
        tail = v[cut:] * b2 + unfused(unfused(c * g[cut:]) * g[cut:])
        return jnp.concatenate([body, tail]).reshape(shape)

    def scalars(self, count) -> tuple:
        """``(lr, t, -step_size, bias_correction2_sqrt, decay_factor)`` of the update after
        ``count`` updates, when every leaf is at step ``t = count + 1`` (torch's float64
        values rounded to float32; the decay factor None without decoupled decay)."""
        lr = learning_rate_at(self.learning_rate, count)
        exact_lr = self.learning_rate if is_static(self.learning_rate) else lr
        t = shared_step(count)
        decay = (decay_factor(exact_lr, self.weight_decay)
                 if self.decoupled and self.decays_any() else None)
        return (lr, t, -adam_step_size(exact_lr, self.b1, t),
                adam_bias_correction2_sqrt(self.b2, t, self.fused), decay)

    def _at_step(self, scalars, t):
        """``(-step_size, bias_correction2_sqrt)`` at a leaf's own step ``t``: the shared
        values, or float32 formulas for a leaf whose step is not ``count + 1`` (a state
        loaded from a torch optimizer in which it skipped steps)."""
        lr, shared_t, neg_step_size, bc2_sqrt, _ = scalars
        same = t == shared_t
        return (jnp.where(same, neg_step_size, -lr / one_minus_power(self.b1, t)),
                jnp.where(same, bc2_sqrt, jnp.sqrt(one_minus_power(self.b2, t))))

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, exp_avg, exp_avg_sq, max_exp_avg_sq))``."""
        t, m, v, vmax = fields
        dtype = m.dtype
        k = Kernels(f32 if self.fused else dtype)
        t = t + 1  # torch's float32 step
        g = g.astype(f32)
        if self.maximize:
            g = -g
        p32 = None if p is None else p.astype(f32)
        if decays and self.decoupled:  # param.mul_(1 - lr * weight_decay)
            p32 = k.mul(p32, scalars[4])
        elif decays:  # grad = grad.add(param, alpha=weight_decay)
            g = k.add(g, p32, scalar(self.weight_decay))
        m = k.lerp(m.astype(f32), g, complement(self.b1))
        v = self._second_moment(k, v.astype(f32), g, self.fused and dtype == f32)
        if self.amsgrad:
            vmax = jnp.maximum(vmax.astype(f32), v)
        neg_step_size, bc2_sqrt = self._at_step(scalars, t)
        denom = k.add_scalar(k.div_scalar(k.sqrt(vmax if self.amsgrad else v), bc2_sqrt),
                             scalar(self.eps))
        store = rounder(dtype)  # the fused kernel rounds once, on store (a no-op otherwise)
        fields = (t, store(m).astype(dtype), store(v).astype(dtype),
                  None if vmax is None else store(vmax).astype(dtype))
        if p32 is None or not (decays and self.decoupled):
            # param.addcdiv_ adds this quotient to the parameter in float32 and rounds once,
            # as apply_updates does with a float32 update.
            return (neg_step_size * m) / denom, fields
        return update_to(store(k.addcdiv(p32, m, denom, neg_step_size)), p), fields
