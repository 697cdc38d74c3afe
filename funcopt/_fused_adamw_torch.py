"""``funcopt.adamw_torch_fused``'s update and ``optax.apply_updates`` as one in-place step on
the CPU (the C++ kernel ``funcopt/_kernels/adamw_torch.cc``), bitwise equal to the two."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _core
from funcopt._adam_torch import AdamTorch
from funcopt._fused_adamw import (
    FusedOptimizer,
    _xla_step,
    agrees,
    checked_target,
    dispatch,
    xla_reference,
)
from funcopt._kernels import _direct
from funcopt._numerics import f32, is_static
from funcopt._torch_ops import complement, scalar

__all__ = ["fused_adamw_torch"]

# The kernel's per-leaf flags (adamw_torch.cc).
DECAYS, DECOUPLED, MAXIMIZE, AMSGRAD, FUSED_TAIL = 1, 2, 4, 8, 32


def fused_adamw_torch(learning_rate=1e-3, b1: float = 0.9, b2: float = 0.999,
                      eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                      maximize: bool = False, mask=None) -> FusedOptimizer:
    r""":func:`funcopt.adamw_torch_fused` with the update applied in the same pass: for speed
    on CPU (``torch.optim.AdamW(fused=True)``'s numbers, the Trainer's default optimizer).

    ``step(grads, state, params)`` returns exactly (bit for bit) what
    ``updates, state = adamw_torch_fused(...).update(grads, state, params)`` followed by
    ``optax.apply_updates(params, updates)`` return under ``jit``; the state is the same
    :class:`funcopt.AdamTorchState`, so the two are interchangeable at any step. On the CPU
    every float32 leaf goes through one C++ kernel (``funcopt/_kernels/adamw_torch.cc``,
    built on first use like :func:`funcopt.fused_adamw`'s and checked bit for bit against the
    XLA path first) that reads ``p, g, m, v`` and writes ``p, m, v`` once (plus
    ``max_exp_avg_sq`` with ``amsgrad``), in place, on XLA's thread pool: 7 memory accesses
    per parameter where the optax interface makes 10. Other dtypes, other platforms, a
    multi-device mesh and machines without a C++ compiler take the XLA path (same numbers);
    ``FUNCOPT_DISABLE_KERNELS=1`` forces it. Donate the parameters and the state to the
    ``jit`` that runs the step. The limits of :func:`funcopt.fused_adamw` apply (not a
    ``GradientTransformation``, not differentiable, opaque to the SPMD partitioner).

    Args: those of :func:`funcopt.adamw_torch_fused`, with the same checks.

    Example (a donated training step, and the same three steps through the optax interface):
      >>> import functools, jax, jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.fused_adamw_torch(learning_rate=0.1, weight_decay=0.0)
      >>> loss = lambda w: jnp.sum((w - jnp.array([0.5, -0.5])) ** 2)
      >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
      ... def train_step(w, state):
      ...     return opt.step(jax.grad(loss)(w), state, w)
      >>> w, state = jnp.zeros(2), opt.init(jnp.zeros(2))
      >>> for _ in range(3):
      ...     w, state = train_step(w, state)
      >>> print(w.round(4))
      [ 0.2951 -0.2951]
      >>> tx, v = funcopt.adamw_torch_fused(learning_rate=0.1, weight_decay=0.0), jnp.zeros(2)
      >>> s = tx.init(v)
      >>> for _ in range(3):
      ...     u, s = jax.jit(tx.update)(jax.grad(loss)(v), s, v)
      ...     v = optax.apply_updates(v, u)
      >>> bool((v == w).all())
      True
    """
    rule = AdamTorch.validated(learning_rate, b1, b2, eps, weight_decay, amsgrad, maximize,
                               mask, decoupled=True, fused=True)
    return FusedOptimizer(functools.partial(init, rule), functools.partial(step, rule))


def init(rule: AdamTorch, params):
    """The rule's zero state, every leaf its own buffer (``init_leaf`` hands one zeros array
    to both moments, which could not both be donated to the step)."""
    seen = set()

    def distinct(x):
        if id(x) in seen:
            return jnp.copy(x)
        seen.add(id(x))
        return x

    return jax.tree.map(distinct, _core.init(rule, params))


def step(rule: AdamTorch, grads, state, params):
    """The fused step of ``rule`` (any :class:`~funcopt._adam_torch.AdamTorch`)."""
    return dispatch("fused_adamw_torch", _target,
                    lambda target, *a: _kernel_step(target, rule, *a),
                    lambda *a: _xla_step(rule, *a), grads, state, params)


def kernel_scalars(rule: AdamTorch, scalars, t):
    """The kernel's float32 ``coefficients`` (w, w - 1, b2, 1 - b2, eps, decay factor, weight
    decay, |w| < 0.5) with ``w = 1 - b1`` (the moment's lerp weight) and ``leaf_scalars``
    (-step_size, bias_correction2_sqrt) per leaf at its incremented float32 step in the
    vector ``t``: the values the XLA path computes, elementwise."""
    w = complement(rule.b1)
    small = abs(float(w)) < 0.5 if is_static(rule.b1) else jnp.abs(w) < 0.5
    decay = scalars[4] if scalars[4] is not None else f32(1)
    coefficients = jnp.stack([jnp.asarray(x, f32) for x in (
        w, w - 1, scalar(rule.b2), complement(rule.b2), scalar(rule.eps), decay,
        scalar(rule.weight_decay), jnp.where(small, f32(1), f32(0)))])
    neg_step_size, bc2_sqrt = rule._at_step(scalars, t)
    leaf_scalars = jnp.stack([jnp.broadcast_to(x, t.shape).astype(f32)
                              for x in (neg_step_size, bc2_sqrt)], axis=-1)
    return coefficients, leaf_scalars


def flags(rule: AdamTorch, decays) -> np.ndarray:
    """The kernel's per-leaf flags for leaves with ``decays``."""
    common = (DECOUPLED * rule.decoupled | MAXIMIZE * rule.maximize | AMSGRAD * rule.amsgrad
              | FUSED_TAIL * rule.fused)
    return np.array([common | DECAYS * bool(d) for d in decays], np.int64)


@functools.cache
def _target() -> str | None:
    """The registered kernel, built on first use and checked bit for bit against the XLA
    path (a compiler whose flags break IEEE arithmetic is refused)."""
    return checked_target("adamw_torch", "FuncoptAdamTorchF32", lambda target: _agrees(
        lambda r: jax.jit(functools.partial(_kernel_step, target, r)), "fused_adamw_torch"))


def kernel_available() -> bool:
    """Whether the CPU kernel is built, checked and registered (building it on first call)."""
    return _target() is not None


def _fast(leaf) -> bool:
    g, p, (_, m, v, v_max), _ = leaf
    moments = (m, v) if v_max is None else (m, v, v_max)
    return all(x.dtype == f32 and x.shape == p.shape for x in (p, *moments)) and (
        g.shape == p.shape)


def _kernel_step(target, rule: AdamTorch, grads, state, params):
    plan = _core.prepare(rule, grads, state, params)
    fast = [i for i, leaf in enumerate(plan.leaves) if _fast(leaf)]
    out = [None if i in fast else rule.update_leaf(plan.scalars, *leaf)  # bf16: XLA's path
           for i, leaf in enumerate(plan.leaves)]
    new_p = [None if o is None else optax.apply_updates(leaf[1], o[0])
             for leaf, o in zip(plan.leaves, out, strict=True)]
    fields = [None if o is None else o[1] for o in out]
    if fast:
        steps = [plan.leaves[i][2][0] + 1 for i in fast]  # torch's float32 step
        coefficients, leaf_scalars = kernel_scalars(rule, plan.scalars, jnp.stack(steps))
        operands, results, aliases = [], [], {}
        for i in fast:
            g, p, (_, *moments), _ = plan.leaves[i]
            moments = [x for x in moments if x is not None]
            at = 2 + len(operands)  # operands 0-1: the coefficients and the leaf scalars
            aliases |= {at: len(results)} | {at + 2 + j: len(results) + 1 + j
                                             for j in range(len(moments))}
            operands += [p, g.astype(f32), *moments]
            results += [jax.ShapeDtypeStruct(p.shape, f32)] * (1 + len(moments))
        kernel = jax.ffi.ffi_call(target, results, input_output_aliases=aliases,
                                  vmap_method="sequential")
        flat = iter(kernel(coefficients, leaf_scalars, *operands,
                           flags=flags(rule, [plan.leaves[i][3] for i in fast])))
        for k, i in enumerate(fast):
            new_p[i], m, v = next(flat), next(flat), next(flat)
            fields[i] = (steps[k], m, v, next(flat) if rule.amsgrad else None)
    new_state = _core.assemble(rule.State, plan.treedef, optax.safe_increment(plan.count),
                               fields)
    return jax.tree_util.tree_unflatten(plan.treedef, new_p), new_state


# -- the direct entry point: the same step on memory outside XLA (funcopt.torch) ------------


def direct_scalars(rule: AdamTorch):
    """``(lr, steps) -> (coefficients, leaf_scalars)`` for ``rule`` with its learning rate
    replaced by ``lr`` (float32), leaves at ``steps`` (int32, before this update) and the
    update count their maximum (as ``funcopt.torch`` counts): ``step``'s numbers."""

    def scalars(lr, steps):
        r = dataclasses.replace(rule, learning_rate=lr)
        count = jnp.max(steps, initial=0)
        return kernel_scalars(r, r.scalars(count), steps.astype(f32) + 1)

    return scalars


@functools.lru_cache(maxsize=64)
def scalars_of(rule: AdamTorch) -> _direct.Scalars:
    """The direct entry point's scalars for ``rule`` (learning rate replaced at each call),
    made once per rule."""
    return _direct.Scalars(direct_scalars(rule))


def direct_flags(rule: AdamTorch, decays) -> np.ndarray:
    """The direct entry point's per-leaf flags."""
    return flags(rule, decays).astype(np.uint8)


@functools.cache
def direct_entry():
    """``(function, fp_control)`` of the kernel's direct entry point
    (``funcopt_adam_torch_f32``, pointers ``(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq or
    null)`` per leaf), checked bit for bit against the XLA path, or ``None``."""
    if _target() is None:
        return None
    return _direct.checked_entry("adamw_torch", "funcopt_adam_torch_f32", lambda entry: _agrees(
        lambda r: functools.partial(_direct_numpy_step, entry, r),
        "funcopt.torch's torch.optim.AdamW"))


def _direct_numpy_step(entry, rule, grads, state, params):
    """The direct entry point on NumPy copies of a JAX problem (for the check)."""
    plan = _core.prepare(rule, grads, state, params)
    arrays = [[np.array(x, np.float32) for x in (p, g, *moments) if x is not None]
              for g, p, (_, *moments), _ in plan.leaves]
    steps = [int(t) for _, _, (t, *_), _ in plan.leaves]
    static = dataclasses.replace(rule, mask=None)
    coefficients, leaf_scalars = scalars_of(static)(rule.learning_rate, steps)
    _direct.call(entry[0], [[a.ctypes.data for a in leaf] + [0] * (5 - len(leaf))
                            for leaf in arrays], [leaf[0].size for leaf in arrays],
                 coefficients, leaf_scalars,
                 direct_flags(static, [d for *_, d in plan.leaves]), entry[1], 2)
    fields = [(jnp.float32(t + 1), *(jnp.asarray(x) for x in leaf[2:]),
               *([None] * (5 - len(leaf)))) for t, leaf in zip(steps, arrays, strict=True)]
    new_state = _core.assemble(rule.State, plan.treedef, optax.safe_increment(plan.count),
                               fields)
    new_p = [jnp.asarray(leaf[0]) for leaf in arrays]
    return jax.tree_util.tree_unflatten(plan.treedef, new_p), new_state


# -- the check before first use --------------------------------------------------------------


def _check_rules() -> list[AdamTorch]:
    # The learning rate as funcopt.torch hands it to the direct entry point: a float32 value,
    # not a Python float (whose float64 digits the XLA path would use).
    make = functools.partial(AdamTorch.validated, np.float32(1e-2), 0.9, 0.999, 1e-8, 0.1,
                             mask=None, decoupled=True, fused=True)
    rules = [make(False, False), make(True, True)]
    rules.append(dataclasses.replace(rules[0], b1=0.3, decoupled=False,
                                     mask={"w": True, "b": False}))
    return rules


@functools.cache
def _xla_reference() -> tuple:
    return xla_reference(_check_rules())


def _agrees(kernel_step, what) -> bool:
    """:func:`funcopt._fused_adamw.agrees` for adamw_torch's kernels: AdamW, AdamW with
    amsgrad and maximize, and Adam (L2, masked, the other lerp branch)."""
    return agrees(_check_rules(), _xla_reference(), kernel_step, "adamw_torch", what,
                  stacklevel=6)
