"""galore-torch 1.0's ``GaLoreAdafactor`` as an optax transformation: funcopt's Adafactor rule
stepping in GaLore's low-rank space."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _core, _galore
from funcopt._adafactor import Adafactor, _rms, state_dtype
from funcopt._galore_adamw import galore_step, low_rank_shapes
from funcopt._numerics import f32

__all__ = ["GaLoreAdafactorState", "galore_adafactor"]


class GaLoreAdafactorState(NamedTuple):
    """State of :func:`galore_adafactor`: :class:`funcopt.AdafactorState`'s fields (on a
    target leaf the moments have the low-rank shape: ``exp_avg`` ``(m, k)``/``(k, n)``/
    ``(k, k)`` and its row/column factors), plus the projection ``ortho_left``/``ortho_right``
    as in :class:`funcopt.GaLoreAdamWState` (float32 here: galore-torch's Adafactor projects
    the float32 gradient).

    >>> import jax.numpy as jnp, funcopt
    >>> s = funcopt.galore_adafactor(rank=2).init({"w": jnp.zeros((6, 4))})
    >>> s.exp_avg_sq_row["w"].shape, s.exp_avg_sq_col["w"].shape, s.ortho_right["w"].shape
    ((6,), (2,), (2, 4))
    """

    count: jax.Array
    step: Any
    rms: Any
    lr: Any
    exp_avg: Any
    exp_avg_sq_row: Any
    exp_avg_sq_col: Any
    exp_avg_sq: Any
    ortho_left: Any
    ortho_right: Any


def galore_adafactor(
    learning_rate=None,
    eps=(1e-30, 1e-3),
    clip_threshold: float = 1.0,
    decay_rate: float = -0.8,
    beta1: float | None = None,
    weight_decay: float = 0.0,
    scale_parameter: bool = True,
    relative_step: bool = True,
    warmup_init: bool = False,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    proj_type: str = "std",
    mask=None,
    svd=None,
) -> optax.GradientTransformation:
    r"""galore-torch's ``GaLoreAdafactor``: :func:`funcopt.adafactor`, low-rank on targets.

    A target (2-D) leaf's gradient is projected as in :func:`funcopt.galore_adamw` (float32,
    the projection recomputed at its steps 0, gap, 2 gap, ...); Adafactor's second-moment
    factors, update clipping, step size and first moment then run on the low-rank gradient
    :math:`R` (so the moments have its shape), and the update is projected back and scaled:

    .. math::
        U = \mathrm{scale}\cdot P(\mathrm{Adafactor}(R)), \qquad
        p \leftarrow p - \lambda\alpha p - U

    where :math:`\alpha` is Adafactor's step size, scaled (``scale_parameter``) by the RMS of
    the *full* parameter. Every other leaf is :func:`funcopt.adafactor`'s step: galore-torch
    copies transformers' Adafactor, and the Trainer's ``optim="galore_adafactor"`` passes
    ``scale_parameter=False, relative_step=False`` with its ``learning_rate``, as for
    ``adafactor``. Arithmetic and its float32 caveats are :func:`funcopt.adafactor`'s; the
    projection, its SVD and ``svd`` injection are described in :mod:`funcopt._galore`.

    Args:
      learning_rate: and eps, clip_threshold, decay_rate, beta1, weight_decay,
        scale_parameter, relative_step, warmup_init: as :func:`funcopt.adafactor`
        (galore-torch's defaults are transformers').
      rank, update_proj_gap, scale, proj_type, mask, svd: as :func:`funcopt.galore_adamw`.

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> opt = funcopt.galore_adafactor(learning_rate=1e-2, relative_step=False,
      ...                                scale_parameter=False, rank=1, scale=1.0)
      >>> grads = {"w": jnp.outer(jnp.arange(4.0), jnp.ones(3)), "b": jnp.ones(3)}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> state.exp_avg_sq_row["w"].shape, state.exp_avg_sq_col["w"].shape  # rank-1 factors
      ((4,), (1,))
    """
    return _core.transformation(GaLoreAdafactor.validated(
        learning_rate, eps, clip_threshold, decay_rate, beta1, weight_decay, scale_parameter,
        relative_step, warmup_init, rank, update_proj_gap, scale, proj_type, mask, svd))


@dataclasses.dataclass(frozen=True)
class GaLoreAdafactor(Adafactor):
    """galore_adafactor's hyperparameters: :class:`funcopt._adafactor.Adafactor`'s and
    GaLore's; its leaf update is Adafactor's ``step_size``/``scaled_update``/``param_update``
    around the projection."""

    State: ClassVar[type] = GaLoreAdafactorState
    rank: int
    update_proj_gap: int
    scale: Any
    proj_type: str
    targets: Any
    svd: Any

    @classmethod
    def validated(cls, learning_rate, eps, clip_threshold, decay_rate, beta1, weight_decay,
                  scale_parameter, relative_step, warmup_init, rank, update_proj_gap, scale,
                  proj_type, mask, svd) -> GaLoreAdafactor:
        base = Adafactor.validated(learning_rate, eps, clip_threshold, decay_rate, beta1,
                                   weight_decay, scale_parameter, relative_step, warmup_init)
        _galore.check_options(rank, update_proj_gap, scale, proj_type)
        if svd is not None and not callable(svd):
            raise TypeError(f"svd must be a callable a -> (u, s, vh), got {svd!r}.")
        values = [getattr(base, f.name) for f in dataclasses.fields(Adafactor)]
        return cls(*values, int(rank), int(update_proj_gap), scale, proj_type, mask, svd)

    def leaf_kinds(self, tree) -> list:
        return _galore.projections(tree, self.targets, self.rank, self.proj_type)

    def init_leaf(self, p, kind) -> tuple:
        """Adafactor's fields (moments shaped like the low-rank gradient on a target), then
        ``(ortho_left, ortho_right)``."""
        sd = state_dtype(p.dtype)
        shape, left, right = low_rank_shapes(kind, jnp.shape(p))
        fields = super().init_leaf(jnp.zeros(shape, p.dtype))
        return (*fields, None if left is None else jnp.zeros(left, sd),
                None if right is None else jnp.zeros(right, sd))

    def update_leaf(self, lr, g, p, fields, decays, kind):
        """One leaf's ``(update, new_fields)``."""
        step, _, _, *moments, left, right = fields
        sd = state_dtype(p.dtype)
        g = g.astype(sd)  # galore-torch: grad.float() for bf16/fp16, then the projection
        if kind is not None:
            g, left, right = galore_step(self, kind, g, step, left, right)
        step = optax.safe_increment(step)
        rms = _rms(p.astype(sd))
        alpha = self.step_size(step, rms, lr)
        u, moments = self.scaled_update(g, step, alpha, moments)
        if kind is not None:
            u = _galore.project_back(kind, left, right, u, self.scale)
        return self.param_update(p, u, alpha, decays), (
            step, rms, alpha.astype(f32), *moments, left, right)
