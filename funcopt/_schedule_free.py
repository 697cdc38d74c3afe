"""Schedule-free AdamW, SGD and RAdam (package ``schedulefree`` 1.4.1), exact, as optax
transformations, and the weights ``optimizer.eval()`` / ``.train()`` would hold.

The reference keeps three sequences: z (the base iterates), x (their weighted average, the
weights to evaluate) and y (where gradients are taken, between them). Its parameters hold y
in train mode, and so do the params a funcopt update works on; x is
:func:`schedule_free_eval_params`. Per step ``t = k + 1``, with the learning rate
:math:`\\eta_t` (the base rate times a warmup or RAdam's rectification):

.. math::
    \\eta_{\\max} &= \\max(\\eta_t, \\eta_{\\max}), \\quad
    w_t = t^r \\eta_{\\max}^{p}, \\quad S_t = S_{t-1} + w_t, \\quad c_t = w_t / S_t \\\\
    g' &= \\text{normalize}(g) + \\lambda y \\\\
    y &\\leftarrow (1 - c_t)\\, y + c_t z + \\eta_t (\\beta_1 (1 - c_t) - 1)\\, g', \\qquad
    z \\leftarrow z - \\eta_t g'

(``normalize`` divides by :math:`\\sqrt{v / (1 - \\beta_2^t)} + \\epsilon` with
:math:`v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2`; the identity for SGD.) The group-level
values (:math:`k`, :math:`S` = ``weight_sum``, :math:`\\eta_{\\max}` = ``lr_max``) are Python
floats in the reference: they are carried here as float64-accurate float32 pairs, so the
coefficients reach the float32 arithmetic rounded exactly as the reference rounds them.

How exact, under ``jit`` (XLA forms torch's fused multiply-adds there): the scalars are
the reference's, bit for bit (tested over 30,000 steps), when ``weight_lr_power`` and ``r``
are among 0, 0.5, 1, 2, 3, 4 and the hyperparameters are Python floats (a schedule's value,
or an injected one, enters as float32); z and ``exp_avg_sq`` then match bit for bit, and y
wherever an additive update can express the reference's value (``p + (y' - p)`` cannot
always land on ``y'`` when a step ends near zero). torch hands large float32 tensors' square
roots to MKL, which is an ulp low on ~0.6% of them; XLA's is correctly rounded.

Differences that have no JAX meaning: the reference's ``step()`` raises unless ``.train()``
was called, and it divides ``p.grad`` in place (``.grad`` is left holding the normalized
gradient plus the decay). funcopt's state starts in train mode, and an update takes its
params as y without being able to check: a state converted from an optimizer in eval mode
(``train_mode`` False, params holding x) needs :func:`schedule_free_train_params` first.
Gradients are never modified. ``foreach`` is not an argument: funcopt follows its default
(True, what the Trainer gets), whose CPU path runs the per-tensor kernels, except that for
bf16 tensors ``_foreach_mul_`` rounds its scalar (``beta2``) to bf16 and ``mul_`` does not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core
from funcopt import _double_float as df
from funcopt._numerics import f32, find_state, rounder
from funcopt._schedule_free_rule import (
    AdamWScheduleFree,
    RAdamScheduleFree,
    ScheduleFreeState,
    SGDScheduleFree,
    lerp,
)

__all__ = ["ScheduleFreeState", "schedule_free_adamw", "schedule_free_sgd",
           "schedule_free_radam", "schedule_free_eval_params", "schedule_free_train_params"]


def _check_common(learning_rate, weight_decay, r, weight_lr_power):
    _checks.learning_rate("learning_rate", learning_rate)
    _checks.number("weight_decay", weight_decay, low=0.0)
    _checks.number("r", r, low=-float("inf"), high=float("inf"), low_open=True,
                   high_open=True, allowed="a finite number")
    _checks.number("weight_lr_power", weight_lr_power, low=0.0,
                   allowed=">= 0.0 (a negative power raises ZeroDivisionError in the "
                           "reference whenever the scheduled learning rate is 0)")


def _check_betas(b1, b2, eps):
    _checks.number("b1", b1, low=0.0, high=1.0, low_open=True,
                   allowed="in (0.0, 1.0] (optimizer.eval() divides by b1)")
    _checks.number("b2", b2, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
    _checks.number("eps", eps, low=0.0)


def _check_warmup(warmup_steps):
    _checks.number("warmup_steps", warmup_steps, low=0.0,
                   allowed=">= 0 (a number of steps; the Trainer passes a ratio unchanged)")


def schedule_free_adamw(learning_rate=0.0025, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                        warmup_steps=0, r=0.0, weight_lr_power=2.0,
                        mask=None) -> optax.GradientTransformation:
    r"""``schedulefree.AdamWScheduleFree``: schedule-free AdamW (see the module doc's math).

    The learning rate is warmed up linearly, :math:`\eta_t = \eta \min(1, t / W)` for the
    first ``warmup_steps`` :math:`W` steps (the reference's ``(k+1)/warmup_steps`` while
    ``k < warmup_steps``, so a fractional ``W`` such as 0.1 gives a factor 10 at step 1), then
    constant: no schedule is needed, though ``learning_rate`` may be one. Weight decay
    :math:`\lambda` is added to the normalized gradient at y (where ``mask`` is True). The
    update works on y; evaluate with :func:`schedule_free_eval_params`.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr`` (a schedule's value enters
        as float32, where the reference multiplies Python floats).
      b1: :math:`\beta_1`, the interpolation between x and z, in (0, 1].
      b2: :math:`\beta_2`, in [0, 1). Give b1 and b2 as Python floats for exact parity.
      eps: added to the root, >= 0.
      weight_decay: :math:`\lambda` >= 0.
      warmup_steps: :math:`W` >= 0 (int or float).
      r: the polynomial weighting power of the average, :math:`t^r`.
      weight_lr_power: :math:`p` >= 0, the averaging weight's power of ``lr_max``. Other
        values than 0, 0.5, 1, 2, 3, 4 (and ``r`` outside those) are taken as float32
        powers, which puts the averaging weight ~1e-7 (relative) off the reference's.
      mask: optional pytree of bools like the params (or a callable) selecting the leaves
        that decay (the Trainer's decay group).

    Example (the reference, on torch's gradients of the same loss, ends at the same y and x,
    bit for bit):
      >>> import jax, jax.numpy as jnp, optax, funcopt
      >>> target = jnp.array([0.4, 0.2, -0.5])
      >>> loss = lambda w: jnp.mean((w - target) ** 2)
      >>> opt = funcopt.schedule_free_adamw(learning_rate=0.05, warmup_steps=5)
      >>> @jax.jit
      ... def step(w, state):
      ...     updates, state = opt.update(jax.grad(loss)(w), state, w)
      ...     return optax.apply_updates(w, updates), state
      >>> w = jnp.array([0.1, -0.2, -0.1])
      >>> state = opt.init(w)
      >>> for _ in range(20):
      ...     w, state = step(w, state)
      >>> print(w, funcopt.schedule_free_eval_params(state, w))
      [ 0.40721464  0.16454047 -0.46454045] [ 0.3974098   0.14748615 -0.44748613]
    """
    _check_common(learning_rate, weight_decay, r, weight_lr_power)
    _check_betas(b1, b2, eps)
    _check_warmup(warmup_steps)
    return _core.transformation(AdamWScheduleFree(
        learning_rate, b1, weight_decay, r, weight_lr_power, mask, b2, eps, warmup_steps))


def schedule_free_sgd(learning_rate=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0,
                      r=0.0, weight_lr_power=2.0, mask=None) -> optax.GradientTransformation:
    r"""``schedulefree.SGDScheduleFree``: schedule-free SGD (the module doc's math with the
    gradient itself, :math:`\beta_1` = ``momentum``).

    Warmup, decay and averaging are as in :func:`schedule_free_adamw`; the state has no
    second moment. (The Trainer's ``schedule_free_sgd`` always uses momentum 0.9.)

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      momentum: in (0, 1), as the reference checks.
      weight_decay: >= 0, added to the gradient at y.
      warmup_steps, r, weight_lr_power, mask: as in :func:`schedule_free_adamw`.

    Example (the reference ends at the same values, bit for bit):
      >>> import jax, jax.numpy as jnp, optax, funcopt
      >>> target = jnp.array([0.4, 0.2, -0.5])
      >>> loss = lambda w: jnp.mean((w - target) ** 2)
      >>> opt = funcopt.schedule_free_sgd(learning_rate=0.5)
      >>> @jax.jit
      ... def step(w, state):
      ...     updates, state = opt.update(jax.grad(loss)(w), state, w)
      ...     return optax.apply_updates(w, updates), state
      >>> w = jnp.array([0.1, -0.2, -0.1])
      >>> state = opt.init(w)
      >>> for _ in range(20):
      ...     w, state = step(w, state)
      >>> print(w)
      [ 0.42267954  0.23023936 -0.5302393 ]
    """
    _check_common(learning_rate, weight_decay, r, weight_lr_power)
    _checks.number("momentum", momentum, low=0.0, high=1.0, low_open=True, high_open=True,
                   allowed="in (0.0, 1.0), exclusive (as the reference checks)")
    _check_warmup(warmup_steps)
    return _core.transformation(SGDScheduleFree(
        learning_rate, momentum, weight_decay, r, weight_lr_power, mask, warmup_steps))


def schedule_free_radam(learning_rate=0.0025, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                        r=0.0, weight_lr_power=2.0, silent_sgd_phase=True,
                        mask=None) -> optax.GradientTransformation:
    r"""``schedulefree.RAdamScheduleFree``: schedule-free RAdam (no warmup argument).

    The learning rate is :math:`\eta_t = \eta\, \rho`-rectified: with
    :math:`\rho_\infty = 2 / (1 - \beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)`, the factor is
    :math:`\sqrt{(\rho_t - 4)(\rho_t - 2)\rho_\infty / ((\rho_\infty - 4)(\rho_\infty - 2)
    \rho_t)}` while :math:`\rho_t > 4`, and before that the gradient is not normalized and
    the factor is 0 (``silent_sgd_phase``: no step at all, about the first 4 steps with
    :math:`\beta_2 = 0.999`; the averaging weight is then 0 too) or 1 (plain SGD steps).

    Args:
      learning_rate, b1, b2, eps, weight_decay, r, weight_lr_power, mask: as in
        :func:`schedule_free_adamw`.
      silent_sgd_phase: whether the first steps leave the parameters unchanged.

    Example (the reference ends at the same values, bit for bit; its first four steps leave
    the parameters where they are):
      >>> import jax, jax.numpy as jnp, optax, funcopt
      >>> target = jnp.array([0.4, 0.2, -0.5])
      >>> loss = lambda w: jnp.mean((w - target) ** 2)
      >>> opt = funcopt.schedule_free_radam(learning_rate=0.05)
      >>> @jax.jit
      ... def step(w, state):
      ...     updates, state = opt.update(jax.grad(loss)(w), state, w)
      ...     return optax.apply_updates(w, updates), state
      >>> w = jnp.array([0.1, -0.2, -0.1])
      >>> state = opt.init(w)
      >>> for _ in range(20):
      ...     w, state = step(w, state)
      >>> print(w)
      [ 0.1288295  -0.17098287 -0.12901716]
    """
    _check_common(learning_rate, weight_decay, r, weight_lr_power)
    _check_betas(b1, b2, eps)
    if not isinstance(silent_sgd_phase, bool | jax.Array):
        raise TypeError(f"silent_sgd_phase must be a bool, got {silent_sgd_phase!r}.")
    return _core.transformation(RAdamScheduleFree(
        learning_rate, b1, weight_decay, r, weight_lr_power, mask, b2, eps, silent_sgd_phase))


def _state(state) -> ScheduleFreeState:
    found = find_state(state, ScheduleFreeState)
    if found is None:
        raise ValueError("schedule_free_eval_params/train_params need the state of a "
                         "schedule-free optimizer (a ScheduleFreeState inside it).")
    return found


@jax.jit
def _lerp_tree(params, z, weight):
    """torch's ``p.lerp_(z, weight)`` on every leaf, jitted also when called eagerly (the
    fused multiply-add forms under jit only)."""

    def leaf(p, zz):
        out = lerp(p.astype(f32), zz.astype(f32), weight)
        return rounder(p.dtype)(out).astype(p.dtype)

    return jax.tree.map(leaf, params, z)


def schedule_free_eval_params(state, params):
    r"""The weights ``optimizer.eval()`` would leave in the parameters: x from y.

    :math:`x = y + (1 - 1/\beta_1)(z - y)` as the reference's ``p.lerp_(z, weight=1 - 1 /
    beta1)`` rounds it (``beta1`` is the state's ``b1``). ``state`` is the schedule-free
    optimizer's state or any optax state containing it; with ``train_mode`` False (a state
    converted from an optimizer in eval mode) the params already hold x and are returned
    unchanged. ``eval()`` and ``train()`` are not exact inverses in float32: going back from
    x with :func:`schedule_free_train_params` lands on y for most elements, not all (with the
    reference: 0.45% of the elements move, by up to 4e-6 relative, after 20 AdamW steps),
    which is why a training loop keeps y and computes x only to evaluate.

    >>> import jax, jax.numpy as jnp, optax, funcopt
    >>> opt = funcopt.schedule_free_sgd(learning_rate=0.1)
    >>> w = jnp.array([1.0, -2.0])
    >>> state = opt.init(w)
    >>> for g in (jnp.array([1.0, 1.0]), jnp.array([0.5, -0.3])):
    ...     updates, state = jax.jit(opt.update)(g, state, w)
    ...     w = optax.apply_updates(w, updates)
    >>> print(w, funcopt.schedule_free_eval_params(state, w))
    [ 0.8725 -2.0835] [ 0.875     -2.0849998]
    """
    s = _state(state)
    one = df.const(1.0)
    weight = df.sub(one, df.div(one, df.unpair(s.b1))).hi
    x = _lerp_tree(params, s.z, weight)
    return jax.tree.map(lambda a, b: jnp.where(s.train_mode, a, b), x, params)


def schedule_free_train_params(state, eval_params):
    r"""The weights ``optimizer.train()`` would restore from x: :math:`y = x + (1 - \beta_1)
    (z - x)`, rounded as the reference's ``p.lerp_(z, weight=1 - beta1)``.

    Always applied (whatever ``train_mode`` says): give it x, e.g. parameters loaded from a
    checkpoint the reference saved in eval mode. Not an exact inverse of
    :func:`schedule_free_eval_params` in float32 (nor is the reference's ``train()`` of its
    ``eval()``).

    >>> import jax, jax.numpy as jnp, optax, funcopt
    >>> opt = funcopt.schedule_free_sgd(learning_rate=0.1)
    >>> w = jnp.array([1.0, -2.0])
    >>> state = opt.init(w)
    >>> for g in (jnp.array([1.0, 1.0]), jnp.array([0.5, -0.3])):
    ...     updates, state = jax.jit(opt.update)(g, state, w)
    ...     w = optax.apply_updates(w, updates)
    >>> x = funcopt.schedule_free_eval_params(state, w)
    >>> print(x, funcopt.schedule_free_train_params(state, x))
    [ 0.875     -2.0849998] [ 0.8725 -2.0835]
    """
    s = _state(state)
    weight = df.sub(df.const(1.0), df.unpair(s.b1)).hi
    return _lerp_tree(eval_params, s.z, weight)
