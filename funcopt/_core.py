"""The optimizer core: one per-leaf loop, written once, that every funcopt optimizer runs.

An optimizer is a :class:`Rule`: a frozen record of validated hyperparameters with pure
module-level-style leaf functions (``init_leaf``, ``update_leaf``, and the per-update
``scalars`` they share). :func:`transformation` turns a rule into an
``optax.GradientTransformation``; the core owns everything around the leaf functions:

* the loop over the params pytree (flatten, zip, unflatten), in ``jax.tree.leaves`` order;
* the state: a NamedTuple (``Rule.State``) whose first field is the update count (int32,
  incremented with ``optax.safe_increment``), then the rule's ``group_fields`` (values shared
  by every leaf, like a torch param group's own entries; none for most rules), and whose
  other fields are pytrees like the params, one value per leaf; a field no leaf has is
  ``None`` ("absent", like a torch state key the reference never creates);
* the "this update needs the params" check (:data:`NO_PARAMS`);
* mask resolution: ``Rule.mask`` (a pytree of bools like the params, or a callable
  ``params -> such a pytree``) becomes one static bool per leaf, ``decays``;
* the dtype policy: every state leaf keeps the dtype and shape ``init_leaf`` gave it, so an
  update never changes the state's types (``lax.scan`` carries, no recompiles). Whether a
  moment lives in the parameter's dtype (torch's bf16 moments) or in float32 (Adafactor,
  bitsandbytes) is the rule's ``init_leaf`` choice, made once.

The same leaf functions serve the fused CPU path (``funcopt._fused``), the torch bridge
(its ``Optimizer`` and state converters, through :func:`rule_of`) and the TF bridge.

A new elementwise optimizer is one small file::

    class LionState(NamedTuple):
        count: jax.Array
        exp_avg: Any

    @dataclasses.dataclass(frozen=True)
    class _Lion(core.Rule):
        State = LionState
        learning_rate: Any
        b1: float
        ...
        def scalars(self, count):
            return core.learning_rate_at(self.learning_rate, count)
        def init_leaf(self, p):
            return (jnp.zeros_like(p),)
        def update_leaf(self, lr, g, p, fields, decays):
            (m,) = fields
            ...
            return update, (new_m,)

    def lion(learning_rate=1e-4, b1=0.9, b2=0.99, weight_decay=0.0, mask=None):
        return core.transformation(_Lion(...validated...))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt._numerics import NO_PARAMS, is_static, learning_rate_at

__all__ = ["Rule", "Step", "transformation", "rule_of", "prepare", "finish", "resolve_mask",
           "field_leaves", "assemble", "learning_rate_at", "NO_PARAMS"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """An optimizer: validated hyperparameters (dataclass fields) and its leaf functions.

    Subclasses set ``State`` (a NamedTuple: the count, then per-leaf fields) and implement
    ``init_leaf`` and ``update_leaf``; ``scalars`` computes what all leaves of one update
    share (the learning rate at ``count``, bias corrections, ...). A rule with a
    ``weight_decay`` field and a ``mask`` field gets the decay handling for free:
    ``decays`` is False for every leaf when ``weight_decay`` is statically 0.
    """

    State: ClassVar[type]
    #: Whether ``update`` always needs the params (besides weight decay).
    needs_params: ClassVar[bool] = False
    #: Names of the State fields right after the count that hold group-level values (arrays
    #: shared by all leaves, each kept in its initial dtype and shape), e.g. schedule-free's
    #: ``k`` and ``weight_sum``: they start at :meth:`init_group` and advance in
    #: :meth:`group_step`. Empty for most rules.
    group_fields: ClassVar[tuple[str, ...]] = ()

    # -- the optimizer's own definition ----------------------------------------------------

    def scalars(self, count):
        """Values shared by every leaf of the update that has ``count`` updates before it."""
        return learning_rate_at(getattr(self, "learning_rate", 0.0), count)

    def init_group(self) -> tuple:
        """Initial values of ``group_fields`` (arrays)."""
        return ()

    def group_step(self, count, group: tuple) -> tuple:
        """``(scalars, new_group)`` for the update that has ``count`` updates before it: by
        default :meth:`scalars` and the (empty) group unchanged."""
        return self.scalars(count), group

    def transform_grads(self, grads):
        """The whole gradient pytree as the leaves see it: run once per update, before the
        per-leaf loop (e.g. Keras' clipping, which needs the global norm). Identity by
        default."""
        return grads

    def init_leaf(self, p) -> tuple:
        """The per-leaf state fields (``State``'s fields after the count and the group) for
        ``p``, ``None`` where this leaf has no such entry."""
        raise NotImplementedError

    def update_leaf(self, scalars, g, p, fields: tuple, decays: bool):
        """One leaf's ``(update, new_fields)``; ``p`` is None when the params were not given
        (only allowed when :meth:`uses_params` is False)."""
        raise NotImplementedError

    def leaf_kinds(self, tree) -> list | None:
        """Static per-leaf facts the rule needs besides weight decay, one per leaf of ``tree``
        (the params; the grads when an update is given none): e.g. which leaves GaLore
        projects and how, or a leaf's position in its param group (GrokAdamW). ``None`` (the
        default): none, and the leaf functions take no ``kind``. Otherwise they are called as
        ``init_leaf(p, kind)`` and ``update_leaf(scalars, g, p, fields, decays, kind)``."""
        return None

    # -- derived ---------------------------------------------------------------------------

    def decays_any(self) -> bool:
        """False when no leaf can decay (no ``weight_decay``, or statically 0)."""
        wd = getattr(self, "weight_decay", 0.0)
        return not (is_static(wd) and wd == 0.0)

    def uses_params(self) -> bool:
        return self.needs_params or self.decays_any()


class Step(NamedTuple):
    """One update, flattened: what the XLA path and the fused kernels start from.

    ``leaves`` holds ``(g, p, fields, decays)`` per leaf (``p`` None without params);
    ``kinds`` is :meth:`Rule.leaf_kinds` (None for most rules); ``group`` the group fields
    after this update (empty for most rules)."""

    treedef: Any
    count: jax.Array
    scalars: Any
    leaves: list
    kinds: list | None = None
    group: tuple = ()


def resolve_mask(mask, params, treedef) -> list[bool]:
    """One static bool per leaf from a mask pytree (or a callable ``params -> mask``); a bool
    alone holds for every leaf."""
    if isinstance(mask, bool | np.bool_):
        return [bool(mask)] * treedef.num_leaves
    tree = mask(params) if callable(mask) else mask
    try:
        flat = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "mask must be a pytree of bools with the structure of the params (or a callable "
            f"params -> such a pytree): {err}"
        ) from None
    if not all(isinstance(x, bool | np.bool_) for x in flat):
        raise TypeError("mask leaves must be Python bools (static, known before jit).")
    return [bool(x) for x in flat]


def field_leaves(treedef, field) -> list:
    """A state field's per-leaf values (``None`` everywhere for an absent field)."""
    if field is None:
        return [None] * treedef.num_leaves
    return treedef.flatten_up_to(field)


def assemble(state_cls, treedef, count, per_leaf: list[tuple], group: tuple = ()):
    """``state_cls(count, *group, *fields)`` from the group fields and per-leaf field tuples;
    a field that is ``None`` on every leaf is ``None``."""
    n = len(state_cls._fields) - 1 - len(group)
    columns = list(zip(*per_leaf, strict=True)) if per_leaf else [()] * n
    fields = [None if all(x is None for x in column)
              else jax.tree_util.tree_unflatten(treedef, list(column)) for column in columns]
    return state_cls(count, *group, *fields)


def init(rule: Rule, params):
    """The rule's zero state for ``params``."""
    treedef = jax.tree.structure(params)
    leaves = treedef.flatten_up_to(params)
    kinds = rule.leaf_kinds(params)
    if kinds is None:
        per_leaf = [tuple(rule.init_leaf(p)) for p in leaves]
    else:
        per_leaf = [tuple(rule.init_leaf(p, k)) for p, k in zip(leaves, kinds, strict=True)]
    return assemble(rule.State, treedef, jnp.zeros([], jnp.int32), per_leaf,
                    tuple(rule.init_group()))


def prepare(rule: Rule, grads, state, params) -> Step:
    """Checks the inputs and flattens one update."""
    if params is None and rule.uses_params():
        raise ValueError(NO_PARAMS)
    grads = rule.transform_grads(grads)
    treedef = jax.tree.structure(grads)
    n = treedef.num_leaves
    p_l = [None] * n if params is None else treedef.flatten_up_to(params)
    mask = getattr(rule, "mask", None)
    if not rule.decays_any():
        decays = [False] * n
    elif mask is None:
        decays = [True] * n
    else:
        decays = resolve_mask(mask, params, treedef)
    n_group = len(rule.group_fields)
    columns = [field_leaves(treedef, f) for f in state[1 + n_group:]]
    fields = [tuple(c[i] for c in columns) for i in range(n)]
    count, group = state[0], tuple(state[1:1 + n_group])
    scalars, new_group = rule.group_step(count, group)
    leaves = list(zip(treedef.flatten_up_to(grads), p_l, fields, decays, strict=True))
    kinds = rule.leaf_kinds(grads if params is None else params)
    return Step(treedef, count, scalars, leaves, kinds, _keep_types(tuple(new_group), group))


def _keep_types(new: tuple, old: tuple) -> tuple:
    """The new fields in the old fields' dtypes; a shape change is the rule's bug."""
    out = []
    for a, b in zip(new, old, strict=True):
        if b is None or a is None:
            out.append(a)
            continue
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"update_leaf changed a state field's shape {jnp.shape(b)} -> "
                             f"{jnp.shape(a)}")
        out.append(jnp.asarray(a).astype(b.dtype))
    return tuple(out)


def finish(rule: Rule, step: Step, outs: list) -> tuple:
    """``(updates, new_state)`` from each leaf's ``(update, new_fields)``."""
    per_leaf = [_keep_types(tuple(fields), leaf[2])
                for (_, fields), leaf in zip(outs, step.leaves, strict=True)]
    updates = jax.tree_util.tree_unflatten(step.treedef, [u for u, _ in outs])
    new_state = assemble(rule.State, step.treedef, optax.safe_increment(step.count), per_leaf,
                         step.group)
    return updates, new_state


def update(rule: Rule, grads, state, params=None):
    """The rule's ``update``: every leaf through ``rule.update_leaf``."""
    step = prepare(rule, grads, state, params)
    if step.kinds is None:
        outs = [rule.update_leaf(step.scalars, *leaf) for leaf in step.leaves]
    else:
        outs = [rule.update_leaf(step.scalars, *leaf, kind)
                for leaf, kind in zip(step.leaves, step.kinds, strict=True)]
    return finish(rule, step, outs)


def transformation(rule: Rule) -> optax.GradientTransformation:
    """The ``optax.GradientTransformation`` that runs ``rule`` on every leaf."""
    return optax.GradientTransformation(
        functools.partial(init, rule), functools.partial(update, rule)
    )


def rule_of(tx) -> Rule | None:
    """The rule behind a transformation made by :func:`transformation`, else None."""
    fn = getattr(tx, "update", None)
    if isinstance(fn, functools.partial) and fn.func is update:
        return fn.args[0]
    return None
