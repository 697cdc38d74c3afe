"""Measured worst deviation of funcopt's optimizers from transformers' (PyTorch side).

For each configuration the same random gradients go to ``transformers.AdamW`` / ``Adafactor``
(torch, float32) and to the jitted funcopt transformation for 25 steps, on parameters of
shapes (), (7,), (5, 6), (2, 3, 4), (2, 2, 3, 5). The deviation is
``max |funcopt - reference| / max(1, |reference|)`` over parameters and state; next to it, the
same measure between the reference in float32 and the reference in float64 (its own
round-off). Run: ``python -m benchmarks.parity``.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcopt

SHAPES = [(), (7,), (5, 6), (2, 3, 4), (2, 2, 3, 5)]
STEPS = 25

ADAMW = [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1),
         dict(lr=2e-2, correct_bias=False, weight_decay=0.05),
         dict(lr=3e-3, betas=(0.8, 0.9999), eps=1e-8)]
ADAFACTOR = [dict(), dict(warmup_init=True), dict(lr=1e-2, relative_step=False),
             dict(lr=1e-2, relative_step=False, scale_parameter=False, beta1=0.9,
                  weight_decay=0.01),
             dict(beta1=0.0, weight_decay=0.1, clip_threshold=0.5)]


def _adamw_kwargs(kw):
    out = {"learning_rate": kw["lr"], "weight_decay": kw.get("weight_decay", 0.0),
           "correct_bias": kw.get("correct_bias", True)}
    if "betas" in kw:
        out["b1"], out["b2"] = kw["betas"]
    if "eps" in kw:
        out["eps"] = kw["eps"]
    return out


def _deviation(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)))) if a.size else 0.0


def _torch_run(torch, ref_cls, kw, init, grads, dtype):
    params = [torch.nn.Parameter(torch.tensor(x, dtype=dtype)) for x in init]
    optimizer = ref_cls(params, **kw)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.tensor(g, dtype=dtype)
        optimizer.step()
    return params, optimizer


def _funcopt_run(transformation, init, grads):
    params = [jnp.asarray(x) for x in init]
    state = transformation.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for gs in grads:
        params, state = step(params, state, [jnp.asarray(g) for g in gs])
    return params, state


def _state_pairs(state, torch_state, i, keys):
    for key in keys:
        field = getattr(state, key, None)
        if field is not None and field[i] is not None and key in torch_state:
            yield field[i], torch_state[key]


def measure(torch, ref_cls, kw, transformation, keys, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    tparams, topt = _torch_run(torch, ref_cls, kw, init, grads, torch.float32)
    t64, _ = _torch_run(torch, ref_cls, kw, init, grads, torch.float64)
    params, state = _funcopt_run(transformation, init, grads)
    ours = noise = 0.0
    for i, (tp, p, p64) in enumerate(zip(tparams, params, t64, strict=True)):
        ref = tp.detach().numpy()
        ours = max(ours, _deviation(p, ref))
        noise = max(noise, _deviation(ref, p64.detach().numpy()))
        for a, b in _state_pairs(state, topt.state[tp], i, keys):
            ours = max(ours, _deviation(a, b.detach().numpy()))
    return ours, noise


def main():
    import torch
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    adamw_ref = lambda ps, **k: transformers.AdamW(ps, no_deprecation_warning=True, **k)
    rows = []
    for kw in ADAMW:
        rows.append(("funcopt.adamw", kw, *measure(
            torch, adamw_ref, kw, funcopt.adamw(**_adamw_kwargs(kw)), ["exp_avg", "exp_avg_sq"])))
    for kw in ADAFACTOR:
        fkw = {("learning_rate" if k == "lr" else k): v for k, v in kw.items()}
        rows.append(("funcopt.adafactor", kw, *measure(
            torch, transformers.Adafactor, kw, funcopt.adafactor(**fkw),
            ["exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"])))
    print(f"Worst deviation after {STEPS} float32 steps, max |x - ref| / max(1, |ref|) "
          "over parameters and state:\n")
    print("| optimizer | reference arguments | funcopt vs reference | reference f32 vs f64 |")
    print("|---|---|---|---|")
    for name, kw, ours, noise in rows:
        print(f"| `{name}` | `{kw}` | {ours:.1e} | {noise:.1e} |")


if __name__ == "__main__":
    main()
