"""In-place steps on torch's own memory through funcopt's CPU kernels.

For the optimizers that have one (``funcopt.adamw``: ``funcopt/_kernels/adamw.cc``;
``funcopt.adamw_torch``, ``adamw_torch_fused`` and ``adam_torch``: ``adamw_torch.cc``;
``funcopt.sgd``: ``sgd.cc``; ``funcopt.schedule_free_adamw``, ``schedule_free_sgd`` and
``schedule_free_radam``: ``schedule_free.cc``; ``funcopt.stable_adamw``:
``stable_adamw.cc``; ``funcopt.ademamix``: ``ademamix.cc``), the
float32 CPU parameters of a param group are stepped by one plain C call on the tensors'
memory: parameters, gradients and the state tensors in ``optimizer.state`` are read and
written in place, as torch's own optimizers do. No DLPack import, no XLA dispatch, no views
of new state: only the few step scalars come from a small jitted JAX function (the numbers
the XLA path computes, so the results are its bits).

Group state (a layout with ``group_keys``: schedule-free's ``k``, ``weight_sum``, ...) must
step exactly once per step, so a kernel that handles it (``Kernel.group``) takes all of a
group's stepping parameters or none (one bfloat16 parameter sends the whole group to the XLA
path); its small jitted function takes the group's values and returns the new ones, which
update the param group as the XLA path's do. Layouts with group keys and a kernel that does
not handle them always take the XLA path. A group kernel may also read tensors to form its
scalars (``Kernel.reads``: StableAdamW's per-tensor RMS, a reduction whose summation order
is XLA's): the small function then gets read-only DLPack views of them and returns each
leaf's scalars too.

Threads: the kernel runs on the OpenMP runtime torch itself uses (``GOMP_parallel`` of the
library torch loaded; ``torch.get_num_threads()`` threads), so its threads are torch's and
nothing spins against them; without one found (another platform, another torch build) it
starts its own short-lived threads.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import funcopt
from funcopt import (
    _fused_adamw,
    _fused_adamw_torch,
    _fused_ademamix,
    _kernels,
    _schedule_free_kernel,
    _sgd_kernel,
    _stable_adamw_kernel,
)
from funcopt._kernels import _direct
from funcopt.torch import _dlpack, _update

__all__ = ["KERNELS", "step"]


def _zeros(rule, keys, p) -> dict:
    return {k: torch.zeros_like(p) for k in keys}


class Kernel(NamedTuple):
    """An optimizer's direct kernel: its library, the state keys it updates (in pointer order,
    after the parameter and the gradient) under a rule, the number of pointers per leaf it
    takes (missing ones null), and the kernel module (``funcopt._fused_adamw``-like:
    ``direct_entry()``, ``scalars_of(rule)``, ``direct_flags(rule, decays)``); ``fresh(rule,
    keys, p)`` makes a parameter's state at the first step, all its keys in the reference's
    order (default: zeros for ``keys``); ``group``: whether it handles the layout's group
    state, the module then giving ``direct_scalars(rule)``: ``(lr, count, group fields) ->
    (coefficients, new group fields)`` (JAX) instead of ``scalars_of``, and no leaf scalars;
    ``reads(rule)`` (group kernels): the tensors those scalars read per leaf (``"grad"`` or
    state keys), then passed as a fourth argument (one tuple per leaf), and
    ``direct_scalars`` returns ``(coefficients, new group fields, leaf scalars)``;
    ``stacked``: the state keys held as two tensors of the parameter's shape stacked
    (bitsandbytes AdEMAMix's ``state1``)."""

    library: str
    keys: Callable[[object], tuple[str, ...]]
    width: int
    module: object
    fresh: Callable = _zeros
    group: bool = False
    reads: Callable | None = None
    stacked: tuple[str, ...] = ()


def _adam_keys(rule) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if rule.amsgrad else ()))


_ADAM_TORCH = Kernel("adamw_torch", _adam_keys, 5, _fused_adamw_torch)

#: optimizer function -> its direct kernel.
KERNELS = {
    funcopt.adamw: Kernel("adamw", lambda rule: ("exp_avg", "exp_avg_sq"), 4, _fused_adamw),
    funcopt.adamw_torch: _ADAM_TORCH,
    funcopt.adamw_torch_fused: _ADAM_TORCH,
    funcopt.adam_torch: _ADAM_TORCH,
    funcopt.sgd: Kernel("sgd", lambda rule: ("momentum_buffer",) if rule.has_buffer() else (),
                        3, _sgd_kernel),
}
_SCHEDULE_FREE = Kernel(
    "schedule_free", _schedule_free_kernel.keys, _schedule_free_kernel.WIDTH,
    _schedule_free_kernel,
    lambda rule, keys, p: {k: p.clone() if k == "z" else torch.zeros_like(p) for k in keys},
    group=True)
KERNELS.update(dict.fromkeys((funcopt.schedule_free_adamw, funcopt.schedule_free_sgd,
                              funcopt.schedule_free_radam), _SCHEDULE_FREE))


def _stable_fresh(rule, keys, p) -> dict:
    """optimi's first state: zero moments, ``eps_sq`` (``eps ** 2`` in float64, then
    float32), no ``kahan_comp`` for a float32 parameter."""
    return {**_zeros(rule, keys, p), "eps_sq": torch.tensor(rule.eps ** 2, dtype=p.dtype)}


KERNELS[funcopt.ademamix] = Kernel(
    "ademamix", lambda rule: ("state1", "state2"), 4, _fused_ademamix,
    lambda rule, keys, p: {"state1": p.new_zeros((2, *p.shape)), "state2": torch.zeros_like(p)},
    stacked=("state1",))
KERNELS[funcopt.stable_adamw] = Kernel(
    "stable_adamw", lambda rule: ("exp_avg", "exp_avg_sq"), _stable_adamw_kernel.WIDTH,
    _stable_adamw_kernel, _stable_fresh, group=True,
    reads=lambda rule: ("grad", "exp_avg_sq", "eps_sq"))


@functools.cache
def _entry(optimizer_fn):
    kernel = KERNELS.get(optimizer_fn)
    if kernel is None:
        return None
    entry = kernel.module.direct_entry()
    if entry is not None:
        _share_threads(kernel.library)
    return entry


def _share_threads(name: str) -> None:
    """Hands the kernel library torch's ``GOMP_parallel``, if torch runs on OpenMP."""
    address = _torch_openmp_parallel()
    _kernels.library(name).funcopt_set_parallel(ctypes.c_void_p(address))


@functools.cache
def _torch_openmp_parallel() -> int | None:
    """The address of ``GOMP_parallel`` in the OpenMP runtime torch loaded (libgomp, or LLVM's
    libomp / Intel's libiomp5, which export it too), or None."""
    if "OpenMP" not in torch.__config__.parallel_info().split("parallel backend:")[-1][:40]:
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if "omp" in line}
    except OSError:
        return None
    runtimes = [p for p in paths if os.path.basename(p).startswith(("libgomp", "libomp",
                                                                     "libiomp5"))]
    here = os.path.dirname(torch.__file__)
    for path in sorted(runtimes, key=lambda p: not p.startswith(here)):  # torch's own first
        try:
            return ctypes.cast(ctypes.CDLL(path).GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def _fits(t, p, stacked=False) -> bool:
    """A float32 contiguous CPU tensor shaped like ``p`` (``stacked``: like two of ``p``
    stacked) (plain attribute reads: this runs for every tensor at every step)."""
    return isinstance(t, torch.Tensor) and t.dtype is torch.float32 and t.is_cpu and (
        (t.shape == (2, *p.shape) if stacked else t.shape == p.shape) and t.is_contiguous())


def takes(optimizer, params, steps, keys, other=(), stacked=()) -> list[bool]:
    """Which of a param group's stepping ``params`` (``steps``: their step counts so far) the
    kernel steps, given the state ``keys`` it updates (and ``other`` state keys its scalars
    read): float32 contiguous CPU parameters with float32 CPU gradients, no other parameter
    of the group on their storage, and either no state yet or float32 contiguous CPU state
    tensors of their shape (``stacked`` keys: two of it stacked; ``other``: float32 CPU
    tensors), when the optimizer has a kernel
    and it is available here."""
    if _entry(optimizer._optimizer_fn) is None:
        return [False] * len(params)
    storages = collections.Counter(p.untyped_storage().data_ptr() for p in params)
    state = optimizer.state
    taken = []
    for p, n in zip(params, steps, strict=True):
        ok = _fits(p, p) and _fits(p.grad, p) and storages[p.untyped_storage().data_ptr()] == 1
        if ok and n:
            s = state[p]
            ok = all(_fits(s.get(k), p, k in stacked) for k in keys) and all(
                _fits(s.get(k), s.get(k)) for k in other)
        taken.append(ok)
    return taken


def step(optimizer, group, params, steps, static, lr) -> list[bool]:
    """Steps the parameters of one param group ``group`` that the kernel takes
    (:func:`takes`; all or none for a kernel of group state), in place, at learning rate
    ``lr`` (float32) under the group's static hyperparameters ``static``; returns which ones
    it took (the others take the XLA path). A kernel of group state updates ``group``'s
    entries as the XLA path does."""
    fn = optimizer._optimizer_fn
    entry = _entry(fn)
    kernel = KERNELS.get(fn)
    if entry is None or lr is None or (optimizer.layout.group_keys and not kernel.group):
        return [False] * len(params)
    rule = _update.static_rule(fn, static)
    keys = kernel.keys(rule)
    other = [k for k in (kernel.reads(rule) if kernel.reads else ()) if k not in (*keys, "grad")]
    taken = takes(optimizer, params, steps, keys, other, kernel.stacked)
    if kernel.group and not all(taken):  # the group state steps once: all on one path
        return [False] * len(params)
    chosen = [(p, n) for p, n, ok in zip(params, steps, taken, strict=True) if ok]
    if not chosen:
        return taken
    counts = [n for _, n in chosen]
    state = optimizer.state
    for p, n in chosen:
        if n == 0:  # the first step: fresh state, torch-owned, in the reference's order
            state[p]["step"] = 0
            state[p].update(kernel.fresh(rule, keys, p))
    if kernel.group:
        inputs = [lr, np.asarray(counts, np.int32), optimizer.layout.group_arrays(group)]
        if kernel.reads is not None:
            inputs.append([tuple(_read(p.grad if k == "grad" else state[p][k])
                                 for k in kernel.reads(rule)) for p, _ in chosen])
        out = _group_scalars(fn, optimizer.layout, static)(*inputs)
        coefficients, new_group = out[:2]
        leaf_scalars = (np.asarray(out[2]) if kernel.reads is not None
                        else np.zeros((len(chosen), 0), np.float32))
    else:
        coefficients, leaf_scalars = kernel.module.scalars_of(rule)(lr, counts)
    rows = []
    for p, _ in chosen:
        s = state[p]
        rows.append([p.data_ptr(), p.grad.data_ptr(), *[s[k].data_ptr() for k in keys]])
    pointers = np.zeros((len(chosen), kernel.width), np.uint64)
    pointers[:, :2 + len(keys)] = rows
    _direct.call(entry[0], pointers, [p.numel() for p, _ in chosen], coefficients,
                 leaf_scalars, kernel.module.direct_flags(rule, [_decays(rule)] * len(chosen)),
                 entry[1], torch.get_num_threads())
    optimizer.direct_stepped(chosen)
    if kernel.group:
        group.update(optimizer.layout.torch_group(jax.device_get(new_group)))
    return taken


def _read(t):
    """A tensor a kernel's scalars read: a zero-copy DLPack view, a NumPy copy if 0-d."""
    return t.numpy() if t.dim() == 0 else _dlpack.to_jax(t)


@functools.lru_cache(maxsize=64)
def _group_scalars(fn, layout, static: tuple):
    """The jitted ``(lr, steps, group[, reads]) -> (coefficients, new_group[, leaf
    scalars])`` of a kernel of group state: ``group`` a param group's values as
    ``layout.group_arrays`` gives them, the count as the XLA path takes it (the group's, e.g.
    schedule-free's ``k``), ``new_group`` by param-group key as ``layout.from_state`` gives
    it (``layout.torch_group`` converts); ``reads`` (``Kernel.reads``) per leaf."""
    rule = _update.static_rule(fn, static)
    scalars = KERNELS[fn].module.direct_scalars(rule)
    n = len(rule.group_fields)
    empty = jax.tree.structure([])

    def group_scalars(lr, steps, group, *reads):
        state = layout.state(rule, empty, jnp.max(steps, initial=0), [], group)
        coefficients, new_group, *leaf = scalars(lr, state[0], tuple(state[1:1 + n]), *reads)
        new_state = state._replace(
            count=optax.safe_increment(state[0]), **dict(zip(rule.group_fields, new_group,
                                                             strict=True)))
        return coefficients, layout.from_state(new_state, empty)[2], *leaf

    # The XLA path's options: StableAdamW's RMS reduction materializes g^2 / v per leaf, which
    # the memory-optimized scheduler keeps in reused memory (0.4x the time of fresh pages).
    return jax.jit(group_scalars, compiler_options=_update.COMPILER_OPTIONS)


def _decays(rule) -> bool:
    """Whether a param group's parameters decay (its ``mask``: None or a bool)."""
    return rule.decays_any() and getattr(rule, "mask", None) is not False


@functools.cache
def _copy():
    """The kernels' multi-threaded ``funcopt_copy`` on torch's threads, or None."""
    if _kernels.disabled() or _kernels.compiler() is None:
        return None
    library = _kernels.library("copy")
    if library is None:
        return None
    _share_threads("copy")
    fn = library.funcopt_copy
    fn.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 3, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def write(params, arrays) -> None:
    """``p.copy_(a)`` for each parameter and its new value (a JAX CPU array, computed), as
    one multi-threaded copy on torch's threads where both are contiguous CPU memory of the
    same size, else with :func:`funcopt.torch._dlpack.write`. Versions are bumped, as by any
    in-place op."""
    fast, rest = [], []
    for p, a in zip(params, arrays, strict=True):
        ok = (p.is_cpu and p.is_contiguous() and a.dtype == _dlpack.jax_dtype(p.dtype)
              and a.nbytes == p.numel() * p.element_size() and a.platform() == "cpu")
        (fast if ok else rest).append((p, a))
    copy = _copy() if fast else None
    if copy is None:
        rest, fast = rest + fast, []
    for p, a in rest:
        _dlpack.write(p, a)
    if fast:
        n = len(fast)
        dst = np.array([p.data_ptr() for p, _ in fast], np.uint64)
        src = np.array([a.unsafe_buffer_pointer() for _, a in fast], np.uint64)
        sizes = np.array([a.nbytes for _, a in fast], np.int64)
        copy(n, dst.ctypes.data, src.ctypes.data, sizes.ctypes.data, torch.get_num_threads())
        torch.autograd.graph.increment_version([p for p, _ in fast])
