"""``funcopt.ademamix``'s update and ``optax.apply_updates`` as one in-place step: the fast
path on CPU, bitwise equal to the two of them (``funcopt/_kernels/ademamix.cc``'s FFI
handler under ``jit``; its direct entry point on torch tensors for funcopt.torch's
AdEMAMix)."""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from funcopt import _core, _fused_adamw
from funcopt._ademamix import AdEMAMix, ademamix
from funcopt._bnb32 import complement
from funcopt._fused_adamw import (
    FusedOptimizer,
    awkward_problem,
    checked_target,
    dispatch,
    leaf_kernel_step,
)
from funcopt._kernels import _direct
from funcopt._numerics import f32

__all__ = ["fused_ademamix"]

direct_flags = _fused_adamw.direct_flags  # 1 where a leaf decays, for the direct entry point

#: Steps of each check rule the kernel must reproduce before first use.
CHECK_STEPS = 3


def fused_ademamix(learning_rate=1e-3, b1: float = 0.9, b2: float = 0.999, b3: float = 0.9999,
                   alpha: float = 5.0, t_alpha: int | None = None, t_beta3: int | None = None,
                   eps: float = 1e-8, weight_decay: float = 1e-2, mask=None) -> FusedOptimizer:
    r""":func:`funcopt.ademamix` with the update applied in the same pass: for speed on CPU.

    ``step(grads, state, params)`` returns exactly (bit for bit) what
    ``updates, state = ademamix(...).update(grads, state, params)`` followed by
    ``optax.apply_updates(params, updates)`` return under ``jit``, and the state is the same
    :class:`funcopt.AdEMAMixState`, so the two are interchangeable at any step (checkpoints,
    the torch bridge's converters). Per parameter at its own step :math:`t`, with the
    float32 scalars :func:`funcopt.ademamix` computes (the bias corrections
    :math:`c_1 = 1 - \beta_1^t`, :math:`c_2 = \sqrt{1 - \beta_2^t}`, the warmed-up
    :math:`\alpha(t)` and :math:`\beta_3(t)`):

    .. math::
        m_1 &\leftarrow \beta_1 m_1 + (1 - \beta_1) g, \quad
        m_2 \leftarrow \beta_3(t) m_2 + (1 - \beta_3(t)) g, \quad
        \nu \leftarrow \beta_2 \nu + (1 - \beta_2) g^2 \\
        p &\leftarrow p\,(1 - \eta\lambda) - \eta\,
        \frac{m_1 / c_1 + \alpha(t)\, m_2}{\sqrt{\nu} / c_2 + \epsilon}

    Why: the step is memory-bound, and XLA:CPU writes each output of an elementwise
    computation in its own loop: the XLA path updates :math:`\nu` and the stacked EMAs in
    two loops and reads all three back for the parameter's: 52 bytes per float32 parameter
    (60 with ``eps = 0``; XLA's cost analysis of the donated step, jaxlib 0.10.2, with or
    without decay and warmups; ``optax.contrib.ademamix``'s: 56), where 36 are needed (read
    :math:`p, g, m_1, m_2, \nu`; write :math:`p, m_1, m_2, \nu`), and exact parity with
    bitsandbytes costs it two true divisions per element (:math:`m_1 / c_1`,
    :math:`\sqrt\nu / c_2`) where XLA turns optax's divisions by a scalar into
    multiplications by its reciprocal (an ulp off).
    On the CPU this step runs every float32 leaf through one C++ kernel
    (``funcopt/_kernels/ademamix.cc``, built with the system's C++ compiler on first use
    and cached) that makes the 36, in place, on XLA's thread pool. Each leaf's step counter
    steps in JAX, and its scalars come from the rule's own per-step functions.
    Other dtypes (those leaves), other platforms and machines without a C++ compiler (a
    ``RuntimeWarning`` says so once) take the XLA path: same numbers, only slower.
    ``FUNCOPT_DISABLE_KERNELS=1`` forces it.

    Donate the parameters and the state to the ``jit`` that runs the step
    (``donate_argnums``) so that the kernel writes into their buffers; otherwise XLA copies
    them first. Before its first use the kernel is checked bit for bit against the XLA path
    (subnormals, signed zeros, overflow; with and without decay and warmups, ``eps = 0``)
    and refused, with a warning, if this machine's compiler made it round differently.

    Limits (those of :func:`funcopt.fused_adamw`): the kernel is opaque to XLA's SPMD
    partitioner, so under a multi-device mesh (``jax.set_mesh``, or parameters typed with
    explicit mesh axes) the step takes the XLA path and shards like :func:`funcopt.ademamix`;
    parameters sharded with auto axes *outside* ``jax.set_mesh`` cannot be detected while
    tracing and would be gathered onto every device: use :func:`funcopt.ademamix` there.
    Under ``vmap`` the kernel runs once per batch element. ``step`` is not differentiable,
    and a ``FusedOptimizer`` is not a ``GradientTransformation``: for ``optax.chain`` or
    ``inject_hyperparams`` (traced hyperparameters) use :func:`funcopt.ademamix`, whose
    state is the same.

    Args: those of :func:`funcopt.ademamix`, with the same checks.

    Example (a donated training step on a dict of parameters; the numbers are
    ``ademamix``'s, and each leaf keeps bitsandbytes' own step counter):
      >>> import jax, jax.numpy as jnp, funcopt
      >>> opt = funcopt.fused_ademamix(learning_rate=0.05, t_alpha=10, t_beta3=10)
      >>> params = {"w": jnp.array([0.1, -0.2, -0.1])}
      >>> grad = jax.grad(lambda p: jnp.sum((p["w"] - jnp.array([0.4, 0.2, -0.5])) ** 2))
      >>> train_step = jax.jit(lambda p, s: opt.step(grad(p), s, p), donate_argnums=(0, 1))
      >>> state = opt.init(params)
      >>> for _ in range(20):
      ...     params, state = train_step(params, state)
      >>> print(params["w"], state.step["w"])
      [ 0.41930896  0.30149093 -0.6010156 ] 20
    """
    rule = _core.rule_of(ademamix(learning_rate, b1, b2, b3, alpha, t_alpha, t_beta3, eps,
                                  weight_decay, mask))
    return FusedOptimizer(functools.partial(_core.init, rule), functools.partial(step, rule))


def step(rule: AdEMAMix, grads, state, params):
    """The fused step: the kernel on the CPU (float32 leaves), XLA's elsewhere."""
    return dispatch("fused_ademamix", _target,
                    lambda target, *a: _kernel_step(target, rule, *a),
                    functools.partial(_direct.xla_step, rule), grads, state, params)


def _fast(leaf) -> bool:
    g, p, (_, state1, state2), _ = leaf
    return (p.dtype == state1.dtype == state2.dtype == f32 and g.shape == p.shape
            == state2.shape and state1.shape == (2, *p.shape))


def kernel_scalars(rule: AdEMAMix, neg_lr, keep, steps):
    """The kernel's float32 ``coefficients`` (-lr, keep, b1, 1 - b1, b2, 1 - b2, eps) and
    ``leaf_scalars`` f32[L, 5] (c1, c2, alpha, b3, 1 - b3 at each leaf's incremented step in
    the int32 vector ``steps``): the values the XLA path computes, elementwise."""
    coefficients = jnp.stack([jnp.asarray(x, f32) for x in (
        neg_lr, keep, *complement(rule.b1), *complement(rule.b2), f32(rule.eps))])
    k = rule.per_step(steps)
    leaf_scalars = jnp.stack([jnp.broadcast_to(jnp.asarray(x, f32), steps.shape)
                              for x in (k.c1, k.c2, k.alpha, k.b3, k.one_minus_b3)], axis=1)
    return coefficients, leaf_scalars


def _kernel_step(target, rule: AdEMAMix, grads, state, params):
    return leaf_kernel_step(target, rule, _fast,
                            lambda scalars, steps: kernel_scalars(rule, *scalars, steps),
                            grads, state, params)


@functools.cache
def _target() -> str | None:
    """The registered kernel, built on first use and checked bit for bit against the XLA
    path (:func:`_same_as_xla`)."""
    return checked_target("ademamix", "FuncoptAdEMAMixF32", _same_as_xla)


def kernel_available() -> bool:
    """Whether the CPU kernel is built, checked and registered (building it on first call)."""
    return _target() is not None


def check_rules() -> list[AdEMAMix]:
    """The rules the check runs: decay on one leaf of :func:`awkward_problem` with both
    warmups; no decay, ``eps = 0``, ``b1 = 0``."""
    return [
        _core.rule_of(ademamix(1e-2, t_alpha=2, t_beta3=3, weight_decay=0.1,
                               mask={"w": True, "b": False})),
        _core.rule_of(ademamix(1e-2, b1=0.0, b2=0.9, b3=0.5, alpha=-2.0, eps=0.0,
                               weight_decay=0.0)),
    ]


def _same_as_xla(target) -> bool:
    """Whether the FFI handler registered as ``target`` gives the XLA path's bits on the
    awkward problem (subnormals, signed zeros, overflow, several kernel blocks) after
    :data:`CHECK_STEPS` steps of each :func:`check_rules` rule; warns if not."""
    params, grads = awkward_problem()
    return _direct.ffi_agrees(
        target, _kernel_step, check_rules(), params, [grads] * CHECK_STEPS,
        "funcopt's ademamix CPU kernel, as this machine's compiler built it, does not round "
        "like XLA, so fused_ademamix uses the XLA path (same numbers, slower).", stacklevel=5)


# -- the direct entry point: the same step on torch tensors (funcopt.torch's AdEMAMix) ------


def scalars_of(rule: AdEMAMix) -> _direct.Scalars:
    """The direct entry point's ``(lr, steps) -> (coefficients, leaf_scalars)``
    (:func:`kernel_scalars` at learning rate ``lr``, leaves at ``steps`` before the update)."""
    return _fused_adamw.scalars_of(rule, kernel_scalars)


@functools.cache
def direct_entry():
    """``(function, fp_control)`` of ``funcopt_ademamix_f32`` (pointers ``(p, g, state1,
    state2)`` per leaf), checked bit for bit against the XLA path, or ``None``."""
    return _direct.checked_entry("ademamix", "funcopt_ademamix_f32", _direct_same_as_xla)


def _direct_same_as_xla(entry) -> bool:
    """Whether the direct entry point ``(function, fp_control)`` gives the XLA path's bits
    after two steps of each :func:`check_rules` rule on the awkward problem, the learning
    rate a float32 value as funcopt.torch hands it; warns if not."""
    rules = [dataclasses.replace(r, learning_rate=np.float32(1e-2)) for r in check_rules()]
    numpy_step = lambda rule: functools.partial(  # noqa: E731
        _fused_adamw.direct_numpy_step, entry, rule, kernel_scalars=kernel_scalars)
    return _fused_adamw.agrees(rules, _fused_adamw.xla_reference(rules), numpy_step,
                               "ademamix", "funcopt.torch's AdEMAMix", stacklevel=5)
