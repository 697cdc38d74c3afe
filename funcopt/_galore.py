"""GaLore's low-rank projection (galore-torch 1.0's ``GaLoreProjector``) and the Trainer's
target-module rule, shared by :func:`funcopt.galore_adamw` and :func:`funcopt.galore_adafactor`.

GaLore keeps an optimizer's moments in a low-rank space: each target (a 2-D weight) has its
gradient projected onto ``rank`` singular vectors of a recent gradient, the inner optimizer
steps there, and the result is projected back and scaled. The projection is recomputed from
an SVD of the gradient (in float32) at the leaf's steps 0, ``update_proj_gap``,
2 * ``update_proj_gap``, ...

**SVDs and exactness.** torch (MKL's LAPACK) and JAX (its own LAPACK) round their SVDs
differently (~1e-6 on the singular vectors) and may return a singular vector with the
opposite sign. A sign flip alone changes nothing until the next re-projection (the moment and
the basis flip together); after one, the moments carried over meet the new basis with another
relative sign than in torch, which moves results by ~1e-3. Measured: signs agree on tall and
square gradients, and on wide ones (rows < columns) MKL's path flips about a third of the
vectors, in a pattern no rule on the matrix reproduces. Two ways to exactness:

* ``svd``: the function that factors the gradient (default ``jnp.linalg.svd(a,
  full_matrices=False)``). :func:`funcopt.torch.torch_svd` (``torch.linalg.svd`` through a
  ``jax.pure_callback``; ``funcopt.torch.Optimizer``'s default) gives galore-torch's own
  projections, and the rest of GaLore is then equal to it to float32 round-off (tested to
  1e-6, through re-projections).
* the state fields ``ortho_left``/``ortho_right`` hold the projection in use (the
  reference's ``state["projector"].ortho_matrix``); one copied in from the reference is used
  until the next recomputation step.

Without either, results follow galore-torch to ~1e-4 while no re-projection meets a sign
flip (tall or square targets, or runs shorter than ``update_proj_gap``).

**What funcopt does not build, and why** (the Trainer's other low-rank and fused names):

* APOLLO (``apollo_adamw``): its projection is a random matrix drawn from torch's global RNG
  (``torch.randn`` seeded by ``torch.manual_seed`` and advanced by every other draw of the
  program), and its scaling factors come from that random space. JAX's counter-based PRNG
  cannot produce torch's stream, so no run could be compared to the reference, and a
  version with JAX's own random matrices would be a different optimizer wearing its name.
* the ``*_layerwise`` variants and LOMO/AdaLomo: they change how ``backward`` runs (an
  optimizer per parameter stepped from a post-accumulate-grad hook, or the update fused into
  the backward pass so the gradients are never stored). A gradient transformation receives
  the whole gradient after backward, so there is nothing for it to change; per step, the
  layer-wise variants compute what the plain names compute (use ``galore_adamw`` /
  ``galore_adafactor``), and memory savings of that kind come from ``jax.checkpoint``/donation
  in the training step, not from the optimizer.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcopt import _checks, _core
from funcopt._names import _key_str
from funcopt._numerics import f32

__all__ = ["Projection", "PROJ_TYPES", "galore_target_mask", "projections", "check_options",
           "recompute", "project", "project_back"]

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")


class Projection(NamedTuple):
    """A target leaf's static projection: ``side`` is ``"left"`` (``U[:, :k].T @ G``),
    ``"right"`` (``G @ Vh[:k].T``) or ``"full"`` (both); ``k`` the kept rank."""

    side: str
    k: int


def check_options(rank, update_proj_gap, scale, proj_type) -> None:
    """The GaLore keywords (galore-torch itself checks none of them and fails at its first
    step instead)."""
    _checks.integer("rank", rank, low=1)
    _checks.integer("update_proj_gap", update_proj_gap, low=1)
    _checks.number("scale", scale)
    _checks.choice("proj_type", proj_type, PROJ_TYPES)


def _side(proj_type: str, m: int, n: int) -> str:
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


def projections(tree, targets, rank: int, proj_type: str) -> list:
    """One :class:`Projection` per target leaf of ``tree``, None elsewhere. ``targets``: None
    (every 2-D leaf), a bool, a pytree of bools or a callable ``tree -> it``."""
    treedef = jax.tree.structure(tree)
    leaves = treedef.flatten_up_to(tree)
    if targets is None:
        flags = [jnp.ndim(x) == 2 for x in leaves]
    elif isinstance(targets, bool):
        flags = [targets] * len(leaves)
    else:
        flags = _core.resolve_mask(targets, tree, treedef)
    out = []
    for leaf, flag in zip(leaves, flags, strict=True):
        if not flag:
            out.append(None)
            continue
        if jnp.ndim(leaf) != 2:
            raise ValueError(f"GaLore projects 2-D weights only; a target leaf has shape "
                             f"{jnp.shape(leaf)} (leave it out of mask).")
        m, n = jnp.shape(leaf)
        side, k = _side(proj_type, m, n), min(rank, m, n)
        if proj_type == "reverse_std" and m < n and k == m:
            raise ValueError(f"proj_type='reverse_std' on a ({m}, {n}) target needs rank < {m}: "
                             "galore-torch's project_back multiplies mismatched shapes there.")
        out.append(Projection(side, k))
    return out


def recompute(kind: Projection, g, svd, dtype) -> tuple:
    """``(ortho_left, ortho_right)`` from the SVD of ``g`` in float32, in ``dtype``."""
    u, _, vh = svd(g.astype(f32))
    left = u[:, :kind.k].astype(dtype) if kind.side in ("left", "full") else None
    right = vh[:kind.k, :].astype(dtype) if kind.side in ("right", "full") else None
    return left, right


def _mm(a, b):
    """torch.matmul in ``a``'s dtype: float32 products and sums, one rounding at the end."""
    out = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=f32)
    return out.astype(a.dtype)


def project(kind: Projection, left, right, g):
    """The low-rank gradient (``GaLoreProjector.project``)."""
    if kind.side == "right":
        return _mm(g, right.T)
    if kind.side == "left":
        return _mm(left.T, g)
    return _mm(_mm(left.T, g), right.T)


def project_back(kind: Projection, left, right, low, scale):
    """``project_back(low) * scale``, rounded in ``low``'s dtype."""
    if kind.side == "right":
        full = _mm(low, right)
    elif kind.side == "left":
        full = _mm(left, low)
    else:
        full = _mm(_mm(left, low), right)
    return (full.astype(f32) * jnp.asarray(scale, f32)).astype(low.dtype)


def _check_target_module_exists(target_modules, key: str) -> bool:
    """transformers' ``trainer_utils.check_target_module_exists`` (5.23)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    return (key in target_modules or any(t in key for t in target_modules)
            or any(re.fullmatch(t, key) for t in target_modules))


def _default_linear(children: dict) -> str | None:
    """The weight key of a module that looks like a linear layer: a 2-D ``weight`` (torch
    layout) or ``kernel`` (Flax), besides at most a 1-D ``bias``."""
    keys = set(children)
    for weight in ("weight", "kernel"):
        if weight in keys and jnp.ndim(children[weight]) == 2 and keys <= {weight, "bias"}:
            bias = children.get("bias")
            if bias is None or jnp.ndim(bias) == 1:
                return weight
    return None


def galore_target_mask(params, target_modules, linear=None):
    """The Trainer's GaLore targets (``optim_target_modules``) as a mask over ``params``.

    transformers 5.23 (``_setup_low_rank_optimizer``) targets the ``weight`` of every
    ``nn.Linear`` module whose name matches ``target_modules``: a string is a regex that must
    ``re.fullmatch`` the module name (``"all-linear"``/``"all_linear"``: every linear module);
    a list matches a name equal to an entry, containing an entry as a substring, or
    fullmatching an entry as a regex. Here a module is an inner node of the pytree, its name
    the keys of its path joined with ``.`` (torch's ``named_modules`` spelling), and a
    pytree has no types: by default a module is linear when its leaves are a 2-D ``weight``
    (torch layout, ``(out, in)``) or ``kernel`` (Flax, ``(in, out)``) and at most a 1-D
    ``bias``. That also takes an embedding table stored as ``{"weight": 2-D}``, or GPT-2's
    ``Conv1D``, which the Trainer skips; ``linear`` (a predicate on the module name, or a
    collection of names) decides instead. A Flax kernel is the transpose of torch's weight,
    which swaps GaLore's left and right projections (the same numbers up to rounding, except
    for square matrices with ``proj_type="std"``, which both project on the right).

    Raises ``TypeError`` for ``target_modules`` that is not a string or list, and
    ``ValueError`` when nothing matches, as the Trainer does.

    >>> import jax.numpy as jnp
    >>> params = {"attn": {"q_proj": {"weight": jnp.zeros((4, 4)), "bias": jnp.zeros(4)}},
    ...           "mlp": {"weight": jnp.zeros((8, 4))}, "norm": {"weight": jnp.zeros(4)}}
    >>> galore_target_mask(params, ["attn"])["attn"]["q_proj"]
    {'bias': False, 'weight': True}
    >>> galore_target_mask(params, "all-linear")["mlp"]["weight"]
    True
    """
    if target_modules is None:
        raise ValueError("You need to define target_modules (optim_target_modules) to use "
                         "GaLore: a list of module names, a regex, or 'all-linear'.")
    if isinstance(target_modules, tuple):
        target_modules = list(target_modules)
    if not isinstance(target_modules, list | str):
        raise TypeError("target_modules must be a list of strings, a regex string, or "
                        f"'all-linear', got {target_modules!r}.")
    all_linear = (isinstance(target_modules, str)
                  and target_modules.replace("_", "-") == "all-linear")
    names = jax.tree_util.tree_flatten_with_path(params)[0]
    modules: dict[tuple, dict] = {}
    for path, leaf in names:
        modules.setdefault(tuple(path[:-1]), {})[_key_str(path[-1])] = leaf
    targets = set()
    for path, children in modules.items():
        name = ".".join(_key_str(k) for k in path)
        weight = _default_linear(children) if linear is None else _linear_weight(
            linear, name, children)
        if weight and (all_linear or _check_target_module_exists(target_modules, name)):
            targets.add((path, weight))
    if not targets:
        raise ValueError(f"No target modules found for GaLore ({target_modules}).")
    return jax.tree_util.tree_map_with_path(
        lambda p, _: (tuple(p[:-1]), _key_str(p[-1])) in targets, params)


def _linear_weight(linear, name: str, children: dict) -> str | None:
    is_linear = linear(name) if callable(linear) else name in linear
    if not is_linear:
        return None
    return next((k for k in ("weight", "kernel") if k in children), None)
