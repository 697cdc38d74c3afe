"""funcopt's 8-bit optimizers (and adamw_bnb) against bitsandbytes 0.50.2 on CPU, side by side.

Every step compares every code (``state1``/``state2``) and every ``absmax`` with bitsandbytes'
and the parameters to 1e-5 relative; small tensors (below ``min_8bit_size``) compare their
float32 states. Printed beside each figure: bitsandbytes' own float32 noise, its parameters
against a float64 emulation of its path (``bnb8_emulation``). Run with ``-s`` to see them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bnb8_emulation import run as emulate
from conftest import reference
from menu_parity import problem, rel, run_funcopt
from parity import as_np

import funcopt
from funcopt import _quantize

torch = reference("torch")
bnb = reference("bitsandbytes")

STEPS = 30
SHAPES = [(), (7,), (5, 6), (2, 3, 4, 5), (4095,), (16, 256), (4097,), (3, 7, 300),
          (2, 2, 33, 40)]
NAMES = ["adamw", "lion", "ademamix", "rmsprop"]
CLASSES = {"adamw": "AdamW", "lion": "Lion", "ademamix": "AdEMAMix", "rmsprop": "RMSprop"}
FUNCTIONS = {"adamw": funcopt.adamw_8bit, "lion": funcopt.lion_8bit,
             "ademamix": funcopt.ademamix_8bit, "rmsprop": funcopt.rmsprop_8bit}
KEYS = {"adamw": ("state1", "state2"), "lion": ("state1",), "ademamix": ("state1", "state2"),
        "rmsprop": ("state1",)}


def reference_optimizer(name, cfg, bits=8):
    cls = getattr(bnb.optim, CLASSES[name])
    return lambda params: cls(params, optim_bits=bits, **cfg)


def funcopt_kwargs(cfg):
    kw = dict(cfg)
    kw["learning_rate"] = kw.pop("lr")
    if "betas" in kw:
        kw.update(zip(("b1", "b2", "b3"), kw.pop("betas"), strict=False))
    return kw


def random_config(name, rng, variant=None):
    """Random hyperparameters; ``variant`` 0 (no decay, eps 1e-8, min_8bit_size 4096, no
    warmups) or 1 (decay, eps 0, min_8bit_size 100, warmups) fixes the options, None draws them."""
    pick = (lambda options: options[variant]) if variant is not None else rng.choice
    lr = float(10 ** rng.uniform(-4, -2))
    wd = float(pick([0.0, rng.uniform(0.01, 0.3)]))
    eps = float(pick([1e-8, 0.0]))
    size = int(pick([4096, 100]))
    if name == "lion":
        cfg = dict(lr=lr, betas=(rng.uniform(0.5, 0.99), rng.uniform(0.9, 0.9999)),
                   weight_decay=wd)
    elif name == "rmsprop":
        cfg = dict(lr=lr, alpha=rng.uniform(0.5, 0.999), eps=eps, weight_decay=wd)
    elif name == "adamw":
        cfg = dict(lr=lr, betas=(rng.uniform(0.5, 0.95), rng.uniform(0.9, 0.9999)), eps=eps,
                   weight_decay=wd)
    else:
        cfg = dict(lr=lr, betas=(rng.uniform(0.5, 0.95), rng.uniform(0.9, 0.999),
                                 rng.uniform(0.99, 0.9999)), alpha=rng.uniform(1.0, 8.0),
                   eps=eps, weight_decay=wd, t_alpha=int(pick([0, rng.integers(5, 50)])),
                   t_beta3=int(pick([0, rng.integers(5, 60)])))
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in cfg.items()}, size


def gradients(seed, zero_block=True):
    """The test problem: gradients whose scale changes by decades from step to step, and an
    all-zero block (absmax 0) in the first step (not with eps = 0, which makes it 0 / 0)."""
    init, grads = problem(SHAPES, STEPS, seed)
    rng = np.random.default_rng(seed + 1)
    grads = [[g * np.float32(10 ** rng.uniform(-3, 1)) for g in gs] for gs in grads]
    if zero_block:
        grads[0][SHAPES.index((16, 256))][0] = 0.0
    return init, grads


class Tally:
    """Equal codes / absmax per step and overall."""

    def __init__(self):
        self.equal, self.total, self.worst_step = {}, {}, {}

    def add(self, key, a, b):
        # absmax: bitsandbytes' flat (blocks,) is funcopt's row-major order (see _bnb8).
        a, b = a.reshape(-1), b.reshape(-1)
        assert a.shape == b.shape, (key, a.shape, b.shape)
        e, n = int(np.sum(a == b)), a.size
        self.equal[key] = self.equal.get(key, 0) + e
        self.total[key] = self.total.get(key, 0) + n
        self.worst_step[key] = min(self.worst_step.get(key, 1.0), e / n if n else 1.0)

    def fraction(self, key):
        return self.equal[key] / self.total[key]


def side_by_side(name, cfg, size, seed, dtype="float32"):
    """Both optimizers step for STEPS steps; returns the tally, the worst parameter deviation
    and small-leaf state deviation, and the two parameter lists."""
    init, grads = gradients(seed, zero_block=cfg.get("eps") != 0.0)
    tdtype, jdtype = getattr(torch, dtype), jnp.dtype(dtype)
    tparams = [torch.nn.Parameter(torch.tensor(x).to(tdtype)) for x in init]
    topt = reference_optimizer(name, dict(cfg, min_8bit_size=size))(tparams)
    tx = FUNCTIONS[name](**funcopt_kwargs(cfg), min_8bit_size=size)
    params = [jnp.asarray(x).astype(jdtype) for x in init]
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: _apply(tx, g, s, p))
    tally, param_dev, small_dev = Tally(), 0.0, 0.0
    for gs in grads:
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g).to(tdtype)
        topt.step()
        params, state = step([jnp.asarray(g).astype(jdtype) for g in gs], state, params)
        for i, p in enumerate(tparams):
            ref = topt.state[p]
            eight = ref["state1"].dtype == torch.uint8
            for key in KEYS[name] + (("absmax1", "absmax2")[:len(KEYS[name])] if eight else ()):
                ours = np.asarray(getattr(state, key)[i])
                if eight:
                    tally.add(key, ref[key].numpy(), ours)
                else:
                    small_dev = max(small_dev, rel(ours, ref[key]))
            param_dev = max(param_dev, rel(params[i], p))
    return tally, param_dev, small_dev, tparams, (init, grads)


def _apply(tx, grads, state, params):
    updates, state = tx.update(grads, state, params)
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates), state


CASES = [(name, seed) for name in NAMES for seed in (0, 1)]


@pytest.mark.parametrize("name,seed", CASES)
def test_codes_absmax_and_params_equal_bitsandbytes(name, seed):
    cfg, size = random_config(name, np.random.default_rng(100 * seed + NAMES.index(name)), seed)
    tally, param_dev, small_dev, tparams, (init, grads) = side_by_side(name, cfg, size, seed)
    noise = max(rel(p, e) for p, e in zip(tparams, emulate(name, cfg, init, grads, size),
                                          strict=True))
    figures = "  ".join(f"{k} {tally.fraction(k):.7f} (worst step {tally.worst_step[k]:.7f})"
                        for k in tally.equal)
    print(f"\n{name} {cfg} min_8bit_size={size}: {figures}; params {param_dev:.2e}, small-leaf "
          f"states {small_dev:.2e} (bitsandbytes float32 vs float64: {noise:.2e})")
    for key in tally.equal:
        assert tally.worst_step[key] >= 0.999, (key, tally.worst_step[key])
        if not (name == "rmsprop" and cfg["weight_decay"] > 0):
            # The states do not depend on the parameters (which carry torch's MKL sqrt ulps),
            # so every code and absmax is equal. RMSprop's L2 term feeds the parameter back.
            assert tally.fraction(key) == 1.0, (key, tally.fraction(key))
    assert param_dev <= 1e-5
    assert small_dev <= 1e-6


@pytest.mark.parametrize("name", ["adamw", "rmsprop"])
def test_bfloat16_params(name):
    cfg, size = random_config(name, np.random.default_rng(7 + NAMES.index(name)))
    tally, param_dev, _, _, _ = side_by_side(name, cfg, size, seed=3, dtype="bfloat16")
    print(f"\n{name} bf16: " + "  ".join(f"{k} {tally.fraction(k):.7f}" for k in tally.equal)
          + f"; params {param_dev:.2e}")
    for key in tally.equal:
        assert tally.worst_step[key] >= 0.999, (key, tally.worst_step[key])
    assert param_dev <= 1e-2  # bf16's own resolution is 4e-3


def test_quantizer_matches_bitsandbytes_c_routine():
    rng = np.random.default_rng(0)
    for signed in (True, False):
        code = bnb.functional.create_dynamic_map(signed)
        np.testing.assert_array_equal(code.numpy(), _quantize.dynamic_map(signed))
        # Every bin start, one ulp below and above, as scaled values (absmax 1), and random
        # tensors over many decades, sizes around the block, zeros, an all-zero block, a NaN.
        starts = _quantize.bin_starts()[1:]
        probes = np.concatenate([starts, np.nextafter(starts, -2), np.nextafter(starts, 2)])
        probes = np.clip(probes.astype(np.float32), -1, 1)
        blocks = np.concatenate([np.ones((len(probes) // 255 + 1, 1), np.float32),
                                 np.resize(probes, (len(probes) // 255 + 1, 255))], axis=1)
        tensors = [blocks.reshape(-1)]
        for n in (1, 255, 256, 257, 4097):
            x = rng.standard_normal(n) * 10.0 ** rng.uniform(-9, 3, n)
            x = np.abs(x) if not signed else x
            x[: n // 3] = 0.0 if n > 300 else x[: n // 3]
            tensors.append(x.astype(np.float32))
        tensors[-1][-1] = np.nan
        for x in tensors:
            out, absmax = torch.ops.bitsandbytes.quantize_blockwise(torch.tensor(x), code, 256)
            codes, ours = jax.jit(_quantize.quantize, static_argnums=1)(jnp.asarray(x), signed)
            np.testing.assert_array_equal(np.asarray(codes), out.numpy())
            np.testing.assert_array_equal(np.asarray(ours), absmax.numpy())
            back = torch.ops.bitsandbytes.dequantize_blockwise(out, absmax, code, 256,
                                                               torch.float32)
            np.testing.assert_array_equal(np.asarray(_quantize.dequantize(codes, ours, signed)),
                                          back.numpy())


def test_a_nearest_code_quantizer_would_not_match():
    # What makes the quantizer test able to fail: rounding to the nearest code agrees with
    # bitsandbytes' CPU routine on only about 97% of the codes of a second moment (squares of
    # normal gradients, the unsigned map; 99.85% for the signed map on normal values).
    code = bnb.functional.create_dynamic_map(False)
    x = (np.random.default_rng(1).standard_normal(1 << 16) ** 2).astype(np.float32)
    out, absmax = torch.ops.bitsandbytes.quantize_blockwise(torch.tensor(x), code, 256)
    scaled = (x.reshape(-1, 256) / absmax.numpy()[:, None]).reshape(-1)
    nearest = np.argmin(np.abs(scaled[:, None] - code.numpy()[None, :]), axis=1)
    agree = float(np.mean(nearest == out.numpy()))
    print(f"\nnearest-code agreement with bitsandbytes: {agree:.4f}")
    assert agree < 0.99


def test_bitsandbytes_is_deterministic_across_runs_and_threads():
    cfg, size = random_config("adamw", np.random.default_rng(6))
    init, grads = gradients(5, zero_block=cfg["eps"] != 0.0)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        params = [torch.nn.Parameter(torch.tensor(x)) for x in init]
        opt = reference_optimizer("adamw", dict(cfg, min_8bit_size=size))(params)
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = torch.tensor(g)
            opt.step()
        results.append([as_np(p) for p in params]
                       + [opt.state[p][k].numpy() for p in params for k in KEYS["adamw"]])
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other, strict=True))
    print("\nbitsandbytes: two runs and 1 vs 2 threads bitwise identical")


@pytest.mark.parametrize("name", NAMES)
def test_lax_scan_and_schedule(name):
    cfg, size = random_config(name, np.random.default_rng(11 + NAMES.index(name)))
    schedule = funcopt.get_linear_schedule_with_warmup(cfg["lr"], 5, 2 * STEPS)
    transformers = reference("transformers")
    init, grads = gradients(11, zero_block=cfg.get("eps") != 0.0)
    params = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    topt = reference_optimizer(name, dict(cfg, min_8bit_size=size))(params)
    sched = transformers.get_linear_schedule_with_warmup(topt, 5, 2 * STEPS)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.tensor(g)
        topt.step()
        sched.step()
    kw = dict(funcopt_kwargs(cfg), learning_rate=schedule)
    state, ours = run_funcopt(FUNCTIONS[name](**kw, min_8bit_size=size), init, grads, scan=True)
    dev = max(rel(a, b) for a, b in zip(ours, params, strict=True))
    codes = [float(np.mean(np.asarray(getattr(state, k)[i]) == topt.state[p][k].numpy()))
             for i, p in enumerate(params) for k in KEYS[name]
             if topt.state[p][k].dtype == torch.uint8]
    print(f"\n{name} with a schedule under lax.scan: codes {min(codes):.7f}, params {dev:.2e}")
    assert dev <= 1e-5
    assert min(codes) >= 0.999


def test_adamw_bnb_is_bitsandbytes_not_torch():
    cfg = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    init, grads = gradients(2)
    refs = {}
    for label, make in (("bnb", reference_optimizer("adamw", cfg, bits=32)),
                        ("torch", lambda ps: torch.optim.AdamW(ps, **cfg))):
        params = [torch.nn.Parameter(torch.tensor(x)) for x in init]
        opt = make(params)
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = torch.tensor(g)
            opt.step()
        refs[label] = params
    _, ours = run_funcopt(funcopt.adamw_bnb(**funcopt_kwargs(cfg)), init, grads)
    dev = max(rel(a, b) for a, b in zip(ours, refs["bnb"], strict=True))
    differ = np.mean(np.concatenate([(as_np(a) != as_np(b)).ravel()
                                     for a, b in zip(refs["bnb"], refs["torch"], strict=True)]))
    print(f"\nadamw_bnb vs bitsandbytes AdamW(optim_bits=32): {dev:.2e}; bitsandbytes vs torch "
          f"AdamW: {differ:.1%} of elements differ")
    assert dev <= 1e-6
    assert differ > 0.01


def test_state_bytes_per_parameter_match_bitsandbytes():
    p = torch.nn.Parameter(torch.zeros(1 << 16))
    for name in NAMES:
        opt = reference_optimizer(name, dict(lr=1e-3))([p])
        p.grad = torch.ones_like(p)
        opt.step()
        theirs = sum(v.numel() * v.element_size() for k, v in opt.state[p].items()
                     if k not in ("qmap1", "qmap2") and torch.is_tensor(v))
        state = FUNCTIONS[name](learning_rate=1e-3).init({"p": jnp.zeros(1 << 16)})
        ours = sum(x.nbytes for x in jax.tree.leaves(state)) - 8  # count and step
        print(f"\n{name}: {ours / p.numel():.4f} bytes per parameter (bitsandbytes "
              f"{theirs / p.numel():.4f})")
        assert ours == theirs
        assert math.isclose(ours / p.numel(), {"adamw": 2.03125, "lion": 1.015625,
                                               "ademamix": 3.046875,
                                               "rmsprop": 1.015625}[name])


BAD = [  # (name, funcopt keywords, bitsandbytes keywords): both refuse them
    ("adamw", {"b1": 1.0}, {"betas": (1.0, 0.999)}),
    ("adamw", {"b2": -0.5}, {"betas": (0.9, -0.5)}),
    ("adamw", {"eps": -1e-8}, {"eps": -1e-8}),
    ("adamw", {"learning_rate": -1.0}, {"lr": -1.0}),
    ("adamw", {"weight_decay": -0.1}, {"weight_decay": -0.1}),
    ("lion", {"b1": 1.5}, {"betas": (1.5, 0.99)}),
    ("ademamix", {"b3": 1.0}, {"betas": (0.9, 0.999, 1.0)}),
    ("rmsprop", {"alpha": 0.0}, {"alpha": 0.0}),
    ("rmsprop", {"centered": True}, {"centered": True}),
]


@pytest.mark.parametrize("name,ours,theirs", BAD)
def test_what_bitsandbytes_rejects_is_rejected_at_construction(name, ours, theirs):
    with pytest.raises((ValueError, NotImplementedError)):
        p = torch.nn.Parameter(torch.zeros(8))
        opt = reference_optimizer(name, theirs)([p])
        p.grad = torch.ones(8)
        opt.step()
    with pytest.raises((ValueError, TypeError), match=next(iter(ours))):
        FUNCTIONS[name](**ours)
    # Keywords of the classes that funcopt's functions do not take are refused by the menu
    # when they contradict the name (optim_bits) and are unknown otherwise (amsgrad).
    with pytest.raises(ValueError, match="optim_bits"):
        funcopt.get_optimizer("adamw_8bit", learning_rate=1e-3, optim_bits=32)
    with pytest.raises(TypeError, match="amsgrad"):
        funcopt.get_optimizer("adamw_8bit", learning_rate=1e-3, amsgrad=True)
