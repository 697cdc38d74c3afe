"""funcopt.tensorflow.learning_rate_schedule: values, graph mode, serialization, errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference

import funcopt

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

STEPS = np.arange(0, 40)


@pytest.fixture(scope="module")
def ref():
    tf = reference("tensorflow")
    tf_keras = reference("tf_keras")
    import funcopt.tensorflow as ftf

    return tf, tf_keras, ftf


def schedules():
    lr = 2e-3
    common = dict(num_warmup_steps=5, num_training_steps=30)
    return {
        "constant": funcopt.get_constant_schedule(lr),
        "constant_warmup": funcopt.get_constant_schedule_with_warmup(lr, 5),
        "linear": funcopt.get_linear_schedule_with_warmup(lr, **common),
        "cosine": funcopt.get_cosine_schedule_with_warmup(lr, **common, num_cycles=1.5),
        "hard_restarts": funcopt.get_cosine_with_hard_restarts_schedule_with_warmup(
            lr, **common, num_cycles=3),
        "polynomial": funcopt.get_polynomial_decay_schedule_with_warmup(
            lr, **common, lr_end=1e-5, power=2.0),
        "inverse_sqrt": funcopt.get_inverse_sqrt_schedule(lr, 5, timescale=7),
        "cosine_min_lr": funcopt.get_cosine_with_min_lr_schedule_with_warmup(
            lr, **common, min_lr_rate=0.1),
        "wsd": funcopt.get_wsd_schedule(lr, 5, 10, num_training_steps=30, decay_type="1-sqrt",
                                        min_lr_ratio=0.1),
        "create_optimizer": funcopt.create_optimizer(lr, 30, 5, min_lr_ratio=0.1,
                                                     power=2.0)[1],
        "create_optimizer_nowarmup": funcopt.create_optimizer(lr, 30, 0)[1],
    }


def funcopt_values(schedule):
    """The funcopt schedule's values, called on each step."""
    return np.array([np.float32(schedule(jnp.int32(s))) for s in STEPS])


def jitted_values(schedule):
    """The values under an enclosing jit, as a funcopt optimizer computes them."""
    one = jax.jit(lambda s: jnp.asarray(schedule(s), jnp.float32))
    return np.array([one(jnp.int32(s)) for s in STEPS])


@pytest.mark.parametrize("name", list(schedules()))
def test_values_at_every_step(ref, name):
    tf, tf_keras, ftf = ref
    schedule = schedules()[name]
    expected = funcopt_values(schedule)
    keras_schedule = ftf.learning_rate_schedule(schedule)
    assert isinstance(keras_schedule, tf_keras.optimizers.schedules.LearningRateSchedule)
    eager = np.array([keras_schedule(tf.constant(s, tf.int64)).numpy() for s in STEPS])
    np.testing.assert_array_equal(eager, expected)
    # Under an enclosing jit XLA may specialize the constants (pow(x, 2.0) -> x * x): 1 ulp.
    np.testing.assert_array_max_ulp(eager, jitted_values(schedule), maxulp=1)

    @tf.function
    def graph(steps):  # the legacy optimizers pass float32 steps, the new ones int64
        return tf.map_fn(lambda s: keras_schedule(tf.cast(s, tf.float32)), steps,
                         fn_output_signature=tf.float32)

    np.testing.assert_array_equal(graph(tf.constant(STEPS, tf.int64)).numpy(), expected)
    # Keras-way serialization: from_config, and by name through the registry.
    clone = type(keras_schedule).from_config(keras_schedule.get_config())
    config = tf_keras.optimizers.schedules.serialize(keras_schedule)
    by_name = tf_keras.optimizers.schedules.deserialize(config)
    for other in (clone, by_name):
        np.testing.assert_array_equal([other(int(s)).numpy() for s in STEPS], expected)


def test_with_keras_optimizers(ref):
    """Keras optimizers with the schedule follow it; their config round-trips it."""
    tf, tf_keras, ftf = ref
    transformers = reference("transformers")
    schedule = funcopt.get_cosine_schedule_with_warmup(0.1, 2, 6)
    keras_schedule = ftf.learning_rate_schedule(schedule, name="cosine")
    expected = funcopt_values(schedule)
    adam = tf_keras.optimizers.Adam(learning_rate=keras_schedule)
    var = tf.Variable([1.0, 2.0])
    for step in range(4):
        adam.apply_gradients([(tf.constant([1.0, -1.0]), var)])
        assert adam.learning_rate.numpy() == expected[step]
    awd = transformers.AdamWeightDecay(learning_rate=keras_schedule, weight_decay_rate=0.1)
    clone = transformers.AdamWeightDecay.from_config(awd.get_config())
    lr = clone._get_hyper("learning_rate")
    assert lr.get_config() == keras_schedule.get_config()
    assert lr(3).numpy() == expected[3]
    new_clone = tf_keras.optimizers.Adam.from_config(adam.get_config())
    assert new_clone._learning_rate(5).numpy() == expected[5]


def test_any_traceable_schedule(ref):
    """optax schedules and lambdas run; only their config is impossible."""
    tf, _, ftf = ref
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 3, 10)
    keras_schedule = ftf.learning_rate_schedule(schedule)
    np.testing.assert_array_max_ulp(  # XLA-compiled as a whole, like under jit
        np.array([keras_schedule(s).numpy() for s in range(12)]),
        np.array([jax.jit(schedule)(jnp.int32(s)) for s in range(12)]), maxulp=1)
    with pytest.raises(ValueError, match="cannot be serialized.*not a funcopt schedule"):
        keras_schedule.get_config()
    lam = ftf.learning_rate_schedule(lambda s: 0.5 * s)
    assert lam(4).numpy() == 2.0
    with pytest.raises(ValueError, match="cannot be serialized"):
        lam.get_config()


# Configs as funcopt saved them before its schedule modules were split by family.
OLD_CONFIGS = {
    "linear": {"function": "funcopt._schedules:_linear", "args": [], "keywords": {
        "learning_rate": 2e-3, "num_warmup_steps": 5, "num_training_steps": 30}},
    "hard_restarts": {"function": "funcopt._schedules:_hard_restarts", "args": [], "keywords": {
        "learning_rate": 2e-3, "num_warmup_steps": 5, "num_training_steps": 30,
        "num_cycles": 3}},
    "create_optimizer": {"function": "funcopt._tf_schedules:_warmup", "args": [], "keywords": {
        "initial_learning_rate": 2e-3, "warmup_steps": 5, "power": 1.0,
        "decay_schedule_fn": {"schedule": {
            "function": "funcopt._tf_schedules:_polynomial_decay", "args": [], "keywords": {
                "initial_learning_rate": 2e-3, "decay_steps": 25,
                "end_learning_rate": 2e-3 * 0.1, "power": 2.0}}}}},
}


@pytest.mark.parametrize("name", list(OLD_CONFIGS))
def test_configs_saved_before_the_module_split_rebuild(ref, name):
    _, _, ftf = ref
    cls = type(ftf.learning_rate_schedule(funcopt.get_constant_schedule(1.0)))
    rebuilt = cls.from_config({"schedule": OLD_CONFIGS[name]})
    expected = funcopt_values(schedules()[name])
    np.testing.assert_array_equal(np.array([rebuilt(s) for s in STEPS], np.float32), expected)


def test_errors(ref):
    _, _, ftf = ref
    with pytest.raises(TypeError, match="must be a funcopt schedule"):
        ftf.learning_rate_schedule(0.1)

    def python_branch(step):
        return 1.0 if step < 3 else 0.5

    with pytest.raises(TypeError, match="jit-traceable .* tracing .* failed"):
        ftf.learning_rate_schedule(python_branch)
    with pytest.raises(TypeError, match="scalar learning rate, got shape \\(2,\\)"):
        ftf.learning_rate_schedule(lambda s: jnp.ones(2) * s)
    cls = type(ftf.learning_rate_schedule(funcopt.get_constant_schedule(1.0)))
    with pytest.raises(ValueError, match="Refusing to rebuild a schedule from 'os'"):
        cls.from_config({"schedule": {"function": "os:system", "args": ["true"],
                                      "keywords": {}}})
    with pytest.raises(ValueError, match="Not a funcopt schedule description"):
        cls.from_config({"schedule": {"function": "no-colon"}})
    with pytest.raises(ValueError, match="is not a function of funcopt"):
        cls.from_config({"schedule": {"function": "funcopt:nothing_here", "args": [],
                                      "keywords": {}}})
    with pytest.raises(ValueError, match="expected a 'schedule' entry"):
        cls.from_config({"name": "x"})
