"""funcopt.stable_adamw against optimi.StableAdamW (torch-optimi 0.3.3, the class the Trainer's
``optim="stable_adamw"`` builds): float32 and bf16-with-Kahan parity with the Trainer's two
param groups, continuation state, jit/scan/inject_hyperparams, construction errors.

Bitwise: the moments (they depend on the gradients and the debiased betas only). The
parameters agree to ~1e-7: torch's CPU ``sqrt`` (MKL's) is an ulp low on ~0.6% of float32
elements, and the RMS mean, when it exceeds 1, is summed in torch's order.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference
from menu_parity import bitwise, problem, report, run_funcopt, run_reference, worst
from parity import BF16_SHAPES, SHAPES, bf16_close

import funcopt

torch = reference("torch")
optimi = reference("optimi")

SHAPES6 = SHAPES + [(3, 1)]


def random_config(seed, n=6):
    rng = np.random.default_rng(seed)
    kw = dict(
        lr=float(rng.choice([1e-3, 1e-2, 3e-2])),
        betas=(float(rng.choice([0.9, 0.8, 0.0])), float(rng.choice([0.99, 0.999, 0.9999]))),
        weight_decay=float(rng.choice([0.0, 1e-2, 0.3])),
        eps=float(rng.choice([1e-6, 1e-8, 0.0])),
        decouple_lr=bool(rng.integers(2)),
    )
    if kw["decouple_lr"] and rng.integers(2):
        kw["max_lr"] = kw["lr"] * float(rng.choice([1.0, 2.0]))
    return kw, [bool(x) for x in rng.integers(0, 2, n)]


def varied(grads, seed):
    """Gradients whose scale jumps between steps, so that the RMS clip (rms > 1) acts."""
    rng = np.random.default_rng(seed + 100)
    return [[g * np.float32(rng.choice([0.2, 1.0, 4.0])) for g in gs] for gs in grads]


def ours(kw, mask, **extra):
    b1, b2 = kw["betas"]
    rest = {k: v for k, v in kw.items() if k not in ("lr", "betas")}
    return funcopt.stable_adamw(kw["lr"], b1=b1, b2=b2, mask=mask, **rest, **extra)


def reference_run(kw, mask, init, grads, dtype="float32", **extra):
    def make(params):
        groups = [{"params": [p for p, m in zip(params, mask, strict=True) if m]},
                  {"params": [p for p, m in zip(params, mask, strict=True) if not m],
                   "weight_decay": 0.0}]
        return optimi.StableAdamW([g for g in groups if g["params"]], **kw, **extra)

    return run_reference(torch, make, init, grads, dtype)


def compare(state, params, opt, tparams, steps):
    params_pairs, moments = [], []
    for group in opt.param_groups:
        assert int(group["step"]) == steps == int(state.count) and group["setup"]
    for i, tp in enumerate(tparams):
        s = opt.state[tp]
        params_pairs.append((params[i], tp))
        moments += [(state.exp_avg[i], s["exp_avg"]), (state.exp_avg_sq[i], s["exp_avg_sq"])]
        assert np.asarray(state.eps_sq[i]).item() == s["eps_sq"].item()
        if s["kahan_comp"] is None:
            assert state.kahan_comp is None or state.kahan_comp[i] is None
        else:
            params_pairs.append((state.kahan_comp[i], s["kahan_comp"]))
    return params_pairs, moments


def noise(kw, mask, init, grads, dtype="float32", **extra):
    """The reference in ``dtype`` against itself in float64 (params and moments)."""
    o32, p32 = reference_run(kw, mask, init, grads, dtype, **extra)
    o64, p64 = reference_run(kw, mask, init, grads, "float64", **extra)
    pairs = [(a, b) for a, b in zip(p32, p64, strict=True)]
    for a, b in zip(p32, p64, strict=True):
        pairs += [(o32.state[a][k], o64.state[b][k]) for k in ("exp_avg", "exp_avg_sq")]
    return worst(pairs)


@pytest.mark.parametrize("seed", range(8))
def test_live_parity_random_options(seed):
    kw, mask = random_config(seed)
    init, grads = problem(SHAPES6, 25, seed)
    grads = varied(grads, seed)
    opt, tparams = reference_run(kw, mask, init, grads)
    state, params = run_funcopt(ours(kw, mask), init, grads)
    params_pairs, moments = compare(state, params, opt, tparams, 25)
    dev = worst(params_pairs + moments)
    report(f"stable_adamw {kw} mask={mask}", dev, noise(kw, mask, init, grads),
           bitwise(params_pairs + moments))
    assert bitwise(moments)
    assert dev <= 1e-6


@pytest.mark.parametrize("kahan_sum", [None, True, False])
def test_bf16_kahan_summation(kahan_sum):
    """bf16 parameters: Kahan compensation (on by default) or the plain bf16 step."""
    kw, mask = random_config(4, len(BF16_SHAPES))
    kw.update(lr=1e-3, weight_decay=0.01)
    init, grads = problem(BF16_SHAPES, 25, 7)
    extra = {} if kahan_sum is None else {"kahan_sum": kahan_sum}
    opt, tparams = reference_run(kw, mask, init, grads, "bfloat16", **extra)
    state, params = run_funcopt(ours(kw, mask, **extra), init, grads, "bfloat16")
    assert jax.tree.map(lambda x: x.dtype, state.exp_avg) == [jnp.bfloat16] * len(BF16_SHAPES)
    assert (state.kahan_comp is None) == (kahan_sum is False)
    params_pairs, moments = compare(state, params, opt, tparams, 25)
    report(f"stable_adamw bf16 kahan_sum={kahan_sum}", worst(params_pairs + moments),
           noise(kw, mask, init, grads, "bfloat16", **extra), bitwise(params_pairs + moments),
           "bfloat16")
    bf16_close([a for a, _ in params_pairs + moments], [b for _, b in params_pairs + moments],
               min_equal=0.99, atol=2e-3)


def test_kahan_summation_keeps_small_steps():
    """What Kahan summation is for: bf16 steps below the parameter's half-ulp still move it,
    in the reference and here alike."""
    init, grads = [np.ones(64, np.float32)], [[np.full(64, 1e-3, np.float32)]] * 40
    kw = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    for kahan_sum in (True, False):
        opt, (tp,) = reference_run(kw, [True], init, grads, "bfloat16", kahan_sum=kahan_sum)
        _, (p,) = run_funcopt(ours(kw, [True], kahan_sum=kahan_sum), init, grads, "bfloat16")
        np.testing.assert_array_equal(np.asarray(p.astype(jnp.float32)),
                                      tp.detach().float().numpy())
        assert (float(tp[0]) < 1.0) == kahan_sum  # 40 steps of 1e-3 < ulp(1)/2 = 3.9e-3


def test_continuation_from_reference_state():
    """Stop the reference after 10 steps, load its state (group step, eps_sq, moments) into
    funcopt's, continue both for 15 more."""
    kw, mask = random_config(2)
    init, grads = problem(SHAPES6, 25, 3)
    opt, tparams = reference_run(kw, mask, init, grads[:10])
    b1, b2 = kw["betas"]
    state = ours(kw, mask).init([jnp.asarray(x) for x in init])
    s = [opt.state[p] for p in tparams]
    state = state._replace(
        count=jnp.asarray(int(opt.param_groups[0]["step"]), jnp.int32),
        exp_avg=[jnp.asarray(x["exp_avg"].numpy()) for x in s],
        exp_avg_sq=[jnp.asarray(x["exp_avg_sq"].numpy()) for x in s],
        eps_sq=[jnp.asarray(x["eps_sq"].numpy()) for x in s])
    params = [jnp.asarray(p.detach().numpy()) for p in tparams]
    step = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(
        *ours(kw, mask).update(g, s, p)))
    for gs in grads[10:]:
        for p, g in zip(tparams, gs, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
        params, state = step([jnp.asarray(g) for g in gs], state, params)
    params_pairs, moments = compare(state, params, opt, tparams, 25)
    assert bitwise(moments) and worst(params_pairs) <= 1e-6


def test_scan_and_inject_hyperparams():
    kw, mask = random_config(5)
    init, grads = problem(SHAPES6, 25, 4)
    ref_state, ref_params = run_funcopt(ours(kw, mask), init, grads)
    state, params = run_funcopt(ours(kw, mask), init, grads, scan=True)
    assert bitwise(list(zip(params, ref_params, strict=True)))
    b1, b2 = kw["betas"]
    rest = {k: v for k, v in kw.items() if k not in ("lr", "betas", "decouple_lr")}
    injected = optax.inject_hyperparams(
        funcopt.stable_adamw, static_args=("mask", "b1", "b2", "decouple_lr"))(
        kw["lr"], b1=b1, b2=b2, mask=mask, decouple_lr=kw["decouple_lr"], **rest)
    state, params = run_funcopt(injected, init, grads)
    assert state.inner_state.exp_avg[3].dtype == jnp.float32
    for a, b in zip(params, ref_params, strict=True):  # traced lr/wd/eps: float32 scalars
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.5), "b2"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(max_lr=-1.0), "max_lr"),
    (dict(decouple_lr=True, max_lr=-1.0), "max_lr"),
])
def test_construction_errors(kwargs, match):
    kwargs = {"learning_rate": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=match):
        funcopt.stable_adamw(**kwargs)
    ref = {"lr" if k == "learning_rate" else k: v for k, v in kwargs.items()}
    if "b1" in ref or "b2" in ref:
        ref["betas"] = (ref.pop("b1", 0.9), ref.pop("b2", 0.99))
    with pytest.raises(ValueError):  # the reference rejects the same values
        optimi.StableAdamW([torch.nn.Parameter(torch.zeros(2))], **ref)


def test_other_errors():
    with pytest.raises(ValueError, match="max_lr"):
        funcopt.stable_adamw(optax.linear_schedule(0.0, 1e-3, 10), decouple_lr=True)
    with pytest.raises(TypeError, match="kahan_sum"):
        funcopt.stable_adamw(1e-3, kahan_sum="yes")
    with pytest.raises(ValueError, match="params"):
        funcopt.stable_adamw(1e-3).update([jnp.ones(2)], funcopt.stable_adamw(1e-3).init(
            [jnp.ones(2)]))
