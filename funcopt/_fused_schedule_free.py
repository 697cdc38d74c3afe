"""``funcopt.schedule_free_adamw``'s update and ``optax.apply_updates`` as one in-place step:
the fast path on CPU, bitwise equal to the two of them."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax

from funcopt import _core
from funcopt._fused_adamw import FusedOptimizer, awkward_problem, checked_target, dispatch
from funcopt._kernels import _direct
from funcopt._numerics import f32
from funcopt._schedule_free import schedule_free_adamw
from funcopt._schedule_free_kernel import ADAPTIVE, CHECK_STEPS, DECAYS, direct_scalars
from funcopt._schedule_free_rule import AdamWScheduleFree, ScheduleFree

__all__ = ["fused_schedule_free_adamw"]


def fused_schedule_free_adamw(learning_rate=0.0025, b1=0.9, b2=0.999, eps=1e-8,
                              weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0,
                              mask=None) -> FusedOptimizer:
    r""":func:`funcopt.schedule_free_adamw` with the update applied in the same pass: for
    speed on CPU.

    ``step(grads, state, params)`` returns exactly (bit for bit) what
    ``updates, state = schedule_free_adamw(...).update(grads, state, params)`` followed by
    ``optax.apply_updates(params, updates)`` return under ``jit``, and the state is the same
    :class:`funcopt.ScheduleFreeState`, so the two are interchangeable at any step
    (checkpoints, :func:`funcopt.schedule_free_eval_params`, the torch bridge's converters).
    Per leaf, with the group's float32 scalars of the step (:math:`\eta_t`, :math:`c_t`, the
    bias correction :math:`bc_2`, all as :func:`funcopt.schedule_free_adamw` computes them):

    .. math::
        v &\leftarrow \beta_2 v + (1 - \beta_2) g^2, \qquad
        d = g / (\sqrt{v / bc_2} + \epsilon) + \lambda y \\
        z &\leftarrow z - \eta_t d, \qquad
        y \leftarrow \operatorname{lerp}(y, z_{\text{old}}, c_t)
              + \eta_t (\beta_1 (1 - c_t) - 1)\, d

    Why: the step is memory-bound, and XLA:CPU writes each output of an elementwise
    computation in its own loop: the exact y (a lerp toward the *old* z plus the step) makes
    it copy z before overwriting it and re-read g and the new v: 56 bytes per float32
    parameter (64 with weight decay; XLA's cost analysis, jaxlib 0.10.2) against
    ``optax.contrib.schedule_free_adamw``'s 52, where 28 are needed (read y, g, z, v; write
    y, z, v). On the CPU this step runs every float32 leaf through one C++ kernel
    (``funcopt/_kernels/schedule_free.cc``, built with the system's C++ compiler on first use
    and cached) that makes the 28, in place, on XLA's thread pool. The group state (``k``,
    ``weight_sum``, ``lr_max``) steps once, in JAX. Other dtypes (those leaves), other
    platforms and machines without a C++ compiler (a ``RuntimeWarning`` says so once) take the
    XLA path: same numbers, only slower. ``FUNCOPT_DISABLE_KERNELS=1`` forces it.

    Donate the parameters and the state to the ``jit`` that runs the step
    (``donate_argnums``) so that the kernel writes into their buffers; otherwise XLA copies
    them first. Before its first use the kernel is checked bit for bit against the XLA path
    (subnormals included, with and without decay and warmup) and refused, with a warning, if
    this machine's compiler made it round differently.

    Limits (those of :func:`funcopt.fused_adamw`): the kernel is opaque to XLA's SPMD
    partitioner, so under a multi-device mesh (``jax.set_mesh``, or parameters typed with
    explicit mesh axes) the step takes the XLA path and shards like
    :func:`funcopt.schedule_free_adamw`; parameters sharded with auto axes *outside*
    ``jax.set_mesh`` cannot be detected while tracing and would be gathered onto every device:
    use :func:`funcopt.schedule_free_adamw` there. Under ``vmap`` the kernel runs once per
    batch element. ``step`` is not differentiable, and a ``FusedOptimizer`` is not a
    ``GradientTransformation``: for ``optax.chain`` or ``inject_hyperparams`` use
    :func:`funcopt.schedule_free_adamw`, whose state is the same.

    Args: those of :func:`funcopt.schedule_free_adamw`, with the same checks.

    Example (a donated training step; the numbers are ``schedule_free_adamw``'s):
      >>> import functools, jax, jax.numpy as jnp, funcopt
      >>> opt = funcopt.fused_schedule_free_adamw(learning_rate=0.05, warmup_steps=5)
      >>> target = jnp.array([0.4, 0.2, -0.5])
      >>> loss = lambda w: jnp.mean((w - target) ** 2)
      >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
      ... def train_step(w, state):
      ...     return opt.step(jax.grad(loss)(w), state, w)
      >>> w = jnp.array([0.1, -0.2, -0.1])
      >>> state = opt.init(w)
      >>> for _ in range(20):
      ...     w, state = train_step(w, state)
      >>> print(w, funcopt.schedule_free_eval_params(state, w))
      [ 0.40721464  0.16454047 -0.46454045] [ 0.3974098   0.14748615 -0.44748613]
    """
    rule = _core.rule_of(schedule_free_adamw(learning_rate, b1, b2, eps, weight_decay,
                                             warmup_steps, r, weight_lr_power, mask))
    return FusedOptimizer(functools.partial(_core.init, rule), functools.partial(step, rule))


def step(rule: ScheduleFree, grads, state, params):
    """The fused step: the kernel on the CPU (float32 leaves), XLA's elsewhere."""
    return dispatch("fused_schedule_free_adamw", _target,
                    lambda target, *a: _kernel_step(target, rule, *a),
                    functools.partial(_direct.xla_step, rule), grads, state, params)


def _fast(rule: ScheduleFree, leaf) -> bool:
    g, p, (z, v), _ = leaf
    arrays = (p, z, v) if rule.adaptive else (p, z)
    return g.shape == p.shape and all(x.dtype == f32 and x.shape == p.shape for x in arrays)


def _kernel_step(target, rule: ScheduleFree, grads, state, params):
    plan = _core.prepare(rule, grads, state, params)
    fast = [i for i, leaf in enumerate(plan.leaves) if _fast(rule, leaf)]
    # Other leaves (bf16 or fp16 parameters or state) take the XLA path.
    out = [None if i in fast else rule.update_leaf(plan.scalars, *leaf)
           for i, leaf in enumerate(plan.leaves)]
    new_p = [None if o is None else optax.apply_updates(leaf[1], o[0])
             for leaf, o in zip(plan.leaves, out, strict=True)]
    fields = [None if o is None else _core._keep_types(tuple(o[1]), leaf[2])
              for leaf, o in zip(plan.leaves, out, strict=True)]
    if fast:
        n_group = len(rule.group_fields)
        # The group's scalars again (XLA computes them once): the kernel's f32[9].
        coefficients, _ = direct_scalars(rule)(rule.learning_rate, plan.count,
                                               tuple(state[1:1 + n_group]))
        width = 4 if rule.adaptive else 3  # (y, g, z[, v]) in, (y, z[, v]) out
        operands, results, aliases = [], [], {}
        for k, i in enumerate(fast):
            g, p, (z, v), _ = plan.leaves[i]
            operands += [p, g.astype(f32), z, v][:width]
            results += [jax.ShapeDtypeStruct(p.shape, f32)] * (width - 1)
            first, out_first = 1 + width * k, (width - 1) * k  # operand 0: coefficients
            aliases |= {first: out_first} | {first + j: out_first + j - 1
                                             for j in range(2, width)}
        flags = np.array([ADAPTIVE * rule.adaptive | DECAYS * bool(plan.leaves[i][3])
                          for i in fast], np.int64)
        # Under vmap the kernel runs once per batch element.
        kernel = jax.ffi.ffi_call(target, results, input_output_aliases=aliases,
                                  vmap_method="sequential")
        flat = kernel(coefficients, *operands, flags=flags)
        for k, i in enumerate(fast):
            new_p[i], *new_fields = flat[(width - 1) * k:(width - 1) * (k + 1)]
            fields[i] = (*new_fields, None)[:2]
    new_state = _core.assemble(rule.State, plan.treedef, optax.safe_increment(plan.count),
                               fields, plan.group)
    return jax.tree_util.tree_unflatten(plan.treedef, new_p), new_state


@functools.cache
def _target() -> str | None:
    """The registered kernel, built on first use and checked bit for bit against the XLA
    path (:func:`_same_as_xla`)."""
    return checked_target("schedule_free", "FuncoptScheduleFreeF32", _same_as_xla)


def kernel_available() -> bool:
    """Whether the CPU kernel is built, checked and registered (building it on first call)."""
    return _target() is not None


def check_rules() -> list[ScheduleFree]:
    """The rules the check runs: decay on one leaf with a fractional warmup and
    ``weight_lr_power`` 2; no decay, ``eps = 0``, ``r = 1``, ``weight_lr_power`` 0.5."""
    return [
        AdamWScheduleFree(1e-2, 0.9, 0.1, 0.0, 2.0, {"w": True, "b": False}, 0.999, 1e-8, 1.5),
        AdamWScheduleFree(1e-2, 0.95, 0.0, 1.0, 0.5, None, 0.9, 0.0, 0),
    ]


def _same_as_xla(target) -> bool:
    """Whether the FFI handler registered as ``target`` gives the XLA path's bits on the
    awkward problem (subnormals, signed zeros, overflow, several kernel blocks) after
    :data:`~funcopt._schedule_free_kernel.CHECK_STEPS` steps of each :func:`check_rules`
    rule; warns if not."""
    params, grads = awkward_problem()
    return _direct.ffi_agrees(
        target, _kernel_step, check_rules(), params, [grads] * CHECK_STEPS,
        "funcopt's schedule_free CPU kernel, as this machine's compiler built it, does not "
        "round like XLA, so fused_schedule_free_adamw uses the XLA path (same numbers, "
        "slower).", stacklevel=5)
