"""funcopt.lion, funcopt.ademamix and funcopt.rmsprop_bnb against bitsandbytes 0.50.2's 32-bit
optimizers on CPU (``Lion``, ``AdEMAMix``, ``RMSprop`` with ``optim_bits=32``), side by side.

bitsandbytes' CPU path computes in float32 whatever the parameter's dtype (a float64
parameter gets float32 states and float32 arithmetic), so its own float32 noise is measured
against a float64 NumPy emulation of the same formulas (``emulate``) on the same problem.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference
from parity import BF16_SHAPES, SHAPES, applying, as_np, random_problem, run_side_by_side

import funcopt
from funcopt._numerics import find_state

torch = reference("torch")
bnb = reference("bitsandbytes")

STEPS = 25
KEYS = {"lion": ("state1",), "ademamix": ("state1", "state2"), "rmsprop": ("state1",)}


# -- the two sides, from one config in bitsandbytes' keywords ---------------------------------

def reference_optimizer(name, cfg):
    cls = {"lion": bnb.optim.Lion, "ademamix": bnb.optim.AdEMAMix,
           "rmsprop": bnb.optim.RMSprop}[name]
    return lambda params: cls(params, optim_bits=32, **cfg)


FUNCTIONS = {"lion": funcopt.lion, "ademamix": funcopt.ademamix, "rmsprop": funcopt.rmsprop_bnb}


def funcopt_kwargs(cfg):
    kw = dict(cfg)
    kw["learning_rate"] = kw.pop("lr")
    if "betas" in kw:
        kw.update(zip(("b1", "b2", "b3"), kw.pop("betas"), strict=False))
    return kw


def funcopt_optimizer(name, cfg, **extra):
    return FUNCTIONS[name](**funcopt_kwargs(cfg), **extra)


def random_config(name, rng):
    lr = float(10 ** rng.uniform(-4, -2))
    wd = float(rng.choice([0.0, rng.uniform(0.0, 0.3)]))
    if name == "lion":
        return dict(lr=lr, betas=(rng.uniform(0.5, 0.99), rng.uniform(0.9, 0.9999)),
                    weight_decay=wd)
    if name == "rmsprop":
        return dict(lr=lr, alpha=rng.uniform(0.5, 0.999), eps=float(rng.choice([1e-8, 0.0, 1e-4])),
                    weight_decay=wd)
    warm = lambda: rng.choice([None, int(rng.integers(5, 40))])  # noqa: E731
    return dict(lr=lr, betas=(rng.uniform(0.5, 0.95), rng.uniform(0.9, 0.9999),
                              rng.uniform(0.99, 0.99999)),
                alpha=rng.uniform(0.0, 10.0), t_alpha=warm(), t_beta3=warm(),
                eps=float(rng.choice([1e-8, 0.0, 1e-6])), weight_decay=wd)


DEFAULTS = {"lion": dict(lr=1e-4), "ademamix": dict(lr=1e-3), "rmsprop": dict(lr=1e-2)}
CASES = [(name, DEFAULTS[name]) for name in KEYS] + [
    (name, random_config(name, np.random.default_rng(seed)))
    for seed, name in enumerate(list(KEYS) * 4)
] + [("lion", dict(lr=3e-4, betas=(0.9, 0.999), weight_decay=0.01)),  # what the Trainer passes
     ("ademamix", dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=8.0, t_alpha=10, t_beta3=100,
                       eps=1e-8, weight_decay=0.0))]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def run_jax(transformation, init, grads, scan=False):
    """``(state, params)`` after the float32 steps, under jit (or one ``lax.scan``)."""
    params = [jnp.asarray(x) for x in init]
    step = applying(transformation)
    carry = (params, transformation.init(params))
    if scan:
        xs = [jnp.stack([gs[i] for gs in grads]) for i in range(len(init))]
        carry, _ = jax.jit(lambda c, xs: jax.lax.scan(lambda c, g: (step(g, c[1], c[0]), None),
                                                      c, xs))(carry, xs)
    else:
        for gs in grads:
            carry = jax.jit(step)([jnp.asarray(g) for g in gs], carry[1], carry[0])
    return carry[1], carry[0]


def rel(a, b) -> float:
    """max |a - b| / max |b|: the deviation relative to the array's scale."""
    a, b = as_np(a).astype(np.float64), np.asarray(as_np(b), np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def worst(pairs) -> float:
    return max(rel(a, b) for a, b in pairs)


def bitwise(pairs) -> bool:
    return all(np.array_equal(as_np(a), as_np(b)) for a, b in pairs)


# -- bitsandbytes' CPU formulas in float64 (backends/cpu/ops.py::_optimizer_update_32bit_cpu) ---

def _lion64(cfg, t, g, p, m):
    lr, (b1, b2), wd = cfg["lr"], cfg.get("betas", (0.9, 0.99)), cfg.get("weight_decay", 0.0)
    if wd > 0:
        p = p * (1 - lr * wd)
    p = p - lr * np.sign(m * b1 + g * (1 - b1))
    return p, (m * b2 + g * (1 - b2),)


def _ademamix_scalars(cfg, t):
    b1, b2, b3 = cfg.get("betas", (0.9, 0.999, 0.9999))
    alpha, t_alpha, t_beta3 = cfg.get("alpha", 5.0), cfg.get("t_alpha"), cfg.get("t_beta3")
    if t_alpha:
        alpha = min(t * alpha / t_alpha, alpha)
    if t_beta3:
        ln1, ln3, s = math.log(b1), math.log(b3), t / t_beta3
        b3 = min(math.exp(ln1 * ln3 / ((1 - s) * ln3 + s * ln1)), b3)
    return b1, b2, b3, alpha, 1 - b1**t, math.sqrt(1 - b2**t)


def _ademamix64(cfg, t, g, p, m12, nu):
    b1, b2, b3, alpha, c1, c2 = _ademamix_scalars(cfg, t)
    lr, eps, wd = cfg["lr"], cfg.get("eps", 1e-8), cfg.get("weight_decay", 1e-2)
    m1, m2 = m12[0] * b1 + (1 - b1) * g, m12[1] * b3 + (1 - b3) * g
    nu = nu * b2 + (1 - b2) * g * g
    if wd > 0:
        p = p * (1 - lr * wd)
    p = p - lr * ((m1 / c1 + alpha * m2) / (np.sqrt(nu) / c2 + eps))
    return p, (np.stack([m1, m2]), nu)


def _rmsprop64(cfg, t, g, p, v):
    lr, a, eps = cfg["lr"], cfg.get("alpha", 0.99), cfg.get("eps", 1e-8)
    wd = cfg.get("weight_decay", 0.0)
    if wd > 0:
        g = g + wd * p
    v = v * a + (1 - a) * g * g
    return p - lr * g / (np.sqrt(v) + eps), (v,)


def emulate(name, cfg, init, grads):
    """bitsandbytes' update in float64: ``(params, [states per key])``."""
    step = {"lion": _lion64, "ademamix": _ademamix64, "rmsprop": _rmsprop64}[name]
    params = [x.astype(np.float64) for x in init]
    states = [((np.zeros((2, *x.shape)), np.zeros(x.shape)) if name == "ademamix"
               else (np.zeros(x.shape),)) for x in init]
    for t, gs in enumerate(grads, 1):
        for i, g in enumerate(gs):
            params[i], states[i] = step(cfg, t, g.astype(np.float64), params[i], *states[i])
    return params, [list(s) for s in zip(*states, strict=True)]


def pairs_of(name, state, params, topt, tparams):
    """(funcopt, bitsandbytes) pairs: params, then each state key leaf by leaf."""
    out = list(zip(params, tparams, strict=True))
    for key in KEYS[name]:
        out += [(getattr(state, key)[i], topt.state[tp][key]) for i, tp in enumerate(tparams)]
    return out


# -- parity --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_float32_parity(case):
    name, cfg = CASES[case]
    topt, tparams, state, params = run_side_by_side(
        torch, reference_optimizer(name, cfg), {}, funcopt_optimizer(name, cfg), seed=case)
    init, grads = random_problem(SHAPES, STEPS, case)
    pairs = pairs_of(name, state, params, topt, tparams)
    p64, s64 = emulate(name, cfg, init, grads)
    noise = worst(list(zip(tparams, p64, strict=True)) + [
        (topt.state[tp][key], s64[k][i]) for k, key in enumerate(KEYS[name])
        for i, tp in enumerate(tparams)])
    n = len(tparams)
    equal = np.mean([np.array_equal(as_np(a), as_np(b)) for a, b in pairs[:n]])
    print(f"{name} {cfg}: worst relative deviation {worst(pairs):.2e} (bitsandbytes float32 vs "
          f"float64: {noise:.2e}); bitwise: states {bitwise(pairs[n:])}, params "
          f"{equal:.0%} of leaves")
    assert worst(pairs) <= 1e-6
    for i, tp in enumerate(tparams):
        assert int(state.step[i]) == topt.state[tp]["step"] == STEPS
    # The moments never see the parameters (Lion, AdEMAMix; RMSprop without weight decay),
    # so they stay bitwise equal even where an additive update lands an ulp off a parameter.
    if name != "rmsprop" or not cfg.get("weight_decay"):
        assert bitwise(pairs[n:])


# The state whose square root the step takes; torch's float32 sqrt on CPU is MKL's vsSqrt
# (VML_HA), which is 1 ulp below the correctly rounded root for ~0.7% of inputs (those whose
# root lies just above a rounding midpoint); XLA's sqrt is correctly rounded.
ROOTED = {"lion": None, "ademamix": "state2", "rmsprop": "state1"}


@pytest.mark.parametrize("name, cfg", CASES[:6], ids=IDS[:6])
def test_each_step_bitwise(name, cfg):
    """Every step from the reference's own state: states bitwise; parameters bitwise wherever
    torch's sqrt is correctly rounded and the step is at most the parameter's size (Sterbenz:
    new - p is exact), and within 2 ulps elsewhere (a step across zero, which p + u cannot
    always express, or torch's 1-ulp-low root)."""
    init, grads = random_problem(SHAPES, STEPS, 7)
    tparams = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    topt = reference_optimizer(name, cfg)(tparams)
    tx = funcopt_optimizer(name, cfg)
    step = jax.jit(applying(tx))
    state = tx.init([jnp.asarray(x) for x in init])
    inexact = 0
    for k, gs in enumerate(grads):
        old = [p.detach().numpy().copy() for p in tparams]
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g)
        topt.step()
        params, new_state = step([jnp.asarray(g) for g in gs], state, [jnp.asarray(x) for x in old])
        for key in KEYS[name]:
            assert bitwise([(getattr(new_state, key)[i], topt.state[tp][key])
                            for i, tp in enumerate(tparams)]), (k, key)
        for o, ours, tp in zip(old, params, tparams, strict=True):
            ref, ours = tp.detach().numpy(), np.asarray(ours)
            exact = (o == 0) | ((np.sign(ref) == np.sign(o)) & (np.abs(o) / 2 <= np.abs(ref))
                                & (np.abs(ref) <= 2 * np.abs(o)))
            if ROOTED[name]:
                root_in = topt.state[tp][ROOTED[name]]
                exact &= root_in.sqrt().numpy() == np.sqrt(root_in.numpy())
            inexact += int(np.sum(ours != ref))
            np.testing.assert_array_equal(ours[exact], ref[exact])
            assert np.all(np.abs(ours - ref) <= 2 * np.spacing(np.maximum(abs(o), abs(ref))))
        # Continue from the reference's own parameters and state (as a converted state would).
        state = new_state._replace(**{key: [jnp.asarray(topt.state[tp][key]) for tp in tparams]
                                      for key in KEYS[name]})
    print(f"{name} {cfg}: {inexact} of {STEPS * sum(x.size for x in init)} parameter values "
          "not bitwise (torch's sqrt or a step across zero), all within 2 ulps")


@pytest.mark.parametrize("name, cfg", [CASES[i] for i in (3, 4, 5)], ids=IDS[3:6])
def test_bfloat16_params_bitwise(name, cfg):
    """bf16 parameters: float32 states and arithmetic, one rounding back to bf16."""
    cfg = {**cfg, "weight_decay": 0.1}
    topt, tparams, state, params = run_side_by_side(
        torch, reference_optimizer(name, cfg), {}, funcopt_optimizer(name, cfg),
        shapes=BF16_SHAPES, dtype="bfloat16", seed=3)
    pairs = pairs_of(name, state, params, topt, tparams)
    assert all(p.dtype == jnp.bfloat16 for p in params)
    assert all(s.dtype == jnp.float32 for key in KEYS[name] for s in getattr(state, key))
    assert bitwise(pairs)


@pytest.mark.parametrize("name", list(KEYS))
def test_schedule_lax_scan_and_inject_hyperparams(name):
    """A learning-rate schedule, a lax.scan over all steps, and inject_hyperparams (with
    hyperparameters that are float32 numbers, so that rounding them loses nothing)."""
    cfg = {"lion": dict(lr=1e-3, betas=(0.875, 0.9921875), weight_decay=0.125),
           "ademamix": dict(lr=1e-3, betas=(0.875, 0.9921875, 0.9990234375), alpha=4.0,
                            t_alpha=20, t_beta3=12, eps=2.0**-20, weight_decay=0.125),
           "rmsprop": dict(lr=1e-3, alpha=0.9921875, eps=2.0**-20, weight_decay=0.125)}[name]
    schedule = optax.linear_schedule(1e-2, 1e-3, STEPS)
    init, grads = random_problem(SHAPES, STEPS, 11)
    tparams = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    topt = reference_optimizer(name, cfg)(tparams)
    for k, gs in enumerate(grads):
        topt.param_groups[0]["lr"] = float(jax.jit(schedule)(k))  # as evaluated in the step
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g)
        topt.step()
    static = funcopt_optimizer(name, {**cfg, "lr": schedule})
    state, params = run_jax(static, init, grads, scan=True)
    state_jit, params_jit = run_jax(static, init, grads)
    assert bitwise(list(zip(params + jax.tree.leaves(state), params_jit
                            + jax.tree.leaves(state_jit), strict=True)))
    dev = worst(pairs_of(name, state, params, topt, tparams))
    injected = optax.inject_hyperparams(FUNCTIONS[name])(**funcopt_kwargs({**cfg,
                                                                          "lr": schedule}))
    istate, iparams = run_jax(injected, init, grads)
    idev = worst(pairs_of(name, find_state(istate, type(state)), iparams, topt, tparams))
    print(f"{name} with a schedule: worst relative deviation {dev:.2e} (lax.scan: bitwise "
          f"equal to the jitted loop); under inject_hyperparams (float32 formulas): {idev:.2e}")
    assert dev <= 1e-6 and idev <= 1e-6


def test_mask_equals_param_groups():
    """A decay mask does what the Trainer's two param groups (decay / no decay) do."""
    init, grads = random_problem([(4, 3), (3,)], STEPS, 5)
    tparams = [torch.nn.Parameter(torch.tensor(x)) for x in init]
    topt = bnb.optim.AdEMAMix([{"params": tparams[:1]},
                               {"params": tparams[1:], "weight_decay": 0.0}],
                              lr=1e-2, weight_decay=0.2, t_alpha=5, optim_bits=32)
    for gs in grads:
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g)
        topt.step()
    tx = funcopt.ademamix(1e-2, weight_decay=0.2, t_alpha=5, mask=[True, False])
    state, params = run_jax(tx, init, grads)
    assert worst(pairs_of("ademamix", state, params, topt, tparams)) <= 1e-6
    assert bitwise(pairs_of("ademamix", state, params, topt, tparams)[2:])


def test_state_layout_is_bitsandbytes():
    """Field for field: step, state1 (AdEMAMix: (2, *shape)), state2, float32 for bf16."""
    for name, tx in (("lion", funcopt.lion()), ("ademamix", funcopt.ademamix()),
                     ("rmsprop", funcopt.rmsprop_bnb())):
        p = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.bfloat16))
        p.grad = torch.ones_like(p)
        topt = reference_optimizer(name, DEFAULTS[name])([p])
        topt.step()
        state = tx.init([jnp.zeros((3, 4), jnp.bfloat16)])
        assert state._fields == ("count", "step", *KEYS[name])
        assert set(topt.state[p]) == {"step", *KEYS[name]}
        for key in KEYS[name]:
            ours, theirs = getattr(state, key)[0], topt.state[p][key]
            assert ours.shape == tuple(theirs.shape) and ours.dtype == jnp.float32
            assert theirs.dtype == torch.float32


# -- construction-time validation ----------------------------------------------------------

BAD = [  # (name, funcopt kwargs, the argument the message names, bitsandbytes kwargs, or None
    #         where bitsandbytes accepts the value)
    ("lion", dict(learning_rate=-1e-3), "learning_rate", dict(lr=-1e-3)),
    ("lion", dict(b1=1.0), "b1", dict(betas=(1.0, 0.99))),
    ("lion", dict(b2=-0.1), "b2", dict(betas=(0.9, -0.1))),
    ("lion", dict(weight_decay=-0.1), "weight_decay", dict(weight_decay=-0.1)),
    ("ademamix", dict(b3=1.0), "b3", dict(betas=(0.9, 0.999, 1.0))),
    ("ademamix", dict(b2=1.5), "b2", dict(betas=(0.9, 1.5, 0.9999))),
    ("ademamix", dict(eps=-1e-8), "eps", dict(eps=-1e-8)),
    ("ademamix", dict(learning_rate=-1.0), "learning_rate", dict(lr=-1.0)),
    ("ademamix", dict(weight_decay=-1.0), "weight_decay", dict(weight_decay=-1.0)),
    ("ademamix", dict(t_alpha=-5), "t_alpha", None),
    ("ademamix", dict(t_beta3=2.5), "t_beta3", None),
    ("ademamix", dict(b1=0.0, t_beta3=10), "b1", None),  # bitsandbytes: log(0) at step 1
    ("ademamix", dict(b1=0.99, b3=0.9, t_beta3=10), "b3", None),
    ("ademamix", dict(alpha=-1.0, t_alpha=10), "alpha", None),
    ("rmsprop", dict(alpha=0.0), "alpha", dict(alpha=0.0)),
    ("rmsprop", dict(alpha=1.0), "alpha", dict(alpha=1.0)),
    ("rmsprop", dict(centered=True), "centered", dict(centered=True)),
    ("rmsprop", dict(eps=-1.0), "eps", dict(eps=-1.0)),
    ("rmsprop", dict(weight_decay=-1.0), "weight_decay", dict(weight_decay=-1.0)),
    ("rmsprop", dict(momentum=-0.5), "momentum", dict(momentum=-0.5)),
    ("rmsprop", dict(momentum=0.9), "momentum", None),  # bitsandbytes ignores it on CPU
]


@pytest.mark.parametrize("name, kwargs, arg, ref_kwargs", BAD, ids=[str(b[1]) for b in BAD])
def test_bad_arguments_raise_at_construction(name, kwargs, arg, ref_kwargs):
    with pytest.raises((ValueError, TypeError), match=arg):
        FUNCTIONS[name](**kwargs)
    if ref_kwargs is not None:
        with pytest.raises((ValueError, NotImplementedError)):
            reference_optimizer(name, {"lr": 1e-3, **ref_kwargs})(
                [torch.nn.Parameter(torch.zeros(2))])
