"""The schedule-free rules (package ``schedulefree`` 1.4.1) on the optimizer core.

One base rule holds what the three share: the group-level scalars the reference keeps as
Python floats (:meth:`ScheduleFree.group_step`, in double-float arithmetic so that every value
handed to a float32 kernel is the float32 rounding of the reference's float64 value) and the
per-leaf step (:meth:`ScheduleFree.update_leaf`). The subclasses differ in the learning-rate
factor (a linear warmup for AdamW and SGD, RAdam's rectification) and in whether the gradient
is normalized by the second moment.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax.numpy as jnp
import numpy as np

from funcopt import _core
from funcopt import _double_float as df
from funcopt._in_place import after
from funcopt._numerics import (
    divide,
    f32,
    is_static,
    learning_rate_at,
    one_minus_power,
    rounder,
    unfused,
)

__all__ = ["ScheduleFreeState", "ScheduleFree", "AdamWScheduleFree", "SGDScheduleFree",
           "RAdamScheduleFree", "lerp"]


class ScheduleFreeState(NamedTuple):
    """State of the schedule-free optimizers: the reference's param-group entries, then its
    per-parameter state.

    Attributes:
      count: int32, the number of updates (it drives a ``learning_rate`` schedule).
      k: int32, the group's ``k`` (steps taken).
      weight_sum: float32 ``[hi, lo]``, the group's float64 ``weight_sum`` as ``hi + lo``.
      lr_max: float32 ``[hi, lo]``, the group's ``lr_max`` (-1 before the first step).
      train_mode: bool, the group's ``train_mode``: True when the params hold y (after
        ``init`` and every update); False for a state converted from an optimizer in eval
        mode, whose params hold x: give an update y, i.e.
        :func:`funcopt.schedule_free_train_params` of them (the reference's ``step()`` raises
        until ``.train()`` is called; an update here takes its params as y and cannot check).
      b1: float32 ``[hi, lo]``, beta1 (SGD: momentum) as the last update used it, which
        :func:`funcopt.schedule_free_eval_params` needs.
      z: pytree like the params, the state's ``z`` (in the parameters' dtypes).
      exp_avg_sq: pytree like the params, ``exp_avg_sq`` (None for SGD).

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.schedule_free_adamw().init({"w": jnp.ones(3)})
    >>> int(state.k), state.lr_max.tolist(), bool(state.train_mode), state.z["w"].tolist()
    (0, [-1.0, 0.0], True, [1.0, 1.0, 1.0])
    """

    count: Any
    k: Any
    weight_sum: Any
    lr_max: Any
    train_mode: Any
    b1: Any
    z: Any
    exp_avg_sq: Any


GROUP_FIELDS = ScheduleFreeState._fields[1:6]


class Scalars(NamedTuple):
    """What one update hands every leaf (float32, as the reference's kernels see them)."""

    lr: Any  # z.sub_(grad, alpha=lr)
    ckp1: Any  # y.lerp_(z, weight=ckp1)
    alpha: Any  # y.add_(grad, alpha=lr * (beta1 * (1 - ckp1) - 1))
    bias_correction2: Any  # exp_avg_sq.div(bias_correction2); None for SGD
    adam: Any  # RAdam: rho_t > 4 (normalize the gradient); True for AdamW


def lerp(a, b, w):
    """torch's ``a.lerp_(b, weight=w)`` on CPU for a float32 scalar ``w``: one fused
    multiply-add, ``fma(w, b - a, a)`` when ``|w| < 0.5`` and ``fma(w - 1, b - a, b)``
    otherwise (its vectorized and scalar paths agree). Both are formed and one selected:
    selecting the addend before the sum kept XLA from contracting a product added to it
    later, in the loop's first elements."""
    d = b - a
    return jnp.where(jnp.abs(w) < 0.5, w * d + a, (w - 1) * d + b)


def _pow(x: df.DF, p) -> df.DF:
    """Python's ``x ** p`` (``x >= 0``): exact for a static p in {0, 0.5, 1, 2, 3, 4}, the
    float32 power otherwise (an ulp or two of float32; the weights then differ from the
    reference's by ~1e-7 relative)."""
    if is_static(p) and p in (0, 0.5, 1, 2, 3, 4):
        if p == 0:
            return df.const(1.0)
        if p == 0.5:
            return df.sqrt(x)
        out = x
        for _ in range(int(p) - 1):
            out = df.mul(out, x)
        return out
    return df.of(jnp.power(x.hi, jnp.asarray(p, f32)))


def _power_tables(b2: float) -> tuple:
    """Host tables for ``b2 ** t``: ``1 - b2**j`` (the reference's bias correction for
    ``t < 256``), ``b2**(256 j)`` and ``b2**(65536 j)``, each ``[hi, lo]`` rows."""
    low = [1.0 - b2**j for j in range(256)]
    mid = [b2 ** (256 * j) for j in range(256)]
    high = [b2 ** (65536 * j) for j in range(256)]
    return tuple(np.array([df.split_float(x) for x in rows], np.float32)
                 for rows in (low, mid, high))


def _beta2_power(b2, t):
    """``(b2 ** t, 1 - b2 ** t)`` as DFs for the int32 step ``t >= 1`` (saturating at
    2**24 - 1 steps); a traced ``b2`` (already float32) takes float32 formulas."""
    if not is_static(b2):
        tf = t.astype(f32)
        b2 = jnp.asarray(b2, f32)
        return df.of(jnp.power(b2, tf)), df.of(one_minus_power(b2, tf))
    low, mid, high = _power_tables(float(b2))
    t = jnp.minimum(t, (1 << 24) - 1)
    power = df.mul(df.mul(df.sub(df.const(1.0), df.lookup(low, t & 255)),
                          df.lookup(mid, (t >> 8) & 255)), df.lookup(high, t >> 16))
    small = df.lookup(low, jnp.minimum(t, 255))
    return power, df.where(t < 256, small, df.sub(df.const(1.0), power))


@dataclasses.dataclass(frozen=True)
class ScheduleFree(_core.Rule):
    """What the three schedule-free rules share; subclasses set ``factor`` (and AdamW/RAdam
    ``b2``/``eps``)."""

    State: ClassVar[type] = ScheduleFreeState
    needs_params: ClassVar[bool] = True
    group_fields: ClassVar[tuple[str, ...]] = GROUP_FIELDS
    #: Whether the gradient is normalized by the second moment (AdamW, RAdam).
    adaptive: ClassVar[bool] = True

    learning_rate: Any
    b1: Any
    weight_decay: Any
    r: Any
    weight_lr_power: Any
    mask: Any

    def init_group(self) -> tuple:
        """``k = 0``, ``weight_sum = 0``, ``lr_max = -1``, train mode (the params hold y),
        and beta1 (momentum) as ``[hi, lo]``."""
        return (jnp.zeros([], jnp.int32), df.pair(df.const(0.0)), df.pair(df.const(-1.0)),
                jnp.ones([], jnp.bool_), df.pair(df.of(self.b1)))

    def factor(self, k, t: df.DF):
        """``(factor, (b2**t, 1 - b2**t) or None, adam)``: the learning rate's factor at the
        group's step ``k`` (``t = k + 1``), None when statically 1."""
        raise NotImplementedError

    def group_step(self, count, group: tuple):
        """One step of the reference's group-level Python-float arithmetic."""
        k, weight_sum, lr_max, _, _ = group
        t = df.of_int(k + 1)
        factor, powers, adam = self.factor(k, t)
        base = self.learning_rate
        lr = df.of(base if is_static(base) else learning_rate_at(base, count))
        if factor is not None:
            lr = df.mul(lr, factor)
        lr_max = df.maximum(lr, df.unpair(lr_max))
        weight = _pow(lr_max, self.weight_lr_power)
        if not (is_static(self.r) and self.r == 0):
            weight = df.mul(_pow(t, self.r), weight)
        weight_sum = df.add(df.unpair(weight_sum), weight)
        # ckp1 = weight / weight_sum, 0 where the reference's division raises.
        zero = df.const(0.0)
        ckp1 = df.where(weight_sum.hi == 0, zero, df.div(weight, weight_sum))
        b1, one = df.of(self.b1), df.const(1.0)
        alpha = df.mul(lr, df.sub(df.mul(b1, df.sub(one, ckp1)), one))
        scalars = Scalars(lr.hi, ckp1.hi, alpha.hi, None if powers is None else powers[1].hi,
                          adam)
        group = (k + 1, df.pair(weight_sum), df.pair(lr_max), jnp.ones([], jnp.bool_),
                 df.pair(b1))
        return scalars, group

    def init_leaf(self, p) -> tuple:
        """``(z, exp_avg_sq)``: z a copy of the parameter, the second moment zeros (None for
        SGD), both in the parameter's dtype as in the reference."""
        z = jnp.array(p, copy=True)
        return z, (jnp.zeros_like(p) if self.adaptive else None)

    def second_moment(self, g, v, rnd):
        """``_foreach_mul_(exp_avg_sq, beta2)``, ``_foreach_addcmul_(exp_avg_sq, grad, grad,
        value=1 - beta2)`` as torch rounds them: ``fma(round((1 - b2) g), g, round(b2 v))``
        (for bf16, ``_foreach_mul_`` rounds its scalar to bf16 first; ``mul_`` would not)."""
        b2 = self.b2
        one_minus = f32(1.0 - b2) if is_static(b2) else 1 - jnp.asarray(b2, f32)
        return rnd(one_minus * g * g + rnd(unfused(v.astype(f32) * rnd(jnp.asarray(b2, f32)))))

    def direction(self, s: Scalars, g, v, y, decays, rnd, sign):
        """``sign`` times the reference's step direction: ``grad / (sqrt(v / bias_correction2)
        + eps)`` (where RAdam normalizes) plus ``weight_decay * y``. For ``sign = -1`` it is
        computed from negated operands (the same numbers: each op is sign-symmetric), which
        keeps it a separate XLA expression: XLA will not duplicate a division into the two
        fusions that use it (z's and y's) and would write it to memory and read it back."""
        if sign < 0:
            g, v, y = -g, (None if v is None else -v), -y
        if self.adaptive:
            bc = s.bias_correction2 if sign > 0 else -s.bias_correction2
            denom = rnd(rnd(jnp.sqrt(rnd(divide(v, bc)))) + jnp.asarray(self.eps, f32))
            if is_static(self.eps) and self.eps == 0:
                denom = unfused(denom)  # keep torch's true division (no rsqrt rewrite)
            n = rnd(g / denom)
            g = n if s.adam is True else jnp.where(s.adam, n, g)
        if decays:
            g = rnd(y * rnd(jnp.asarray(self.weight_decay, f32)) + g)
        return g

    def step(self, s: Scalars, g, v, y, z, decays, rnd):
        """``(y', z')`` from y: ``y.lerp_(z, ckp1).add_(d, alpha)`` and ``z.sub_(d, lr)``
        (torch's bf16 ``add_`` rounds its ``alpha`` to bf16 first, hence ``rnd``)."""
        new_y = rnd(self.direction(s, g, v, y, decays, rnd, 1) * rnd(s.alpha)
                    + rnd(lerp(y, z, s.ckp1)))
        # z.sub_(d, alpha=lr) = fma(d, -lr, z) = fma(-d, lr, z)
        new_z = rnd(self.direction(s, g, v, y, decays, rnd, -1) * rnd(s.lr) + z)
        return new_y, new_z

    def update_leaf(self, s: Scalars, g, p, fields, decays):
        """One leaf: ``(y' - y, (z', exp_avg_sq'))`` for the params ``p = y``, the reference's
        in-place ops in order (``x.add_(y, alpha=a)`` is ``fma(y, a, x)``; XLA contracts each
        ``a * y + x``)."""
        z, v = fields
        rnd = rounder(p.dtype)
        p32, z32 = p.astype(f32), z.astype(f32)
        g = g.astype(f32)
        if self.adaptive:
            v = self.second_moment(g, v, rnd)
        new_y, new_z = self.step(s, g, v, p32, z32, decays, rnd)
        if decays:
            # z' reads y for the decay: y' waits for z' (a select never taken, no read), so
            # XLA overwrites the (donated) params in place instead of first copying them.
            new_y = after(new_y, new_z)
        v = None if v is None else v.astype(fields[1].dtype)
        # In float32 also for bf16 params: p + (y' - p) then lands on y' (a bf16 update would
        # round); exact wherever y' and p are within a factor 2 (Sterbenz).
        return new_y - p32, (new_z.astype(z.dtype), v)


def _warmup(warmup_steps, k, t: df.DF):
    """The reference's ``(k + 1) / warmup_steps if k < warmup_steps else 1.0``; None when
    statically 1."""
    if is_static(warmup_steps):
        if warmup_steps <= 0:
            return None
        inside = k < math.ceil(warmup_steps)  # k < w for an integer k
    else:
        warmup_steps = jnp.asarray(warmup_steps)
        inside = k.astype(f32) < warmup_steps.astype(f32)
    return df.where(inside, df.div(t, df.of(warmup_steps)), df.const(1.0))


@dataclasses.dataclass(frozen=True)
class AdamWScheduleFree(ScheduleFree):
    """``schedulefree.AdamWScheduleFree``."""

    b2: Any
    eps: Any
    warmup_steps: Any

    def factor(self, k, t):
        return _warmup(self.warmup_steps, k, t), _beta2_power(self.b2, k + 1), True


@dataclasses.dataclass(frozen=True)
class SGDScheduleFree(ScheduleFree):
    """``schedulefree.SGDScheduleFree`` (``b1`` is its momentum)."""

    adaptive: ClassVar[bool] = False
    warmup_steps: Any

    def factor(self, k, t):
        return _warmup(self.warmup_steps, k, t), None, True


@dataclasses.dataclass(frozen=True)
class RAdamScheduleFree(ScheduleFree):
    """``schedulefree.RAdamScheduleFree``: RAdam's rectification as the learning-rate factor,
    and the plain gradient (or no step, ``silent_sgd_phase``) while ``rho_t <= 4``."""

    b2: Any
    eps: Any
    silent_sgd_phase: Any

    def factor(self, k, t):
        power, bc2 = _beta2_power(self.b2, k + 1)
        one = df.const(1.0)
        b2 = self.b2
        if is_static(b2):  # the reference's float64 constants, exactly
            rho_inf = 2 / (1 - b2) - 1
            denom = df.const((rho_inf - 4) * (rho_inf - 2))
            rho_inf = df.const(rho_inf)
        else:
            rho_inf = df.sub(df.div(df.const(2.0), df.sub(one, df.of(b2))), one)
            denom = df.mul(df.sub(rho_inf, df.const(4.0)), df.sub(rho_inf, df.const(2.0)))
        # rho_t = rho_inf - 2 * step * beta2_t / bias_correction2
        rho_t = df.sub(rho_inf, df.div(df.mul(df.add(t, t), power), bc2))
        adam = df.greater(rho_t, df.const(4.0))
        ratio = df.div(df.mul(df.mul(df.sub(rho_t, df.const(4.0)), df.sub(rho_t, df.const(2.0))),
                              rho_inf), df.mul(denom, rho_t))
        sgd = jnp.where(jnp.asarray(self.silent_sgd_phase), f32(0), f32(1))
        return df.where(adam, df.sqrt(ratio), df.of(sgd)), (power, bc2), adam
