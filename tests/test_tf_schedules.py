"""TF-side schedules: ``warmup`` (transformers' ``WarmUp``) and ``polynomial_decay`` (Keras'
``PolynomialDecay``), against the golden lists and live against transformers/tf_keras."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import golden, reference

import funcopt
from funcopt import warmup
from funcopt._warmup_decay import polynomial_decay

GOLDEN_TF = golden("golden_tf")
ULP = 1.2e-7  # one float32 ulp, relative


def create_optimizer_schedule(init_lr, num_train_steps, num_warmup_steps, min_lr_ratio=0.0,
                              power=1.0):
    """What ``funcopt.create_optimizer`` (and transformers' TF ``create_optimizer``) builds."""
    decay = polynomial_decay(init_lr, num_train_steps - num_warmup_steps,
                             init_lr * min_lr_ratio, power)
    return warmup(init_lr, decay, num_warmup_steps) if num_warmup_steps else decay


GOLDEN_CASES = [
    ("create_optimizer_sched_1.0_10_3_min0.1", (1.0, 10, 3, 0.1)),
    ("create_optimizer_power2_sched_2.0_10_4", (2.0, 10, 4, 0.0, 2.0)),
    ("create_optimizer_nowarmup_sched", (1.0, 10, 0)),
]


@pytest.mark.parametrize(("key", "args"), GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_golden_create_optimizer_schedules(key, args):
    ref = np.float32(GOLDEN_TF[key])
    schedule = create_optimizer_schedule(*args)
    steps = jnp.arange(len(ref))
    np.testing.assert_array_equal(schedule(steps), ref)  # bit for bit
    np.testing.assert_array_equal(jax.vmap(schedule)(steps), ref)
    np.testing.assert_array_equal(schedule(steps.astype(jnp.float32)), ref)  # legacy Keras
    # Inside an outer jit XLA may fuse the decay's multiply-add: at most an ulp apart.
    np.testing.assert_allclose(jax.jit(schedule)(steps), ref, rtol=ULP, atol=0)


def test_golden_warmup_power2_const_decay():
    ref = np.float32(GOLDEN_TF["warmup_power2_const_decay"])
    schedule = warmup(1.0, funcopt.get_constant_schedule(1.0), 4, power=2.0)
    np.testing.assert_array_equal(schedule(jnp.arange(6)), ref)
    np.testing.assert_array_equal(jax.jit(schedule)(jnp.arange(6)), ref)


def test_decay_sees_the_shifted_step():
    seen = []

    def decay(step):
        seen.append(step)
        return jnp.zeros_like(step, jnp.float32)

    warmup(1.0, decay, 3)(jnp.arange(5))
    np.testing.assert_array_equal(seen[0], np.arange(5) - 3)
    assert seen[0].dtype == jnp.int32  # an integer step stays an integer, as in TF


def test_warmup_with_any_schedule_and_zero_warmup():
    import optax

    cosine = optax.cosine_decay_schedule(1.0, 10)
    np.testing.assert_array_equal(warmup(1.0, cosine, 0)(jnp.arange(5)), cosine(jnp.arange(5)))
    schedule = warmup(0.5, funcopt.get_linear_schedule_with_warmup(0.5, 0, 4), 2)
    np.testing.assert_allclose(schedule(jnp.arange(7)), [0, 0.25, 0.5, 0.375, 0.25, 0.125, 0])


# ------------------------------------------------------------------------------------------
# Live: transformers' TF WarmUp around tf_keras' PolynomialDecay, random arguments.


def tf_reference():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = reference("tensorflow")
    return tf, reference("transformers.optimization_tf")


def test_live_against_transformers_warmup_and_keras_polynomial_decay():
    tf, hf = tf_reference()
    rng = np.random.default_rng(0)
    worst = 0
    for case in range(6):
        init = float(10 ** rng.uniform(-6, 1))
        n, w = int(rng.integers(1, 60)), int(rng.integers(0, 30))
        n += w  # decay_steps = n - w >= 1
        ratio, power = float(rng.uniform(0, 1)), float(rng.choice([1.0, 2.0, rng.uniform(0, 3)]))
        warm_power = float(rng.choice([1.0, rng.uniform(0.5, 3)]))
        if case < 2:  # create_optimizer's own case: linear warmup, then power 1 or 2
            power, warm_power = float(case + 1), 1.0
        poly = hf.schedules.PolynomialDecay(initial_learning_rate=init, decay_steps=n - w,
                                            end_learning_rate=init * ratio, power=power)
        ours_poly = polynomial_decay(init, n - w, init * ratio, power)
        ref_schedule = hf.WarmUp(initial_learning_rate=init, decay_schedule_fn=poly,
                                 warmup_steps=w, power=warm_power)
        ours_schedule = warmup(init, ours_poly, w, power=warm_power)
        steps = np.arange(n + 5)
        for dtype, tf_dtype in ((np.int32, tf.int64), (np.float32, tf.float32)):
            ref = np.array([ref_schedule(tf.constant(s, tf_dtype)).numpy() for s in steps])
            ours = np.asarray(ours_schedule(jnp.asarray(steps, dtype)))
            if power == 1.0 and warm_power == 1.0:
                np.testing.assert_array_equal(ours, ref)  # no pow involved: bit for bit
            np.testing.assert_allclose(ours, ref, rtol=4 * ULP, atol=0)
            worst = max(worst, float(np.max(np.abs(ours - ref) / init)))
    print(f"\nTF WarmUp + PolynomialDecay: worst |funcopt - TF| / init_lr = {worst:.2e}")


# ------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: polynomial_decay(1.0, 0), ValueError,
     r"decay_steps=0 is invalid: it must be > 0 \(Keras' PolynomialDecay gives NaN for 0"),
    (lambda: polynomial_decay(1.0, -3), ValueError, r"decay_steps=-3"),
    (lambda: polynomial_decay(float("nan"), 3), ValueError, r"initial_learning_rate=nan"),
    (lambda: polynomial_decay(1.0, 3, power=None), TypeError, r"power"),
    (lambda: warmup(1.0, 0.5, 3), TypeError, r"decay_schedule_fn must be a schedule"),
    (lambda: warmup(1.0, polynomial_decay(1.0, 3), -1), ValueError, r"warmup_steps=-1"),
    (lambda: warmup(-1.0, polynomial_decay(1.0, 3), 2), ValueError,
     r"initial_learning_rate=-1.0"),
    (lambda: warmup(1.0, polynomial_decay(1.0, 3), 2)("3"), TypeError, r"step must be"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
