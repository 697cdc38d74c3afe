"""bitsandbytes' 8-bit CPU optimizers redone in float64 NumPy: the reference's own float32 noise.

bitsandbytes computes in float32 whatever the parameter's dtype, so its noise is measured
against this emulation of the same path (``_optimizer_update_8bit_blockwise_cpu`` and, for
small tensors, ``_optimizer_update_32bit_cpu``) with every value in float64: the states are
dequantized exactly, updated in float64 and requantized by bitsandbytes' own rule (absmax per
block of 256, the scaled value placed by the quantizer's thresholds). Its expressions are
bitsandbytes' as written, independent of funcopt's (only the thresholds, which the exhaustive
quantizer check ties to bitsandbytes' C routine, are shared).
"""

import math

import numpy as np

from funcopt import _quantize

BLOCK = 256


def quantize(x, signed):
    """``(codes, absmax)`` of a float64 array, bitsandbytes' rule in float64."""
    flat = x.reshape(-1)
    n = flat.size
    nb = -(-n // BLOCK)
    padded = np.zeros(nb * BLOCK)
    padded[:n] = flat
    blocks = padded.reshape(nb, BLOCK)
    absmax = np.max(np.abs(blocks), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.clip(blocks / absmax[:, None], -1.0, 1.0)
    t = _quantize.thresholds(signed)[1:].astype(np.float64)
    codes = np.where(absmax[:, None] == 0, 0, np.searchsorted(t, v, side="right"))
    return codes.reshape(-1)[:n].reshape(x.shape), absmax


def dequantize(codes, absmax, signed):
    table = _quantize.dynamic_map(signed).astype(np.float64)
    flat = codes.reshape(-1)
    scale = np.repeat(absmax, BLOCK)[:flat.size]
    return (table[flat] * scale).reshape(codes.shape)


def corrections(b1, b2, t):
    return 1.0 - b1**t, math.sqrt(1.0 - b2**t)


def step8(name, cfg, t, g, p, s):
    """bitsandbytes' 8-bit float32 arithmetic in float64 on dequantized states ``s``."""
    lr, wd, eps = cfg["lr"], cfg.get("weight_decay", 0.0), cfg.get("eps", 1e-8)
    if name == "adamw":
        b1, b2 = cfg["betas"]
        m, v = b1 * s[0] + (1 - b1) * g, b2 * s[1] + (1 - b2) * g * g
        c1, c2 = corrections(b1, b2, t)
        p = p * (1 - lr * wd) if wd > 0 else p
        return p + (-lr / c1) * m / (np.sqrt(v) / c2 + eps), [m, v]
    if name == "lion":
        b1, b2 = cfg["betas"]
        p = p * (1 - lr * wd) if wd > 0 else p
        return p - lr * np.sign(b1 * s[0] + (1 - b1) * g), [b2 * s[0] + (1 - b2) * g]
    if name == "rmsprop":
        a = cfg["alpha"]
        g = g + wd * p
        v = a * s[0] + (1 - a) * g * g
        return p - lr * g / (np.sqrt(v) + eps), [v]
    return ademamix(cfg, t, g, p, s)


def ademamix(cfg, t, g, p, s):
    b1, b2, b3 = cfg["betas"]
    alpha, lr, wd, eps = cfg["alpha"], cfg["lr"], cfg["weight_decay"], cfg.get("eps", 1e-8)
    if cfg.get("t_alpha"):
        alpha = min(t * alpha / cfg["t_alpha"], alpha)
    if cfg.get("t_beta3"):
        scale = t / cfg["t_beta3"]
        l1, l3 = math.log(b1), math.log(b3)
        b3 = min(math.exp(l1 * l3 / ((1 - scale) * l3 + scale * l1)), b3)
    m1, m2 = b1 * s[0][0] + (1 - b1) * g, b3 * s[0][1] + (1 - b3) * g
    nu = b2 * s[1] + (1 - b2) * g * g
    c1, c2 = corrections(b1, b2, t)
    p = p * (1 - lr * wd) if wd > 0 else p
    return p - lr * (m1 / c1 + alpha * m2) / (np.sqrt(nu) / c2 + eps), [np.stack([m1, m2]), nu]


def step32(name, cfg, t, g, p, s):
    """bitsandbytes' 32-bit (small tensor) arithmetic in float64 where it differs."""
    lr, wd, eps = cfg["lr"], cfg.get("weight_decay", 0.0), cfg.get("eps", 1e-8)
    if name == "adamw":
        b1, b2 = cfg["betas"]
        m, v = b1 * s[0] + (1 - b1) * g, b2 * s[1] + (1 - b2) * g * g
        c1, c2 = corrections(b1, b2, t)
        p = p * (1 - lr * wd) if wd > 0 else p
        return p + (-lr * c2 / c1) * m / (np.sqrt(v) + eps * c2), [m, v]
    if name == "rmsprop":
        a = cfg["alpha"]
        g = g + wd * p if wd > 0 else g
        v = a * s[0] + (1 - a) * g * g
        return p - lr * (g / (np.sqrt(v) + eps)), [v]
    return step8(name, cfg, t, g, p, s)  # Lion's and AdEMAMix's formulas agree in float64


SIGNS = {"adamw": (True, False), "lion": (True,), "rmsprop": (True,),
         "ademamix": (True, False)}


def run(name, cfg, init, grads, min_8bit_size):
    """The float64 parameters after stepping through ``grads``."""
    params = [x.astype(np.float64) for x in init]
    states = []
    for x in init:
        shapes = [((2,) if name == "ademamix" and i == 0 else ()) + x.shape
                  for i in range(len(SIGNS[name]))]
        states.append([np.zeros(s) for s in shapes])
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            p, s = params[i], states[i]
            eight = p.size >= min_8bit_size
            params[i], new = (step8 if eight else step32)(name, cfg, t, g.astype(np.float64), p, s)
            if eight:
                new = [requantize(m, signed, stacked=name == "ademamix" and k == 0)
                       for k, (m, signed) in enumerate(zip(new, SIGNS[name], strict=True))]
            states[i] = new
    return params


def requantize(x, signed, stacked):
    if stacked:
        return np.stack([requantize(row, signed, False) for row in x])
    return dequantize(*quantize(x, signed), signed)
