"""``funcopt.stable_adamw``'s step as one pass on raw float32 memory
(``funcopt/_kernels/stable_adamw.cc``): funcopt.torch's in-place path for
``optimi.StableAdamW``, bitwise the XLA path.

StableAdamW clips each tensor's learning rate by an RMS over the whole tensor,

.. math::
    \\eta' = \\eta / \\max\\!\\big(1, \\sqrt{\\mathrm{mean}(g^2 / \\max(v', \\epsilon^2))}\\big),

a float32 sum whose rounding depends on its order. The kernel does not form it: the leaf
scalars ``(eta', keep')`` (the clipped learning rate and decay factor) come from the rule's
own JAX code, jitted over read-only views of the gradients and second moments (XLA's
summation order, the XLA path's bits); the kernel then makes the one elementwise pass that
reads ``p, g, m, v`` and writes ``p, m, v`` in place. :func:`direct_entry` checks the pair bit
for bit against the jitted XLA update + ``apply_updates`` before first use (clipped and
unclipped leaves, decay on and off, ``decouple_lr``, both branches of torch's ``lerp``) and
refuses the kernel, with a warning, if this machine's compiler made it round otherwise.

>>> import numpy as np
>>> from funcopt._stable_adamw import StableAdamW
>>> rule = StableAdamW.validated(np.float32(1e-2), 0.9, 0.99, 0.0, 1e-6, False, None, None,
...                              None)
>>> read = (np.full(4, 3.0, np.float32), np.zeros(4, np.float32), np.float32(1e-12))
>>> c, group, leaf = direct_scalars(rule)(np.float32(1e-2), 0, (), [read])
>>> c.shape, leaf.shape  # (b1_comp, b2_hat, b2_comp, eps); (lr, keep) per leaf
((4,), (1, 2))
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _core
from funcopt._kernels import _direct
from funcopt._numerics import f32, rounder
from funcopt._stable_adamw import StableAdamW, second_moment

__all__ = ["direct_entry", "direct_flags", "direct_scalars", "numpy_step", "WIDTH"]

#: Pointers per leaf: (p, g, m, v).
WIDTH = 4


def direct_scalars(rule: StableAdamW):
    """``(lr, count, group, reads) -> (coefficients, group, leaf_scalars)`` (JAX) for
    ``rule`` with its learning rate replaced by ``lr`` (float32), at the group's update count
    ``count`` (before this update), for float32 leaves given as ``reads``, one ``(grad,
    exp_avg_sq, eps_sq)`` per leaf (only read): ``coefficients`` = ``(b1_comp, b2_hat,
    b2_comp, eps)``, ``leaf_scalars`` ``(L, 2)`` = each leaf's clipped ``(lr, keep)`` from the
    new second moment, as :meth:`StableAdamW.update_leaf` forms them; ``group`` (no group
    fields: optimi's group step is the count) passes through."""

    def scalars(lr, count, group, reads):
        r = dataclasses.replace(rule, learning_rate=lr)
        lr, keep, b1_comp, b2_hat, b2_comp = r.scalars(jnp.asarray(count, jnp.int32))
        same = rounder(f32)  # float32 leaves: no rounding between the ops
        rows = [jnp.stack(r.stabilized(lr, keep, g, second_moment(g, v, b2_hat, b2_comp, same),
                                       eps_sq, same)) for g, v, eps_sq in reads]
        coefficients = jnp.stack([jnp.asarray(x, f32) for x in (b1_comp, b2_hat, b2_comp,
                                                                 np.float32(rule.eps))])
        return coefficients, group, jnp.stack(rows) if rows else jnp.zeros((0, 2), f32)

    return scalars


@functools.lru_cache(maxsize=64)
def _jitted_scalars(rule: StableAdamW):
    return jax.jit(direct_scalars(rule))


def direct_flags(rule: StableAdamW, decays) -> np.ndarray:
    """The direct entry point's per-leaf flags: 1 where a leaf decays."""
    return np.array([bool(d) and rule.decays_any() for d in decays], np.uint8)


@functools.cache
def direct_entry():
    """``(function, fp_control)`` of ``funcopt_stable_adamw_f32`` (pointers ``(p, g, exp_avg,
    exp_avg_sq)`` per leaf), checked bit for bit against the XLA path, or ``None``."""
    return _direct.checked_entry("stable_adamw", "funcopt_stable_adamw_f32", _agrees)


def numpy_step(entry, rule: StableAdamW, grads, state, params):
    """The direct entry point on NumPy copies of a JAX problem: JAX ``(params, state)`` as
    ``rule``'s update + ``apply_updates`` returns them (for the check and the tests)."""
    plan = _core.prepare(rule, grads, state, params)
    arrays = [[np.array(x, np.float32) for x in (p, g, m, v)]
              for g, p, (m, v, _, _), _ in plan.leaves]
    reads = [(a[1], a[3], np.asarray(f[2])) for a, (_, _, f, _)
             in zip(arrays, plan.leaves, strict=True)]
    coefficients, _, leaf_scalars = _jitted_scalars(dataclasses.replace(rule, mask=None))(
        np.float32(rule.learning_rate), int(plan.count), (), reads)
    _direct.call(entry[0], [[a.ctypes.data for a in leaf] for leaf in arrays],
                 [leaf[0].size for leaf in arrays], coefficients, leaf_scalars,
                 direct_flags(rule, [d for *_, d in plan.leaves]), entry[1], 2)
    fields = [(jnp.asarray(a[2]), jnp.asarray(a[3]), f[2], f[3])
              for a, (_, _, f, _) in zip(arrays, plan.leaves, strict=True)]
    new_state = _core.assemble(rule.State, plan.treedef, optax.safe_increment(plan.count),
                               fields)
    return jax.tree.unflatten(plan.treedef, [jnp.asarray(a[0]) for a in arrays]), new_state


def check_problem():
    """``(params, grads by step)``: awkward values (subnormals, signed zeros, huge values)
    over several kernel blocks, with gradients growing 5x per step so that the RMS clips."""
    rng = np.random.default_rng(0)
    scale = np.float32([1.0, 1e-3, 1e-20, 1e-38, 1e-39, 0.0, -0.0, 3e18])
    params = {"w": rng.standard_normal(2 * 2**16 + 7).astype(np.float32),
              "b": scale, "c": rng.standard_normal((3, 5)).astype(np.float32)}
    grads = {k: (v[::-1] * 0.01 if v.ndim == 1 else v * 0.1) for k, v in params.items()}
    by_step = [{k: jnp.asarray(v * np.float32(5.0 ** t)) for k, v in grads.items()}
               for t in range(4)]
    return {k: jnp.asarray(v) for k, v in params.items()}, by_step


def check_rules() -> list[StableAdamW]:
    """Rules as ``funcopt.torch`` builds them (a float32 learning rate, not a Python float):
    decay on all, on some leaves, off, and ``decouple_lr``."""
    lr = np.float32(1e-2)
    make = StableAdamW.validated
    return [make(lr, 0.9, 0.99, 0.1, 1e-6, False, None, None, None),
            make(lr, 0.8, 0.999, 0.3, 1e-8, False, None, None,
                 {"w": True, "b": False, "c": True}),
            make(lr, 0.9, 0.99, 0.0, 0.0, False, None, None, None),
            make(lr, 0.95, 0.9, 0.2, 1e-6, True, 0.05, None, None)]


def _agrees(entry) -> bool:
    """Whether the kernel gives the XLA path's bits after four steps of each check rule."""
    return _direct.agrees(
        check_rules(), *check_problem(), functools.partial(numpy_step, entry),
        "funcopt's stable_adamw CPU kernel, as this machine's compiler built it, does not "
        "round like XLA, so funcopt.torch's StableAdamW uses the XLA path (same numbers, "
        "slower).", stacklevel=4)
