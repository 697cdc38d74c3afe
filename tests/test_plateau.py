"""reduce_on_plateau against torch.optim.lr_scheduler.ReduceLROnPlateau: every mode,
threshold mode, cooldown, min_lr and eps, on random metric sequences; jit, chains, errors."""

import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference
from hypothesis import given, settings
from hypothesis import strategies as st

import funcopt
from funcopt import ReduceOnPlateauState, reduce_on_plateau

PARAMS = {"w": jnp.zeros(3)}
GRADS = {"w": jnp.array([1.0, -2.0, 0.5])}


def run_torch(metrics, base_lr, **kwargs):
    """lr / base_lr and the scheduler's attributes after each ``step(metric)``."""
    torch = reference("torch")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
    rows = []
    for metric in metrics:
        scheduler.step(float(metric))
        rows.append((optimizer.param_groups[0]["lr"] / base_lr, scheduler.best,
                     scheduler.num_bad_epochs, scheduler.cooldown_counter,
                     scheduler.last_epoch))
    return [np.array(column) for column in zip(*rows, strict=True)]


def run_funcopt(metrics, base_lr, jit=False, **kwargs):
    """The states after each update, checking that the updates are the gradients times the
    scale."""
    tx = reduce_on_plateau(**kwargs, base_learning_rate=base_lr)
    update = jax.jit(tx.update) if jit else tx.update
    state, states = tx.init(PARAMS), []
    for metric in metrics:
        updates, state = update(GRADS, state, PARAMS, value=np.float32(metric))
        np.testing.assert_array_equal(updates["w"], state.scale * GRADS["w"])
        states.append(state)
    return jax.tree.map(lambda *xs: np.stack(xs), *states)


def random_metrics(rng, n=120):
    """A noisy, mostly flat sequence with plateaus (repeats), on a grid of 1/64 so that no
    comparison sits on a float32-vs-float64 rounding tie."""
    walk = np.cumsum(rng.choice([-2, -1, 0, 0, 0, 0, 1, 2], size=n)) + rng.integers(50, 200)
    return np.float32(walk / 64.0)


COMBINATIONS = list(itertools.product(
    ["min", "max"], ["rel", "abs"], [0, 3], [0.0, "some"], [1e-8, "large"],
))


@pytest.mark.parametrize(("mode", "threshold_mode", "cooldown", "min_lr", "eps"), COMBINATIONS)
def test_against_torch(mode, threshold_mode, cooldown, min_lr, eps):
    rng = np.random.default_rng(zlib.crc32(repr((mode, threshold_mode, cooldown, min_lr,
                                                 eps)).encode()))
    base_lr = float(10 ** rng.uniform(-5, 0))
    kwargs = {
        "mode": mode, "threshold_mode": threshold_mode, "cooldown": cooldown,
        "factor": float(rng.choice([0.1, 0.5, 0.77])),
        "patience": int(rng.integers(0, 5)),
        "threshold": float(rng.choice([1e-4, 0.0123])) if threshold_mode == "rel"
        else float(rng.choice([0.0, 0.0101, 0.05])),
        "min_lr": base_lr * float(rng.choice([0.003, 0.04])) if min_lr == "some" else min_lr,
        "eps": base_lr * 0.00937 if eps == "large" else eps,
    }
    metrics = random_metrics(rng)
    if mode == "max":  # mirrored, still positive (rel thresholds act on the magnitude)
        metrics = np.float32(10.0) - metrics
    scale, best, bad, cooldown_counter, last_epoch = run_torch(metrics, base_lr, **kwargs)
    states = run_funcopt(metrics, base_lr, jit=cooldown == 3, **kwargs)
    assert scale.min() < 1.0  # the sequence did cause reductions
    np.testing.assert_allclose(states.scale, scale, rtol=6e-8)  # correctly rounded
    np.testing.assert_array_equal(states.best, np.float32(best))
    np.testing.assert_array_equal(states.num_bad_epochs, bad)
    np.testing.assert_array_equal(states.cooldown_counter, cooldown_counter)
    np.testing.assert_array_equal(states.last_epoch, last_epoch)


@settings(max_examples=12, deadline=None)
@given(
    metrics=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    patience=st.integers(0, 4),
    cooldown=st.integers(0, 3),
    factor=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    min_lr=st.sampled_from([0.0, 0.01, 0.3]),
    eps=st.sampled_from([0.0, 1e-8, 0.05]),
)
def test_against_torch_property(metrics, mode, threshold_mode, patience, cooldown, factor,
                                min_lr, eps):
    kwargs = {"mode": mode, "threshold_mode": threshold_mode, "patience": patience,
              "cooldown": cooldown, "factor": factor, "min_lr": min_lr, "eps": eps,
              "threshold": 1e-4 if threshold_mode == "rel" else 0.25}
    scale, best, bad, cooldown_counter, _ = run_torch(metrics, 1.0, **kwargs)
    states = run_funcopt(metrics, 1.0, **kwargs)
    np.testing.assert_allclose(states.scale, scale, rtol=6e-8)  # correctly rounded
    np.testing.assert_array_equal(states.best, np.float32(best))
    np.testing.assert_array_equal(states.num_bad_epochs, bad)
    np.testing.assert_array_equal(states.cooldown_counter, cooldown_counter)


def test_eps_skips_small_reductions_like_torch():
    """torch: with lr 1e-5 and eps 1e-8, 1e-8 -> 1e-9 is a change of 9e-9 <= eps: skipped."""
    metrics = np.ones(12, np.float32)
    scale, *_ = run_torch(metrics, 1e-5, patience=0)
    states = run_funcopt(metrics, 1e-5, patience=0)
    np.testing.assert_allclose(states.scale, scale, rtol=6e-8)  # correctly rounded
    assert float(states.scale[-1]) == pytest.approx(1e-3)  # 1e-5 -> 1e-8, then no further


def test_differs_from_optax_contrib_by_one_evaluation():
    """optax.contrib.reduce_on_plateau reduces when the bad count reaches patience."""
    metrics = [1.0] * 6
    ours = run_funcopt(np.float32(metrics), 1.0, factor=0.5, patience=2, threshold=0.0)
    contrib = optax.contrib.reduce_on_plateau(factor=0.5, patience=2, rtol=0.0, atol=1e-9)
    state, optax_scales, update = contrib.init(PARAMS), [], jax.jit(contrib.update)
    for metric in metrics:
        _, state = update(GRADS, state, value=metric)
        optax_scales.append(float(state.scale))
    np.testing.assert_array_equal(ours.scale, [1, 1, 1, 0.5, 0.5, 0.5])
    assert optax_scales == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_in_a_chain_under_jit():
    lr = 1e-2
    tx = optax.chain(funcopt.adamw(lr), reduce_on_plateau(factor=0.5, patience=0,
                                                           base_learning_rate=lr))
    alone = funcopt.adamw(lr)
    state, alone_state = tx.init(PARAMS), alone.init(PARAMS)
    update = jax.jit(tx.update)
    for loss, expected_scale in ((1.0, 1.0), (2.0, 0.5), (0.5, 0.5), (0.5, 0.25)):
        updates, state = update(GRADS, state, PARAMS, value=jnp.float32(loss))
        plain, alone_state = alone.update(GRADS, alone_state, PARAMS)
        assert isinstance(state[1], ReduceOnPlateauState)
        assert float(state[1].scale) == expected_scale
        np.testing.assert_array_equal(updates["w"], plain["w"] * expected_scale)


def test_state_and_dtypes():
    tx = reduce_on_plateau(mode="max")
    state = tx.init({"a": jnp.zeros(2, jnp.bfloat16)})
    assert state.best == -jnp.inf and state.scale.dtype == jnp.float32
    updates, state = tx.update({"a": jnp.ones(2, jnp.bfloat16)}, state, value=jnp.array([3.0]))
    assert updates["a"].dtype == jnp.bfloat16 and state.best == 3.0
    assert state.last_epoch == 1 and state.num_bad_epochs == 0
    with jax.enable_x64(True):
        tx = reduce_on_plateau()
        assert tx.init(PARAMS).best.dtype == jnp.float64  # torch's float64 comparisons


def test_value_is_required():
    tx = reduce_on_plateau()
    with pytest.raises(TypeError, match="value"):
        tx.update(GRADS, tx.init(PARAMS))
    with pytest.raises(ValueError, match=r"value must be a scalar"):
        tx.update(GRADS, tx.init(PARAMS), value=jnp.ones(3))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"mode": "maximum"}, ValueError, r"mode='maximum' is invalid: it must be one of"),
    ({"threshold_mode": "relative"}, ValueError, r"threshold_mode='relative' is invalid"),
    ({"factor": 1.0}, ValueError, r"factor=1.0 is invalid: it must be in \[0.0, 1.0\)"),
    ({"factor": -0.5}, ValueError, r"factor=-0.5"),
    ({"patience": -1}, ValueError, r"patience=-1"),
    ({"patience": 2.5}, TypeError, r"patience must be an integer"),
    ({"cooldown": -2}, ValueError, r"cooldown=-2"),
    ({"threshold": -1e-4}, ValueError, r"threshold=-0.0001"),
    ({"min_lr": -1.0}, ValueError, r"min_lr=-1.0"),
    ({"min_lr": [0.0, 0.1]}, TypeError, r"min_lr"),
    ({"eps": float("nan")}, ValueError, r"eps=nan"),
    ({"base_learning_rate": 0.0}, ValueError, r"base_learning_rate=0.0 is invalid: it must be > 0"),
])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        reduce_on_plateau(**kwargs)


def test_torch_rejects_what_we_reject():
    torch = reference("torch")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for kwargs in ({"mode": "maximum"}, {"threshold_mode": "relative"}, {"factor": 1.0}):
        with pytest.raises(ValueError):
            torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
        with pytest.raises(ValueError):
            reduce_on_plateau(**kwargs)
