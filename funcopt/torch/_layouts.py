"""How a funcopt optimizer's state maps to a torch optimizer's per-parameter state dicts.

A :class:`Layout` is a mapping, nothing more: torch's per-parameter state keys to the
fields of the optimizer's ``State`` (``"RMS"`` <-> ``rms``), torch's integer ``"step"`` to
the rule's per-leaf step field, and optionally torch param-group keys to the rule's group
fields. Everything else is derived from the optimizer's own rule (``funcopt._core``): which
keys a parameter has, their shapes and dtypes come from ``jax.eval_shape`` of the rule's
``init`` on that one parameter (a field ``init_leaf`` leaves ``None`` is a key torch does
not keep there, e.g. Adafactor's ``exp_avg`` without ``beta1``). ``funcopt.torch.Optimizer``
and the converters (``state_from_torch``/``state_to_torch``) read and write every optimizer
through this one description.

Registering an optimizer (in ``funcopt/torch/_registry.py``; a few lines)::

    def bnb_lion_config(group):  # the reference class's param group -> funcopt keywords
        b1, b2 = group["betas"]
        return {"learning_rate": group["lr"], "b1": b1, "b2": b2,
                "weight_decay": group["weight_decay"]}

    LION = register(Layout(
        funcopt.lion, funcopt.LionState,
        keys={"state1": "state1"},  # torch key -> State field, in torch's own key order
        step="step",  # the State field holding torch's state["step"]; None: the rule has none
        references=(Reference("bitsandbytes.optim.lion", "Lion", bnb_lion_config),),
    ))

Then ``funcopt.torch.Optimizer(params, funcopt.lion, lr=...)`` runs it (its param groups
take funcopt's keyword names), and the converters move state between ``funcopt.lion`` and
the reference class (matched by module and class name, subclasses included) and the
``Optimizer``. Optional parts:

* ``derived(rule, count, step, fields) -> {field: value}``: per-leaf State fields torch does
  not keep, computed from the ones it keeps (Adafactor's ``lr`` from ``step`` and ``rms``,
  with the rule's own :meth:`~funcopt._adafactor.Adafactor.step_size`). Every per-leaf field
  must be a key's, the step's or a derived one.
* ``group_keys``: torch param-group key -> the rule's ``group_fields`` entry (group-level
  state such as schedule-free's ``k``/``weight_sum``). ``Optimizer`` carries them in its
  param groups (Python scalars, as the references do); the converters require every param
  group to hold the same values (a funcopt state has one) and write them into every group.
* ``Reference.tensor_step``: the reference keeps ``state["step"]`` as a float32 0-d tensor
  (``torch.optim``'s classes) rather than a Python int (transformers, bitsandbytes).

The state's dtypes are the rule's (``init_leaf``'s): a reference that keeps another dtype
needs its own conversion. ``Optimizer`` always keeps an int ``state["step"]`` per parameter
(its "has state" mark), also for a layout with ``step=None``. A drop-in class with the
reference's signature is an ``Optimizer`` subclass that sets ``_layout`` and
``group_config = staticmethod(<the reference's config function>)`` (see ``_dropins.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import torch

from funcopt import _core

__all__ = ["Entry", "Layout", "Reference", "static_key", "step_number"]


class Entry(NamedTuple):
    """One tensor of a parameter's torch state: its key, shape and (JAX) dtype."""

    key: str
    shape: tuple
    dtype: Any


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """A torch optimizer class whose per-parameter state has a layout's keys.

    ``config(group)`` turns one of its param groups into the funcopt optimizer's keyword
    arguments (``learning_rate`` included)."""

    module: str
    name: str
    config: Callable[[dict], dict]
    tensor_step: bool = False

    def matches(self, optimizer) -> bool:
        """Whether ``optimizer`` is an instance of this class (or of a subclass)."""
        return any(c.__module__ == self.module and c.__name__ == self.name
                   for c in type(optimizer).__mro__)

    def step_value(self, step: int, device):
        """``state["step"]`` as the reference keeps it."""
        if self.tensor_step:
            return torch.tensor(float(step), dtype=torch.float32, device=device)
        return int(step)


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """A funcopt optimizer's state as torch per-parameter (and param-group) entries."""

    optimizer_fn: Callable
    state_type: type
    keys: Mapping[str, str]
    step: str | None = "step"
    derived: Callable | None = None
    group_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    references: tuple[Reference, ...] = ()

    @property
    def name(self) -> str:
        """``"funcopt.<optimizer>"``, for messages."""
        return f"funcopt.{self.optimizer_fn.__name__}"

    @property
    def order(self) -> tuple[str, ...]:
        """torch's per-parameter tensor keys in the reference's order."""
        return tuple(self.keys)

    def rule(self, config: dict) -> _core.Rule:
        """The rule of ``optimizer_fn(**config)``."""
        rule = _core.rule_of(self.optimizer_fn(**config))
        if rule is None:
            raise TypeError(f"{self.name} is not built on funcopt's optimizer core.")
        return rule

    def entries(self, config: dict, shape, dtype) -> tuple[Entry, ...]:
        """The tensors torch keeps for a parameter of ``shape`` and ``dtype`` (JAX dtype)
        under ``config``, in the reference's order."""
        static = static_key({k: v for k, v in config.items() if k != "learning_rate"})
        lr_is_none = config.get("learning_rate") is None
        return _entries(self, static, lr_is_none, tuple(shape), jnp.dtype(dtype))

    def leaf_fields(self, rule, count, step, arrays: Mapping) -> tuple:
        """One leaf's per-leaf State fields (after the count and the group fields) from its
        torch state: ``arrays`` by torch key (a missing key is an absent field) and
        ``step``."""
        values = {field: arrays.get(key) for key, field in self.keys.items()}
        if self.step is not None:
            values[self.step] = step
        if self.derived is not None:
            values.update(self.derived(rule, count, step, values))
        names = self.state_type._fields[1 + len(rule.group_fields):]
        missing = [f for f in names if f not in values]
        if missing:
            raise TypeError(f"the torch layout of {self.name} neither keeps nor derives the "
                            f"state fields {missing}.")
        return tuple(values[f] for f in names)

    def state(self, rule, treedef, count, per_leaf: list[tuple], group: Mapping | None = None):
        """The funcopt state: ``count``, the group fields (torch's values from ``group``, by
        param-group key, else the rule's initial ones) and :meth:`leaf_fields` per leaf."""
        values = list(rule.init_group())
        for i, field in enumerate(rule.group_fields):
            key = next((k for k, f in self.group_keys.items() if f == field), None)
            if group is not None and group.get(key) is not None:
                values[i] = jnp.asarray(group[key], jnp.result_type(values[i]))
        return _core.assemble(self.state_type, treedef, count, per_leaf, tuple(values))

    def initial_group(self, rule) -> dict:
        """The rule's initial group fields by param-group key, as Python scalars."""
        values = dict(zip(rule.group_fields, rule.init_group(), strict=True))
        return {key: jnp.asarray(values[field]).item() for key, field in self.group_keys.items()}

    def from_state(self, state, treedef) -> tuple[list, list[dict], dict]:
        """``(steps, arrays, group)``: each leaf's step (None without a step field) and
        tensors by torch key (absent fields left out), and the group fields by
        param-group key."""
        columns = {f: _core.field_leaves(treedef, getattr(state, f))
                   for f in {*self.keys.values(), *([self.step] if self.step else [])}}
        n = treedef.num_leaves
        steps = columns[self.step] if self.step is not None else [None] * n
        arrays = [{k: columns[f][i] for k, f in self.keys.items() if columns[f][i] is not None}
                  for i in range(n)]
        group = {key: getattr(state, field) for key, field in self.group_keys.items()}
        return steps, arrays, group


@functools.lru_cache(maxsize=4096)
def _entries(layout, static, lr_is_none, shape, dtype) -> tuple[Entry, ...]:
    config = dict(static, learning_rate=None if lr_is_none else 0.0)
    rule = layout.rule(config)
    state = jax.eval_shape(functools.partial(_core.init, rule),
                           [jax.ShapeDtypeStruct(shape, dtype)])
    out = []
    for key, field in layout.keys.items():
        value = getattr(state, field)
        if value is not None:
            out.append(Entry(key, tuple(value[0].shape), jnp.dtype(value[0].dtype)))
    return tuple(out)


def static_key(config: dict) -> tuple:
    """The hashable form of a group's static hyperparameters (all but the learning rate)."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            "param group hyperparameters other than lr are compile-time constants and must be "
            f"hashable (Python numbers, bools, tuples or None), got {dict(key)!r}."
        ) from None
    return key


def step_number(step) -> int:
    """torch's ``state["step"]`` (a Python int or a 0-d tensor) as an int; 0 for None."""
    if step is None:
        return 0
    return int(step.item() if isinstance(step, torch.Tensor) else step)
