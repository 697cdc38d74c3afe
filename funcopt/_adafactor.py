"""Hugging Face ``transformers.Adafactor`` (the fairseq port) as an optax transformation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt._numerics import divide, f32, find_state, is_static, learning_rate_at, unfused

__all__ = ["AdafactorState", "adafactor", "adafactor_learning_rates"]


class AdafactorState(NamedTuple):
    """State of :func:`adafactor`, field for field ``transformers.Adafactor``'s per-parameter
    state. Every field but ``count`` is a pytree like the params; a field is ``None`` where
    the reference keeps no such entry (``exp_avg`` without ``beta1``, ``exp_avg_sq_row`` and
    ``exp_avg_sq_col`` for leaves with ndim < 2, ``exp_avg_sq`` for leaves with ndim >= 2).
    Moments are float32 (float64 for float64 parameters), whatever the parameters' dtype.

    Attributes:
      count: int32 scalar, updates made; drives a learning-rate schedule.
      step: int32 scalar per leaf, torch's ``state["step"]``.
      rms: float32 scalar per leaf, RMS of the parameter before its last update (``"RMS"``).
      lr: float32 scalar per leaf, the step size used at the last update (what
        ``AdafactorSchedule`` reports; read it with :func:`adafactor_learning_rates`).
      exp_avg: first moment (only with ``beta1``), the parameter's shape.
      exp_avg_sq_row: factored second moment, shape ``shape[:-1]``.
      exp_avg_sq_col: factored second moment, shape ``shape[:-2] + shape[-1:]``.
      exp_avg_sq: unfactored second moment, the parameter's shape.

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.adafactor().init({"w": jnp.zeros((2, 3, 4)), "b": jnp.zeros(4)})
    >>> state.exp_avg_sq_row["w"].shape, state.exp_avg_sq_col["w"].shape
    ((2, 3), (2, 4))
    >>> state.exp_avg_sq["b"].shape, state.exp_avg_sq["w"], state.exp_avg
    ((4,), None, None)
    """

    count: jax.Array
    step: Any
    rms: Any
    lr: Any
    exp_avg: Any
    exp_avg_sq_row: Any
    exp_avg_sq_col: Any
    exp_avg_sq: Any


def state_dtype(dtype):
    """Adafactor's state dtype for a parameter of ``dtype``: float32, float64 for float64."""
    return jnp.promote_types(dtype, f32).type


def _rms(x):
    # torch: x.norm(2) / numel ** 0.5 (the divisor is a Python float, rounded to x's dtype)
    return jnp.sqrt(jnp.sum(x * x)) / jnp.asarray(math.sqrt(x.size), x.dtype)


def adafactor(
    learning_rate=None,
    eps=(1e-30, 1e-3),
    clip_threshold: float = 1.0,
    decay_rate: float = -0.8,
    beta1: float | None = None,
    weight_decay: float = 0.0,
    scale_parameter: bool = True,
    relative_step: bool = True,
    warmup_init: bool = False,
) -> optax.GradientTransformation:
    r"""``transformers.Adafactor``: factored second moments, relative step sizes, update clipping.

    For a parameter :math:`p` with gradient :math:`g` at its step :math:`t`:

    .. math::
        \rho &= \min(10^{-6} t \text{ if warmup\_init else } 10^{-2},\ 1/\sqrt t)
              \text{ if relative\_step else the learning rate} \\
        \alpha &= \max(\epsilon_2, \mathrm{RMS}(p))\,\rho \text{ if scale\_parameter else } \rho,
        \qquad \hat\beta_{2t} = 1 - t^{c}\ (c = \text{decay\_rate}) \\
        R &\leftarrow \hat\beta_{2t} R + (1-\hat\beta_{2t})\,\mathrm{mean}_{-1}(g^2+\epsilon_1) \\
        C &\leftarrow \hat\beta_{2t} C + (1-\hat\beta_{2t})\,\mathrm{mean}_{-2}(g^2+\epsilon_1) \\
        U &= g \,/\, \sqrt{R_i C_j / \mathrm{mean}_k R_k}
        \quad\text{(unfactored: } V \leftarrow \hat\beta_{2t} V
        + (1-\hat\beta_{2t})(g^2+\epsilon_1),\ U = g/\sqrt V) \\
        U &\leftarrow \alpha\, U / \max(1, \mathrm{RMS}(U)/d), \qquad
        M \leftarrow \beta_1 M + (1-\beta_1) U,\ U = M \text{ (with beta1)} \\
        p &\leftarrow p - \lambda \alpha p - U

    Every leaf with ndim >= 2 is factored over its last two axes (no minimum size, unlike
    ``optax.adafactor``); RMS is of the parameter *before* the update; the first moment
    averages the clipped, lr-scaled update (transformers#34506). bf16/fp16 parameters are
    updated in float32 and rounded back; the state is float32.

    Args:
      learning_rate: None with ``relative_step=True`` (the default); otherwise a float >= 0
        or a schedule ``count -> lr``.
      eps: ``(eps1, eps2)``: added to the squared gradient, and the floor of the parameter
        scale.
      clip_threshold: update clipping threshold :math:`d` > 0.
      decay_rate: exponent :math:`c` <= 0 of the second-moment decay.
      beta1: first-moment decay in [0, 1], or None for no first moment.
      weight_decay: decay rate :math:`\lambda` >= 0, scaled by :math:`\alpha`.
      scale_parameter: scale the step by the parameter's RMS.
      relative_step: compute a time-dependent step size instead of ``learning_rate``.
      warmup_init: warm the relative step up linearly (needs ``relative_step``).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> params = {"w": jnp.array([0.1, -0.2, -0.1])}
      >>> opt = funcopt.adafactor(learning_rate=1e-2, relative_step=False,
      ...                         scale_parameter=False)
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.array([-0.2, -0.267, 0.267])}, state, params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 0.11, -0.19, -0.11], dtype=float32)
    """
    return _core.transformation(Adafactor.validated(
        learning_rate, eps, clip_threshold, decay_rate, beta1, weight_decay, scale_parameter,
        relative_step, warmup_init))


@dataclasses.dataclass(frozen=True)
class Adafactor(_core.Rule):
    r"""adafactor's validated hyperparameters and leaf functions.

    A leaf's update is three steps, each its own method so that variants reuse them (GaLore
    runs :meth:`scaled_update` on a projected gradient with moments of the projected shape):
    :meth:`step_size` (the per-leaf learning rate :math:`\alpha`, also what the torch
    bridge records), :meth:`scaled_update` (second moments, clipping, :math:`\alpha`,
    first moment) and :meth:`param_update` (decay and the parameter's rounding).
    """

    State: ClassVar[type] = AdafactorState
    needs_params: ClassVar[bool] = True  # the step size scales with RMS(p)
    learning_rate: Any
    eps1: Any
    eps2: Any
    clip_threshold: Any
    decay_rate: Any
    beta1: Any
    weight_decay: Any
    scale_parameter: bool
    relative_step: bool
    warmup_init: bool

    @classmethod
    def validated(cls, learning_rate=None, eps=(1e-30, 1e-3), clip_threshold=1.0,
                  decay_rate=-0.8, beta1=None, weight_decay=0.0, scale_parameter=True,
                  relative_step=True, warmup_init=False) -> Adafactor:
        if learning_rate is not None and relative_step:
            raise ValueError(
                f"learning_rate={learning_rate!r} cannot be combined with relative_step=True: "
                "pass relative_step=False to use a manual learning rate, or learning_rate=None."
            )
        if warmup_init and not relative_step:
            raise ValueError("warmup_init=True requires relative_step=True.")
        if learning_rate is None and not relative_step:
            raise ValueError(
                "relative_step=False needs a learning_rate (a float >= 0 or a schedule); "
                "transformers.Adafactor would fail on its first step with a TypeError."
            )
        if learning_rate is not None:
            _checks.learning_rate("learning_rate", learning_rate)
        if not (isinstance(eps, tuple | list) and len(eps) == 2):
            raise ValueError(f"eps={eps!r} is invalid: it must be a pair (eps1, eps2).")
        eps1, eps2 = eps
        _checks.number("eps[0]", eps1, low=0.0)
        _checks.number("eps[1]", eps2, low=0.0)
        _checks.number("clip_threshold", clip_threshold, low=0.0, low_open=True)
        _checks.number("decay_rate", decay_rate, high=0.0)
        if beta1 is not None:
            _checks.number("beta1", beta1, low=0.0, high=1.0, allowed="in [0.0, 1.0] or None")
        _checks.number("weight_decay", weight_decay, low=0.0)
        for name, flag in (("scale_parameter", scale_parameter),
                           ("relative_step", relative_step), ("warmup_init", warmup_init)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}.")
        return cls(learning_rate, eps1, eps2, clip_threshold, decay_rate, beta1, weight_decay,
                   scale_parameter, relative_step, warmup_init)

    def scalars(self, count):
        """The learning rate at ``count`` (float32), or None under ``relative_step``."""
        return None if self.relative_step else learning_rate_at(self.learning_rate, count)

    def init_leaf(self, p) -> tuple:
        """``(step, rms, lr, exp_avg, exp_avg_sq_row, exp_avg_sq_col, exp_avg_sq)``."""
        sd = state_dtype(p.dtype)
        return (jnp.zeros([], jnp.int32), jnp.zeros([], sd), jnp.zeros([], f32),
                *self.init_moments(p))

    def init_moments(self, x) -> tuple:
        """Zero ``(exp_avg, exp_avg_sq_row, exp_avg_sq_col, exp_avg_sq)`` for gradients
        shaped like ``x``, in :func:`state_dtype`; None where the reference keeps none."""
        sd = state_dtype(x.dtype)
        factored = x.ndim >= 2
        return (
            jnp.zeros_like(x, sd) if self.beta1 is not None else None,
            # Reduced zeros: the factors' shapes and, on a mesh, x's sharding without the
            # reduced axis (under jit XLA folds them to constants).
            jnp.zeros_like(x, sd).sum(axis=-1) if factored else None,
            jnp.zeros_like(x, sd).sum(axis=-2) if factored else None,
            None if factored else jnp.zeros_like(x, sd),
        )

    def step_size(self, step, rms, lr):
        r""":math:`\alpha`, a leaf's learning rate at its (incremented) ``step`` with the
        parameter RMS ``rms``, in ``rms``'s dtype; ``lr`` is :meth:`scalars`'s value."""
        sd = rms.dtype
        c = lambda x: jnp.asarray(x, sd)  # a hyperparameter, static or injected
        t = jnp.asarray(step).astype(sd)
        if self.relative_step:
            min_step = c(1e-6) * t if self.warmup_init else c(1e-2)
            rho = jnp.minimum(min_step, 1 / jnp.sqrt(t))
        else:
            rho = lr.astype(sd)
        if self.scale_parameter:
            return jnp.where(rms > self.eps2, rms * rho, c(self.eps2) * rho)
        return rho

    def update_leaf(self, lr, g, p, fields, decays):
        """One leaf's ``(update, new_fields)``."""
        step, _, _, *moments = fields
        p32 = p.astype(state_dtype(p.dtype))
        step = optax.safe_increment(step)
        rms = _rms(p32)
        alpha = self.step_size(step, rms, lr)
        u, moments = self.scaled_update(g, step, alpha, moments)
        return self.param_update(p, u, alpha, decays), (step, rms, alpha.astype(f32), *moments)

    def scaled_update(self, g, step, alpha, moments):
        """``(U, new_moments)``: the clipped, ``alpha``-scaled update for gradient ``g`` (with
        ``beta1``, its running mean), from ``moments`` as :meth:`init_moments` shapes them.
        Computed in ``alpha``'s dtype (the state dtype)."""
        exp_avg, row, col, sq = moments
        sd = alpha.dtype
        c = lambda x: jnp.asarray(x, sd)  # a hyperparameter, static or injected
        g = g.astype(sd)
        decay = jnp.power(step.astype(sd), c(self.decay_rate))  # 1 - beta2t
        beta2t = 1 - decay
        # Sums put the product torch fuses (x.add_(y, alpha=a) is fma(a, y, x)) on the left,
        # where XLA contracts it into the same fused multiply-add.
        u = unfused(g * g) + c(self.eps1)
        if row is not None:
            row = decay * jnp.mean(u, axis=-1) + row * beta2t
            col = decay * jnp.mean(u, axis=-2) + col * beta2t
            r_factor = jax.lax.rsqrt(divide(row, jnp.mean(row, axis=-1, keepdims=True)))[..., None]
            c_factor = jax.lax.rsqrt(col)[..., None, :]
            u = (r_factor * c_factor) * g
        else:
            sq = decay * u + sq * beta2t
            u = jax.lax.rsqrt(sq) * g
        u = divide(u, jnp.maximum(_rms(u) / c(self.clip_threshold), c(1.0)))
        u = u * alpha
        if self.beta1 is not None:
            beta1 = self.beta1
            one_minus_beta1 = c(1.0 - beta1) if is_static(beta1) else 1 - c(beta1)
            exp_avg = one_minus_beta1 * u + exp_avg * c(beta1)
            u = exp_avg
        return u, (exp_avg, row, col, sq)

    def param_update(self, p, u, alpha, decays: bool):
        """The update that takes ``p`` to ``p - weight_decay * alpha * p - u`` rounded to
        ``p``'s dtype, as the reference's in-place ops round it."""
        sd = alpha.dtype
        p32 = p.astype(sd)
        if decays:
            new = (-jnp.asarray(self.weight_decay, sd) * alpha) * p32 + p32
            new = (new - u).astype(p.dtype)
            return (new.astype(sd) - p32).astype(p.dtype)
        if p.dtype != sd:
            return ((p32 - u).astype(p.dtype).astype(sd) - p32).astype(p.dtype)
        return -u


def adafactor_learning_rates(state):
    """The learning rate each leaf used at its last step, as a pytree like the params.

    HF's ``AdafactorSchedule`` logs the first parameter's value; this gives every leaf's.
    Before the first update the values are 0.0 (``AdafactorSchedule``'s initial_lr). The
    state may be an :class:`AdafactorState` or any optax state containing one (``chain``,
    ``inject_hyperparams``, ``MultiSteps``).

    >>> import jax.numpy as jnp, funcopt
    >>> opt = funcopt.adafactor()
    >>> params = {"w": jnp.ones((2, 2))}
    >>> _, state = opt.update({"w": jnp.ones((2, 2))}, opt.init(params), params)
    >>> funcopt.adafactor_learning_rates(state)
    {'w': Array(0.01, dtype=float32)}
    """
    found = find_state(state, AdafactorState)
    if found is None:
        raise TypeError(
            f"adafactor_learning_rates needs a funcopt.adafactor state, got {type(state).__name__}."
        )
    return found.lr
