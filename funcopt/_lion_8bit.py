"""bitsandbytes' 8-bit ``Lion`` (``optim_bits=8``) as an optax transformation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcopt import _bnb8, _core
from funcopt._bnb32 import complement
from funcopt._lion import Lion
from funcopt._numerics import unfused

__all__ = ["Lion8bitState", "lion_8bit"]


class Lion8bitState(NamedTuple):
    """State of :func:`lion_8bit`, field for field bitsandbytes' per-parameter state.

    Attributes:
      count: int32 scalar, the number of updates made (drives a learning-rate schedule).
      step: pytree like the params of int32 scalars, bitsandbytes' ``state["step"]``.
      state1: the momentum: ``uint8`` codes into the signed dynamic map, the parameter's
        shape (float32 values for a leaf below ``min_8bit_size``).
      absmax1: float32, the scale of each block of 256 elements of the flattened
        parameter: ``(*shape[:-1], shape[-1] // 256)`` when the last axis is a multiple of
        256, else ``(blocks,)`` (see :mod:`funcopt._bnb8`); None on a leaf below
        ``min_8bit_size``.

    >>> import jax.numpy as jnp, funcopt
    >>> state = funcopt.lion_8bit().init({"w": jnp.zeros((4, 1024))})
    >>> state.state1["w"].dtype, state.absmax1["w"].shape
    (dtype('uint8'), (4, 4))
    """

    count: jax.Array
    step: Any
    state1: Any
    absmax1: Any


def lion_8bit(
    learning_rate=1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 0.0,
    min_8bit_size: int = 4096,
    mask=None,
) -> optax.GradientTransformation:
    r"""bitsandbytes' 8-bit ``Lion`` (``bnb.optim.Lion(optim_bits=8)`` = ``Lion8bit``, the
    Trainer's ``lion_8bit`` and ``paged_lion_8bit``).

    Each update dequantizes the momentum, steps in float32 and requantizes it (blockwise
    dynamic quantization, :mod:`funcopt._quantize`), as bitsandbytes' CPU path:

    .. math::
        p &\leftarrow p\,(1 - \eta\lambda), \qquad
        p \leftarrow p - \eta\,\mathrm{sign}(\beta_1 m + (1 - \beta_1) g) \\
        m &\leftarrow \beta_2 m + (1 - \beta_2) g

    The 8-bit path rounds both products of the direction before adding them (its 32-bit path,
    :func:`funcopt.lion`, fuses one), which changes a sign now and then; a parameter with
    fewer than ``min_8bit_size`` elements keeps a float32 momentum and takes the 32-bit
    formulas, as in bitsandbytes. State: about 1.02 bytes per parameter, against 4 for a
    float32 momentum. For float32 parameters and a constant ``learning_rate`` every code and
    absmax equals bitsandbytes'. The Trainer's ``lion_8bit`` passes ``betas=(adam_beta1,
    adam_beta2)`` (0.9, 0.999), not these defaults, which are the class's.

    Args:
      learning_rate: a float >= 0 or a schedule ``count -> lr``.
      b1: interpolation between momentum and gradient for the step, in [0, 1).
      b2: the momentum's decay, in [0, 1).
      weight_decay: decoupled decay rate, >= 0, applied where ``mask`` is True.
      min_8bit_size: parameters with fewer elements keep a 32-bit state (an integer >= 0;
        it fixes the state's layout: under ``optax.inject_hyperparams`` with a jitted
        ``init``, list it in ``static_args``).
      mask: optional pytree of bools like the params (or a callable ``params -> mask``).

    Example:
      >>> import jax.numpy as jnp, optax, funcopt
      >>> opt = funcopt.lion_8bit(learning_rate=0.1, min_8bit_size=1)
      >>> w = jnp.array([1.0, -2.0])
      >>> updates, state = opt.update(jnp.array([0.3, -0.6]), opt.init(w), w)
      >>> optax.apply_updates(w, updates)
      Array([ 0.9, -1.9], dtype=float32)
      >>> state.state1, state.absmax1  # m = [0.003, -0.006]
      (Array([219,   0], dtype=uint8), Array([0.006], dtype=float32))
    """
    base = Lion.validated(learning_rate, b1, b2, weight_decay, mask)
    return _core.transformation(Lion8bit(**_bnb8.fields(base),
                                         min_8bit_size=_bnb8.min_8bit_size(min_8bit_size)))


@dataclasses.dataclass(frozen=True)
class Lion8bit(_bnb8.EightBit, Lion):
    """lion_8bit: bitsandbytes' 8-bit Lion path on quantized leaves, Lion's otherwise."""

    State: ClassVar[type] = Lion8bitState
    signs: ClassVar[tuple[bool, ...]] = (True,)

    def update_8bit(self, scalars, t, g, p, moments, decays) -> tuple:
        """``p.mul_(1 - lr * wd)``; ``p.add_(sign(m.mul(b1) + g.mul(1 - b1)), alpha=-lr)``;
        ``m.mul_(b2).add_(g, alpha=1 - b2)``: both products of the direction rounded."""
        neg_lr, keep = scalars
        (m,) = moments
        b1, one_minus_b1 = complement(self.b1)
        b2, one_minus_b2 = complement(self.b2)
        d = jnp.sign(unfused(m * b1) + unfused(g * one_minus_b1))
        if decays:
            p = unfused(p * keep)
        return neg_lr * d + p, (one_minus_b2 * g + unfused(m * b2),)
