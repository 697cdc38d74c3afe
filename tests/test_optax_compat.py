"""Every funcopt optimizer is a plain optax transformation: jit, chain, inject_hyperparams,
MultiSteps, masked; learning-rate changes never recompile."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compilations import compilations

import funcopt

PARAMS = {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
                    "bias": jnp.linspace(0.5, -0.5, 4)},
          "scale": jnp.array(0.7, jnp.float32)}

OPTIMIZERS = {
    "adamw": lambda lr: funcopt.adamw(lr, weight_decay=0.01),
    "adafactor": lambda lr: funcopt.adafactor(lr, relative_step=False, weight_decay=0.01),
    "adam_weight_decay": lambda lr: funcopt.adam_weight_decay(
        lr, weight_decay_rate=0.01, exclude_from_weight_decay=["bias"]),
}


def grads_at(k):
    return jax.tree.map(lambda p: jnp.cos(p * (k + 1)), PARAMS)


def run(opt, steps=5, jit=True):
    state = opt.init(PARAMS)
    params = PARAMS

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    for k in range(steps):
        params, state = step(params, state, grads_at(k))
    return params, state


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_jit_matches_eager(name):
    eager, _ = run(OPTIMIZERS[name](0.05), jit=False)
    jitted, _ = run(OPTIMIZERS[name](0.05), jit=True)
    for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_constant_schedule_equals_float(name):
    by_float, _ = run(OPTIMIZERS[name](0.05))
    by_schedule, _ = run(OPTIMIZERS[name](lambda count: jnp.float32(0.05)))
    assert_trees_equal(by_float, by_schedule)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inject_hyperparams_no_recompile(name):
    """inject_hyperparams works without static_args; a new lr value does not recompile."""
    opt = optax.inject_hyperparams(OPTIMIZERS[name])(lr=0.05)
    state = opt.init(PARAMS)

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = PARAMS
    with compilations() as compiled:
        for k, lr in enumerate([0.05, 0.01, 0.2, 0.0]):
            state.hyperparams["lr"] = jnp.asarray(lr, jnp.float32)
            params, state = step(params, state, grads_at(k))
    assert compiled.count("jit(step)") == 1
    plain, _ = run(OPTIMIZERS[name](0.05), steps=1)
    injected = optax.inject_hyperparams(OPTIMIZERS[name])(lr=0.05)
    one, _ = step(PARAMS, injected.init(PARAMS), grads_at(0))
    for x, y in zip(jax.tree.leaves(plain), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_schedule_no_recompile(name):
    opt = OPTIMIZERS[name](lambda count: 0.1 / (1.0 + count))
    state = opt.init(PARAMS)

    @jax.jit
    def step(params, state, grads):
        return opt.update(grads, state, params)

    with compilations() as compiled:
        for k in range(4):
            _, state = step(PARAMS, state, grads_at(k))
    assert compiled.count("jit(step)") == 1


def test_inject_hyperparams_all_numeric_args():
    """Every numeric hyperparameter may be injected (betas lose digits: see docstrings)."""
    opt = optax.inject_hyperparams(funcopt.adamw)(
        learning_rate=0.01, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1)
    state = opt.init(PARAMS)
    updates, _ = jax.jit(opt.update)(grads_at(0), state, PARAMS)
    reference_updates, _ = funcopt.adamw(0.01, 0.9, 0.99, 1e-6, 0.1).update(
        grads_at(0), funcopt.adamw().init(PARAMS), PARAMS)
    for x, y in zip(jax.tree.leaves(updates), jax.tree.leaves(reference_updates), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-8)
    ada = optax.inject_hyperparams(funcopt.adafactor)(
        learning_rate=0.01, relative_step=False, clip_threshold=1.0, decay_rate=-0.8,
        beta1=0.9, weight_decay=0.0)
    jax.jit(ada.update)(grads_at(0), ada.init(PARAMS), PARAMS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_chain_and_masked(name):
    chained = optax.chain(optax.clip_by_global_norm(1.0), OPTIMIZERS[name](0.05))
    run(chained)
    mask = {"dense": {"kernel": True, "bias": True}, "scale": False}
    frozen = optax.chain(optax.masked(OPTIMIZERS[name](0.05), mask),
                         optax.masked(optax.set_to_zero(), {"dense": {"kernel": False,
                                                                      "bias": False},
                                                            "scale": True}))
    params, _ = run(frozen)
    assert float(params["scale"]) == float(PARAMS["scale"])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_multisteps_steps_once_per_k(name):
    k = 3
    opt = optax.MultiSteps(OPTIMIZERS[name](0.05), every_k_schedule=k)
    state = opt.init(PARAMS)
    step = jax.jit(opt.update)
    params = PARAMS
    for i in range(2 * k):
        updates, state = step(grads_at(0), state, params)
        params = optax.apply_updates(params, updates)
        changed = not all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
        assert changed == ((i + 1) % k == 0)
    inner = state.inner_opt_state
    count = inner.iterations if name == "adam_weight_decay" else inner.count
    assert int(count) == 2


def test_state_is_a_pytree_of_arrays():
    for name, make in OPTIMIZERS.items():
        state = make(0.1).init(PARAMS)
        leaves = jax.tree.leaves(state)
        assert leaves and all(isinstance(x, jax.Array) for x in leaves), name
