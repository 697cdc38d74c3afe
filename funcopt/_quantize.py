"""bitsandbytes' blockwise dynamic 8-bit quantization, as its CPU path (0.50.2) computes it.

bitsandbytes keeps an 8-bit optimizer state as one ``uint8`` code per element, an index into a
256-entry *dynamic map* (a sign, a decimal exponent and a linear fraction: dense near 0,
coarse near 1), and one float32 ``absmax`` per block of :data:`BLOCK` = 256 consecutive
elements of the flattened (row-major) tensor; the last block may be short. The value of a
code is ``map[code] * absmax`` (float32). The first moment uses the signed map (from
-0.99296874 to 1), second moments the unsigned one (from 0 to 1).

Quantizing is not rounding to the nearest code. bitsandbytes' CPU quantizer (its C routine
``quantize_cpu``) takes ``absmax`` = the largest ``|x|`` of the block (NaNs skipped), scales
each element by ``inv = 1 / absmax`` (rounded to float32), clamps to [-1, 1], puts the result
``v`` in one of 65,536 bins, ``trunc(fma(65535, round((v + 1) * 0.5), 0.5))``, and reads the
code from a table that gives bin ``i`` the first map entry whose upper midpoint is not below
the bin's left value ``-1 + 2 i / 65535``. A nearest-code quantizer agrees with it on about
96% of codes. The composition is monotone, so 255 float32 thresholds reproduce it:
``code = #{k : v >= thresholds(signed)[k]}``, each the least float32 value of the first bin of
its code, found once by bisection with bitsandbytes' own bin function and table. The codes are
computed without relying on an fma: the bin is estimated from below in float32 (the true bin
or one less), and of that bin's code and the next bin's, the next one is taken where ``v``
reaches its threshold. An all-zero block gives absmax 0 and code 0 everywhere; an exact 0 in a
non-zero block gets the code of the bin above 0, not the map's 0 entry; a NaN gets code 0.

The maps are bitsandbytes' ``create_dynamic_map(signed)`` as torch 2.x builds it with its
vectorized CPU kernels (AVX2 and AVX-512 agree; torch's scalar ``DEFAULT`` build rounds 42 of
the signed and 31 of the unsigned entries an ulp differently). They are constants here, not
state: the quantizer's tables are derived from them before tracing.

>>> import jax.numpy as jnp
>>> codes, absmax = quantize(jnp.array([0.5, -2.0, 0.0, 1e-3]), signed=True)
>>> absmax, codes
(Array([2.], dtype=float32), Array([201,   0, 131, 138], dtype=uint8))
>>> print(dequantize(codes, absmax, signed=True))  # 0.0 comes back as 4.25e-05
[ 4.9531248e-01 -1.9859375e+00  4.2499996e-05  9.8750007e-04]
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from funcopt._numerics import f32

__all__ = ["BLOCK", "dynamic_map", "thresholds", "n_blocks", "aligned", "block_grid",
           "to_blocks", "from_blocks",
           "quantize_blocks", "dequantize_blocks", "quantize", "dequantize"]

#: Elements per absmax block (bitsandbytes' optimizers: always 256).
BLOCK = 256

# create_dynamic_map(signed=True) and (signed=False), little-endian float32, sorted.
_SIGNED_HEX = (
    "33337ebf9a997abf000077bf666673bfcdcc6fbf33336cbf9a9968bf000065bf666661bfcdcc5dbf33335abf"
    "9a9956bf000053bf66664fbfcdcc4bbf333348bf9a9944bf000041bf66663dbfcdcc39bf343336bf9a9932bf"
    "00002fbf66662bbfcdcc27bf343324bf9a9920bf00001dbf666619bfcdcc15bf343312bf9a990ebf00000bbf"
    "666607bfcccc03bf333300bf3233f9be0000f2becccceabe9a99e3be6666dcbe3333d5be0000cebeccccc6be"
    "9a99bfbe6666b8be3333b1be0000aabecccca2be9a999bbe666694be34338dbe000086be99997dbe33336fbe"
    "cdcc60be666652be000044be9a9935be333327becdcc18be66660abe0000f8bd3433dbbd85ebc9bdf728c4bd"
    "6766bebdd7a3b8bd48e1b2bdb81eadbd2a5ca7bd9a99a1bd0ad79bbd7b1496bdeb5190bd5d8f8abdcdcc84bd"
    "7b147ebd5d8f72bd3d0a67bd1f855bbd000050bde17a44bdc3f538bda3702dbd85eb21bd676616bd48e10abd"
    "52b8febc15aee7bcd7a3d0bc9a99b9bc5d8fa2bc1f858bbcc3f568bc48e13abc643b1fbc180416bccdcc0cbc"
    "819503bc6abcf4bbd34de2bb3bdfcfbba470bdbb0d02abbb749398bbdd2486bb8a6c67bb5c8f42bb2db21dbb"
    "fca9f1ba9defa7baff6577ba3ee859ba806a3cbac1ec1eba016f01ba83e2c7b905e78cb90bd723b94b1fbab8"
    "b3ef8ab8348037b80642b2b7ff0502b7941a5ab6b7a313b500000000b7a31335941a5a36ff0502370642b237"
    "34803738b3ef8a384b1fba380bd7233905e78c3983e2c739016f013ac1ec1e3a806a3c3a3ee8593aff65773a"
    "9defa73afca9f13a2db21d3b5c8f423b8a6c673bdd24863b7493983b0d02ab3ba470bd3b3bdfcf3bd34de23b"
    "6abcf43b8195033ccdcc0c3c1804163c643b1f3c48e13a3cc3f5683c1f858b3c5d8fa23c9a99b93cd7a3d03c"
    "15aee73c52b8fe3c48e10a3d6766163d85eb213da3702d3dc3f5383de17a443d0000503d1f855b3d3d0a673d"
    "5d8f723d7b147e3dcdcc843d5d8f8a3deb51903d7b14963d0ad79b3d9a99a13d2a5ca73db81ead3d48e1b23d"
    "d7a3b83d6766be3df728c43d85ebc93d3433db3d0000f83d66660a3ecdcc183e3333273e9a99353e0000443e"
    "6666523ecdcc603e33336f3e99997d3e0000863e34338d3e6666943e9a999b3ecccca23e0000aa3e3333b13e"
    "6666b83e9a99bf3eccccc63e0000ce3e3333d53e6666dc3e9a99e33eccccea3e0000f23e3233f93e3333003f"
    "cccc033f6666073f00000b3f9a990e3f3433123fcdcc153f6666193f00001d3f9a99203f3433243fcdcc273f"
    "66662b3f00002f3f9a99323f3433363fcdcc393f66663d3f0000413f9a99443f3333483fcdcc4b3f66664f3f"
    "0000533f9a99563f33335a3fcdcc5d3f6666613f0000653f9a99683f33336c3fcdcc6f3f6666733f0000773f"
    "9a997a3f33337e3f0000803f"
)
_UNSIGNED_HEX = (
    "00000000aa7bae3498095035389b0e36f6cc9236514cde36d5e514376e128337a071e13768e81f3800184f38"
    "9a477e3899bb96386453ae3831ebc5384b590639ca54413949507c39e4a59b39a223b93963a1d639221ff439"
    "71ce083a508d173a304c263a100b353aefc9433ad088523aaf47613a8e06703a6ec57e3a0681953a355eba3a"
    "643bdf3a4a0c023be17a143b78e9263b1058393ba7c64b3b40355e3bd7a3703b3789813b82c08a3bcff7933b"
    "1a2f9d3b6666a63bb29daf3bfdd4b83b4a0cc23b9543cb3be17ad43b2eb2dd3b78e9e63bc520f03b0f58f93b"
    "ae47013c54e3053cf97e0a3ca01a0f3c45b6133ceb51183c92ed1c3c3789213c2a5c2f3c6766463ca3705d3c"
    "e27a743c8fc2853caf47913ccdcc9c3ceb51a83c0bd7b33c295cbf3c47e1ca3c6766d63c87ebe13ca370ed3c"
    "c3f5f83c703d023d0000083d8fc20d3d1f85133daf47193d3d0a1f3dcdcc243d5c8f2a3deb51303d7b14363d"
    "0ad73b3d9a99413d285c473db81e4d3d47e1523dd7a3583d67665e3df728643d87eb693d15ae6f3da370753d"
    "33337b3de27a803d2a5c833d713d863db81e893d00008c3d48e18e3d90c2913dd7a3943d1f85973d67669a3d"
    "af479d3df628a03d3e0aa33d85eba53dcdcca83d15aeab3d5c8fae3da470b13deb51b43d3333b73d7b14ba3d"
    "c3f5bc3d0bd7bf3d52b8c23d9a99c53de27ac83d295ccb3d0000d43d6666e23dcdccf03d3333ff3dcccc063e"
    "00000e3e3433153e66661c3e9a99233ecccc2a3e0000323e3433393e6666403e9a99473ecccc4e3e0000563e"
    "34335d3e6666643e9a996b3ecccc723e00007a3e9999803e3333843ecdcc873e66668b3e00008f3e9a99923e"
    "3333963ecccc993e66669d3e0000a13e9a99a43e3333a83eccccab3e6666af3e0000b33e9a99b63e3333ba3e"
    "ccccbd3e6666c13e0000c53e9a99c83e3333cc3ecccccf3e6666d33e0000d73e9a99da3e3333de3ecccce13e"
    "6666e53e0000e93e9a99ec3e3333f03eccccf33e6666f73e0000fb3e9999fe3e9a19013f66e6023f33b3043f"
    "0080063fcc4c083f9a190a3f66e60b3f34b30d3f00800f3fcd4c113f9a19133f66e6143f34b3163f0080183f"
    "cd4c1a3f9a191c3f66e61d3f34b31f3f0080213fcd4c233f9a19253f66e6263f34b3283f00802a3fcd4c2c3f"
    "9a192e3f66e62f3f34b3313f0080333fcd4c353f9a19373f66e6383f34b33a3f00803c3fcd4c3e3f9a19403f"
    "66e6413f34b3433f0080453fcc4c473f9a19493f66e64a3f34b34c3f00804e3fcc4c503f9a19523f66e6533f"
    "34b3553f0080573fcc4c593f9a195b3f66e65c3f34b35e3f0080603fcc4c623f9a19643f66e6653f34b3673f"
    "0080693fcc4c6b3f9a196d3f66e66e3f34b3703f0080723fcc4c743f9a19763f66e6773f34b3793f00807b3f"
    "cc4c7d3f9a197f3f0000803f"
)


def dynamic_map(signed: bool) -> np.ndarray:
    """bitsandbytes' dynamic map (256 sorted float32 values), signed or unsigned."""
    return _map(bool(signed)).copy()


@functools.lru_cache(maxsize=2)
def _map(signed: bool) -> np.ndarray:
    raw = bytes.fromhex(_SIGNED_HEX if signed else _UNSIGNED_HEX)
    return np.frombuffer(raw, "<f4").astype(np.float32)


def _bin(v: np.ndarray) -> np.ndarray:
    """bitsandbytes' bin (0 .. 65535) of scaled float32 values ``v`` in [-1, 1]:
    ``trunc(fma(65535, (v + 1) * 0.5, 0.5))``, the fma formed exactly in float64 (the product
    of a 16-bit and a 24-bit significand, plus 0.5, fits in 53 bits) and rounded once."""
    half = ((v.astype(np.float32) + np.float32(1)) * np.float32(0.5)).astype(np.float32)
    fused = (65535.0 * half.astype(np.float64) + 0.5).astype(np.float32)
    return fused.astype(np.int64)


def _table(code: np.ndarray) -> np.ndarray:
    """bitsandbytes' 65536-entry bin -> code table: bin ``i`` (left value ``-1 + 2i / 65535``
    in float32) takes the first code whose upper midpoint is not below it."""
    mid = ((code[:-1] + code[1:]) * np.float32(0.5)).astype(np.float32)
    i = np.arange(65536)
    left = ((2 * i).astype(np.float32) / np.float32(65535) - np.float32(1)).astype(np.float32)
    return np.searchsorted(mid, left, side="left").astype(np.int64)


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the floats' order (-0.0 and 0.0 tie)."""
    bits = x.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _unordered(k: np.ndarray) -> np.ndarray:
    bits = np.where(k < 0, (-k) | 0x80000000, k).astype(np.uint32)
    return bits.view(np.float32)


def _least(reaches, n: int) -> np.ndarray:
    """For each of ``n`` targets, the least float32 ``v`` in [-1, 1] with ``reaches(v)[i]``
    (a monotone test), ``+inf`` where none: bisection over the float32 order."""
    lo = np.full(n, _ordered(np.float32(-1.0)))
    hi = np.full(n, _ordered(np.float32(1.0)) + 1)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        reach = reaches(_unordered(mid))
        active = lo < hi
        hi = np.where(active & reach, mid, hi)
        lo = np.where(active & ~reach, mid + 1, lo)
    return np.where(lo <= _ordered(np.float32(1.0)), _unordered(lo), np.float32(np.inf))


@functools.lru_cache(maxsize=2)
def thresholds(signed: bool) -> np.ndarray:
    """``t[k]`` (``k = 1 .. 255``): the least scaled float32 value quantized to a code ``>= k``,
    the start of the first bin whose code is ``>= k`` (``+inf`` if none); ``t[0] = -inf``.
    The quantizer is ``code = #{k >= 1 : v >= t[k]}``."""
    table = _table(_map(bool(signed)))
    first_bin = np.searchsorted(table, np.arange(1, 256), side="left")
    t = _least(lambda v: _bin(v) >= first_bin, 255)
    return np.concatenate([[-np.inf], t]).astype(np.float32)


def bin_starts() -> np.ndarray:
    """The least scaled float32 value of each of the 65536 bins (tests probe around them)."""
    return _least(lambda v: _bin(v) >= np.arange(65536), 65536).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _tables(signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs, thresholds)``: ``pairs[b]`` holds bin ``b``'s code (low byte) and bin
    ``b + 1``'s (high byte) as uint16."""
    table = _table(_map(bool(signed))).astype(np.uint16)
    pairs = table | (np.append(table[1:], table[-1]) << 8)
    return pairs.astype(np.uint16), thresholds(bool(signed))


def n_blocks(n: int) -> int:
    """The number of absmax blocks of a tensor of ``n`` elements."""
    return -(-n // BLOCK)


def aligned(shape) -> bool:
    """Whether every block lies in one row of the last axis (its length a multiple of 256)."""
    return len(shape) > 0 and shape[-1] % BLOCK == 0


def block_grid(shape) -> tuple:
    """The shape of the absmax of a tensor of ``shape``: ``(*shape[:-1], shape[-1] // 256)``
    when :func:`aligned`, else ``(blocks,)``. Either way its row-major order is bitsandbytes'
    flat block order (``absmax.reshape(-1)`` is bitsandbytes' ``absmax``); the aligned form
    keeps the parameter's leading axes, so it shards like the parameter."""
    shape = tuple(shape)
    if aligned(shape):
        return (*shape[:-1], shape[-1] // BLOCK)
    return (n_blocks(math.prod(shape)),)


def to_blocks(x, lead: int = 0):
    """``x`` as blocks: ``(*x.shape[:lead], *block_grid(x.shape[lead:]), BLOCK)``. An aligned
    tensor only splits its last axis (and keeps its sharding); another is flattened after its
    first ``lead`` axes, its last block zero-padded, and replicated if it was sharded over
    explicit mesh axes (its blocks may cross shards)."""
    shape = tuple(jnp.shape(x))
    head, body = shape[:lead], shape[lead:]
    if aligned(body):
        return jnp.reshape(x, (*head, *block_grid(body), BLOCK))
    n = math.prod(body)
    nb = n_blocks(n)
    flat = jnp.reshape(_explicit(x, None), (*head, n))
    if nb * BLOCK != n:
        flat = jnp.pad(flat, [(0, 0)] * lead + [(0, nb * BLOCK - n)])
    return jnp.reshape(flat, (*head, nb, BLOCK))


def from_blocks(xb, shape, lead: int = 0, like=None):
    """The inverse of :func:`to_blocks` for a tensor of ``shape`` (padding dropped), sharded
    over explicit mesh axes like ``like`` when given."""
    shape = tuple(shape)
    if aligned(shape[lead:]):
        return jnp.reshape(xb, shape)
    n = math.prod(shape[lead:])
    flat = jnp.reshape(xb, (*shape[:lead], -1))
    if flat.shape[-1] != n:
        flat = flat[..., :n]
    return _explicit(jnp.reshape(flat, shape), like)


def _explicit(x, like):
    """``x`` resharded as ``like`` (replicated for None) where the sharding over explicit mesh
    axes differs; a no-op without explicit axes."""
    have = jax.typeof(x).sharding.spec
    want = () if like is None else jax.typeof(like).sharding.spec
    if all(a is None for a in (*have, *want)) or tuple(have) == tuple(want):
        return x
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec(*want))


def _lookup(table, index):
    """``table[index]`` for in-bounds indices, sharded like ``index`` (with explicit mesh axes
    a gather must be told its output sharding)."""
    return table.at[index].get(mode="promise_in_bounds", out_sharding=jax.typeof(index).sharding)


def _codes(v, signed: bool):
    """The codes of scaled values ``v`` in [-1, 1]. The bin is estimated from below as
    ``trunc(65535 * (v + 1) / 2 + 0.25)`` (bitsandbytes adds 0.5 with one rounding; this float32
    estimate, < 2**-7 off with or without an fma, is the true bin or one less); of the codes
    of that bin and the next, the next one's is taken where ``v`` reaches its threshold (when
    the two differ, that threshold is exactly the next bin's start)."""
    pairs, t = (jnp.asarray(x) for x in _tables(bool(signed)))
    z = f32(65535) * ((v + f32(1)) * f32(0.5)) + f32(0.25)
    pair = _lookup(pairs, jnp.clip(z.astype(jnp.int32), 0, 65535)).astype(jnp.int32)
    low, high = pair & 255, pair >> 8
    return jnp.where(v >= _lookup(t, high), high, low).astype(jnp.uint8)


def quantize_blocks(xb, signed: bool):
    """``(codes, absmax)`` of float32 blocks ``xb`` (``(..., blocks, BLOCK)``): codes uint8
    of ``xb``'s shape, absmax float32 ``(..., blocks)``, exactly bitsandbytes' CPU quantizer."""
    xb = jnp.asarray(xb, f32)
    mag = jnp.abs(xb)
    absmax = jnp.max(jnp.where(jnp.isnan(mag), f32(0), mag), axis=-1)
    inv = f32(1) / absmax
    v = jnp.clip(xb * inv[..., None], f32(-1), f32(1))
    codes = _codes(v, signed)
    return jnp.where(jnp.isnan(v) | (absmax == 0)[..., None], jnp.uint8(0), codes), absmax


def dequantize_blocks(codes, absmax, signed: bool):
    """``map[codes] * absmax`` (float32) for codes in blocks ``(..., blocks, BLOCK)``."""
    return _lookup(jnp.asarray(_map(bool(signed))), codes.astype(jnp.int32)) * absmax[..., None]


def quantize(x, signed: bool, lead: int = 0):
    """``(codes, absmax)`` of a float32 tensor: codes uint8 of ``x``'s shape, absmax float32
    ``(*x.shape[:lead], *block_grid(x.shape[lead:]))`` (blocks over the axes after ``lead``)."""
    codes, absmax = quantize_blocks(to_blocks(jnp.asarray(x, f32), lead), signed)
    return from_blocks(codes, jnp.shape(x), lead), absmax


def dequantize(codes, absmax, signed: bool, lead: int = 0):
    """The float32 tensor that ``codes`` (any shape) and ``absmax`` stand for."""
    x = dequantize_blocks(to_blocks(codes, lead), absmax, signed)
    return from_blocks(x, jnp.shape(codes), lead)
