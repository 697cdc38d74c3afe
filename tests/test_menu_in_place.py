"""Under jit with the params and the state donated, the menu's optimizers overwrite their
states in place: the compiled step holds no copy of a state (funcopt._in_place).

XLA:CPU has no multi-output fusion, so a step is one loop per output; where the parameter's
loop reads a state's old value while the state's own loop overwrites the donated buffer,
XLA copies the state first (``optax.lion`` and ``optax.contrib``'s schedule-free steps do).
Measured on the compiled executable: its temporary memory and its copy instructions.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcopt
from funcopt._in_place import after

SHAPE = (256, 512)


def compiled(tx, dtype):
    params = {"w": jnp.ones(SHAPE, dtype), "b": jnp.ones((7,), dtype)}

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile()


def big_copies(c) -> int:
    shape = ",".join(map(str, SHAPE))
    return len(re.findall(rf"= \w+\[{shape}\]\S* copy\(", c.as_text()))


def temp_bytes_per_param(c) -> float:
    return c.memory_analysis().temp_size_in_bytes / np.prod(SHAPE)


CASES = {
    "lion": lambda: funcopt.lion(1e-3),
    "lion decay": lambda: funcopt.lion(optax.linear_schedule(1e-3, 0.0, 10), weight_decay=0.1),
    "ademamix": lambda: funcopt.ademamix(t_alpha=10, t_beta3=10),
    "rmsprop_bnb": lambda: funcopt.rmsprop_bnb(weight_decay=0.1),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_no_copy_of_a_state(name, dtype):
    c = compiled(CASES[name](), dtype)
    assert big_copies(c) == 0
    # lion: its direction, written once in bf16; nothing for the others
    assert temp_bytes_per_param(c) <= (2.01 if name.startswith("lion") else 0.01)


def test_optax_lion_copies_its_momentum():
    """The baseline this is measured against (if optax stops copying, the comparison in
    benchmarks/menu_speed.py changes)."""
    c = compiled(optax.lion(1e-3), jnp.float32)
    assert big_copies(c) == 1 and temp_bytes_per_param(c) >= 4


@pytest.mark.parametrize("decay", [0.0, 0.01])
@pytest.mark.parametrize("make", [funcopt.schedule_free_adamw, funcopt.schedule_free_sgd,
                                  funcopt.schedule_free_radam])
def test_schedule_free_copies_z_only(make, decay):
    """y' needs the old z, which z's own loop overwrites: one copy of z (as optax.contrib's
    step), and none of the params, with decay too (z' reads y; y' waits for it)."""
    c = compiled(make(weight_decay=decay), jnp.float32)
    assert big_copies(c) == 1
    assert temp_bytes_per_param(c) <= 4.01


def test_after_changes_no_value():
    x = jnp.array([1.0, -0.0, jnp.inf, jnp.nan, 3.0])
    dep = jnp.array([jnp.nan, 0.0, -jnp.inf, 1.0, jnp.nan], jnp.bfloat16)
    out = jax.jit(after)(x, dep)
    assert np.array_equal(np.asarray(out).view(np.uint32)[[0, 1, 2, 4]],
                          np.asarray(x).view(np.uint32)[[0, 1, 2, 4]])
    assert np.isnan(out[3])
