"""``state_from_torch`` / ``state_to_torch``: optimizer state between torch and JAX.

Supported pairs (torch optimizer -> JAX transformation whose state is produced/consumed):

* ``transformers.AdamW``, ``funcopt.torch.AdamW``, ``funcopt.torch.Optimizer(...,
  funcopt.adamw)`` -> ``funcopt.adamw`` (``AdamWState``);
* ``transformers.Adafactor``, ``funcopt.torch.Adafactor``, ``funcopt.torch.Optimizer(...,
  funcopt.adafactor)`` -> ``funcopt.adafactor`` (``AdafactorState``);
* ``torch.optim.AdamW`` -> ``optax.adamw`` (``(ScaleByAdamState(count, mu, nu), EmptyState(),
  EmptyState())``, one count for all parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import funcopt
from funcopt._numerics import find_state
from funcopt.torch import _dlpack, _layouts
from funcopt.torch._optimizer import Optimizer

__all__ = ["state_from_torch", "state_to_torch"]

_INT32_MAX = 2**31 - 1


def _has_class(obj, module, name):
    return any(c.__module__ == module and c.__name__ == name for c in type(obj).__mro__)


class _Side:
    """How to read and write one torch optimizer class's per-parameter state."""

    def __init__(self, optimizer, layout, config, state_dtype, target):
        self.optimizer, self.layout, self.config = optimizer, layout, config
        self.state_dtype, self.target = state_dtype, target

    def expected(self, p, group):
        keys = self.layout.keys(p.shape, self.config(group))
        return [(k, self.layout.key_shape(k, p.shape)) for k in keys]

    def write(self, p, group, step, arrays):
        if isinstance(self.optimizer, Optimizer):
            self.optimizer._set_param_state(p, step, arrays, group)
            return
        self.optimizer.state.pop(p, None)
        if step:
            state = {"step": int(step)}
            for key, _ in self.expected(p, group):
                dtype = jnp.float32 if key == "RMS" else self.state_dtype(p)
                state[key] = _dlpack.to_torch_owned(arrays[key].astype(dtype), p.device)
            self.optimizer.state[p] = state


def _side(optimizer, caller):
    if isinstance(optimizer, Optimizer):
        layout = optimizer._layout
        return _Side(optimizer, layout, optimizer._config, optimizer._state_dtype,
                     f"{layout.name} ({layout.state_type.__name__})")
    if _has_class(optimizer, "transformers.optimization", "AdamW"):
        return _Side(optimizer, _layouts.ADAMW, _layouts.hf_adamw_config,
                     lambda p: _dlpack.jax_dtype(p.dtype), "funcopt.adamw (AdamWState)")
    if _has_class(optimizer, "transformers.optimization", "Adafactor"):
        layout = _layouts.ADAFACTOR
        return _Side(optimizer, layout, _layouts.hf_adafactor_config,
                     lambda p: layout.state_dtype(_dlpack.jax_dtype(p.dtype)),
                     "funcopt.adafactor (AdafactorState)")
    if isinstance(optimizer, torch.optim.AdamW):
        return None
    raise TypeError(
        f"{caller} does not support {type(optimizer).__module__}.{type(optimizer).__name__}: "
        "it converts transformers.AdamW, funcopt.torch.AdamW and funcopt.torch.Optimizer("
        "funcopt.adamw) (<-> funcopt.adamw), transformers.Adafactor, funcopt.torch.Adafactor "
        "and funcopt.torch.Optimizer(funcopt.adafactor) (<-> funcopt.adafactor), and "
        "torch.optim.AdamW (<-> optax.adamw)."
    )


def _params_of(optimizer):
    """``(param, group, where)`` for every parameter, in state_dict order."""
    return [(p, g, f"param group {gi}, parameter {pi}")
            for gi, g in enumerate(optimizer.param_groups) for pi, p in enumerate(g["params"])]


def _leaf_dtype(leaf):
    if isinstance(leaf, torch.Tensor):
        return _dlpack.jax_dtype(leaf.dtype)
    if not hasattr(leaf, "dtype"):
        raise TypeError(f"params leaves must be arrays (with a shape and dtype), got {leaf!r}.")
    return jnp.dtype(leaf.dtype)


def _check_params(optimizer, params):
    entries = _params_of(optimizer)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if len(leaves) != len(entries):
        sizes = [len(g["params"]) for g in optimizer.param_groups]
        raise ValueError(
            f"params has {len(leaves)} leaves but the optimizer has {len(entries)} parameters "
            f"(param groups of sizes {sizes}): pass a pytree whose leaves, in jax.tree.leaves "
            "order, are the optimizer's parameters in order."
        )
    for i, ((path, leaf), (p, _, where)) in enumerate(zip(leaves, entries, strict=True)):
        shape, dtype = tuple(np.shape(leaf)), _leaf_dtype(leaf)
        want_shape, want_dtype = tuple(p.shape), _dlpack.jax_dtype(p.dtype)
        if shape != want_shape or dtype != want_dtype:
            raise ValueError(
                f"params leaf {i} ({jax.tree_util.keystr(path) or 'root'}) is {dtype}{list(shape)}"
                f" but the optimizer's parameter {i} ({where}) is {want_dtype}{list(want_shape)}: "
                "the leaves, in jax.tree.leaves order, must be the optimizer's parameters in "
                "order (reorder the pytree, e.g. with a list, or fix the shapes and dtypes)."
            )
    return jax.tree.structure(params)


def _step_of(state) -> int:
    step = state.get("step", 0) if state else 0
    return int(step.item() if isinstance(step, torch.Tensor) else step)


def state_from_torch(optimizer, params):
    """The JAX optimizer state equivalent to a torch optimizer's, for the pytree ``params``.

    The leaves of ``params`` (in ``jax.tree.leaves`` order; arrays, or anything with a shape
    and a dtype) must be the optimizer's parameters in order (param group 0 first), with the
    same shapes and dtypes. The state is copied into JAX memory:

    * ``transformers.AdamW``, ``funcopt.torch.AdamW``, ``funcopt.torch.Optimizer`` with
      ``funcopt.adamw`` -> ``funcopt.AdamWState``: per-leaf ``step`` and moments, and
      ``count`` = the largest step (what drives a schedule ``count -> lr``).
    * ``transformers.Adafactor``, ``funcopt.torch.Adafactor``, ``funcopt.torch.Optimizer``
      with ``funcopt.adafactor`` -> ``funcopt.AdafactorState`` (float32 moments for bf16
      parameters; ``lr`` is the step size each leaf used at its last step, recomputed from
      ``step``, ``RMS`` and the group's hyperparameters).
    * ``torch.optim.AdamW`` -> the state of ``optax.adamw`` with a constant learning rate:
      ``(ScaleByAdamState(count, mu, nu), EmptyState(), EmptyState())``. With a schedule,
      optax adds its own count: use ``state[:2] + (optax.ScaleByScheduleState(count),)``.

    A parameter torch has not stepped yet has zero state and step 0, as torch would create
    it. Build the JAX transformation with the param groups' hyperparameters; ``update``
    then continues the run where torch would.

    Raises:
      TypeError: for an unsupported optimizer class.
      ValueError: when the leaves of ``params`` do not match the optimizer's parameters
        (count, shape, dtype), or a ``torch.optim.AdamW`` state optax cannot hold (amsgrad,
        maximize, parameters at different steps).

    Example:
      >>> import jax.numpy as jnp, torch, funcopt, funcopt.torch
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = funcopt.torch.AdamW([w], lr=0.1)
      >>> w.grad = torch.ones(2)
      >>> opt.step()
      >>> state = funcopt.torch.state_from_torch(opt, {"w": jnp.ones(2)})
      >>> state.step, state.exp_avg
      ({'w': Array(1, dtype=int32)}, {'w': Array([0.1, 0.1], dtype=float32)})
    """
    side = _side(optimizer, "state_from_torch")
    treedef = _check_params(optimizer, params)
    entries = _params_of(optimizer)
    if side is None:
        return _optax_adamw_state(optimizer, treedef, entries)
    steps, leaves, lrs = [], [], []
    for p, group, where in entries:
        state = optimizer.state.get(p)
        step = _step_of(state)
        dtype = side.state_dtype(p)
        leaf = {}
        for key, shape in side.expected(p, group):
            value = state.get(key) if step else jnp.zeros(shape, dtype)
            if value is None:
                raise ValueError(
                    f"state_from_torch: the state of {where} has no {key!r}; "
                    f"{type(optimizer).__name__} keeps one for a parameter of shape "
                    f"{tuple(p.shape)} with these hyperparameters."
                )
            leaf[key] = _dlpack.to_jax_value(value, jnp.float32 if key == "RMS" else dtype)
        steps.append(jnp.asarray(step, jnp.int32))
        leaves.append(leaf)
        if side.layout is _layouts.ADAFACTOR:
            lrs.append(_adafactor_lr(side.config(group), step, leaf["RMS"]))
    count = jnp.asarray(max([int(s) for s in steps], default=0), jnp.int32)
    return side.layout.to_state(treedef, count, steps, leaves, lrs or None)


def _adafactor_lr(config, step, rms):
    """The step size ``funcopt.adafactor`` records for a leaf at ``step`` with ``RMS``."""
    if step == 0:
        return jnp.zeros([], jnp.float32)
    f32 = jnp.float32
    t = f32(step)
    if config["relative_step"]:
        min_step = f32(1e-6) * t if config["warmup_init"] else f32(1e-2)
        rho = jnp.minimum(min_step, 1 / jnp.sqrt(t))
    else:
        rho = jnp.asarray(config["learning_rate"], f32)
    if config["scale_parameter"]:
        eps2 = config["eps"][1]
        return jnp.where(rms > eps2, rms * rho, f32(eps2) * rho).astype(f32)
    return jnp.asarray(rho, f32)


def _optax_adamw_state(optimizer, treedef, entries):
    for gi, group in enumerate(optimizer.param_groups):
        for flag in ("amsgrad", "maximize"):
            if group.get(flag):
                raise ValueError(
                    f"param group {gi} of torch.optim.AdamW has {flag}=True, which optax.adamw "
                    "does not implement; only plain AdamW state converts."
                )
    steps = {_step_of(optimizer.state.get(p)) for p, _, _ in entries}
    if len(steps) > 1:
        raise ValueError(
            f"the parameters of this torch.optim.AdamW are at different steps {sorted(steps)} "
            "(some skipped steps without a gradient), but optax.adamw keeps one count for all: "
            "remove the parameters that never get a gradient from the optimizer."
        )
    count = steps.pop() if steps else 0
    mu, nu = [], []
    for p, _, _ in entries:
        state = optimizer.state.get(p) if count else None
        dtype = _dlpack.jax_dtype(p.dtype)
        for out, key in ((mu, "exp_avg"), (nu, "exp_avg_sq")):
            value = state[key] if state else jnp.zeros(tuple(p.shape), dtype)
            out.append(_dlpack.to_jax_value(value, dtype))
    unflatten = jax.tree_util.tree_unflatten
    adam = optax.ScaleByAdamState(
        count=jnp.asarray(count, jnp.int32), mu=unflatten(treedef, mu), nu=unflatten(treedef, nu)
    )
    return adam, optax.EmptyState(), optax.EmptyState()




_KNOWN = (funcopt.AdamWState, funcopt.AdafactorState, optax.ScaleByAdamState)


def _wrong_state(state, target, cls_name):
    found = [c.__name__ for c in _KNOWN if find_state(state, c) is not None]
    got = f"a {type(state).__name__}" + (f" holding {', '.join(found)}" if found else "")
    return TypeError(
        f"state_to_torch: this optimizer needs the state of {target}, got {got}: pass the "
        f"state of the matching JAX optimizer (one containing a {cls_name})."
    )


def _check_leaf(where, key, value, shape):
    if value is None:
        raise ValueError(
            f"state_to_torch: the state has no {key!r} for {where}, which the optimizer keeps "
            "(a different beta1 or parameter rank?): build the JAX optimizer with the param "
            "group's hyperparameters."
        )
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"state_to_torch: {key!r} for {where} has shape {tuple(value.shape)}, but the "
            f"optimizer's parameter needs {tuple(shape)}."
        )


def state_to_torch(state, optimizer) -> None:
    """Writes a JAX optimizer state into a torch optimizer (the inverse of
    :func:`state_from_torch`, same pairs).

    ``state`` may be the transformation's state itself or any optax state containing it
    (``chain``, ``inject_hyperparams``, ``MultiSteps``). Its leaves, in ``jax.tree.leaves``
    order, are the optimizer's parameters in order. The per-parameter state is replaced by
    torch-owned copies in the class's own layout (``step`` a Python int for the transformers
    classes and a float32 0-d tensor for ``torch.optim.AdamW``); a leaf at step 0 leaves its
    parameter without state, as torch has it before its first step. The optimizer may be
    fresh: its state is created. Group hyperparameters are not touched.

    Raises:
      TypeError: for an unsupported optimizer class or the state of another optimizer.
      ValueError: when the state's leaves do not match the optimizer's parameters.

    Example:
      >>> import jax.numpy as jnp, torch, funcopt, funcopt.torch
      >>> params = {"w": jnp.ones(2)}
      >>> tx = funcopt.adamw(learning_rate=0.1)
      >>> _, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
      >>> w = torch.nn.Parameter(torch.ones(2))
      >>> opt = funcopt.torch.AdamW([w], lr=0.1)
      >>> funcopt.torch.state_to_torch(state, opt)
      >>> opt.state[w]["step"], opt.state[w]["exp_avg"]
      (1, tensor([0.1000, 0.1000]))
    """
    side = _side(optimizer, "state_to_torch")
    entries = _params_of(optimizer)
    if side is None:
        _write_optax_adamw(state, optimizer, entries)
        return
    cls = side.layout.state_type
    found = find_state(state, cls)
    if found is None:
        raise _wrong_state(state, side.target, cls.__name__)
    treedef = jax.tree.structure(found.step)
    if treedef.num_leaves != len(entries):
        raise ValueError(
            f"state_to_torch: the state has {treedef.num_leaves} leaves but the optimizer has "
            f"{len(entries)} parameters: its leaves must be the optimizer's parameters in order."
        )
    steps, leaves = side.layout.from_state(found, treedef)
    plan = []
    for (p, group, where), step, leaf in zip(entries, steps, leaves, strict=True):
        arrays = {}
        for key, shape in side.expected(p, group):
            _check_leaf(where, key, leaf.get(key), shape)
            arrays[key] = leaf[key]
        plan.append((p, group, int(step), arrays))
    for p, group, step, arrays in plan:
        side.write(p, group, step, arrays)


def _write_optax_adamw(state, optimizer, entries):
    found = find_state(state, optax.ScaleByAdamState)
    if found is None:
        raise _wrong_state(state, "optax.adamw", "ScaleByAdamState")
    mu, nu = jax.tree.leaves(found.mu), jax.tree.leaves(found.nu)
    if len(mu) != len(entries):
        raise ValueError(
            f"state_to_torch: the state has {len(mu)} leaves but the optimizer has "
            f"{len(entries)} parameters: its leaves must be the optimizer's parameters in order."
        )
    for (p, _, where), m, v in zip(entries, mu, nu, strict=True):
        _check_leaf(where, "mu", m, p.shape)
        _check_leaf(where, "nu", v, p.shape)
    count = min(int(found.count), _INT32_MAX)
    for (p, group, _), m, v in zip(entries, mu, nu, strict=True):
        optimizer.state.pop(p, None)
        if not count:
            continue
        on_device = group.get("fused") or group.get("capturable")
        step = torch.tensor(float(count), dtype=torch.float32,
                            device=p.device if on_device else "cpu")
        dtype = _dlpack.jax_dtype(p.dtype)
        optimizer.state[p] = {
            "step": step,
            "exp_avg": _dlpack.to_torch_owned(jnp.asarray(m, dtype), p.device),
            "exp_avg_sq": _dlpack.to_torch_owned(jnp.asarray(v, dtype), p.device),
        }
