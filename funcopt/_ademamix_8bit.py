"""bitsandbytes' 8-bit ``AdEMAMix`` (``optim_bits=8``) as an optax transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import optax

from funcopt import _bnb8, _core
from funcopt._ademamix import AdEMAMix

__all__ = ["AdEMAMix8bitState", "ademamix_8bit"]


class AdEMAMix8bitState(NamedTuple):
    """State of :func:`ademamix_8bit`, field for field bitsandbytes' per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, bitsandbytes' ``state["step"]``.
      state1: both EMAs stacked, shape ``(2, *param.shape)``: ``uint8`` codes into the signed
        dynamic map (float32 values for a leaf below ``min_8bit_size``).
      state2: the second moment: codes into the unsigned map, the parameter's shape.
      absmax1: float32, one row per EMA: ``(2, *shape[:-1], shape[-1] // 256)`` when the
        last axis is a multiple of 256, else ``(2, blocks)``; absmax2: the same without the
        leading 2 (see :mod:`funcopt._bnb8`); None on a leaf below ``min_8bit_size``.

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.ademamix_8bit().init({"w": jnp.zeros((4, 1024))})
    >>> state.state1["w"].shape, state.absmax1["w"].shape, state.absmax2["w"].shape
    ((2, 4, 1024), (2, 4, 4), (4, 4))
    """

    count: jax.Array
    step: Any
    state1: Any
    state2: Any
    absmax1: Any
    absmax2: Any


def ademamix_8bit(
    learning_rate=1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    alpha: float = 5.0,
    t_alpha: int | None = None,
    t_beta3: int | None = None,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    min_8bit_size: int = 4096,
    mask=None,
) -> optax.GradientTransformation:
    r"""bitsandbytes' 8-bit ``AdEMAMix`` (``bnb.optim.AdEMAMix(optim_bits=8)`` =
    ``AdEMAMix8bit``, the Trainer's ``ademamix_8bit`` and ``paged_ademamix_8bit``).

    :func:`funcopt.ademamix`'s algorithm (fast and slow EMAs, the ``t_alpha``/``t_beta3``
    warmups), its float32 arithmetic run between dequantizing and requantizing the states
    (blockwise dynamic quantization, :mod:`funcopt._quantize`): both EMAs with the signed map,
    each with its own absmax row, the second moment with the unsigned map. A parameter with
    fewer than ``min_8bit_size`` elements keeps float32 states, as in bitsandbytes. State:
    about 3.05 bytes per parameter, against 12 for float32 states. For float32 parameters and a
    constant ``learning_rate`` every code and absmax equals bitsandbytes'.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1, b2, b3: the fast EMA's, the second moment's and the slow EMA's decay, in [0, 1)
        (bitsandbytes' ``betas``).
      alpha: the slow EMA's weight.
      t_alpha: steps of the linear warmup of ``alpha``; None or 0: no warmup.
      t_beta3: steps of the warmup of ``b3`` from ``b1``; None or 0: no warmup.
      eps: added to the corrected :math:`\sqrt\nu`, >= 0.
      weight_decay: decoupled decay rate, >= 0, applied where ``mask`` is True.
      min_8bit_size: parameters with fewer elements keep 32-bit states (an integer >= 0;
        it fixes the state's layout: under ``optax.inject_hyperparams`` with a jitted
        ``init``, list it in ``static_args``).
      mask: optional pytree of bools like the params (or a callable ``params -> mask``).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.ademamix_8bit(learning_rate=0.1, weight_decay=0.0, min_8bit_size=1)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.5, -0.5]), opt.init(w), w)
      >>> state.state1.shape, state.absmax1.tolist()  # one absmax row per EMA
      ((2, 2), [[0.05000000074505806], [4.999999873689376e-05]])
    """
    base = AdEMAMix.validated(learning_rate, b1, b2, b3, alpha, t_alpha, t_beta3, eps,
                              weight_decay, mask)
    return _core.transformation(AdEMAMix8bit(**_bnb8.fields(base),
                                             min_8bit_size=_bnb8.min_8bit_size(min_8bit_size)))


@dataclasses.dataclass(frozen=True)
class AdEMAMix8bit(_bnb8.EightBit, AdEMAMix):
    """ademamix_8bit: AdEMAMix's float32 step between dequantizing and requantizing (the 8-bit
    and 32-bit CPU paths compute the same expressions), AdEMAMix's own on small leaves."""

    State: ClassVar[type] = AdEMAMix8bitState
    signs: ClassVar[tuple[bool, ...]] = (True, False)
    stacked: ClassVar[bool] = True

    def update_8bit(self, scalars, t, g, p, moments, decays) -> tuple:
        """AdEMAMix's ``float32_update`` on blocks (``state1``: ``(2, blocks, 256)``)."""
        return self.float32_update(scalars, t, g, p, moments, decays)
