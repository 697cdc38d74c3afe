"""Gradient accumulation: the TF GradientAccumulator semantics (spec §9.2, golden, live) and
k-step accumulation trained side by side with transformers' AdamW + LambdaLR the Trainer's
way."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import golden, reference

import funcopt
from funcopt import (
    GradientAccumulatorState,
    accumulate,
    accumulator_init,
    accumulator_reset,
    gradient_accumulation,
)

GOLDEN = golden("golden_tf")["grad_accumulator"]

# ------------------------------------------------------------------------------------------
# TF GradientAccumulator semantics.


def test_hf_test_gradient_accumulator_and_golden():
    """transformers' testGradientAccumulator (spec §9.2), against golden_tf.json."""
    state = accumulator_init([jnp.zeros(2)])
    for g in ([1.0, 2.0], [-2.0, 1.0], [-1.0, 2.0]):
        state = accumulate(state, [jnp.array(g)])
    with pytest.raises(ValueError) as info:
        accumulate(state, [jnp.array([2.0]), jnp.array([1.0])])
    assert f"ValueError: {info.value}" == GOLDEN["err"]
    assert int(state.step) == GOLDEN["step"] == 3  # the failed call counted nothing
    assert len(state.gradients) == 1
    np.testing.assert_allclose(state.gradients[0], GOLDEN["grads"], atol=1e-2)
    np.testing.assert_array_equal(state.gradients[0], [-2.0, 5.0])
    state = accumulator_reset(state)
    assert int(state.step) == GOLDEN["step_after_reset"] == 0
    np.testing.assert_array_equal(state.gradients[0], GOLDEN["grads_after_reset"])


def test_golden_none_slots():
    state = accumulator_init([jnp.zeros(1), None])
    state = accumulate(state, [jnp.array([1.0]), None])
    state = accumulate(state, [jnp.array([2.0]), jnp.array([5.0])])  # dropped: None slot
    assert [None if g is None else np.asarray(g).tolist() for g in state.gradients] == GOLDEN[
        "with_none"]
    state = accumulate(state, [None, None])  # adds nothing, counts a step
    assert int(state.step) == 3 and state.gradients[0] == 3.0
    assert accumulator_reset(state).gradients[1] is None


def test_pytrees_dtypes_and_jit():
    grads = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3, jnp.bfloat16)},
             "frozen": None}
    state = jax.jit(accumulator_init)(grads)
    step = jax.jit(accumulate)
    for _ in range(4):
        state = step(state, grads)
    assert isinstance(state, GradientAccumulatorState)
    assert state.step.dtype == jnp.int32 and int(state.step) == 4
    assert state.gradients["frozen"] is None
    assert state.gradients["dense"]["bias"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(state.gradients["dense"]["kernel"], 4.0)
    reset = jax.jit(accumulator_reset)(state)
    np.testing.assert_array_equal(reset.gradients["dense"]["kernel"], 0.0)


@pytest.mark.parametrize(("gradients", "match"), [
    ([jnp.ones(2)], r"^Expected 2 gradients, but got 1$"),
    ([jnp.ones(2), jnp.ones(2), jnp.ones(2)], r"^Expected 2 gradients, but got 3$"),
    ([jnp.ones(3), jnp.ones(2)], r"The gradient at \[0\] has shape \(3,\), but the "
                                 r"accumulated one has shape \(2,\)"),
    ([jnp.ones(2), {"a": jnp.ones(2)}], r"do not have the accumulator's structure"),
])
def test_errors_leave_the_state_alone(gradients, match):
    state = accumulate(accumulator_init([jnp.zeros(2), jnp.zeros(2)]),
                       [jnp.ones(2), jnp.ones(2)])
    with pytest.raises(ValueError, match=match):
        accumulate(state, gradients)
    assert int(state.step) == 1


def test_live_against_transformers_tf_gradient_accumulator():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = reference("tensorflow")
    hf = reference("transformers.optimization_tf")
    rng = np.random.default_rng(3)
    for _ in range(3):
        shapes = [(2, 3), (4,), (), (1, 2)]
        present = rng.random(len(shapes)) < 0.75
        theirs, ours = hf.GradientAccumulator(), None
        for call in range(4):
            arrays = [np.float32(rng.normal(size=s)) for s in shapes]
            given = [a if (p and rng.random() < 0.8) or call == 0 and p else None
                     for a, p in zip(arrays, present, strict=True)]
            theirs([None if g is None else tf.constant(g) for g in given])
            if ours is None:
                ours = accumulator_init([None if g is None else jnp.zeros_like(g)
                                         for g in given])
            ours = accumulate(ours, [None if g is None else jnp.asarray(g) for g in given])
            for mine, reference_sum in zip(ours.gradients, theirs.gradients, strict=True):
                assert (mine is None) == (reference_sum is None)
                if mine is not None:
                    np.testing.assert_array_equal(mine, reference_sum.numpy())
            assert int(ours.step) == int(theirs.step)
        with pytest.raises(ValueError) as their_error:
            theirs([tf.constant(0.0)])
        with pytest.raises(ValueError) as our_error:
            accumulate(ours, [jnp.zeros(())])
        assert str(our_error.value) == str(their_error.value)
        assert int(ours.step) == int(theirs.step)
        theirs.reset()
        ours = accumulator_reset(ours)
        assert int(ours.step) == int(theirs.step) == 0


# ------------------------------------------------------------------------------------------
# k-step accumulation (optax.MultiSteps) vs the Trainer.


def test_optimizer_and_schedule_advance_once_per_k():
    schedule = funcopt.get_linear_schedule_with_warmup(1.0, 1, 4)
    opt = gradient_accumulation(optax.sgd(schedule), steps=3)
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    moved = []
    for i in range(12):
        updates, state = update({"w": jnp.full(2, float(i))}, state, params)
        moved.append(float(updates["w"][0]))
        params = optax.apply_updates(params, updates)
    # Optimizer step n (n = 0, 1, ...) uses lr(n) on the mean of micro-batches 3n..3n+2.
    expected = [-float(schedule(n)) * (3 * n + 1) for n in range(4)]
    assert moved[0::3] == [0.0] * 4 and moved[1::3] == [0.0] * 4
    np.testing.assert_allclose(moved[2::3], expected, rtol=1e-6)
    assert int(state.mini_step) == 0 and int(state.gradient_step) == 4


def test_errors_of_gradient_accumulation():
    with pytest.raises(ValueError, match=r"steps=0 is invalid"):
        gradient_accumulation(optax.sgd(1.0), 0)
    with pytest.raises(TypeError, match=r"steps must be an integer"):
        gradient_accumulation(optax.sgd(1.0), 2.0)
    with pytest.raises(TypeError, match=r"use_grad_mean must be a bool"):
        gradient_accumulation(optax.sgd(1.0), 2, use_grad_mean=1)


def mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


def test_trains_like_the_trainer_with_transformers_adamw():
    """Same model, data and initial parameters; k micro-batches per optimizer step. torch:
    transformers.AdamW + get_linear_schedule_with_warmup, loss / k, backward k times, then
    optimizer.step(), scheduler.step(), zero_grad(). JAX: funcopt.adamw with funcopt's schedule
    under gradient_accumulation."""
    torch = reference("torch")
    hf = reference("transformers")
    k, num_steps, warmup_steps, lr = 4, 7, 2, 3e-2
    rng = np.random.default_rng(0)
    init = {"w1": rng.normal(size=(5, 8)) * 0.5, "b1": rng.normal(size=8) * 0.1,
            "w2": rng.normal(size=(8, 3)) * 0.5, "b2": np.zeros(3)}
    init = {name: np.float32(value) for name, value in init.items()}
    data = [(np.float32(rng.normal(size=(6, 5))), np.float32(rng.normal(size=(6, 3))))
            for _ in range(k * num_steps)]

    weights = {name: torch.nn.Parameter(torch.tensor(value)) for name, value in init.items()}
    optimizer = hf.AdamW(list(weights.values()), lr=lr, weight_decay=0.01,
                         no_deprecation_warning=True)
    scheduler = hf.get_linear_schedule_with_warmup(optimizer, warmup_steps, num_steps)
    for step in range(num_steps):
        for x, y in data[step * k:(step + 1) * k]:
            h = torch.tanh(torch.tensor(x) @ weights["w1"] + weights["b1"])
            out = h @ weights["w2"] + weights["b2"]
            loss = torch.mean((out - torch.tensor(y)) ** 2) / k
            loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    schedule = funcopt.get_linear_schedule_with_warmup(lr, warmup_steps, num_steps)
    opt = gradient_accumulation(funcopt.adamw(schedule, weight_decay=0.01), k)
    params = {name: jnp.asarray(value) for name, value in init.items()}
    state = opt.init(params)
    grad = jax.jit(jax.grad(lambda p, x, y: jnp.mean((mlp(p, x) - y) ** 2)))
    update = jax.jit(opt.update)
    for x, y in data:
        updates, state = update(grad(params, x, y), state, params)
        params = optax.apply_updates(params, updates)

    assert int(state.inner_opt_state.count) == num_steps  # the schedule's step
    moved = max(float(np.max(np.abs(init[n] - weights[n].detach().numpy()))) for n in init)
    assert moved > 0.1  # the comparison is not trivial
    for name, value in weights.items():
        np.testing.assert_allclose(params[name], value.detach().numpy(), rtol=0, atol=1e-6)
