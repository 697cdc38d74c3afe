"""``funcopt.adamw``'s update and ``optax.apply_updates`` as one in-place step: the fast path
on CPU, bitwise equal to the two of them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _adamw, _kernels
from funcopt._numerics import f32

__all__ = ["FusedOptimizer", "fused_adamw"]


class FusedOptimizer(NamedTuple):
    """An optimizer whose step applies its update to the parameters itself.

    Attributes:
      init: ``params -> state``.
      step: ``(grads, state, params) -> (new_params, new_state)``: the transformation's
        ``update`` followed by ``optax.apply_updates``, as one computation.

    >>> import jax.numpy as jnp, funcopt
    >>> opt = funcopt.fused_adamw(learning_rate=0.1, eps=0.0, weight_decay=0.5)
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> params, state = opt.step({"w": jnp.array([0.5, -0.5])}, opt.init(params), params)
    >>> params["w"].round(6)  # (1 - 0.1) * (1 - 0.1 * 0.5), (2 + 0.1) * (1 - 0.1 * 0.5)
    Array([0.855, 1.995], dtype=float32)
    """

    init: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any]]


def fused_adamw(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    correct_bias: bool = True,
    mask=None,
) -> FusedOptimizer:
    r""":func:`funcopt.adamw` with the update applied in the same pass: for speed on CPU.

    ``step(grads, state, params)`` returns exactly (bit for bit) what
    ``updates, state = adamw(...).update(grads, state, params)`` followed by
    ``optax.apply_updates(params, updates)`` return under ``jit``, and the state is the same
    :class:`funcopt.AdamWState`, so the two are interchangeable at any step (checkpoints, the
    torch bridge's converters, ``funcopt.state_shardings``).

    Why: the AdamW step is memory-bound, and XLA:CPU writes each output of an elementwise
    computation in its own loop, so the optax interface costs three passes per leaf (new
    :math:`m`, new :math:`v`, then the new parameter reading both back): 10 memory accesses per
    parameter where 7 are needed (read :math:`p, g, m, v`; write :math:`p, m, v`). On the CPU,
    this step runs every float32 leaf through one C++ kernel (``funcopt/_kernels/adamw.cc``,
    built with the system's C++ compiler on first use and cached) that makes the 7, in place,
    on XLA's thread pool. Other dtypes, other platforms (GPU and TPU backends already fuse the
    three outputs) and machines without a C++ compiler (a ``RuntimeWarning`` says so once) take
    the XLA path: same numbers, only slower. ``FUNCOPT_DISABLE_KERNELS=1`` forces it.

    Donate the parameters and the state to the ``jit`` that runs the step (``donate_argnums``)
    so that the kernel writes into their buffers; otherwise XLA copies them first. The kernel
    is opaque to XLA's SPMD partitioner: for parameters sharded over several devices use
    :func:`funcopt.adamw` (or call the step inside ``jax.shard_map``).

    Args: those of :func:`funcopt.adamw`, with the same checks.

    Example (a donated training step; the numbers are ``funcopt.adamw``'s):
      >>> import functools, jax, jax.numpy as jnp, funcopt
      >>> opt = funcopt.fused_adamw(learning_rate=0.2)
      >>> target = jnp.array([0.4, 0.2, -0.5])
      >>> loss = lambda w: jnp.mean((w - target) ** 2)
      >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
      ... def train_step(w, state):
      ...     return opt.step(jax.grad(loss)(w), state, w)
      >>> w = jnp.array([0.1, -0.2, -0.1])
      >>> state = opt.init(w)
      >>> for _ in range(100):
      ...     w, state = train_step(w, state)
      >>> print(w.round(6))
      [ 0.401178  0.201738 -0.501738]
    """
    hyper = _adamw._validated(learning_rate, b1, b2, eps, weight_decay, correct_bias, mask)

    def step(grads, state, params):
        return _step(hyper, grads, state, params)

    return FusedOptimizer(_adamw._init, step)


def _hyper(**kwargs) -> _adamw._Hyper:
    """The validated hyperparameters of ``fused_adamw(**kwargs)``."""
    bound = inspect.signature(fused_adamw).bind(**kwargs)
    bound.apply_defaults()
    return _adamw._validated(**bound.arguments)


def _xla_step(hyper, grads, state, params):
    plan = _adamw._plan(hyper, grads, state, params)
    out = [_adamw._leaf(hyper, plan, *leaf) for leaf in plan.leaves]
    new_params = optax.apply_updates(params, plan.unflatten([o[0] for o in out]))
    return new_params, plan.next_state(out)


def _step(hyper, grads, state, params, external=None):
    """The fused step.

    ``external``: None, or one bool per leaf marking float32 parameters whose memory XLA does
    not own (torch tensors imported through DLPack, never copied): the CPU kernel updates those
    in place, and their entries of the returned parameters are None. The caller guarantees
    that such a leaf is float32 on the CPU and that the kernel is available
    (:func:`kernel_available`).
    """
    if params is None:
        raise ValueError("fused_adamw's step needs the parameters: step(grads, state, params).")
    target = _kernels.target("adamw", "FuncoptAdamWF32")
    if external is not None:
        return _kernel_step(target, hyper, grads, state, params, external)
    if target is None:
        return _xla_step(hyper, grads, state, params)

    def cpu_step(grads, state, params):
        return _kernel_step(target, hyper, grads, state, params, None)

    return jax.lax.platform_dependent(
        grads, state, params, cpu=cpu_step, default=lambda *a: _xla_step(hyper, *a)
    )


def kernel_available() -> bool:
    """Whether the CPU kernel is built and registered (building it on first call)."""
    return _kernels.target("adamw", "FuncoptAdamWF32") is not None


def _kernel_step(target, hyper, grads, state, params, external):
    plan = _adamw._plan(hyper, grads, state, params)
    if external is None:  # every float32 leaf through the kernel, in XLA-owned memory
        fast = [i for i, (_, m, _, p, _, _) in enumerate(plan.leaves)
                if p.dtype == f32 and m.dtype == f32]
    else:
        fast = [i for i, outside in enumerate(external) if outside]
    # Other leaves (bf16 or fp16 parameters and moments) take the XLA path.
    out = [None if i in fast else _adamw._leaf(hyper, plan, *leaf)
           for i, leaf in enumerate(plan.leaves)]
    new_p = [None if o is None else optax.apply_updates(leaf[3], o[0])
             for leaf, o in zip(plan.leaves, out, strict=True)]
    if fast:
        b1, one_minus_b1, b2, one_minus_b2 = _adamw._coefficients(hyper)
        coefficients = jnp.stack([jnp.asarray(x, f32) for x in (
            b1, one_minus_b1, b2, one_minus_b2, f32(hyper.eps), plan.decay_factor)])
        steps = [optax.safe_increment(plan.leaves[i][4]) for i in fast]
        step_sizes = jnp.stack([jnp.asarray(_adamw._step_size(hyper, plan.lr, t), f32)
                                for t in steps])
        per_leaf = 2 if external else 3
        operands, results, aliases = [], [], {}
        for k, i in enumerate(fast):
            g, m, v, p, _, _ = plan.leaves[i]
            operands += [p, g.astype(f32), m, v]
            results += [jax.ShapeDtypeStruct(p.shape, f32)] * per_leaf
            # Operands 0 and 1 are the coefficients and the step sizes.
            p_at, m_at, v_at = (2 + 4 * k + j for j in (0, 2, 3))
            if external:
                aliases |= {m_at: 2 * k, v_at: 2 * k + 1}
            else:
                aliases |= {p_at: 3 * k, m_at: 3 * k + 1, v_at: 3 * k + 2}
        decays = np.array([plan.leaves[i][5] for i in fast], np.int64)
        # (External parameters need no has_side_effect: the call's m' and v' are always used,
        # and effects would take jit's C++ fast path away.)
        kernel = jax.ffi.ffi_call(target, results, input_output_aliases=aliases)
        flat = kernel(coefficients, step_sizes, *operands, decays=decays,
                      param_results=not external)
        for k, i in enumerate(fast):
            if not external:
                new_p[i] = flat[3 * k]
            out[i] = (None, *flat[per_leaf * k + per_leaf - 2:per_leaf * (k + 1)], steps[k])
    return plan.unflatten(new_p), plan.next_state(out)
