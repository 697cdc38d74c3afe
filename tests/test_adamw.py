"""funcopt.adamw against transformers.AdamW: golden values, live parity, masks, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference
from parity import BF16_SHAPES, SHAPES, as_np, bf16_close, run_side_by_side, train_mse

import funcopt

W0, TARGET = [0.1, -0.2, -0.1], [0.4, 0.2, -0.5]




@pytest.mark.parametrize("key, kwargs", [
    ("adamw_test", dict(learning_rate=0.2)),
    ("adamw_wd0.1", dict(learning_rate=0.2, weight_decay=0.1)),
    ("adamw_wd0.1_nocorrect", dict(learning_rate=0.2, weight_decay=0.1, correct_bias=False)),
])
def test_golden_test_problem(golden_pt, key, kwargs):
    trajectory, _ = train_mse(funcopt.adamw(**kwargs), W0, TARGET, 100)
    np.testing.assert_allclose(trajectory[:3], golden_pt[key]["first3"], rtol=0, atol=1.2e-7)
    np.testing.assert_allclose(trajectory[-1], golden_pt[key]["final_after_100"], rtol=0,
                               atol=1.2e-7)
    # HF's own assertion (tests/optimization/test_optimization.py::test_adam_w).
    np.testing.assert_allclose(trajectory[-1], TARGET, atol=1e-2)


CONFIGS = [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=2e-2, correct_bias=False, weight_decay=0.05),
    dict(lr=3e-3, betas=(0.8, 0.9999), eps=1e-8),
    dict(lr=1e-3, betas=(0.0, 0.5), eps=0.0, weight_decay=0.3),
]


def funcopt_kwargs(kw):
    out = dict(learning_rate=kw["lr"], weight_decay=kw.get("weight_decay", 0.0),
               correct_bias=kw.get("correct_bias", True))
    if "betas" in kw:
        out["b1"], out["b2"] = kw["betas"]
    if "eps" in kw:
        out["eps"] = kw["eps"]
    return out


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_live_parity(kw, dtype):
    torch = reference("torch")
    transformers = reference("transformers")
    ref_cls = lambda ps, **k: transformers.AdamW(ps, no_deprecation_warning=True, **k)
    topt, tparams, state, params = run_side_by_side(
        torch, ref_cls, kw, funcopt.adamw(**funcopt_kwargs(kw)), steps=25, dtype=dtype,
        shapes=SHAPES if dtype == "float32" else BF16_SHAPES)
    ours, theirs = [], []
    for i, (tp, p) in enumerate(zip(tparams, params, strict=True)):
        tstate = topt.state[tp]
        assert int(state.step[i]) == tstate["step"] == 25
        assert state.exp_avg[i].dtype == p.dtype == jnp.dtype(dtype)
        ours += [p, state.exp_avg[i], state.exp_avg_sq[i]]
        theirs += [tp, tstate["exp_avg"], tstate["exp_avg_sq"]]
    if dtype == "float32":
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(as_np(a), as_np(b), rtol=1e-5, atol=1e-6)
    else:
        bf16_close(ours, theirs)


def test_mask_equals_param_groups():
    """A name mask does what HF users do with two param groups (decay / no decay)."""
    torch = reference("torch")
    transformers = reference("transformers")
    rng = np.random.default_rng(1)
    params = {"dense": {"kernel": rng.standard_normal((4, 3)).astype(np.float32),
                        "bias": rng.standard_normal(3).astype(np.float32)},
              "LayerNorm": {"weight": rng.standard_normal(3).astype(np.float32)}}
    names = jax.tree.leaves(funcopt.param_names(params))
    mask = funcopt.name_mask(params, exclude=["bias", "LayerNorm"])
    leaves = [torch.nn.Parameter(torch.tensor(x)) for x in jax.tree.leaves(params)]
    decay = [p for p, n in zip(leaves, names, strict=True) if "kernel" in n]
    rest = [p for p, n in zip(leaves, names, strict=True) if "kernel" not in n]
    topt = transformers.AdamW([{"params": decay, "weight_decay": 0.3},
                               {"params": rest, "weight_decay": 0.0}],
                              lr=0.05, no_deprecation_warning=True)
    opt = funcopt.adamw(0.05, weight_decay=0.3, mask=mask)
    jparams = jax.tree.map(jnp.asarray, params)
    state = opt.init(jparams)
    for _ in range(10):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
                             jparams)
        for p, g in zip(leaves, jax.tree.leaves(grads), strict=True):
            p.grad = torch.tensor(np.asarray(g))
        topt.step()
        updates, state = opt.update(grads, state, jparams)
        jparams = optax.apply_updates(jparams, updates)
    for p, q in zip(leaves, jax.tree.leaves(jparams), strict=True):
        np.testing.assert_allclose(as_np(q), as_np(p), rtol=1e-6, atol=1e-7)


def test_callable_mask_and_wrong_mask():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grads = jax.tree.map(jnp.ones_like, params)
    by_callable = funcopt.adamw(0.1, weight_decay=0.5,
                                mask=lambda p: funcopt.name_mask(p, exclude="b"))
    by_tree = funcopt.adamw(0.1, weight_decay=0.5, mask={"w": True, "b": False})
    u1, _ = by_callable.update(grads, by_callable.init(params), params)
    u2, _ = by_tree.update(grads, by_tree.init(params), params)
    chex_equal = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), u1, u2)
    assert all(jax.tree.leaves(chex_equal))
    plain = funcopt.adamw(0.1)
    u3, _ = plain.update(grads, plain.init(params), params)
    assert jnp.all(u1["b"] == u3["b"]) and not jnp.all(u1["w"] == u3["w"])
    bad = funcopt.adamw(0.1, weight_decay=0.5, mask={"w": True})
    with pytest.raises(ValueError, match="mask must be a pytree of bools"):
        bad.update(grads, bad.init(params), params)


def test_schedule_matches_lambda_lr():
    """learning_rate as a schedule is LambdaLR's lr: update n uses schedule(n - 1)."""
    torch = reference("torch")
    transformers = reference("transformers")
    schedule = lambda count: 0.1 * jnp.minimum(1.0, (count + 1) / 4)
    f = lambda step: min(1.0, (step + 1) / 4)
    x = np.linspace(-1, 1, 6, dtype=np.float32)
    tp = torch.nn.Parameter(torch.tensor(x))
    topt = transformers.AdamW([tp], lr=0.1, weight_decay=0.01, no_deprecation_warning=True)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, f)
    opt = funcopt.adamw(schedule, weight_decay=0.01)
    p = jnp.asarray(x)
    state = opt.init(p)
    for k in range(8):
        g = np.cos(np.arange(6) + k).astype(np.float32)
        tp.grad = torch.tensor(g)
        topt.step()
        sched.step()
        updates, state = opt.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_allclose(np.asarray(p), as_np(tp), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(learning_rate=-1.0), "learning_rate=-1.0 is invalid"),
    (dict(b1=1.0), r"b1=1.0 is invalid: it must be in \[0.0, 1.0\)"),
    (dict(b2=-0.1), "b2=-0.1 is invalid"),
    (dict(eps=-1e-8), "eps=-1e-08 is invalid"),
    (dict(weight_decay=-0.1), "silently ignores"),
    (dict(learning_rate=float("nan")), "learning_rate=nan"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        funcopt.adamw(**kwargs)


def test_type_errors_and_missing_params():
    with pytest.raises(TypeError, match="correct_bias must be a bool"):
        funcopt.adamw(correct_bias=1)
    with pytest.raises(TypeError, match="learning_rate"):
        funcopt.adamw(learning_rate="0.1")
    opt = funcopt.adamw(weight_decay=0.1)
    with pytest.raises(ValueError, match="needs the current parameters"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))


def test_state_layout():
    params = {"a": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.ones(4)}
    state = funcopt.adamw().init(params)
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    assert state.exp_avg["a"].dtype == jnp.bfloat16 and state.exp_avg_sq["b"].shape == (4,)
    assert jax.tree.structure(state.step) == jax.tree.structure(params)


def test_shapes_cover_issue():
    assert {len(s) for s in SHAPES} == {0, 1, 2, 3, 4}
