"""``funcopt.sgd``'s step as one pass on raw float32 memory (``funcopt/_kernels/sgd.cc``):
funcopt.torch's in-place path for ``torch.optim.SGD``, bitwise the XLA path.

The direct entry point alone (no XLA FFI handler): :mod:`funcopt.torch._direct` calls it on
torch tensors, with the step scalars this module computes in JAX (the XLA path's numbers).
It is checked bit for bit against ``funcopt.sgd``'s jitted update + ``apply_updates`` before
first use, and refused (with a warning) if this machine's compiler made it round otherwise.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _core
from funcopt._fused_adamw import agrees, xla_reference
from funcopt._kernels import _direct
from funcopt._numerics import f32
from funcopt._sgd import SGD
from funcopt._torch_ops import complement, scalar

__all__ = ["direct_entry", "direct_flags", "scalars_of"]

# The kernel's per-leaf flags (sgd.cc).
DECAYS, MAXIMIZE, MOMENTUM, NESTEROV = 1, 2, 4, 8


def direct_scalars(rule: SGD):
    """``(lr, steps) -> (coefficients, leaf_scalars)``: (-lr, weight decay, momentum,
    1 - dampening, first step) for ``rule`` with its learning rate replaced by ``lr``
    (float32), the update count the leaves' largest step (as ``funcopt.torch`` counts); no
    leaf scalars (an empty ``(L, 0)`` array)."""

    def scalars(lr, steps):
        r = dataclasses.replace(rule, learning_rate=lr)
        lr, first = r.scalars(jnp.max(steps, initial=0))
        coefficients = jnp.stack([jnp.asarray(x, f32) for x in (
            -lr, scalar(rule.weight_decay), scalar(rule.momentum),
            complement(rule.dampening), jnp.where(first, f32(1), f32(0)))])
        return coefficients, jnp.zeros((steps.shape[0], 0), f32)

    return scalars


@functools.lru_cache(maxsize=64)
def scalars_of(rule: SGD) -> _direct.Scalars:
    """The direct entry point's scalars for ``rule`` (learning rate replaced at each call)."""
    return _direct.Scalars(direct_scalars(rule))


def direct_flags(rule: SGD, decays) -> np.ndarray:
    """The direct entry point's per-leaf flags for leaves with ``decays``."""
    common = (MAXIMIZE * rule.maximize | MOMENTUM * rule.has_buffer()
              | NESTEROV * rule.nesterov)
    return np.array([common | DECAYS * bool(d) for d in decays], np.uint8)


@functools.cache
def direct_entry():
    """``(function, fp_control)`` of ``funcopt_sgd_f32`` (pointers ``(p, g, momentum_buffer
    or null)`` per leaf), checked bit for bit against the XLA path, or ``None``."""
    return _direct.checked_entry("sgd", "funcopt_sgd_f32", _agrees)


def _numpy_step(entry, rule, grads, state, params):
    """The direct entry point on NumPy copies of a JAX problem (for the check)."""
    plan = _core.prepare(rule, grads, state, params)
    arrays = [[np.array(x, np.float32) for x in (p, g, b) if x is not None]
              for g, p, (b,), _ in plan.leaves]
    static = dataclasses.replace(rule, mask=None)
    count = int(plan.count)
    coefficients, leaf_scalars = scalars_of(static)(rule.learning_rate,
                                                    [count] * len(arrays))
    _direct.call(entry[0], [[a.ctypes.data for a in leaf] + [0] * (3 - len(leaf))
                            for leaf in arrays], [leaf[0].size for leaf in arrays],
                 coefficients, leaf_scalars,
                 direct_flags(static, [d for *_, d in plan.leaves]), entry[1], 2)
    fields = [(jnp.asarray(leaf[2]) if len(leaf) > 2 else None,) for leaf in arrays]
    new_state = _core.assemble(rule.State, plan.treedef, optax.safe_increment(plan.count),
                               fields)
    return jax.tree_util.tree_unflatten(plan.treedef,
                                        [jnp.asarray(leaf[0]) for leaf in arrays]), new_state


def _check_rules() -> list[SGD]:
    # The learning rate as funcopt.torch hands it: a float32 value, not a Python float.
    lr = np.float32(1e-2)
    return [SGD.validated(lr, 0.9, 0.1, 0.1, False, False, None),
            SGD.validated(lr, 0.8, 0.0, 0.0, True, True, None),
            SGD.validated(lr, 0.0, 0.0, 0.3, False, False, {"w": True, "b": False})]


def _agrees(entry) -> bool:
    """Whether the direct entry point gives the XLA path's bits on the awkward problem
    (subnormals, signed zeros, overflow; the first step and the next); warns if not."""
    rules = _check_rules()
    return agrees(rules, xla_reference(rules), lambda rule: functools.partial(
        _numpy_step, entry, rule), "sgd", "funcopt.torch's SGD", stacklevel=5)
