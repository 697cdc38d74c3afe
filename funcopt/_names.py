"""Parameter names: a pytree's key paths joined with ``/``, and regex masks over them."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax

__all__ = ["param_names", "name_mask"]


def _key_str(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def param_names(params):
    """Returns the pytree of parameter names: each leaf's key path joined with ``/``.

    A name is what TF's ``AdamWeightDecay`` matches its include/exclude regexes against
    (there a Keras variable name such as ``dense/bias:0``; here the pytree path).

    >>> import jax.numpy as jnp
    >>> param_names({"encoder": {"LayerNorm": {"bias": jnp.zeros(2)}}, "w": [jnp.ones(1)]})
    {'encoder': {'LayerNorm': {'bias': 'encoder/LayerNorm/bias'}}, 'w': ['w/0']}
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(_key_str(k) for k in path), params
    )


def compile_patterns(patterns, argument: str) -> list[re.Pattern]:
    """``patterns`` (None, a regex string, or a sequence of regex strings or compiled
    patterns) compiled; ``TypeError``/``ValueError`` naming ``argument`` otherwise."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Sequence):
        raise TypeError(
            f"{argument} must be a regex string or a sequence of them, got {patterns!r}."
        )
    compiled = []
    for pattern in patterns:
        if isinstance(pattern, re.Pattern):
            compiled.append(pattern)
            continue
        if not isinstance(pattern, str):
            raise TypeError(f"{argument} must contain regex strings, got {pattern!r}.")
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"{argument} contains an invalid regex {pattern!r}: {err}.") from None
    return compiled


def decays(name: str, include: Sequence[re.Pattern], exclude: Sequence[re.Pattern]) -> bool:
    """TF ``AdamWeightDecay._do_use_weight_decay``: include wins, then exclude, else decay."""
    if any(p.search(name) for p in include):
        return True
    return not any(p.search(name) for p in exclude)


def name_mask(params, include=None, exclude=None):
    """Boolean mask over ``params``: True where the parameter's name is selected.

    The rule is TF ``AdamWeightDecay``'s: a name that ``re.search``-matches any ``include``
    pattern is selected; otherwise one that matches any ``exclude`` pattern is not;
    everything else is selected. Use it as a weight-decay mask, HF style:

    >>> import jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
    ...           "LayerNorm": {"scale": jnp.ones(2)}}
    >>> name_mask(params, exclude=["bias", "LayerNorm"])
    {'LayerNorm': {'scale': False}, 'dense': {'bias': False, 'kernel': True}}
    """
    inc = compile_patterns(include, "include")
    exc = compile_patterns(exclude, "exclude")
    return jax.tree.map(lambda name: decays(name, inc, exc), param_names(params))
