"""funcopt's 8-bit optimizers as JAX transformations: jit and donation, fixed dtypes, lax.scan,
inject_hyperparams, memory, orbax checkpoints, 8 simulated devices, bad arguments.

Their numbers are checked against bitsandbytes in ``tests/trainer5/test_bnb8bit.py``.
"""

import inspect
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import funcopt
from funcopt import _quantize

EIGHT_BIT = {
    "adamw_8bit": lambda **kw: funcopt.adamw_8bit(1e-2, weight_decay=0.1, **kw),
    "lion_8bit": lambda **kw: funcopt.lion_8bit(1e-3, weight_decay=0.1, **kw),
    "ademamix_8bit": lambda **kw: funcopt.ademamix_8bit(1e-2, t_alpha=3, t_beta3=4, **kw),
    "rmsprop_8bit": lambda **kw: funcopt.rmsprop_8bit(1e-2, weight_decay=0.1, **kw),
}
# An aligned 8-bit leaf, a flat-blocked one (last block short), a small 32-bit one.
SHAPES = {"w": (8, 512), "odd": (3, 1400), "b": (7,)}


def params_like(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()}


def grads_at(params, k):
    return jax.tree.map(lambda p: jnp.sin(p * (k + 1.0)).astype(p.dtype), params)


def types(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


@pytest.mark.parametrize("name", EIGHT_BIT)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_jit_donation_keeps_state_types(name, dtype):
    opt = EIGHT_BIT[name]()
    params = params_like(dtype)
    state = opt.init(params)
    assert state.state1["w"].dtype == jnp.uint8 and state.state1["b"].dtype == jnp.float32
    lead = (2,) if name == "ademamix_8bit" else ()  # both EMAs in state1
    assert state.absmax1["w"].shape == (*lead, 8, 2)  # (8, 512): aligned, 2 blocks a row
    assert state.absmax1["odd"].shape == (*lead, 17)  # 4200 elements: 17 flat blocks
    assert state.absmax1["b"] is None  # a small leaf: float32 state, no absmax
    before = types(state)

    def step(params, state, k):
        updates, state = opt.update(grads_at(params, k), state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, 0.0).compile()
    for k in range(3):  # one executable: the types cannot drift
        params, state = compiled(params, state, jnp.float32(k))
    assert types(state) == before
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    assert int(state.count) == 3 and int(state.step["w"]) == 3
    assert np.any(np.asarray(state.state1["w"]) != 0)


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_lax_scan_equals_the_step_loop(name):
    opt = EIGHT_BIT[name]()
    params = params_like()

    def step(carry, k):
        params, state = carry
        updates, state = opt.update(grads_at(params, k), state, params)
        return (optax.apply_updates(params, updates), state), None

    scanned, _ = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(5.0)))(
        (params, opt.init(params)))
    looped = (params, opt.init(params))
    one = jax.jit(lambda c, k: step(c, k)[0])
    for k in range(5):
        looped = one(looped, jnp.float32(k))
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(looped), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["adamw_8bit", "lion_8bit"])
def test_inject_hyperparams(name):
    # The learning rate injected (traced); the betas static, as the docs advise for parity
    # (traced betas are float32 and 1 - b is formed in float32), min_8bit_size static as
    # the state's layout needs.
    function = getattr(funcopt, name)
    static = ("b1", "b2", "eps", "weight_decay", "min_8bit_size")
    static = [a for a in static if a in inspect.signature(function).parameters]
    opt = optax.inject_hyperparams(function, static_args=static)(learning_rate=1e-3)
    plain = function(learning_rate=1e-3)
    params = ref_params = params_like()
    state, ref_state = opt.init(params), plain.init(params)
    for k in range(3):
        updates, state = jax.jit(opt.update)(grads_at(params, k), state, params)
        params = optax.apply_updates(params, updates)
        ref_updates, ref_state = jax.jit(plain.update)(grads_at(ref_params, k), ref_state,
                                                       ref_params)
        ref_params = optax.apply_updates(ref_params, ref_updates)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            b = np.asarray(b)
            assert np.max(np.abs(np.asarray(a) - b)) <= 1e-6 * np.max(np.abs(b))
    state.hyperparams["learning_rate"] = jnp.float32(0.0)  # a live change takes effect
    updates, _ = opt.update(grads_at(params, 4), state, params)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))


def bytes_per_parameter(opt, n):
    state = jax.eval_shape(opt.init, {"w": jax.ShapeDtypeStruct((n // 4096, 4096), jnp.float32)})
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / n


def test_state_bytes_per_parameter():
    n = 1 << 24
    figures = {name: bytes_per_parameter(getattr(funcopt, name)(), n)
               for name in ("adamw_8bit", "lion_8bit", "ademamix_8bit", "rmsprop_8bit",
                            "adamw")}
    print("\nstate bytes per parameter, 16M-element leaf:", figures)
    assert figures["adamw_8bit"] <= 2.1
    assert figures["lion_8bit"] <= 1.1
    assert figures["adamw"] >= 8.0


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_orbax_roundtrip_resumes_bit_identically(tmp_path, name):
    opt = EIGHT_BIT[name]()

    @jax.jit
    def step(params, state, k):
        updates, state = opt.update(grads_at(params, k), state, params)
        return optax.apply_updates(params, updates), state

    params, state = params_like(), opt.init(params_like())
    for k in range(3):
        params, state = step(params, state, jnp.float32(k))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params,
                                                              "opt_state": state})
    restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    assert types(restored["opt_state"]) == types(state)
    resumed, uninterrupted = (restored["params"], restored["opt_state"]), (params, state)
    for k in range(3, 6):
        resumed = step(*resumed, jnp.float32(k))
        uninterrupted = step(*uninterrupted, jnp.float32(k))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mask_keeps_a_leaf_from_decaying():
    params = params_like()
    g = grads_at(params, 0)
    masked = funcopt.adamw_8bit(1e-2, weight_decay=0.5, mask={"w": False, "odd": True,
                                                                "b": True})
    plain = funcopt.adamw_8bit(1e-2, weight_decay=0.0)
    u_masked, _ = masked.update(g, masked.init(params), params)
    u_plain, _ = plain.update(g, plain.init(params), params)
    np.testing.assert_array_equal(np.asarray(u_masked["w"]), np.asarray(u_plain["w"]))
    assert not np.array_equal(np.asarray(u_masked["odd"]), np.asarray(u_plain["odd"]))


def test_quantizer_tables_agree_with_the_thresholds():
    # The fma-free code search (bin estimate, then one threshold comparison) gives
    # the code the 255 thresholds give, at every bin start and one ulp either side.
    for signed in (True, False):
        starts = _quantize.bin_starts()[1:]
        v = np.concatenate([starts, np.nextafter(starts, -2), np.nextafter(starts, 2), [-1, 1]])
        v = np.clip(v, -1, 1).astype(np.float32)
        codes = np.asarray(jax.jit(_quantize._codes, static_argnums=1)(jnp.asarray(v), signed))
        want = np.searchsorted(_quantize.thresholds(signed)[1:], v, side="right")
        np.testing.assert_array_equal(codes, want)


@pytest.mark.parametrize("function,kwargs,arg", [
    (funcopt.adamw_8bit, {"b1": 1.0}, "b1"),
    (funcopt.adamw_8bit, {"b2": -0.1}, "b2"),
    (funcopt.adamw_8bit, {"eps": -1e-8}, "eps"),
    (funcopt.adamw_8bit, {"learning_rate": -1e-3}, "learning_rate"),
    (funcopt.adamw_8bit, {"weight_decay": -0.1}, "weight_decay"),
    (funcopt.adamw_8bit, {"min_8bit_size": -1}, "min_8bit_size"),
    (funcopt.adamw_8bit, {"min_8bit_size": 4096.5}, "min_8bit_size"),
    (funcopt.adamw_bnb, {"b1": 1.5}, "b1"),
    (funcopt.lion_8bit, {"b2": 1.0}, "b2"),
    (funcopt.lion_8bit, {"weight_decay": -1.0}, "weight_decay"),
    (funcopt.ademamix_8bit, {"b3": 1.0}, "b3"),
    (funcopt.ademamix_8bit, {"t_alpha": -5}, "t_alpha"),
    (funcopt.rmsprop_8bit, {"alpha": 0.0}, "alpha"),
    (funcopt.rmsprop_8bit, {"centered": True}, "centered"),
    (funcopt.rmsprop_8bit, {"momentum": 0.9}, "momentum"),
])
def test_bad_arguments_raise_at_construction(function, kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        function(**kwargs)


SCRIPT = pathlib.Path(__file__).with_name("_bnb8bit_sharding_check.py")


@pytest.fixture(scope="module")
def sharding_facts():
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUMPY_RANK_PROMOTION="raise")
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         env=env, cwd=SCRIPT.parent, timeout=900)
    assert run.returncode == 0, f"{SCRIPT.name} failed:\n{run.stderr[-4000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_sharded_states_follow_the_params_and_gather_nothing(sharding_facts):
    cases = [k for k in sharding_facts if k.startswith("aligned/")]
    assert len(cases) == 6
    for case in cases:
        f = sharding_facts[case]
        assert f["helper"] == f["expected"], case  # codes as the param, absmax on its axes
        assert f["after"] == f["expected"], case
        assert all(n == 0 for n in f["collectives"].values()), (case, f["collectives"])
        assert f["bitwise_equal"], (case, f["max_abs_diff"])
        assert f["dtypes"] == ["float32", "int32", "uint8"], case


def test_blocks_that_straddle_shards_stay_exact(sharding_facts):
    for flavour in ("explicit", "auto"):
        f = sharding_facts[f"straddling/{flavour}/adamw_8bit"]
        assert f["bitwise_equal"], f["max_abs_diff"]
        print(f"\nstraddling blocks ({flavour}): collectives {f['collectives']}")
