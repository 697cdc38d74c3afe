"""bitsandbytes' 8-bit ``RMSprop`` (``optim_bits=8``) as an optax transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _bnb8, _core
from funcopt._bnb32 import complement
from funcopt._numerics import f32, is_static, unfused
from funcopt._rmsprop_bnb import RMSpropBnb

__all__ = ["RMSprop8bitState", "rmsprop_8bit"]


class RMSprop8bitState(NamedTuple):
    """State of :func:`rmsprop_8bit`, field for field bitsandbytes' per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, bitsandbytes' ``state["step"]``.
      state1: the squared-gradient average: ``uint8`` codes into the signed dynamic map
        (bitsandbytes' one-state optimizers all use it, though the average is never
        negative), the parameter's shape (float32 values for a leaf below ``min_8bit_size``).
      absmax1: float32, the scale of each block of 256 elements of the flattened
        parameter: ``(*shape[:-1], shape[-1] // 256)`` when the last axis is a multiple of
        256, else ``(blocks,)`` (see :mod:`funcopt._bnb8`); None on a leaf below
        ``min_8bit_size``.

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.rmsprop_8bit().init({"w": jnp.zeros((4, 1024))})
    >>> state.state1["w"].dtype, state.absmax1["w"].shape
    (dtype('uint8'), (4, 4))
    """

    count: jax.Array
    step: Any
    state1: Any
    absmax1: Any


def rmsprop_8bit(
    learning_rate=1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    min_8bit_size: int = 4096,
    mask=None,
) -> optax.GradientTransformation:
    r"""bitsandbytes' 8-bit ``RMSprop`` (``bnb.optim.RMSprop(optim_bits=8)`` = ``RMSprop8bit``,
    the Trainer's ``rmsprop_bnb_8bit``).

    Each update dequantizes the average, steps in float32 and requantizes it (blockwise
    dynamic quantization with the signed map, :mod:`funcopt._quantize`), as bitsandbytes'
    CPU path:

    .. math::
        g \leftarrow g + \lambda p, \qquad
        v \leftarrow \alpha v + (1 - \alpha) g^2, \qquad
        p \leftarrow p - \frac{\eta g}{\sqrt v + \epsilon}

    The 8-bit path rounds ``-lr * g`` before dividing (``addcdiv_``) where its 32-bit path,
    :func:`funcopt.rmsprop_bnb`, divides first and fuses the step; a parameter with fewer
    than ``min_8bit_size`` elements keeps a float32 average and takes the 32-bit formulas, as
    in bitsandbytes. State: about 1.02 bytes per parameter. For float32 parameters and a
    constant ``learning_rate`` every code and absmax equals bitsandbytes' (with
    ``weight_decay`` > 0 the gradient depends on the parameter, which can differ from
    bitsandbytes' by an ulp, see :mod:`funcopt._bnb32`).

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      alpha: the average's decay, in (0, 1) (bitsandbytes rejects 0).
      eps: added to :math:`\sqrt v`, >= 0.
      weight_decay: L2 coefficient, >= 0, added to the gradient where ``mask`` is True.
      momentum: must be 0: bitsandbytes' CPU path accepts a momentum and ignores it; funcopt
        refuses it rather than ignore it silently (``funcopt.rmsprop`` has one).
      centered: must be False, as bitsandbytes raises on it.
      min_8bit_size: parameters with fewer elements keep a 32-bit state (an integer >= 0;
        it fixes the state's layout: under ``optax.inject_hyperparams`` with a jitted
        ``init``, list it in ``static_args``).
      mask: optional pytree of bools like the params (or a callable ``params -> mask``).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.rmsprop_8bit(learning_rate=0.1, alpha=0.75, eps=0.0, min_8bit_size=1)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.5, -4.0]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)  # w - 0.1 * g / sqrt(0.25 * g**2)
      Array([ 0.8, -1.8], dtype=float32)
      >>> state.state1, state.absmax1  # v = [0.0625, 4.0]
      (Array([160, 255], dtype=uint8), Array([4.], dtype=float32))
    """
    base = RMSpropBnb.validated(learning_rate, alpha, eps, weight_decay, momentum, centered,
                                mask)
    return _core.transformation(RMSprop8bit(**_bnb8.fields(base),
                                            min_8bit_size=_bnb8.min_8bit_size(min_8bit_size)))


@dataclasses.dataclass(frozen=True)
class RMSprop8bit(_bnb8.EightBit, RMSpropBnb):
    """rmsprop_8bit: bitsandbytes' 8-bit RMSprop path on quantized leaves, RMSpropBnb's
    otherwise."""

    State: ClassVar[type] = RMSprop8bitState
    signs: ClassVar[tuple[bool, ...]] = (True,)

    def update_8bit(self, scalars, t, g, p, moments, decays) -> tuple:
        """``g.add_(p, alpha=wd)`` (always, 0 where not decaying);
        ``v.mul_(alpha).addcmul_(g, g, value=1 - alpha)``;
        ``p.addcdiv_(g, v.sqrt().add_(eps), value=-lr)`` (``p + (-lr * g) / denom``)."""
        neg_lr, wd = scalars
        a, one_minus_a = complement(self.alpha)
        g = p * (wd if decays else f32(0)) + g
        v = (one_minus_a * g) * g + unfused(moments[0] * a)
        denom = jnp.sqrt(v) + jnp.asarray(self.eps, f32)
        if is_static(self.eps) and self.eps == 0:
            denom = unfused(denom)
        return p + unfused(neg_lr * g) / denom, (v,)
