"""``state_from_torch`` / ``state_to_torch``: optimizer state between torch and JAX.

Supported pairs (torch optimizer -> JAX transformation whose state is produced/consumed):

* ``transformers.AdamW``, ``funcopt.torch.AdamW``, ``funcopt.torch.Optimizer(...,
  funcopt.adamw)`` -> ``funcopt.adamw`` (``AdamWState``);
* ``transformers.Adafactor``, ``funcopt.torch.Adafactor``, ``funcopt.torch.Optimizer(...,
  funcopt.adafactor)`` -> ``funcopt.adafactor`` (``AdafactorState``);
* likewise every optimizer registered in ``funcopt/torch/_registry.py`` (torch.optim's,
  bitsandbytes', schedulefree's, grokadamw's, optimi's and galore-torch's classes; the list is
  in the README's torch bridge section): its reference classes and
  ``funcopt.torch.Optimizer`` running it, through its layout;
* ``torch.optim.AdamW`` <-> ``funcopt.adamw_torch`` (exact). ``state_to_torch`` still accepts
  ``optax.adamw``'s state (``ScaleByAdamState``, one count for all parameters) for a
  ``torch.optim.AdamW``; ``state_from_torch`` returns ``funcopt.adamw_torch``'s, since
  ``optax.adamw`` does not round as torch does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from funcopt._numerics import find_state
from funcopt.torch import _dlpack, _layouts, _registry
from funcopt.torch._optimizer import Optimizer

__all__ = ["state_from_torch", "state_to_torch"]

_INT32_MAX = 2**31 - 1


class _Side:
    """One torch optimizer's state through its layout: a ``funcopt.torch.Optimizer``
    (``reference`` None) or a registered reference class."""

    def __init__(self, optimizer, layout, reference):
        self.optimizer, self.layout, self.reference = optimizer, layout, reference

    @property
    def target(self) -> str:
        return f"{self.layout.name} ({self.layout.state_type.__name__})"

    def config(self, group) -> dict:
        if self.reference is None:
            config = dict(self.optimizer.group_config(group))
        else:
            config = dict(self.reference.group_config(self.optimizer, group))
        if isinstance(config.get("learning_rate"), torch.Tensor):  # torch allows a tensor lr
            config["learning_rate"] = float(config["learning_rate"])
        return config

    def rule(self, group):
        return self.layout.rule(self.config(group))

    def expected(self, p, group) -> tuple[_layouts.Entry, ...]:
        return self.layout.entries(self.config(group), p.shape, _dlpack.jax_dtype(p.dtype))

    def read(self, p, group) -> dict:
        """``p``'s state by layout key (``"step"`` included where kept)."""
        if self.reference is None:
            return dict(self.optimizer.state.get(p) or {})
        return self.layout.flat(self.reference.read(self.optimizer, group, p), p)

    def write(self, p, group, step, arrays):
        if self.reference is None:
            self.optimizer.set_param_state(p, step, arrays, group)
            return
        tensors = {key: _dlpack.to_torch_owned(arrays[key].astype(dtype), p.device)
                   for key, _, dtype in self.expected(p, group)} if step else {}
        self.reference.write(self.optimizer, group, p, step, tensors)


def _side(optimizer, caller):
    if isinstance(optimizer, Optimizer):
        return _Side(optimizer, optimizer.layout, None)
    found = _registry.reference_of(optimizer)
    if found is not None:
        return _Side(optimizer, *found)
    raise TypeError(
        f"{caller} does not support {type(optimizer).__module__}.{type(optimizer).__name__} "
        f"in this configuration: it converts {_registry.supported()}."
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


def _group_values(optimizer, layout) -> dict:
    """The param groups' group state (``layout.group_arrays``): one value per key (a
    funcopt state has one), None where unset."""
    out = {}
    per_group = [layout.group_arrays(g) for g in optimizer.param_groups]
    for key in per_group[0] if per_group else {}:
        values = {repr(None if v is None else np.asarray(v).tolist()): v
                  for v in (g[key] for g in per_group)}
        if len(values) > 1:
            raise ValueError(
                f"state_from_torch: the param groups hold different {key!r} values "
                f"{sorted(values)}, but a {layout.name} state keeps one."
            )
        out[key] = values.popitem()[1]
    return out


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
    states = [side.read(p, group) for p, group, _ in entries]
    steps = [_layouts.step_of(state) for state in states]
    count = jnp.asarray(max(steps, default=0), jnp.int32)
    rules = {}  # param group index -> rule, for the fields torch does not keep
    per_leaf = []
    for (p, group, where), state, step in zip(entries, states, steps, strict=True):
        arrays = _read_leaf(optimizer, side, p, group, where, state, step)
        if id(group) not in rules:
            rules[id(group)] = side.rule(group)
        rule = rules[id(group)]
        step = jnp.asarray(step, jnp.int32)
        per_leaf.append(side.layout.leaf_fields(rule, count, step, arrays))
    rule = side.rule(optimizer.param_groups[0])
    group = _group_values(optimizer, side.layout)
    return side.layout.state(rule, treedef, count, per_leaf, group)


def _read_leaf(optimizer, side, p, group, where, state, step) -> dict:
    """``p``'s torch state tensors as JAX arrays by key (before its first step, those the
    reference keeps then, else the rule's initial ones)."""
    arrays = {}
    initial = None
    for key, _, dtype in side.expected(p, group):
        value = state.get(key)
        if value is None and not step:
            if initial is None:
                initial = side.layout.initial_arrays(side.config(group), _dlpack.to_jax_value(
                    p.detach(), _dlpack.jax_dtype(p.dtype)))
            value = initial[key]
        if value is None:
            raise ValueError(
                f"state_from_torch: the state of {where} has no {key!r}; "
                f"{type(optimizer).__name__} keeps one for a parameter of shape "
                f"{tuple(p.shape)} with these hyperparameters."
            )
        arrays[key] = _dlpack.to_jax_value(value, dtype)
    return arrays


def _wrong_state(state, target, cls_name):
    known = [lay.state_type for lay in _registry.LAYOUTS.values()] + [optax.ScaleByAdamState]
    found = [c.__name__ for c in known if find_state(state, c) is not None]
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
    cls = side.layout.state_type
    found = find_state(state, cls)
    if found is None and _optax_adamw(state, optimizer):
        _write_optax_adamw(state, optimizer, entries)
        return
    if found is None:
        raise _wrong_state(state, side.target, cls.__name__)
    # A state without per-leaf fields (SGD without momentum) fits any parameter list.
    treedef = _leaf_structure(found, side.layout) or jax.tree.structure([0] * len(entries))
    if treedef.num_leaves != len(entries):
        raise ValueError(
            f"state_to_torch: the state has {treedef.num_leaves} leaves but the optimizer has "
            f"{len(entries)} parameters: its leaves must be the optimizer's parameters in order."
        )
    steps, leaves, group_values = side.layout.from_state(found, treedef)
    plan = []
    for (p, group, where), step, leaf in zip(entries, steps, leaves, strict=True):
        arrays = {}
        for key, shape, _ in side.expected(p, group):
            _check_leaf(where, key, leaf.get(key), shape)
            arrays[key] = leaf[key]
        plan.append((p, group, int(found.count if step is None else step), arrays))
    for p, group, step, arrays in plan:
        side.write(p, group, step, arrays)
    for group in optimizer.param_groups:
        group.update(side.layout.torch_group(group_values))


def _leaf_structure(state, layout):
    """The params' tree structure, read from the first per-leaf field the state has (a leaf
    without that entry, e.g. SGD's buffer in a group without momentum, holds None)."""
    fields = ([layout.step] if layout.step else []) + list(layout.keys.values())
    present = [f for f in map(state._asdict().get, fields) if f is not None]
    return None if not present else jax.tree.structure(present[0], is_leaf=_is_none)


def _is_none(x) -> bool:
    return x is None


def _optax_adamw(state, optimizer) -> bool:
    """Whether ``state`` is ``optax.adamw``'s for a ``torch.optim.AdamW`` (still accepted)."""
    return (isinstance(optimizer, torch.optim.AdamW)
            and find_state(state, optax.ScaleByAdamState) is not None)


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
