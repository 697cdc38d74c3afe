"""galore-torch 1.0's ``GaLoreAdamW`` as an optax transformation."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _checks, _core, _galore
from funcopt._bnb32 import complement
from funcopt._grokadamw import adam_step_size
from funcopt._numerics import f32, is_static, learning_rate_at, rounder, unfused

__all__ = ["GaLoreAdamWState", "galore_adamw"]


class GaLoreAdamWState(NamedTuple):
    """State of :func:`galore_adamw`, field for field galore-torch's per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, the reference's ``state["step"]``.
      exp_avg, exp_avg_sq: Adam's moments in the parameter's dtype; on a target leaf they
        have the low-rank shape (``(m, k)``, ``(k, n)`` or ``(k, k)``).
      ortho_left, ortho_right: a target leaf's projection, the reference's
        ``state["projector"].ortho_matrix`` (``U[:, :k]`` for ``left``, ``Vh[:k]`` for
        ``right``, ``[U[:, :k], Vh[:k]]`` for ``full``), in the parameter's dtype; None
        elsewhere. Set them to inject a projection (used until the next recomputation).

    >>> import jax.numpy as jnp, funcopt
    >>> s = funcopt.galore_adamw(rank=2).init({"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)})
    >>> s.exp_avg["w"].shape, s.ortho_right["w"].shape, s.ortho_right["b"], s.ortho_left
    ((6, 2), (2, 4), None, None)
    """

    count: jax.Array
    step: Any
    exp_avg: Any
    exp_avg_sq: Any
    ortho_left: Any
    ortho_right: Any


def galore_adamw(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    correct_bias: bool = True,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    proj_type: str = "std",
    mask=None,
    svd=None,
) -> optax.GradientTransformation:
    r"""galore-torch's ``GaLoreAdamW``: HF-style AdamW, low-rank on the target leaves.

    On a target (2-D) leaf with gradient :math:`G`, at its step :math:`t` (0-based before the
    update), with projection :math:`P` recomputed from the SVD :math:`G = U S V^\top` (float32)
    whenever :math:`t` is a multiple of ``update_proj_gap``:

    .. math::
        R = P^\top(G), \quad m \leftarrow \beta_1 m + (1 - \beta_1) R, \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) R^2, \quad
        p \leftarrow p - \eta_t\, \alpha\, P\!\left(\frac{m}{\sqrt v + \epsilon}\right)

    with :math:`\eta_t` Adam's bias-corrected step size, :math:`\alpha` = ``scale``, and
    :math:`P^\top(G) = G V_k` (``right``), :math:`U_k^\top G` (``left``), :math:`U_k^\top G
    V_k` (``full``); ``std`` projects on the smaller side (right for rows >= columns),
    ``reverse_std`` on the larger. Every other leaf takes the same AdamW step unprojected.
    Then, when ``weight_decay`` > 0, every leaf decays by :math:`p \leftarrow p - \eta
    \lambda p` (galore-torch's groups share the class's ``weight_decay``; the Trainer passes
    none, so it is 0 there). Arithmetic follows galore-torch op by op in float32 (its
    ``p.add_(norm_grad, alpha=-step_size)`` is a fused multiply-add, unlike
    ``transformers.AdamW``'s ``addcdiv_``); see :mod:`funcopt._galore` for the SVD and its
    injection.

    **The Trainer's setup** (``optim="galore_adamw"``): the targets are the weights of the
    linear modules named by ``optim_target_modules`` (:func:`funcopt.galore_target_mask`),
    ``optim_args`` give ``rank`` (128), ``update_proj_gap`` (200), ``scale`` (0.25) and
    ``proj_type`` ("std") -- the defaults here -- and only ``lr`` is passed otherwise, so the
    class's ``eps=1e-6``, betas and ``weight_decay=0.0`` apply.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1, b2: the betas, in [0, 1) (static Python floats for exact parity).
      eps: >= 0, added to :math:`\sqrt v`.
      weight_decay: >= 0, for every leaf (galore-torch ignores a negative value; rejected).
      correct_bias: Adam's bias correction.
      rank: the kept rank (an int >= 1; at most the matrix's smaller side is kept).
      update_proj_gap: recompute the projection every this many steps (an int >= 1).
      scale: multiplies the projected-back update.
      proj_type: "std", "reverse_std", "right", "left" or "full".
      mask: the target leaves: a pytree of bools like the params, a callable ``params ->
        it``, or None for every 2-D leaf. Targets must be 2-D.
      svd: ``a -> (u, s, vh)`` with reduced shapes, the SVD that recomputes the projection
        (default ``jnp.linalg.svd(a, full_matrices=False)``; :func:`funcopt.torch.torch_svd`
        gives galore-torch's own projections, signs included).

    Example:
      >>> import jax, jax.numpy as jnp, optax, funcopt
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> opt = funcopt.galore_adamw(learning_rate=0.1, rank=1, scale=1.0)
      >>> grads = {"w": jnp.outer(jnp.arange(4.0), jnp.ones(3)), "b": jnp.ones(3)}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> state.exp_avg["w"].shape  # the moments of w live in rank 1
      (4, 1)
      >>> [round(float(x), 4) for x in optax.apply_updates(params, updates)["b"]]  # plain Adam
      [-0.1, -0.1, -0.1]
    """
    return _core.transformation(GaLoreAdamW.validated(
        learning_rate, b1, b2, eps, weight_decay, correct_bias, rank, update_proj_gap, scale,
        proj_type, mask, svd))


def default_svd(a):
    return jnp.linalg.svd(a, full_matrices=False)


def galore_step(rule, kind, g, t, left, right):
    """The shared GaLore front: the projection (recomputed at steps 0, gap, 2 gap, ...) and
    the low-rank gradient. Returns ``(low, left, right)``."""
    svd = rule.svd or default_svd
    left, right = jax.lax.cond(
        t % rule.update_proj_gap == 0,
        lambda: _galore.recompute(kind, g, svd, g.dtype), lambda: (left, right))
    return _galore.project(kind, left, right, g), left, right


@dataclasses.dataclass(frozen=True)
class GaLoreAdamW(_core.Rule):
    """galore_adamw's validated hyperparameters and leaf functions."""

    State: ClassVar[type] = GaLoreAdamWState
    needs_params: ClassVar[bool] = True  # p.add_(norm, alpha=-step_size) is one fma with p
    learning_rate: Any
    b1: Any
    b2: Any
    eps: Any
    weight_decay: Any
    correct_bias: bool
    rank: int
    update_proj_gap: int
    scale: Any
    proj_type: str
    targets: Any
    svd: Any

    @classmethod
    def validated(cls, learning_rate, b1, b2, eps, weight_decay, correct_bias, rank,
                  update_proj_gap, scale, proj_type, mask, svd) -> GaLoreAdamW:
        _checks.learning_rate("learning_rate", learning_rate)
        _checks.number("b1", b1, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("b2", b2, low=0.0, high=1.0, high_open=True, allowed="in [0.0, 1.0)")
        _checks.number("eps", eps, low=0.0)
        _checks.number("weight_decay", weight_decay, low=0.0,
                       allowed=">= 0.0 (galore-torch silently ignores a negative value)")
        if not isinstance(correct_bias, bool):
            raise TypeError(f"correct_bias must be a bool, got {correct_bias!r}.")
        _galore.check_options(rank, update_proj_gap, scale, proj_type)
        if svd is not None and not callable(svd):
            raise TypeError(f"svd must be a callable a -> (u, s, vh), got {svd!r}.")
        return cls(learning_rate, b1, b2, eps, weight_decay, correct_bias, int(rank),
                   int(update_proj_gap), scale, proj_type, mask, svd)

    def leaf_kinds(self, tree) -> list:
        return _galore.projections(tree, self.targets, self.rank, self.proj_type)

    def scalars(self, count) -> tuple:
        """``(lr, -lr * weight_decay)`` in float32 (the product in float64 when static)."""
        lr = learning_rate_at(self.learning_rate, count)
        if is_static(self.learning_rate) and is_static(self.weight_decay):
            return lr, jnp.asarray(-self.learning_rate * self.weight_decay, f32)
        return lr, -lr * jnp.asarray(self.weight_decay, f32)

    def init_leaf(self, p, kind) -> tuple:
        """``(step, exp_avg, exp_avg_sq, ortho_left, ortho_right)``."""
        shape, left, right = low_rank_shapes(kind, jnp.shape(p))
        zeros = functools.partial(jnp.zeros, dtype=p.dtype)
        return (jnp.zeros([], jnp.int32), zeros(shape), zeros(shape),
                None if left is None else zeros(left), None if right is None else zeros(right))

    def update_leaf(self, scalars, g, p, fields, decays, kind):
        """One leaf's ``(update, (step, exp_avg, exp_avg_sq, ortho_left, ortho_right))``."""
        lr, decay = scalars
        t, m, v, left, right = fields
        dtype = m.dtype
        rnd = rounder(dtype)
        if kind is not None:
            g, left, right = galore_step(self, kind, g.astype(dtype), t, left, right)
        t = optax.safe_increment(t)
        g = g.astype(f32)
        b1, one_minus_b1 = complement(self.b1)
        b2, one_minus_b2 = complement(self.b2)
        m = rnd(rnd(one_minus_b1) * g + rnd(unfused(m.astype(f32) * b1)))
        v = rnd((one_minus_b2 * g) * g + rnd(unfused(v.astype(f32) * b2)))
        denom = rnd(rnd(jnp.sqrt(v)) + f32(self.eps))
        if is_static(self.eps) and self.eps == 0:
            denom = unfused(denom)  # keeps the true division (XLA would use rsqrt)
        step_size = (adam_step_size(self.learning_rate, lr, self.b1, self.b2, t)
                     if self.correct_bias else lr)
        norm = rnd(m / denom).astype(dtype)
        if kind is not None:
            norm = _galore.project_back(kind, left, right, norm, self.scale)
        p32 = p.astype(f32)
        new = rnd(rnd(-step_size) * norm.astype(f32) + p32)  # p.add_(norm, alpha=-step_size)
        if decays:
            new = rnd(rnd(decay) * new + new)  # p.add_(p, alpha=-lr * wd)
        return (new - p32).astype(dtype), (t, m.astype(dtype), v.astype(dtype), left, right)


def low_rank_shapes(kind, shape) -> tuple:
    """``(moment shape, ortho_left shape or None, ortho_right shape or None)``."""
    if kind is None:
        return tuple(shape), None, None
    (m, n), k = shape, kind.k
    return {"right": ((m, k), None, (k, n)), "left": ((k, n), (m, k), None),
            "full": ((k, k), (m, k), (k, n))}[kind.side]
