"""The kernels' direct entry points: the same steps on raw memory (torch tensors), called
through ctypes without XLA, and the per-step scalars they need.

Every direct entry point has one signature: ``(n_leaves, pointers, sizes, coefficients,
leaf_scalars, flags, fp_control, threads)``, with ``pointers`` a fixed number of buffers per
leaf (null where a leaf has none), ``sizes`` their element counts (int64), ``coefficients``
the float32 scalars all leaves share, ``leaf_scalars`` each leaf's own (float32), ``flags`` a
uint8 per leaf, ``fp_control`` the control word to run with (XLA's,
:func:`funcopt._kernels.xla_fp_control`) and ``threads`` the most threads to use; it returns
0. ctypes releases the GIL for the call.

The scalars are the XLA path's own numbers: a kernel module gives a JAX function
``(lr, steps) -> (coefficients, leaf_scalars)`` (the learning rate as float32, each leaf's
step count before the update as int32), which :class:`Scalars` runs jitted. A few elementwise
operations on small vectors, which XLA runs inline on the calling thread (no thread pool);
when every leaf is at the same step and the learning rate did not change, the values for
the next :data:`AHEAD` steps come from one call. (Kernels of optimizers whose param group
holds state, schedule-free's and StableAdamW's, form their scalars from that state instead,
and StableAdamW's from read-only views of the tensors too: ``funcopt/torch/_direct.py``.)
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _core, _kernels

__all__ = ["AHEAD", "Scalars", "call", "entry_point", "xla_step", "agrees", "ffi_agrees",
           "checked_entry"]

AHEAD = 64


@functools.cache
def entry_point(name: str, symbol: str):
    """Kernel ``name``'s direct entry point ``symbol`` as a ctypes function (the signature in
    the module docstring), or ``None`` without the kernel."""
    handle = _kernels.library(name)
    if handle is None:
        return None
    fn = getattr(handle, symbol)
    fn.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 5, ctypes.c_uint64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def checked_entry(name: str, symbol: str, same_as_xla):
    """``(function, fp_control)`` of kernel ``name``'s direct entry point ``symbol`` with the
    control word XLA runs that kernel with, if ``same_as_xla(entry)`` (its bit-for-bit check,
    run concretely even while tracing); ``None`` otherwise or without the kernel."""
    fn = entry_point(name, symbol)
    if fn is None:
        return None
    entry = (fn, _kernels.xla_fp_control(name))
    with jax.ensure_compile_time_eval():
        return entry if same_as_xla(entry) else None


def call(fn, pointers, sizes, coefficients, leaf_scalars, flags, fp_control: int,
         threads: int) -> None:
    """Calls a direct entry point with NumPy arrays: ``pointers`` uint64 ``(n_leaves, k)``,
    ``sizes`` int64, ``coefficients`` and ``leaf_scalars`` float32, ``flags`` uint8
    (converted here, kept alive for the call)."""
    arrays = [np.ascontiguousarray(pointers, np.uint64), np.ascontiguousarray(sizes, np.int64),
              np.ascontiguousarray(coefficients, np.float32),
              np.ascontiguousarray(leaf_scalars, np.float32),
              np.ascontiguousarray(flags, np.uint8)]
    status = fn(len(arrays[1]), *(a.ctypes.data for a in arrays), fp_control, threads)
    if status != 0:
        raise RuntimeError(f"funcopt's kernel entry point {fn.__name__} failed ({status})")


class Scalars:
    """``(lr, steps) -> (coefficients, leaf_scalars)`` as NumPy arrays, from a kernel
    module's JAX function ``fn`` of the same signature (see the module docstring)."""

    def __init__(self, fn):
        self._one = jax.jit(fn)

        def ahead(lr, first):  # the values at steps first .. first + AHEAD - 1, one leaf each
            return jax.vmap(lambda n: fn(lr, n[None]))(
                first + jnp.arange(AHEAD, dtype=jnp.int32))

        self._ahead = jax.jit(ahead)
        self._lr = None
        self._table = None  # (lr, first step, coefficients rows, leaf scalar rows)

    def __call__(self, lr, steps):
        lr, steps = np.float32(lr), np.asarray(steps, np.int32)
        uniform = steps.size > 0 and (steps == steps[0]).all()
        if uniform and self._lr == lr:
            if self._table is None or not (self._table[0] == lr and 0 <= steps[0]
                                           - self._table[1] < AHEAD):
                rows = self._ahead(lr, steps[0])
                self._table = (lr, int(steps[0]), *(np.asarray(r) for r in rows))
            _, first, coefficients, leaf = self._table
            k = int(steps[0]) - first
            return coefficients[k], np.broadcast_to(leaf[k][0], (steps.size, *leaf.shape[2:]))
        self._lr = lr
        coefficients, leaf = self._one(lr, steps)
        return np.asarray(coefficients), np.asarray(leaf)


def xla_step(rule, grads, state, params):
    """``rule``'s update + ``apply_updates``: what a direct kernel must reproduce (jit it)."""
    updates, state = _core.update(rule, grads, state, params)
    return optax.apply_updates(params, updates), state


def agrees(rules, params, grads_by_step, kernel_step, warning: str, stacklevel: int) -> bool:
    """Whether ``kernel_step(rule, grads, state, params) -> (params, state)`` (a direct entry
    point run on NumPy copies), run over ``grads_by_step`` from each rule's zero state, ends
    with the jitted :func:`xla_step`'s bits; warns ``warning`` if not."""
    for rule in rules:
        step = jax.jit(functools.partial(xla_step, rule))
        xla = ours = (params, _core.init(rule, params))
        for grads in grads_by_step:
            xla = step(grads, xla[1], xla[0])
            ours = kernel_step(rule, grads, ours[1], ours[0])
        pairs = zip(jax.tree.leaves(ours), jax.tree.leaves(xla), strict=True)
        if not all(np.array_equal(a, b, equal_nan=True) for a, b in pairs):
            warnings.warn(warning, RuntimeWarning, stacklevel=stacklevel + 1)
            return False
    return True


def ffi_agrees(target, kernel_step, rules, params, grads_by_step, warning: str,
               stacklevel: int) -> bool:
    """:func:`agrees` for an FFI handler: ``kernel_step(target, rule, grads, state, params)``
    (the fused step through the handler registered as ``target``), jitted once per rule."""
    jitted = {}

    def run(rule, grads, state, params):
        if id(rule) not in jitted:
            jitted[id(rule)] = jax.jit(functools.partial(kernel_step, target, rule))
        return jitted[id(rule)](grads, state, params)

    return agrees(rules, params, grads_by_step, run, warning, stacklevel + 1)
