"""The transformers 5.x Trainer's weight-decay rule (``Trainer.get_decay_parameter_names``),
applied to a pytree of parameters."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

import jax

from funcopt._names import _key_str

# Trainer.get_decay_parameter_names, transformers 5.23.0: searched in the lowercased name.
FORBIDDEN_NAME_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)",
                           r"_norm(?:$|\.)")
_PATTERNS = tuple(re.compile(p) for p in FORBIDDEN_NAME_PATTERNS)
# A Flax LayerNorm holds "scale" and "bias" (or "scale" alone with use_bias=False).
_LAYER_NORM_LEAVES = ({"scale"}, {"scale", "bias"})


def _keys(path) -> tuple[str, ...]:
    """A leaf's key path as strings, without the ``.value`` of an ``nnx.Variable``."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return tuple(_key_str(k) for k in path)


def _default_layer_norms(paths) -> set[tuple[str, ...]]:
    """Modules (key-path prefixes) whose direct children are all leaves named as a Flax
    LayerNorm's: ``{scale}`` or ``{scale, bias}``."""
    leaves, parents = {}, set()
    for keys in filter(None, paths):
        leaves.setdefault(keys[:-1], set()).add(keys[-1])
        parents.update(keys[:i] for i in range(len(keys) - 1))
    return {m for m, names in leaves.items()
            if m and m not in parents and names in _LAYER_NORM_LEAVES}


def _chosen_layer_norms(paths, layer_norms) -> set[tuple[str, ...]]:
    """The modules ``layer_norms`` (a predicate on "a/b/c", or a collection of such paths)
    selects among the modules of ``paths``."""
    modules = {keys[:i] for keys in paths for i in range(1, len(keys))}
    if callable(layer_norms):
        return {m for m in modules if layer_norms("/".join(m))}
    if isinstance(layer_norms, str) or not isinstance(layer_norms, Collection):
        raise TypeError("layer_norms must be None, a predicate on a module path ('a/b/c') or "
                        f"a list of module paths, got {layer_norms!r}.")
    by_name = {"/".join(m): m for m in modules}
    unknown = [p for p in layer_norms if p not in by_name]
    if unknown:
        raise ValueError(f"layer_norms names {unknown!r}, which are not modules of params; "
                         f"module paths look like {sorted(by_name)[:3]!r}.")
    return {by_name[p] for p in layer_norms}


def trainer_decay_mask(params, layer_norms: Callable[[str], bool] | Collection[str] | None = None):
    r"""Which leaves the transformers 5.x Trainer puts in its weight-decay group.

    ``Trainer.get_decay_parameter_names`` (5.23.0) decays a parameter unless

    * its name, lowercased, contains a match of one of ``bias``, ``layernorm``, ``rmsnorm``,
      ``(?:^|\.)norm(?:$|\.)``, ``_norm(?:$|\.)`` (the name is the ``.``-joined module path
      plus the parameter's own name, e.g. ``encoder.layer.0.output.layernorm.weight``), or
    * it belongs to a module that is an ``nn.LayerNorm`` (by type: GPT-2's ``ln_1``,
      ``ln_f``).

    On a pytree the name is the leaf's key path joined with ``.`` (an ``nnx.Variable``'s
    ``.value`` left out), so Flax's ``kernel``/``scale``/``embedding`` stand where torch has
    ``weight``; the patterns do not tell them apart. A pytree has no types, so by default a
    module whose leaves are exactly a ``scale`` (and a ``bias``), Flax's LayerNorm, counts as
    a LayerNorm. That is exact for Hugging Face's models, whose other norms (RMSNorm) are
    named like norms. The default cannot know when a Flax ``RMSNorm``, ``GroupNorm`` or
    ``BatchNorm`` (also ``scale`` [+ ``bias``]) twins a torch module that is not a LayerNorm
    and is named like nothing in the list (torch decays its weight), nor when a LayerNorm is
    stored under other leaf names. Then pass ``layer_norms``: a predicate on the module's
    path (``"encoder/ln"``, the ``/``-joined key path of :func:`funcopt.param_names` without
    the leaf), or the list of those paths; it replaces the default rule, and it excludes
    every leaf below a selected module, as torch does. The root is never a LayerNorm (torch
    checks the children of the model).

    Returns a pytree of Python bools shaped like ``params`` (True: decays), ready as the
    ``mask`` of any funcopt optimizer or of ``optax.masked``; ``trainer_decay_mask`` itself
    can be passed as ``mask``.

    >>> import jax.numpy as jnp, funcopt
    >>> params = {"h": {"attn": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
    ...                 "ln_1": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}},
    ...           "final_norm": {"scale": jnp.ones(2)}, "gn": {"scale": jnp.ones(2)}}
    >>> mask = funcopt.trainer_decay_mask(params)
    >>> mask["h"]
    {'attn': {'bias': False, 'kernel': True}, 'ln_1': {'bias': False, 'scale': False}}
    >>> mask["final_norm"], mask["gn"]
    ({'scale': False}, {'scale': False})
    >>> funcopt.trainer_decay_mask(params, layer_norms=["h/ln_1"])["gn"]  # gn: a GroupNorm
    {'scale': True}
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [_keys(path) for path, _ in flat]
    if layer_norms is None:
        norms = _default_layer_norms(paths)
    else:
        norms = _chosen_layer_norms(paths, layer_norms)

    def decays(keys) -> bool:
        if any(keys[:i] in norms for i in range(1, len(keys))):
            return False
        name = ".".join(keys).lower()
        return not any(p.search(name) for p in _PATTERNS)

    return jax.tree_util.tree_unflatten(treedef, [decays(keys) for keys in paths])
