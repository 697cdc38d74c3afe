"""Continuations across the torch bridge, against a reference class (the Trainer's menu).

A :class:`Pair` is a funcopt optimizer and its reference torch class, configured alike. Each
check runs the reference uninterrupted for ``n + m`` steps on one random problem (shapes
0-D..4-D, fixed gradients) and compares with it, on parameters and on every state leaf (both
states read through ``state_from_torch``, whose copying is exact):

* :func:`continuations`: the reference for ``n`` steps, ``state_from_torch``, funcopt for
  ``m`` steps in JAX ("torch->jax"); funcopt for ``n`` steps from ``init``,
  ``state_to_torch`` into a fresh reference, the reference for ``m`` steps ("jax->torch");
* :func:`optimizer_runs`: ``funcopt.torch.Optimizer(params, fn, ...)`` beside the reference
  for ``n + m`` steps with two param groups of different hyperparameters, and two
  optimizers that take over at step ``n``: one loads the ``Optimizer``'s own state dict
  (round trip), one the reference's state dict.

Each returns the worst relative deviation (``max |a - b| / max |b|`` per tensor) and whether
everything was bitwise; :func:`noise` is the reference's own float32-vs-float64 deviation on
the same problem, printed beside the figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from parity import SHAPES, applying, as_np

import funcopt.torch


@dataclasses.dataclass
class Pair:
    """A funcopt optimizer and its reference. ``kwargs`` are funcopt's keywords
    (``learning_rate`` included); ``make(params_or_groups)`` builds the reference with the
    same hyperparameters; ``group`` overrides the second of two param groups, in keys both
    spell alike (``lr``, ``weight_decay``, ...); ``prepare(optimizer)`` runs before the
    reference's first step (schedule-free's ``train()``)."""

    name: str
    fn: Callable
    kwargs: dict
    make: Callable
    shapes: tuple = tuple(SHAPES)
    group: dict | None = None
    dtype: str = "float32"
    float64: bool = True  # the reference runs in float64 (for its noise)
    prepare: Callable | None = None
    seed: int = 0
    split: Callable | None = None  # params -> (first group, second group); default halves
    grouped: bool = False  # the continuations' reference takes the two groups too (GaLore)

    def problem(self, steps, scale=1.0):
        rng = np.random.default_rng(self.seed)
        init = [rng.standard_normal(s).astype(np.float32) for s in self.shapes]
        grads = [[(scale * rng.standard_normal(s)).astype(np.float32) for s in self.shapes]
                 for _ in range(steps)]
        return init, grads

    def reference(self, params_or_groups):
        opt = self.make(params_or_groups)
        if self.prepare is not None:
            self.prepare(opt)
        return opt

    def optimizer(self, params_or_groups):
        kw = dict(self.kwargs)
        return funcopt.torch.Optimizer(params_or_groups, self.fn, lr=kw.pop("learning_rate"),
                                       **kw)


def torch_params(values, dtype="float32"):
    return [torch.nn.Parameter(torch.tensor(np.asarray(as_np(v))).to(getattr(torch, dtype)))
            for v in values]


def jax_params(params):
    return [jnp.asarray(p.detach().float().numpy()).astype(
        funcopt.torch._dlpack.jax_dtype(p.dtype)) for p in params]


def step_torch(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.tensor(g).to(p.dtype)
        opt.step()


def step_jax(tx, params, state, grads, dtype):
    step = jax.jit(applying(tx))
    for gs in grads:
        params, state = step([jnp.asarray(g).astype(dtype) for g in gs], state, params)
    return params, state


def rel(a, b) -> float:
    a, b = as_np(a).astype(np.float64).ravel(), as_np(b).astype(np.float64).ravel()
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def compare(actual: list, desired: list) -> tuple[float, bool]:
    """``(worst relative deviation, bitwise)`` over paired leaves."""
    assert len(actual) == len(desired)
    worst = max((rel(a, b) for a, b in zip(actual, desired, strict=True)), default=0.0)
    exact = all(np.array_equal(as_np(a), as_np(b)) for a, b in zip(actual, desired, strict=True))
    return worst, exact


def _counted(state) -> bool:
    """Whether the state's count is the reference's (a per-parameter or group step): not
    for one without either (SGD, schedule-free), whose converted count is 1 after a step."""
    layout = funcopt.torch._registry.layout_of(
        next(f for f, lay in funcopt.torch._registry.LAYOUTS.items()
             if lay.state_type is type(state)))
    return layout.step is not None or any("count" in g.fields for g in layout.groups.values())


def _leaves(state):
    leaves = jax.tree.leaves(state)
    return leaves if _counted(state) else leaves[1:]


def _state_leaves(opt, params):
    return _leaves(funcopt.torch.state_from_torch(opt, jax_params(params)))


def _against(ref, ref_params, opt_or_state, params):
    """Leaves to compare: parameters, then the states (a torch optimizer's through
    ``state_from_torch``), both sides in the same order."""
    theirs = list(ref_params) + _state_leaves(ref, ref_params)
    if isinstance(opt_or_state, torch.optim.Optimizer):
        ours = list(params) + _state_leaves(opt_or_state, params)
    else:
        ours = list(params) + _leaves(opt_or_state)
    return compare(ours, theirs)


def continuations(pair: Pair, n: int, m: int) -> dict:
    """``{"torch->jax": (dev, bitwise), "jax->torch": (dev, bitwise)}``."""
    init, grads = pair.problem(n + m)
    grouped = _groups if pair.grouped else (lambda pair, params: params)
    full_params = torch_params(init, pair.dtype)
    full = pair.reference(grouped(pair, full_params))
    step_torch(full, full_params, grads)

    ref_params = torch_params(init, pair.dtype)
    ref = pair.reference(grouped(pair, ref_params))
    step_torch(ref, ref_params, grads[:n])
    tx, dtype = pair.fn(**pair.kwargs), jnp.dtype(pair.dtype)
    params = jax_params(ref_params)
    state = funcopt.torch.state_from_torch(ref, params)
    params, state = step_jax(tx, params, state, grads[n:], dtype)
    out = {"torch->jax": _against(full, full_params, state, params)}

    params = [jnp.asarray(x).astype(dtype) for x in init]
    params, state = step_jax(tx, params, tx.init(params), grads[:n], dtype)
    new_params = torch_params(params, pair.dtype)
    new = pair.reference(grouped(pair, new_params))
    funcopt.torch.state_to_torch(state, new)
    step_torch(new, new_params, grads[n:])
    out["jax->torch"] = _against(full, full_params, new, new_params)
    return out


def _groups(pair, params):
    if pair.group is None:
        return params
    k = len(params) // 2
    first, second = pair.split(params) if pair.split else (params[:k], params[k:])
    return [{"params": first}, {"params": second, **pair.group}]


def optimizer_runs(pair: Pair, n: int, m: int) -> dict:
    """``{"Optimizer": ..., "own state dict": ..., "reference state dict": ...}``, each
    ``(dev, bitwise)`` against the reference after ``n + m`` steps."""
    init, grads = pair.problem(n + m)
    ref_params, params = torch_params(init, pair.dtype), torch_params(init, pair.dtype)
    ref, opt = pair.reference(_groups(pair, ref_params)), pair.optimizer(_groups(pair, params))
    step_torch(ref, ref_params, grads[:n])
    step_torch(opt, params, grads[:n])
    own_params = torch_params([p.detach() for p in params], pair.dtype)
    own = pair.optimizer(_groups(pair, own_params))
    own.load_state_dict(opt.state_dict())
    theirs_params = torch_params([p.detach() for p in ref_params], pair.dtype)
    theirs = pair.optimizer(_groups(pair, theirs_params))
    theirs.load_state_dict(ref.state_dict())
    for o, ps in ((ref, ref_params), (opt, params), (own, own_params), (theirs, theirs_params)):
        step_torch(o, ps, grads[n:])
    return {"Optimizer": _against(ref, ref_params, opt, params),
            "own state dict": _against(ref, ref_params, own, own_params),
            "reference state dict": _against(ref, ref_params, theirs, theirs_params)}


def noise(pair: Pair, steps: int) -> float | None:
    """The reference's parameters (in ``pair.dtype``) against its own float64 run (None
    when it does not compute in float64)."""
    if not pair.float64:
        return None
    init, grads = pair.problem(steps)
    p32, p64 = torch_params(init, pair.dtype), torch_params(init, "float64")
    for params in (p32, p64):
        step_torch(pair.reference(_groups(pair, params) if pair.grouped else params), params,
                   grads)
    return max(rel(a, b) for a, b in zip(p32, p64, strict=True))


def report(pair: Pair, figures: dict, noise_figure: float | None) -> str:
    parts = [f"{k} {dev:.1e}{' (bitwise)' if exact else ''}" for k, (dev, exact) in
             figures.items()]
    beside = "n/a" if noise_figure is None else f"{noise_figure:.1e}"
    line = (f"{pair.name}: " + ", ".join(parts)
            + f"; reference {pair.dtype} vs float64: {beside}")
    print(line)
    return line


def check(pair: Pair, bitwise: bool, n: int, m: int, tol: float) -> None:
    """Runs :func:`continuations` and :func:`optimizer_runs` (``n`` steps, then ``m``),
    prints them beside the reference's noise, and asserts every figure within ``tol`` and,
    when ``bitwise``, the continuations through the JAX transformation bit for bit."""
    figures = {**continuations(pair, n, m), **optimizer_runs(pair, n, m)}
    report(pair, figures, noise(pair, n + m))
    for what, (dev, exact) in figures.items():
        assert dev <= tol, f"{pair.name} {what}: {dev:.2e}"
        if bitwise and "->" in what:  # the continuations through the JAX transformation
            assert exact, f"{pair.name} {what} is not bitwise"
