"""The schedule-free step (``funcopt.schedule_free_adamw``, ``schedule_free_sgd``,
``schedule_free_radam``) as one pass on raw float32 memory (``funcopt/_kernels/
schedule_free.cc``): funcopt.torch's in-place path for schedulefree's three classes, bitwise
the XLA path.

Per leaf, with the group's float32 scalars of the step (the rule's own
:meth:`~funcopt._schedule_free_rule.ScheduleFree.group_step`, run here in JAX):

.. math::
    v &\\leftarrow \\beta_2 v + (1 - \\beta_2) g^2 \\quad \\text{(AdamW, RAdam)}, \\qquad
    d = g / (\\sqrt{v / bc_2} + \\epsilon) \\ \\text{(where it normalizes, else } g)
        + \\lambda y \\\\
    z &\\leftarrow z - \\eta_t d, \\qquad
    y \\leftarrow \\operatorname{lerp}(y, z, c_t) + \\eta_t (\\beta_1 (1 - c_t) - 1)\\, d

(each operation rounded as the XLA path rounds it; ``schedule_free.cc`` spells out where the
fused multiply-adds are). The group state (``k``, ``weight_sum``, ``lr_max``, ...) steps in
JAX, not in the kernel: :func:`direct_scalars` takes it and returns the new one.

The direct entry point alone (no XLA FFI handler): :mod:`funcopt.torch._direct` calls it on
torch tensors. It is checked bit for bit against the rules' jitted update + ``apply_updates``
before first use (AdamW with a fractional warmup, SGD, RAdam through its SGD phase into the
normalized one, silent or not; decaying and non-decaying leaves; several ``r`` and
``weight_lr_power``), and refused (with a warning) if this machine's compiler made it round
otherwise.

One known exception (jaxlib 0.10.2): without normalization (SGD, RAdam's SGD phase) and
with decay, XLA:CPU rounds ``y``'s ``d * alpha + lerp`` on leaves of roughly 10 to 63
elements as an unfused product in some elements (measured: a few elements of such leaves
per step; none on leaves of 64 and more, nor on AdamW), while the kernel, like torch's
``add_(d, alpha=...)``, fuses it. Such small leaves can then differ from the XLA path by one
float32 ulp (closer to schedulefree's own rounding).

>>> import numpy as np, funcopt
>>> from funcopt import _core, _schedule_free_kernel as k
>>> rule = _core.rule_of(funcopt.schedule_free_sgd(learning_rate=0.5, momentum=0.9))
>>> state = rule.init_group()  # k, weight_sum, lr_max, train_mode, b1
>>> coefficients, group = k.direct_scalars(rule)(np.float32(0.5), 0, state)
>>> coefficients[:3].tolist(), int(group[0])  # lr, ckp1 (the first step: 1), alpha
([0.5, 1.0, -0.5], 1)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from funcopt import _core
from funcopt._fused_adamw import awkward_problem
from funcopt._kernels import _direct
from funcopt._numerics import f32, is_static
from funcopt._schedule_free_rule import (
    AdamWScheduleFree,
    RAdamScheduleFree,
    ScheduleFree,
    SGDScheduleFree,
)

__all__ = ["direct_entry", "direct_flags", "direct_scalars", "keys"]

# The kernel's per-leaf flags (schedule_free.cc).
DECAYS, ADAPTIVE = 1, 2
WIDTH = 4  # pointers per leaf: y, g, z, exp_avg_sq (or null)
CHECK_STEPS = 6  # RAdam at b2 = 0.9 normalizes from step 5 (rho_t > 4)


def keys(rule: ScheduleFree) -> tuple[str, ...]:
    """The state tensors the kernel updates, in pointer order (after y and g)."""
    return ("z", "exp_avg_sq") if rule.adaptive else ("z",)


def direct_scalars(rule: ScheduleFree):
    """``(lr, count, group) -> (coefficients, new_group)``: the kernel's float32[9]
    coefficients (lr, ckp1, alpha, bc2, b2, 1 - b2, eps, weight decay, normalize) of the
    update after ``count`` updates, for ``rule`` with its learning rate replaced by ``lr``
    (float32), from the group fields ``group`` (the State's, after the count), and the group
    fields after the update (in their dtypes): ``group_step``'s values, as the XLA path
    computes them."""

    def scalars(lr, count, group):
        r = dataclasses.replace(rule, learning_rate=lr)
        s, new_group = r.group_step(jnp.asarray(count, jnp.int32), tuple(group))
        b2 = getattr(rule, "b2", 0.0)
        one_minus_b2 = f32(1.0 - b2) if is_static(b2) else 1 - jnp.asarray(b2, f32)
        bc2 = f32(1) if s.bias_correction2 is None else s.bias_correction2
        coefficients = jnp.stack([jnp.asarray(x, f32) for x in (
            s.lr, s.ckp1, s.alpha, bc2, b2, one_minus_b2, getattr(rule, "eps", 0.0),
            rule.weight_decay, jnp.where(s.adam, f32(1), f32(0)))])
        return coefficients, _core._keep_types(tuple(new_group), tuple(group))

    return scalars


@functools.lru_cache(maxsize=64)
def _jitted_scalars(rule: ScheduleFree):
    return jax.jit(direct_scalars(rule))


def direct_flags(rule: ScheduleFree, decays) -> np.ndarray:
    """The direct entry point's per-leaf flags for leaves with ``decays``."""
    return np.array([ADAPTIVE * rule.adaptive | DECAYS * bool(d) for d in decays], np.uint8)


@functools.cache
def direct_entry():
    """``(function, fp_control)`` of ``funcopt_schedule_free_f32`` (pointers ``(y, g, z,
    exp_avg_sq or null)`` per leaf), checked bit for bit against the XLA path, or ``None``."""
    return _direct.checked_entry("schedule_free", "funcopt_schedule_free_f32", _agrees)


def _numpy_step(entry, rule, grads, state, params):
    """The direct entry point on NumPy copies of a JAX problem (for the check)."""
    treedef = jax.tree.structure(params)
    n_group = len(rule.group_fields)
    columns = [_core.field_leaves(treedef, f) for f in state[1 + n_group:]]
    arrays = [[np.array(x, np.float32) for x in (p, g, *fields) if x is not None]
              for p, g, *fields in zip(treedef.flatten_up_to(params),
                                       treedef.flatten_up_to(grads), *columns, strict=True)]
    decays = (_core.resolve_mask(rule.mask, params, treedef) if rule.mask is not None
              else [rule.decays_any()] * len(arrays))
    static = dataclasses.replace(rule, mask=None, learning_rate=0.0)
    coefficients, group = _jitted_scalars(static)(rule.learning_rate, state[0],
                                                  tuple(state[1:1 + n_group]))
    _direct.call(entry[0], [[a.ctypes.data for a in leaf] + [0] * (WIDTH - len(leaf))
                            for leaf in arrays], [leaf[0].size for leaf in arrays],
                 coefficients, np.zeros((len(arrays), 0), np.float32),
                 direct_flags(static, decays), entry[1], 2)
    fields = [tuple(jnp.asarray(a) for a in leaf[2:]) + (None,) * (WIDTH - len(leaf))
              for leaf in arrays]
    new_state = _core.assemble(rule.State, treedef, state[0] + 1, fields, group)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaf[0]) for leaf in arrays]), \
        new_state


def _check_rules() -> list[ScheduleFree]:
    # The learning rate as funcopt.torch hands it: a float32 value, not a Python float.
    lr = np.float32(1e-2)
    some = {"w": True, "b": False}
    return [
        AdamWScheduleFree(lr, 0.9, 0.1, 0.0, 2.0, some, 0.999, 1e-8, 1.5),
        SGDScheduleFree(lr, 0.9, 0.05, 1.0, 1.5, None, 3),
        RAdamScheduleFree(lr, 0.9, 0.1, 0.5, 3.0, {"w": False, "b": True}, 0.9, 1e-8, False),
        RAdamScheduleFree(lr, 0.95, 0.0, 0.0, 2.0, None, 0.9, 0.0, True),
    ]


def _agrees(entry) -> bool:
    """Whether the direct entry point gives the XLA path's bits on the awkward problem
    (subnormals, signed zeros, overflow) after :data:`CHECK_STEPS` steps; warns if not."""
    params, grads = awkward_problem()
    return _direct.agrees(
        _check_rules(), params, [grads] * CHECK_STEPS, functools.partial(_numpy_step, entry),
        "funcopt's schedule_free CPU kernel, as this machine's compiler built it, does not "
        "round like XLA, so funcopt.torch's schedule-free optimizers use the XLA path (same "
        "numbers, slower).", stacklevel=5)
