"""Optimizer states survive an orbax save/restore and resume bit-identically."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import funcopt

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
          "b": jnp.linspace(0.5, -0.5, 4, dtype=jnp.float32)}

OPTIMIZERS = {
    "adamw": lambda: funcopt.adamw(0.01, weight_decay=0.1),
    "adafactor": lambda: funcopt.adafactor(beta1=0.9),
    "adam_weight_decay": lambda: funcopt.adam_weight_decay(0.01, amsgrad=True,
                                                            weight_decay_rate=0.1),
}


def steps(opt, params, state, start, stop):
    @jax.jit
    def step(params, state, k):
        grads = jax.tree.map(lambda p: jnp.sin(p * (k + 1.0)), params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for k in range(start, stop):
        params, state = step(params, state, jnp.float32(k))
    return params, state


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_orbax_roundtrip_resumes_bit_identically(tmp_path, name):
    opt = OPTIMIZERS[name]()
    params, state = steps(opt, PARAMS, opt.init(PARAMS), 0, 4)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {"params": params, "opt_state": opt.init(PARAMS)})
    restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state)
    uninterrupted, _ = steps(opt, params, state, 4, 8)
    resumed, _ = steps(opt, restored["params"], restored["opt_state"], 4, 8)
    for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
