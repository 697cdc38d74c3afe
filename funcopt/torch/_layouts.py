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

* ``group_keys`` values may be a :class:`GroupKey` instead of a field name: it names the
  rule's group field, ``"count"`` (the State's count, e.g. optimi's group ``step``) or None (a
  constant the reference expects, e.g. optimi's ``setup``), with its conversions
  (schedule-free's float64 ``weight_sum`` <-> a float32 ``[hi, lo]`` pair).
* ``flatten(state, p) -> {key: value}``: a reference's per-parameter state (as it keeps it,
  or as its ``state_dict()`` saves it) in the layout's keys (galore-torch's ``projector``
  object -> ``ortho_left``/``ortho_right``; bitsandbytes' ``"__bnb_optimizer_quant_state__"``
  nesting); ``normalize(state_dict) -> state_dict``: a reference's whole state dict in
  torch's standard form (GrokAdamW keeps its state in ``param_groups[i]["state"]``).
  ``funcopt.torch.Optimizer.load_state_dict`` and the converters read references through both.
* ``defaults``: keyword defaults ``funcopt.torch.Optimizer`` uses instead of the optimizer
  function's (GaLore's ``svd``: torch's own, so that a torch run re-projects as
  galore-torch does).
* ``Reference``: ``where(optimizer)`` narrows a class to some configurations (torch's
  ``AdamW(fused=True)`` -> ``funcopt.adamw_torch_fused``; bitsandbytes' ``optim_bits``),
  ``settings(optimizer)`` adds optimizer-level settings under each group for ``config``
  (bitsandbytes' ``args``), ``keeps_step=False`` for a reference without a per-parameter
  ``"step"`` (SGD, schedule-free, optimi: a parameter with state has stepped), and
  ``to_reference``/``state_of``/``store`` for a reference whose per-parameter state has
  another form (a ``projector`` object) or lives elsewhere (``group["state"][p]``).

The state's dtypes are the rule's (``init_leaf``'s): a reference that keeps another dtype
needs its own conversion. A parameter that has not stepped gets the rule's ``init`` state
(``initial_arrays``: schedule-free's ``z`` is a copy of the parameter, Adagrad's ``sum``
``initial_accumulator_value``) where the reference keeps none.

Limits: the converters and ``Optimizer`` build a rule per param group and evaluate it on
parameter lists, so a rule's ``leaf_kinds`` (``funcopt._core``) must follow from the group's
configuration and each parameter alone (GaLore's targets from the group, GrokAdamW's
position among the group's stepping parameters), never from names in a pytree.

``Optimizer`` always keeps an int ``state["step"]`` per parameter (its "has state" mark),
also for a layout with ``step=None``. A drop-in class with the
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

__all__ = ["Entry", "GroupKey", "Layout", "Reference", "static_key", "step_number", "step_of"]


class Entry(NamedTuple):
    """One tensor of a parameter's torch state: its key, shape and (JAX) dtype."""

    key: str
    shape: tuple
    dtype: Any


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """A torch optimizer class whose per-parameter state has a layout's keys.

    ``config(group)`` turns one of its param groups into the funcopt optimizer's keyword
    arguments (``learning_rate`` included); the optional parts are described in the module
    docstring."""

    module: str
    name: str
    config: Callable[[dict], dict]
    tensor_step: bool = False
    where: Callable | None = None  # optimizer -> bool
    settings: Callable | None = None  # optimizer -> {key: value} seen by config under a group
    keeps_step: bool = True
    to_reference: Callable | None = None  # (state by layout key, p, group) -> the reference's
    state_of: Callable | None = None  # (optimizer, group, p) -> its state (None: none)
    store: Callable | None = None  # (optimizer, group, p, state or None)
    label: str | None = None  # for messages, e.g. "torch.optim.AdamW(fused=True)"

    def matches(self, optimizer) -> bool:
        """Whether ``optimizer`` is an instance of this class (or of a subclass) in a
        configuration this layout describes."""
        return any(c.__module__ == self.module and c.__name__ == self.name
                   for c in type(optimizer).__mro__) and (
            self.where is None or bool(self.where(optimizer)))

    def group_config(self, optimizer, group) -> dict:
        """``config`` of ``group`` (with the optimizer-level ``settings`` beneath it)."""
        if self.settings is None:
            return self.config(group)
        return self.config({**self.settings(optimizer), **group})

    def step_value(self, step: int, device):
        """``state["step"]`` as the reference keeps it."""
        if self.tensor_step:
            return torch.tensor(float(step), dtype=torch.float32, device=device)
        return int(step)

    def read(self, optimizer, group, p):
        """``p``'s state as the reference keeps it (None or empty: none)."""
        if self.state_of is not None:
            return self.state_of(optimizer, group, p)
        return optimizer.state.get(p)

    def write(self, optimizer, group, p, step: int, arrays: dict) -> None:
        """Replaces ``p``'s state with ``arrays`` (torch tensors by layout key) at ``step``;
        no state for step 0, as the reference has before a parameter's first step."""
        state = None
        if step:
            state = {"step": self.step_value(step, p.device)} if self.keeps_step else {}
            state.update(arrays)
            if self.to_reference is not None:
                state = self.to_reference(state, p, group)
        if self.store is not None:
            self.store(optimizer, group, p, state)
            return
        optimizer.state.pop(p, None)
        if state is not None:
            optimizer.state[p] = state


def _item(value):
    return jnp.asarray(value).item()


class GroupKey(NamedTuple):
    """A torch param-group key that holds group-level state: ``field`` is the rule's group
    field, ``"count"`` (the State's count), a tuple of them (the key sets each: schedule-free's
    ``k`` is also the count) or None (a constant the reference expects, ``to_torch(None)``);
    ``to_torch(array)`` gives the value torch keeps (default: a Python scalar) and
    ``to_jax(value)`` the field's value from it, on the host (default: as is)."""

    field: str | tuple[str, ...] | None
    to_torch: Callable = _item
    to_jax: Callable | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields the key sets (the first is the one it is read from)."""
        return () if self.field is None else (
            self.field if isinstance(self.field, tuple) else (self.field,))


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """A funcopt optimizer's state as torch per-parameter (and param-group) entries."""

    optimizer_fn: Callable
    state_type: type
    keys: Mapping[str, str]
    step: str | None = "step"
    derived: Callable | None = None
    group_keys: Mapping[str, str | GroupKey] = dataclasses.field(default_factory=dict)
    references: tuple[Reference, ...] = ()
    flatten: Callable | None = None  # (a reference's per-parameter state, p) -> by layout key
    normalize: Callable | None = None  # a reference's state dict -> torch's standard form
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # Optimizer's own

    @property
    def groups(self) -> dict[str, GroupKey]:
        """``group_keys`` with every entry a :class:`GroupKey`."""
        return {k: v if isinstance(v, GroupKey) else GroupKey(v)
                for k, v in self.group_keys.items()}

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
        """The funcopt state: ``count`` (or the group's, for a ``"count"`` key), the group
        fields (``group``'s values by param-group key, as :meth:`group_arrays` gives them,
        else the rule's initial ones) and :meth:`leaf_fields` per leaf."""
        values = dict(zip(rule.group_fields, rule.init_group(), strict=True))
        for key, spec in self.groups.items():
            value = None if group is None else group.get(key)
            for field in spec.fields if value is not None else ():
                if field == "count":
                    count = jnp.asarray(value, jnp.int32)
                else:
                    values[field] = jnp.asarray(value, jnp.result_type(values[field]))
        return _core.assemble(self.state_type, treedef, count, per_leaf,
                              tuple(values[f] for f in rule.group_fields))

    def group_arrays(self, group: Mapping) -> dict:
        """A torch param group's group-state values by key, converted on the host
        (``GroupKey.to_jax``; None where unset): what :meth:`state` reads."""
        out = {}
        for key, spec in self.groups.items():
            value = group.get(key)
            if spec.field is not None:
                out[key] = value if value is None or spec.to_jax is None else spec.to_jax(value)
        return out

    def torch_group(self, values: Mapping) -> dict:
        """Group-state arrays by key (:meth:`from_state`'s) as the reference keeps them."""
        return {key: spec.to_torch(None if spec.field is None else values[key])
                for key, spec in self.groups.items()}

    def initial_group(self, rule) -> dict:
        """The rule's initial group state by param-group key, as torch keeps it."""
        values = dict(zip(rule.group_fields, rule.init_group(), strict=True))
        values["count"] = jnp.zeros([], jnp.int32)
        return self.torch_group({k: values[s.fields[0]] for k, s in self.groups.items()
                                 if s.fields})

    def from_state(self, state, treedef) -> tuple[list, list[dict], dict]:
        """``(steps, arrays, group)``: each leaf's step (None without a step field) and
        tensors by torch key (absent fields left out), and the group state by param-group
        key (arrays; :meth:`torch_group` converts them)."""
        columns = {f: _core.field_leaves(treedef, getattr(state, f))
                   for f in {*self.keys.values(), *([self.step] if self.step else [])}}
        n = treedef.num_leaves
        steps = columns[self.step] if self.step is not None else [None] * n
        arrays = [{k: columns[f][i] for k, f in self.keys.items() if columns[f][i] is not None}
                  for i in range(n)]
        group = {key: getattr(state, spec.fields[0]) for key, spec in self.groups.items()
                 if spec.fields}
        return steps, arrays, group

    def initial_arrays(self, config: dict, param) -> dict:
        """The rule's ``init`` state of one parameter (a JAX array) by torch key."""
        rule = self.rule(config)
        state = _core.init(rule, [param])
        return self.from_state(state, jax.tree.structure([param]))[1][0]

    def flat(self, state, p) -> dict:
        """A reference's per-parameter state (None: none) by layout key (``flatten``)."""
        if not state:
            return {}
        flat = state if self.flatten is None else self.flatten(state, p)
        return {k: v for k, v in flat.items() if v is not None}  # SGD's momentum_buffer=None

    def loadable(self, state_dict, param_groups) -> dict:
        """A reference's state dict in torch's standard form with the layout's keys
        (``normalize``, then ``flatten`` per parameter, matched by position with
        ``param_groups``' parameters)."""
        if self.normalize is not None:
            state_dict = self.normalize(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in param_groups for p in g["params"]]
        by_id = dict(zip(ids, params, strict=False))
        state = {i: self.flat(s, by_id.get(i)) for i, s in state_dict["state"].items()}
        groups = [self._translated(saved, current) for saved, current in
                  zip(state_dict["param_groups"], param_groups, strict=False)]
        groups += state_dict["param_groups"][len(groups):]
        return {**state_dict, "state": state, "param_groups": groups}

    def _translated(self, saved: dict, current: dict) -> dict:
        """A saved param group with the hyperparameters of a reference's group (one that
        its ``config`` reads: ``betas`` -> ``b1``, ``b2``) under the keys ``current`` (the
        loading optimizer's group) has; other groups unchanged."""
        for reference in self.references:
            try:
                config = reference.config(saved)
            except (KeyError, TypeError, ValueError, IndexError):
                continue
            return {**saved, **{k: v for k, v in config.items()
                                if k in current and k not in ("learning_rate", "params")}}
        return saved


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


def step_of(state) -> int:
    """A parameter's step from its torch state: its ``"step"``, else (a reference that keeps
    none: SGD, schedule-free, optimi) 1 if it holds a tensor, 0 if not."""
    if not state:
        return 0
    if "step" in state:
        return step_number(state["step"])
    return int(any(isinstance(v, torch.Tensor) for v in state.values()))
