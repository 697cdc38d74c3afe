"""``funcopt.adamw``'s update and ``optax.apply_updates`` as one in-place step: the fast path
on CPU, bitwise equal to the two of them."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _core, _kernels
from funcopt._adamw import AdamW
from funcopt._kernels import _direct
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
    so that the kernel writes into their buffers; otherwise XLA copies them first. Before its
    first use the kernel is checked bit for bit against the XLA path (subnormals included) and
    refused, with a warning, if this machine's compiler made it round differently.

    Limits: the kernel is opaque to XLA's SPMD partitioner, so under a multi-device mesh
    (``jax.set_mesh``, or parameters typed with explicit mesh axes) the step takes the XLA path
    and shards like :func:`funcopt.adamw`; parameters sharded with auto axes *outside*
    ``jax.set_mesh`` cannot be detected while tracing and would be gathered onto every device:
    use :func:`funcopt.adamw` there. Under ``vmap`` the kernel runs once per batch element.
    ``step`` is not differentiable, and a ``FusedOptimizer`` is not a
    ``GradientTransformation``: for ``optax.chain``, ``inject_hyperparams`` or ``MultiSteps``
    use :func:`funcopt.adamw`, whose state is the same.

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
    rule = AdamW.validated(learning_rate, b1, b2, eps, weight_decay, correct_bias, mask)

    def step_fn(grads, state, params):
        return step(rule, grads, state, params)

    return FusedOptimizer(functools.partial(_core.init, rule), step_fn)


def make_rule(**kwargs) -> AdamW:
    """The validated rule of ``fused_adamw(**kwargs)`` (``adamw``'s, same keywords)."""
    bound = inspect.signature(fused_adamw).bind(**kwargs)
    bound.apply_defaults()
    return AdamW.validated(**bound.arguments)


def _xla_step(hyper, grads, state, params):
    updates, new_state = _core.update(hyper, grads, state, params)
    return optax.apply_updates(params, updates), new_state


def step(hyper: AdamW, grads, state, params):
    """The fused step: the kernel on the CPU (float32 leaves), XLA's elsewhere."""
    return dispatch("fused_adamw", _target, lambda target, *a: _kernel_step(target, hyper, *a),
                    functools.partial(_xla_step, hyper), grads, state, params)


def dispatch(what: str, target, kernel_step, xla_step, grads, state, params):
    """``kernel_step(target(), grads, state, params)`` where the step runs on the CPU,
    unsharded (:func:`_unsharded`), with the kernel built and checked (``target()`` not None,
    asked last: it builds the kernel); ``xla_step(grads, state, params)`` otherwise (lowered
    for the other platforms through ``jax.lax.platform_dependent``)."""
    if params is None:
        raise ValueError(f"{what}'s step needs the parameters: step(grads, state, params).")
    if jax.default_backend() != "cpu" or not _unsharded(params) or target() is None:
        return xla_step(grads, state, params)

    def cpu_step(grads, state, params):
        return kernel_step(target(), grads, state, params)

    return jax.lax.platform_dependent(grads, state, params, cpu=cpu_step, default=xla_step)


def _unsharded(params) -> bool:
    """False when the step is traced under a multi-device mesh (``jax.set_mesh``) or for
    parameters whose type carries a sharding (explicit mesh axes): the custom call is opaque to
    XLA's SPMD partitioner, which would gather the leaves onto every device."""
    try:
        mesh = jax.sharding.get_abstract_mesh()
        if not mesh.empty and mesh.size > 1:
            return False
        for leaf in jax.tree.leaves(params):
            spec = getattr(getattr(jax.typeof(leaf), "sharding", None), "spec", None)
            if spec is not None and any(axis is not None for axis in spec):
                return False
    except AttributeError:  # a JAX without these APIs: nothing to detect
        pass
    return True


@functools.cache
def _target() -> str | None:
    """The registered kernel, built on first use and checked bit for bit against the XLA
    path on awkward values (a compiler whose flags break IEEE arithmetic is refused)."""
    return checked_target("adamw", "FuncoptAdamWF32", _same_as_xla)


def awkward_problem():
    """Values that expose rounding differences: subnormals, zeros of both signs, overflow,
    over several kernel blocks; ``(params, grads)`` as dicts of float32 arrays."""
    rng = np.random.default_rng(0)
    scale = np.float32([1.0, 1e-3, 1e-20, 1e-38, 1e-39, 0.0, -0.0, 3e38])
    params = {"w": jnp.asarray(rng.standard_normal(3 * 2**16 + 5).astype(np.float32)),
              "b": jnp.asarray(scale)}
    grads = {"w": params["w"][::-1] * 0.01, "b": jnp.asarray(scale[::-1])}
    return params, grads


def _check_rules() -> tuple[AdamW, AdamW]:
    hyper = make_rule(learning_rate=1e-2, weight_decay=0.1)
    return hyper, dataclasses.replace(hyper, mask={"w": True, "b": False})


def xla_reference(rules) -> tuple:
    """Two XLA steps of each rule on :func:`awkward_problem`: the leaves of
    ``(params, state)`` as NumPy arrays, what a kernel must reproduce bit for bit."""
    params, grads = awkward_problem()
    out = []
    for rule in rules:
        xla, step = (params, _core.init(rule, params)), jax.jit(functools.partial(_xla_step, rule))
        for _ in range(2):
            xla = step(grads, xla[1], xla[0])
        out.append([np.asarray(x) for x in jax.tree.leaves(xla)])
    return tuple(out)


@functools.cache
def _xla_reference() -> tuple:
    return xla_reference(_check_rules())


def _same_as_xla(target) -> bool:
    """Whether the FFI handler registered as ``target`` rounds like XLA (:func:`_agrees`)."""
    return _agrees(lambda h: jax.jit(functools.partial(_kernel_step, target, h)),
                   "fused_adamw")


def _direct_same_as_xla(entry) -> bool:
    """Whether the direct entry point ``(function, fp_control)`` rounds like XLA."""
    return _agrees(lambda h: functools.partial(direct_numpy_step, entry, h),
                   "funcopt.torch's AdamW")


def agrees(rules, references, kernel_step, kernel: str, what: str, stacklevel=5) -> bool:
    """Whether ``kernel_step(rule)(grads, state, params)``, two steps from each rule's zero
    state on :func:`awkward_problem`, gives ``references`` (:func:`xla_reference`) bit for
    bit; warns that ``what`` takes the XLA path if not."""
    params, grads = awkward_problem()
    for rule, xla in zip(rules, references, strict=True):
        ours = (params, _core.init(rule, params))
        for _ in range(2):
            ours = kernel_step(rule)(grads, ours[1], ours[0])
        pairs = zip(jax.tree.leaves(ours), xla, strict=True)
        if not all(np.array_equal(a, b, equal_nan=True) for a, b in pairs):
            warnings.warn(
                f"funcopt's {kernel} CPU kernel, as this machine's compiler built it, does not "
                f"round like XLA, so {what} uses the XLA path (same numbers, slower).",
                RuntimeWarning, stacklevel=stacklevel,
            )
            return False
    return True


def _agrees(kernel_step, what) -> bool:
    """:func:`agrees` for adamw's kernels, with decay on and off."""
    return agrees(_check_rules(), _xla_reference(), kernel_step, "adamw", what, stacklevel=6)


def kernel_available() -> bool:
    """Whether the CPU kernel is built, checked and registered (building it on first call)."""
    return _target() is not None


def _fast(leaf) -> bool:
    g, p, (_, m, v), _ = leaf
    return p.dtype == m.dtype == v.dtype == f32 and p.shape == g.shape == m.shape == v.shape


def kernel_scalars(hyper: AdamW, lr, decay_factor, steps):
    """The kernel's float32 ``coefficients`` (b1, 1 - b1, b2, 1 - b2, eps, decay factor) and
    ``step_sizes`` (one per leaf, at its incremented step in the int32 vector ``steps``): the
    values the XLA path computes, elementwise. (A few elementwise ops on one vector: XLA runs
    such a computation inline on the calling thread, without its thread pool.)"""
    coefficients = jnp.stack([jnp.asarray(x, f32) for x in (
        *hyper.coefficients(), f32(hyper.eps), decay_factor)])
    step_sizes = jnp.broadcast_to(jnp.asarray(hyper.step_size(lr, steps), f32), steps.shape)
    return coefficients, step_sizes


def _kernel_step(target, hyper: AdamW, grads, state, params):
    return leaf_kernel_step(target, hyper, _fast,
                            lambda scalars, steps: kernel_scalars(hyper, *scalars, steps),
                            grads, state, params)


def leaf_kernel_step(target, rule, fast, kernel_scalars, grads, state, params):
    """``rule``'s step (fields ``(step, a, b)`` per leaf) with the leaves where ``fast(leaf)``
    through the FFI handler ``target`` and the others through ``rule.update_leaf`` and
    ``apply_updates``. The handler gets ``kernel_scalars(plan.scalars, steps)`` (two arrays;
    ``steps``: the fast leaves' steps, incremented here in JAX), then ``(p, g, a, b)`` per
    fast leaf (``g`` as float32), returns ``(p', a', b')`` aliasing ``(p, a, b)``, and takes
    the attribute ``decays`` (s64, one per fast leaf)."""
    plan = _core.prepare(rule, grads, state, params)
    fast = [i for i, leaf in enumerate(plan.leaves) if fast(leaf)]
    # Other leaves (bf16 or fp16 parameters or state) take the XLA path.
    out = [None if i in fast else rule.update_leaf(plan.scalars, *leaf)
           for i, leaf in enumerate(plan.leaves)]
    new_p = [None if o is None else optax.apply_updates(leaf[1], o[0])
             for leaf, o in zip(plan.leaves, out, strict=True)]
    fields = [None if o is None else o[1] for o in out]
    if fast:
        steps = [optax.safe_increment(plan.leaves[i][2][0]) for i in fast]
        coefficients, leaf_scalars = kernel_scalars(plan.scalars, jnp.stack(steps))
        operands, results, aliases = [], [], {}
        for k, i in enumerate(fast):
            g, p, (_, a, b), _ = plan.leaves[i]
            operands += [p, g.astype(f32), a, b]
            results += [jax.ShapeDtypeStruct(x.shape, f32) for x in (p, a, b)]
            # Operands 0-1 are the coefficients and the leaf scalars.
            aliases |= {2 + 4 * k: 3 * k, 4 + 4 * k: 3 * k + 1, 5 + 4 * k: 3 * k + 2}
        decays = np.array([plan.leaves[i][3] for i in fast], np.int64)
        # Under vmap the kernel runs once per batch element.
        kernel = jax.ffi.ffi_call(target, results, input_output_aliases=aliases,
                                  vmap_method="sequential")
        flat = kernel(coefficients, leaf_scalars, *operands, decays=decays)
        for k, i in enumerate(fast):
            new_p[i], a, b = flat[3 * k:3 * k + 3]
            fields[i] = (steps[k], a, b)
    new_state = _core.assemble(rule.State, plan.treedef, optax.safe_increment(plan.count),
                               fields)
    return jax.tree_util.tree_unflatten(plan.treedef, new_p), new_state


def checked_target(name: str, symbol: str, same_as_xla) -> str | None:
    """Kernel ``name``'s registered FFI target ``symbol``, built if needed, if
    ``same_as_xla(target)`` (its bit-for-bit check, run concretely even while tracing);
    ``None`` otherwise or without the kernel."""
    target = _kernels.target(name, symbol)
    if target is None:
        return None
    with jax.ensure_compile_time_eval():
        return target if same_as_xla(target) else None


# -- the direct entry point: the same step on memory outside XLA (funcopt.torch) ------------


def direct_scalars(hyper: AdamW, kernel_scalars=kernel_scalars):
    """``(lr, steps) -> (coefficients, step_sizes)``: :func:`kernel_scalars` for ``hyper``
    with its learning rate replaced by ``lr`` (float32) and leaves at ``steps`` (int32, before
    this update), the numbers ``step`` computes under ``jit`` (to run with
    :class:`funcopt._kernels._direct.Scalars`). Another kernel of per-leaf steps passes its
    own ``kernel_scalars(rule, *rule.scalars(count), steps)``."""

    def scalars(lr, steps):
        h = dataclasses.replace(hyper, learning_rate=lr)
        return kernel_scalars(h, *h.scalars(jnp.zeros([], jnp.int32)),
                              optax.safe_increment(steps))

    return scalars


@functools.lru_cache(maxsize=64)
def scalars_of(hyper: AdamW, kernel_scalars=kernel_scalars) -> _direct.Scalars:
    """The direct entry point's scalars for ``hyper`` (learning rate replaced at each call),
    made once per rule (:func:`direct_scalars`)."""
    return _direct.Scalars(direct_scalars(hyper, kernel_scalars))


def direct_flags(hyper: AdamW, decays) -> np.ndarray:
    """The direct entry point's per-leaf flags: 1 where a leaf decays."""
    del hyper
    return np.asarray(decays, np.uint8)


@functools.cache
def direct_entry():
    """``(function, fp_control)`` of the kernel's direct entry point (``funcopt_adamw_f32``,
    pointers ``(p, g, m, v)`` per leaf), checked bit for bit against the XLA path like the
    FFI handler, or ``None``."""
    if _target() is None:
        return None
    return _direct.checked_entry("adamw", "funcopt_adamw_f32", _direct_same_as_xla)


def direct_numpy_step(entry, hyper, grads, state, params, kernel_scalars=kernel_scalars):
    """The direct entry point on NumPy copies of a JAX problem (for the check), returning JAX
    ``(params, state)`` like ``step``: leaves ``(p, g, a, b)`` with fields ``(step, a, b)``
    (:func:`direct_scalars` with ``kernel_scalars``)."""
    plan = _core.prepare(hyper, grads, state, params)
    arrays = [[np.array(x, np.float32) for x in (p, g, m, v)]
              for g, p, (_, m, v), _ in plan.leaves]
    steps = [int(t) for _, _, (t, _, _), _ in plan.leaves]
    rule = dataclasses.replace(hyper, mask=None)
    coefficients, step_sizes = scalars_of(rule, kernel_scalars)(hyper.learning_rate, steps)
    _direct.call(entry[0], [[a.ctypes.data for a in leaf] for leaf in arrays],
                 [leaf[0].size for leaf in arrays], coefficients, step_sizes,
                 direct_flags(rule, [d for *_, d in plan.leaves]), entry[1], 2)
    fields = [(jnp.int32(t + 1), jnp.asarray(m), jnp.asarray(v)) for t, (_, _, m, v)
              in zip(steps, arrays, strict=True)]
    new_state = _core.assemble(hyper.State, plan.treedef, optax.safe_increment(plan.count),
                               fields)
    new_p = [jnp.asarray(leaf[0]) for leaf in arrays]
    return jax.tree_util.tree_unflatten(plan.treedef, new_p), new_state
