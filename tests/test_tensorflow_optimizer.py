"""funcopt.tensorflow.Optimizer: a funcopt transformation as a tf_keras optimizer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference

import funcopt

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

TOL = 1e-6  # relative to max(1, |value|): float32 round-off (XLA fused multiply-adds)
EXCLUDE = ["bias", "LayerNorm"]


@pytest.fixture(scope="module")
def ref():
    tf = reference("tensorflow")
    tf_keras = reference("tf_keras")
    transformers = reference("transformers")
    import funcopt.tensorflow as ftf

    return tf, tf_keras, transformers, ftf


def assert_close(actual, desired):
    """Asserts the relative deviation is below TOL; returns the worst one."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    deviation = np.abs(actual - desired) / np.maximum(1.0, np.abs(desired))
    np.testing.assert_array_less(deviation, TOL)
    return float(np.max(deviation, initial=0.0))


def make_vars(tf, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"dense/kernel": (3, 4), "dense/bias": (4,), "LayerNorm/gamma": (4,),
              "emb/table": (2, 3, 2), "scale": ()}
    return [tf.Variable(rng.standard_normal(s).astype(np.float32), name=n)
            for n, s in shapes.items()]


def grads_for(tf, variables, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[tf.constant(rng.standard_normal(v.shape).astype(np.float32)) for v in variables]
            for _ in range(steps)]


@pytest.mark.parametrize("graph", [False, True])
def test_equals_adam_weight_decay(ref, graph):
    """Optimizer(adam_weight_decay) on TF variables == transformers.AdamWeightDecay, eagerly
    and inside tf.function; the variable names drive the same exclusions."""
    tf, _, transformers, ftf = ref
    kwargs = dict(weight_decay_rate=0.1, amsgrad=True)
    schedule = funcopt.get_linear_schedule_with_warmup(0.05, 3, 12)
    keras_opt = transformers.AdamWeightDecay(
        learning_rate=ftf.learning_rate_schedule(schedule), exclude_from_weight_decay=EXCLUDE,
        clipnorm=1.0, **kwargs)
    ours = ftf.Optimizer(funcopt.adam_weight_decay(
        schedule, exclude_from_weight_decay=EXCLUDE, clipnorm=1.0, **kwargs))
    ref_vars, our_vars = make_vars(tf), make_vars(tf)

    def applier(opt, variables):
        def apply(grads):
            opt.apply_gradients(zip(grads, variables, strict=True))

        return tf.function(apply) if graph else apply

    apply_ref, apply_ours = applier(keras_opt, ref_vars), applier(ours, our_vars)
    for grads in grads_for(tf, ref_vars, 12):
        apply_ref(grads)
        apply_ours(grads)
    assert int(ours.iterations) == int(keras_opt.iterations) == 12
    worst = max(assert_close(a.numpy(), b.numpy()) for a, b in zip(our_vars, ref_vars,
                                                                    strict=True))
    print(f"worst relative deviation of the variables: {worst:.1e}")
    in_leaf_order = sorted(ref_vars, key=lambda v: v.name)  # ours.state.m is keyed by names
    keras_state = ftf.state_from_keras(keras_opt, in_leaf_order, ours.state.m)
    for field in ("m", "v", "vhat"):
        for a, b in zip(*(list(getattr(s, field).values()) for s in (ours.state, keras_state)),
                        strict=True):
            assert_close(a, b)


def model(tf_keras):
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((5,))
    x = tf_keras.layers.Dense(8, activation="tanh", name="dense")(inputs)
    x = tf_keras.layers.LayerNormalization(name="LayerNorm")(x)
    outputs = tf_keras.layers.Dense(1, name="head",
                                    kernel_constraint=tf_keras.constraints.MaxNorm(1.5))(x)
    return tf_keras.Model(inputs, outputs)


@pytest.mark.parametrize("fit_kwargs", [{}, dict(run_eagerly=True), dict(steps_per_execution=3)])
def test_model_fit(ref, fit_kwargs):
    """model.fit ends with the same weights with AdamWeightDecay or Optimizer(...)."""
    tf, tf_keras, transformers, ftf = ref
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 5)).astype(np.float32)
    y = np.sin(x.sum(1, keepdims=True)).astype(np.float32)
    kwargs = dict(weight_decay_rate=0.05)
    weights = []
    for opt in (transformers.AdamWeightDecay(0.01, exclude_from_weight_decay=EXCLUDE, **kwargs),
                ftf.Optimizer(funcopt.adam_weight_decay(0.01, exclude_from_weight_decay=EXCLUDE,
                                                        **kwargs))):
        m = model(tf_keras)
        m.compile(optimizer=opt, loss="mse", **fit_kwargs)
        history = m.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        weights.append((m.get_weights(), history.history["loss"], int(opt.iterations)))
    (ref_w, ref_loss, ref_it), (our_w, our_loss, our_it) = weights
    assert our_it == ref_it == 18
    np.testing.assert_allclose(our_loss, ref_loss, rtol=1e-5)
    worst = max(assert_close(a, b) for a, b in zip(our_w, ref_w, strict=True))
    print(f"worst relative deviation of the weights: {worst:.1e}")


def test_any_transformation_and_state(ref):
    """Any optax transformation; the state is the funcopt pytree keyed by variable names."""
    tf, _, _, ftf = ref
    w = tf.Variable([1.0, -2.0], name="w")
    opt = ftf.Optimizer(optax.chain(optax.clip(0.5), optax.sgd(0.1, momentum=0.9)))
    assert opt.transformation is not None
    for _ in range(2):
        opt.apply_gradients([(tf.constant([1.0, 1.0]), w)])
    np.testing.assert_allclose(w.numpy(), [1.0 - 0.05 - 0.095, -2.0 - 0.05 - 0.095], rtol=1e-6)
    trace = opt.state[1][0].trace
    np.testing.assert_allclose(trace["w:0"], [0.95, 0.95], rtol=1e-6)
    assert len(opt.variables) == 1 + len(jax.tree.leaves(opt.state))  # iterations + state
    opt.state = jax.tree.map(jnp.zeros_like, opt.state)
    np.testing.assert_array_equal(opt.state[1][0].trace["w:0"], [0.0, 0.0])


def test_checkpoint_round_trip(ref, tmp_path):
    """The state lives in tf.Variables, so tf.train.Checkpoint saves and restores it."""
    tf, _, _, ftf = ref
    w = tf.Variable([1.0, 2.0], name="w")
    opt = ftf.Optimizer(funcopt.adam_weight_decay(0.1))
    opt.apply_gradients([(tf.constant([1.0, -1.0]), w)])
    path = tf.train.Checkpoint(w=w, opt=opt).save(str(tmp_path / "ckpt"))
    saved_m = np.asarray(opt.state.m["w:0"])
    opt.apply_gradients([(tf.constant([3.0, 3.0]), w)])
    tf.train.Checkpoint(w=w, opt=opt).restore(path)
    assert int(opt.iterations) == 1
    np.testing.assert_array_equal(opt.state.m["w:0"], saved_m)


def test_save_weights_resume(ref, tmp_path):
    """model.save_weights / load_weights into a fresh model and Optimizer resumes exactly
    (the state variables are restored when the new optimizer creates them)."""
    _, tf_keras, _, ftf = ref
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = x.sum(1, keepdims=True)

    def compiled():
        m = model(tf_keras)
        m.compile(ftf.Optimizer(funcopt.adam_weight_decay(0.05, weight_decay_rate=0.1)), "mse")
        return m

    first = compiled()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.save_weights(str(tmp_path / "weights"))
    second = compiled()
    second.load_weights(str(tmp_path / "weights"))
    for m in (first, second):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(second.optimizer.iterations) == int(first.optimizer.iterations) == 4
    for a, b in zip(second.get_weights(), first.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_errors(ref):
    tf, tf_keras, _, ftf = ref
    with pytest.raises(TypeError, match="must be an optax GradientTransformation"):
        ftf.Optimizer(lambda g: g)
    a, b = tf.Variable([1.0], name="a"), tf.Variable([2.0], name="b")
    opt = ftf.Optimizer(funcopt.adam_weight_decay(0.1))
    with pytest.raises(ValueError, match=r"No gradient for \['b:0'\]"):
        opt.apply_gradients([(tf.constant([1.0]), a), (None, b)])
    opt.apply_gradients([(tf.constant([1.0]), a), (tf.constant([1.0]), b)])
    with pytest.raises(ValueError, match="got 1 variables but this optimizer was built for 2"):
        opt.apply_gradients([(tf.constant([1.0]), a)])
    c = tf.Variable([3.0], name="c")
    with pytest.raises(ValueError, match="'c:0' is not one this optimizer was built for"):
        opt.apply_gradients([(tf.constant([1.0]), a), (tf.constant([1.0]), c)])
    with pytest.raises(AttributeError, match="no Keras learning rate"):
        opt.learning_rate  # noqa: B018
    with pytest.raises(AttributeError, match="no Keras learning rate"):
        opt.learning_rate = 0.1
    with pytest.raises(NotImplementedError, match="cannot be rebuilt from a config"):
        ftf.Optimizer.from_config(opt.get_config())
    with pytest.raises(ValueError, match="structure"):
        opt.state = opt.state.m
    with pytest.raises(ValueError, match="got int32"):
        opt.state = opt.state._replace(m={"a:0": jnp.ones(1, int), "b:0": jnp.ones(1)})
    dup = ftf.Optimizer(funcopt.adam_weight_decay(0.1))
    with pytest.raises(ValueError, match=r"share the names \['x:0'\]"):
        dup.build([tf.Variable([1.0], name="x"), tf.Variable([1.0], name="x")])
    with pytest.raises(ValueError, match="not built yet"):
        dup.state  # noqa: B018
