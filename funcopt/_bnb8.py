"""What bitsandbytes' 8-bit optimizers on CPU share (``adamw_8bit``, ``lion_8bit``,
``ademamix_8bit``, ``rmsprop_8bit``).

bitsandbytes 0.50.2 runs ``optim_bits=8`` on CPU as torch code around its blockwise
quantizer (``bitsandbytes/backends/cpu/ops.py::_optimizer_update_8bit_blockwise_cpu``): for
each parameter it dequantizes the states to float32 (``map[code] * absmax``), takes the
gradient and the parameter to float32, runs the algorithm's float32 torch arithmetic, copies
the parameter back to its dtype and requantizes the states (new absmax per block of 256, new
codes; :mod:`funcopt._quantize`). A parameter with fewer than ``min_8bit_size`` elements keeps
float32 states and takes the 32-bit path instead (``_optimizer_update_32bit_cpu``, whose
formulas differ for Adam, Lion and RMSprop).

Per-parameter state, in bitsandbytes' names: ``step`` (int), ``state1`` (``uint8`` codes, the
parameter's shape; AdEMAMix: ``(2, *shape)``, both EMAs), ``state2`` (two-state algorithms),
``absmax1``/``absmax2`` (float32, one per block of 256 consecutive elements of the row-major
flattened tensor, the last block possibly short; AdEMAMix's ``absmax1`` has one row per EMA),
and the maps ``qmap1`` (signed; also for RMSprop's average) / ``qmap2`` (unsigned), which
bitsandbytes shares between all parameters. funcopt's state keeps ``step``, ``state1``,
``state2``, ``absmax1``, ``absmax2`` leaf for leaf after the update ``count``; on a small leaf
the ``state*`` are float32 and ``absmax*`` absent (None). The maps are constants
(:func:`funcopt._quantize.dynamic_map`), not state: they never change, the quantizer's tables
are built from them before tracing, and a state would carry them per leaf.

Layout of ``absmax`` (:func:`funcopt._quantize.block_grid`): bitsandbytes' flat ``(blocks,)``,
except when the parameter's last axis is a multiple of 256, where every block lies within one
row and ``absmax`` has the shape ``(*shape[:-1], shape[-1] // 256)``; its ``reshape(-1)`` is
bitsandbytes' array either way (``reshape(2, -1)`` for AdEMAMix's ``absmax1``). The aligned
form keeps the parameter's axes, so the state shards like the parameter: the codes exactly
as the parameter, ``absmax`` on the same mesh axes (the last axis sharded in 256-element
units). Blocks never straddle shards then, as long as a shard of the last axis holds a
multiple of 256 elements, and the update runs without communication. A parameter whose last
axis is not a multiple of 256 has flat blocks that cross its rows; sharded, XLA gathers what
a block needs (the numbers stay exact).

A rule combines the mixin :class:`EightBit` with its 32-bit rule (``EightBit, Lion``): the
32-bit rule's ``init_leaf``/``update_leaf`` serve small leaves, ``update_8bit`` (float32
arithmetic on dequantized states, in blocks of 256) the others.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcopt import _checks
from funcopt import _quantize as q
from funcopt._bnb32 import as_update
from funcopt._numerics import f32

__all__ = ["EightBit", "min_8bit_size", "fields"]


def min_8bit_size(value):
    """bitsandbytes' ``min_8bit_size``, an integer >= 0 (tensors with fewer elements keep
    32-bit states). A concrete integer array (``optax.inject_hyperparams`` injects it) is taken
    as its value; a tracer passes, as only ``init`` needs the value."""
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, jax.Array | np.ndarray) and value.ndim == 0 and (
            jnp.issubdtype(value.dtype, jnp.integer)):
        value = int(value)
    return _checks.integer("min_8bit_size", value, low=0)


def fields(rule) -> dict:
    """A 32-bit rule's hyperparameters, to build its 8-bit twin from."""
    return {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule)}


@dataclasses.dataclass(frozen=True)
class EightBit:
    """Mixin for a bitsandbytes 8-bit rule, placed before the 32-bit rule it extends.

    Subclasses set ``signs`` (per quantized state, True for the signed map), ``stacked``
    (``state1`` holds two EMAs, AdEMAMix) and implement ``update_8bit``."""

    min_8bit_size: Any
    needs_params: ClassVar[bool] = True  # the new parameter is formed in float32
    signs: ClassVar[tuple[bool, ...]] = ()
    stacked: ClassVar[bool] = False

    def is_8bit(self, p) -> bool:
        """Whether ``p``'s states are quantized (bitsandbytes: ``numel >= min_8bit_size``)."""
        if isinstance(self.min_8bit_size, jax.core.Tracer):
            raise TypeError("min_8bit_size decides the state's layout and must be static: with "
                            "optax.inject_hyperparams list it in static_args.")
        return math.prod(jnp.shape(p)) >= self.min_8bit_size

    def init_leaf(self, p) -> tuple:
        """``(step, state1[, state2], absmax1[, absmax2])``: codes 0 and absmax 0 (bitsandbytes'
        zero state), or the 32-bit rule's float32 states and no absmax for a small leaf."""
        if not self.is_8bit(p):
            return (*super().init_leaf(p), *(None,) * len(self.signs))
        shape = tuple(jnp.shape(p))
        lead = [(2,) if i == 0 and self.stacked else () for i in range(len(self.signs))]
        codes = tuple(jnp.zeros((*h, *shape), jnp.uint8) for h in lead)
        absmax = tuple(jnp.zeros((*h, *q.block_grid(shape)), f32) for h in lead)
        return (jnp.zeros([], jnp.int32), *codes, *absmax)

    def update_8bit(self, scalars, t, g, p, moments, decays) -> tuple:
        """bitsandbytes' 8-bit path's float32 arithmetic on float32 blocks (``g``, ``p``:
        ``(blocks, 256)``; ``moments`` the dequantized states, ``(2, blocks, 256)`` for a stacked
        ``state1``): ``(new_p, new_moments)``."""
        raise NotImplementedError

    def update_leaf(self, scalars, g, p, fields, decays):
        """One leaf's ``(update, (step, state1[, state2], absmax1[, absmax2]))``."""
        k = len(self.signs)
        t, codes, absmax = fields[0], fields[1:1 + k], fields[1 + k:]
        if codes[0].dtype != jnp.uint8:  # a small leaf: bitsandbytes' 32-bit path
            update, new = super().update_leaf(scalars, g, p, (t, *codes), decays)
            return update, (*new, *absmax)
        t = optax.safe_increment(t)
        leads = [1 if i == 0 and self.stacked else 0 for i in range(k)]
        moments = tuple(_dequantize(c, a, s, lead)
                        for c, a, s, lead in zip(codes, absmax, self.signs, leads, strict=True))
        new_p, moments = self.update_8bit(scalars, t, q.to_blocks(g.astype(f32)),
                                          q.to_blocks(p.astype(f32)), moments, decays)
        packed = [q.quantize_blocks(m, s) for m, s in zip(moments, self.signs, strict=True)]
        new_codes = tuple(q.from_blocks(c, jnp.shape(old), lead, like=old)
                          for (c, _), old, lead in zip(packed, codes, leads, strict=True))
        new_p = q.from_blocks(new_p, jnp.shape(p), like=p)
        return as_update(new_p, p), (t, *new_codes, *(a for _, a in packed))


def _dequantize(codes, absmax, signed: bool, lead: int):
    """A state's float32 values in blocks, the last block's padding 0 (as the padding of the
    gradient and the parameter, so that it stays 0 through the update)."""
    x = q.dequantize_blocks(q.to_blocks(codes, lead), absmax, signed)
    n = math.prod(jnp.shape(codes)[lead:])
    if x.shape[-1] * x.shape[-2] != n:  # not aligned: flat blocks, the last one padded
        index = jnp.arange(x.shape[-2] * x.shape[-1]).reshape(x.shape[-2:])
        x = jnp.where(index < n, x, f32(0))
    return x
