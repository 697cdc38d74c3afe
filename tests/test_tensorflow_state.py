"""funcopt.tensorflow.state_from_keras / state_to_keras against the live Keras optimizers.

A run converted half-way and continued in the other framework ends where the uninterrupted
Keras run ends (float32 round-off: XLA's fused multiply-adds, ~1e-7 relative).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference

import funcopt

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

HALF = 6
SHAPES = {"dense/kernel": (3, 4), "dense/bias": (4,), "LayerNorm/gamma": (4,),
          "conv/kernel": (2, 2, 3), "scale": ()}
TOL = 1e-6  # relative to max(1, |value|)
EXCLUDE = ["bias", "LayerNorm"]


@pytest.fixture(scope="module")
def ref():
    tf = reference("tensorflow")
    tf_keras = reference("tf_keras")
    transformers = reference("transformers")
    import funcopt.tensorflow as ftf

    return tf, tf_keras, transformers, ftf


def problem():
    rng = np.random.default_rng(1)
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads = [{n: (3.0 ** (t % 3 - 1) * rng.standard_normal(s)).astype(np.float32)
              for n, s in SHAPES.items()} for t in range(2 * HALF)]
    return init, grads


def keras_vars(tf, values):
    return [tf.Variable(x, name=n) for n, x in values.items()]


def keras_steps(tf, opt, variables, grads):
    for g in grads:
        opt.apply_gradients([(tf.constant(g[v.name[:-2]]), v) for v in variables])


def jax_params(variables):
    """The funcopt pytree for Keras variables: keyed by the variable names (leaf order =
    sorted names), so include/exclude regexes see what AdamWeightDecay sees."""
    return {v.name: jnp.asarray(v.numpy()) for v in variables}


def in_leaf_order(variables):
    return sorted(variables, key=lambda v: v.name)


def jax_steps(transformation, params, state, grads):
    @jax.jit
    def step(params, state, grads):
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads:
        params, state = step(params, state, {f"{n}:0": jnp.asarray(x) for n, x in g.items()})
    return params, state


def assert_close(actual, desired):
    """Asserts the relative deviation is below TOL; returns the worst one."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    deviation = np.abs(actual - desired) / np.maximum(1.0, np.abs(desired))
    np.testing.assert_array_less(deviation, TOL)
    return float(np.max(deviation, initial=0.0))


def assert_same_run(variables, state, keras_vars_, keras_state):
    """funcopt params/state == Keras variables/state (both in leaf order)."""
    assert int(state.iterations) == int(keras_state.iterations)
    worst = {"params": max(assert_close(v, ref_v)
                           for v, ref_v in zip(variables, keras_vars_, strict=True))}
    for field in ("m", "v", "vhat"):
        ours, theirs = getattr(state, field), getattr(keras_state, field)
        assert (ours is None) == (theirs is None), field
        if ours is not None:
            worst[field] = max(assert_close(a, b) for a, b in zip(
                jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True))
    print("worst relative deviation:", {k: f"{v:.1e}" for k, v in worst.items()})


def awd_pair(transformers):
    keras = transformers.AdamWeightDecay(
        learning_rate=0.02, weight_decay_rate=0.1, exclude_from_weight_decay=EXCLUDE,
        amsgrad=True)
    ours = funcopt.adam_weight_decay(0.02, weight_decay_rate=0.1, amsgrad=True,
                                     exclude_from_weight_decay=EXCLUDE)
    return keras, ours


def adam_pair(transformers):
    kwargs = dict(init_lr=0.02, num_train_steps=2 * HALF, num_warmup_steps=3,
                  min_lr_ratio=0.1, adam_clipnorm=1.0)
    keras, _ = transformers.create_optimizer(**kwargs)
    ours, _ = funcopt.create_optimizer(**kwargs)
    return keras, ours


PAIRS = {"adam_weight_decay_amsgrad_exclude": awd_pair, "create_optimizer_adam": adam_pair}


@pytest.fixture(scope="module")
def uninterrupted(ref):
    """The reference: the whole run in Keras, per optimizer pair."""
    tf, _, transformers, ftf = ref
    init, grads = problem()
    out = {}
    for name, pair in PAIRS.items():
        keras_opt, _ = pair(transformers)
        variables = keras_vars(tf, init)
        keras_steps(tf, keras_opt, variables, grads)
        ordered = in_leaf_order(variables)
        out[name] = ordered, ftf.state_from_keras(keras_opt, ordered, jax_params(ordered))
    return out


@pytest.mark.parametrize("pair", list(PAIRS))
def test_keras_then_funcopt(ref, uninterrupted, pair):
    tf, _, transformers, ftf = ref
    init, grads = problem()
    keras_opt, transformation = PAIRS[pair](transformers)
    variables = keras_vars(tf, init)
    keras_steps(tf, keras_opt, variables, grads[:HALF])
    ordered = in_leaf_order(variables)
    params = jax_params(ordered)
    state = ftf.state_from_keras(keras_opt, ordered, params)
    assert int(state.iterations) == HALF
    params, state = jax_steps(transformation, params, state, grads[HALF:])
    ref_vars, ref_state = uninterrupted[pair]
    assert_same_run(jax.tree.leaves(params), state, [v.numpy() for v in ref_vars], ref_state)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_funcopt_then_keras(ref, uninterrupted, pair):
    tf, _, transformers, ftf = ref
    init, grads = problem()
    keras_opt, transformation = PAIRS[pair](transformers)  # a fresh Keras optimizer
    params = {f"{n}:0": jnp.asarray(x) for n, x in init.items()}
    params, state = jax_steps(transformation, params, transformation.init(params), grads[:HALF])
    variables = [tf.Variable(np.asarray(x), name=n[:-2]) for n, x in params.items()]
    ftf.state_to_keras(state, keras_opt, variables)  # creates the slots
    snapshot = jax.tree.map(np.array, state)
    keras_steps(tf, keras_opt, variables, grads[HALF:])
    jax.tree.map(np.testing.assert_array_equal, state, snapshot)  # Keras never writes into it
    ref_vars, ref_state = uninterrupted[pair]
    final = ftf.state_from_keras(keras_opt, variables, jax_params(variables))
    assert_same_run([v.numpy() for v in variables], final, [v.numpy() for v in ref_vars],
                    ref_state)


def test_round_trip_into_built_optimizer(ref):
    """state_to_keras into an optimizer that already has slots overwrites them."""
    tf, tf_keras, _, ftf = ref
    variables = [tf.Variable(np.ones((2, 2), np.float32), name="w")]
    keras_opt = tf_keras.optimizers.Adam(0.1, amsgrad=True)
    keras_opt.apply_gradients([(tf.ones((2, 2)), variables[0])])
    params = {"w": jnp.ones((2, 2))}
    transformation = funcopt.adam_weight_decay(0.1, amsgrad=True)
    state = transformation.init(params)._replace(iterations=jnp.asarray(7, jnp.int32))
    state = state._replace(m={"w": jnp.full((2, 2), 0.5)})
    ftf.state_to_keras(state, keras_opt, variables)
    back = ftf.state_from_keras(keras_opt, variables, params)
    assert int(back.iterations) == 7 and int(keras_opt.iterations) == 7
    np.testing.assert_array_equal(back.m["w"], 0.5)
    np.testing.assert_array_equal(back.v["w"], 0.0)
    np.testing.assert_array_equal(back.vhat["w"], 0.0)
    keras_opt.apply_gradients([(tf.ones((2, 2)), variables[0])])  # Keras moves on ...
    np.testing.assert_array_equal(back.m["w"], 0.5)  # ... the zero-copy snapshot does not
    assert not np.array_equal(keras_opt._momentums[0].numpy(), back.m["w"])


# --- errors -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stepped(ref):
    """A legacy and a new Keras Adam, each applied once to two variables."""
    tf, tf_keras, transformers, _ = ref
    variables = [tf.Variable(np.ones((2, 3), np.float32), name="k"),
                 tf.Variable(np.zeros(3, np.float32), name="b")]
    out = {}
    for name, opt in (("legacy", transformers.AdamWeightDecay(0.1)),
                      ("new", tf_keras.optimizers.Adam(0.1))):
        opt.apply_gradients([(tf.ones_like(v), v) for v in variables])
        out[name] = opt
    return variables, out


@pytest.mark.parametrize("kind", ["legacy", "new"])
def test_from_keras_mismatch(stepped, ref, kind):
    _, _, _, ftf = ref
    variables, opts = stepped
    opt = opts[kind]
    good = {"a": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    assert int(ftf.state_from_keras(opt, variables, good).iterations) == 1
    with pytest.raises(ValueError, match="params has 1 leaves but variables has 2"):
        ftf.state_from_keras(opt, variables, {"a": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"variables\[0\] \('k:0'\) has shape \(2, 3\) .*\(3, 2"):
        ftf.state_from_keras(opt, variables, {"a": jnp.ones((3, 2)), "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"variables\[1\] \('b:0'\) has dtype float32 .* int32"):
        ftf.state_from_keras(opt, variables, {"a": jnp.ones((2, 3)), "b": jnp.zeros(3, int)})
    with pytest.raises(TypeError, match="list .* of tf.Variable"):
        ftf.state_from_keras(opt, variables[0], good)
    with pytest.raises(TypeError, match=r"variables\[1\] must be a tf.Variable"):
        ftf.state_from_keras(opt, [variables[0], np.zeros(3)], good)


def test_from_keras_without_slots(ref):
    tf, tf_keras, transformers, ftf = ref
    variables = [tf.Variable(np.ones(3, np.float32), name="w")]
    params = [jnp.ones(3)]
    with pytest.raises(ValueError, match="no 'm' slot for variable 'w:0'.*not been applied"):
        ftf.state_from_keras(transformers.AdamWeightDecay(), variables, params)
    with pytest.raises(ValueError, match="no 'm' slot.*not built yet"):
        ftf.state_from_keras(tf_keras.optimizers.Adam(), variables, params)
    legacy = tf_keras.optimizers.legacy.Adam(amsgrad=True)
    legacy.apply_gradients([(tf.ones(3), variables[0])])
    other = [tf.Variable(np.ones(3, np.float32), name="other")]
    with pytest.raises(ValueError, match="no 'm' slot for variable 'other:0'"):
        ftf.state_from_keras(legacy, other, params)
    new = tf_keras.optimizers.Adam()
    new.build(variables)
    with pytest.raises(ValueError, match="built for other variables than 'other:0'"):
        ftf.state_from_keras(new, other, params)


def test_unsupported_optimizers(ref):
    tf, tf_keras, transformers, ftf = ref
    variables = [tf.Variable(np.ones(3, np.float32), name="w")]
    state = funcopt.adam_weight_decay().init([jnp.ones(3)])
    for opt in (tf_keras.optimizers.SGD(), tf_keras.optimizers.legacy.SGD(),
                tf_keras.optimizers.AdamW(), object()):
        with pytest.raises(TypeError, match="Unsupported optimizer class .*AdamWeightDecay"):
            ftf.state_from_keras(opt, variables, [jnp.ones(3)])
        with pytest.raises(TypeError, match="Unsupported optimizer class"):
            ftf.state_to_keras(state, opt, variables)


def test_to_keras_errors(ref):
    tf, tf_keras, transformers, ftf = ref
    variables = [tf.Variable(np.ones(3, np.float32), name="w")]
    plain = funcopt.adam_weight_decay().init([jnp.ones(3)])
    ams = funcopt.adam_weight_decay(amsgrad=True).init([jnp.ones(3)])
    with pytest.raises(TypeError, match="must be a funcopt.AdamWeightDecayState"):
        ftf.state_to_keras(optax.adam(1e-3).init([jnp.ones(3)]), transformers.AdamWeightDecay(),
                           variables)
    with pytest.raises(ValueError, match="uses amsgrad but the state has no vhat"):
        ftf.state_to_keras(plain, transformers.AdamWeightDecay(amsgrad=True), variables)
    with pytest.raises(ValueError, match="has a vhat .* does not use amsgrad"):
        ftf.state_to_keras(ams, tf_keras.optimizers.Adam(), variables)
    with pytest.raises(ValueError, match="state.m has 2 leaves but variables has 1"):
        two = funcopt.adam_weight_decay().init([jnp.ones(3), jnp.ones(3)])
        ftf.state_to_keras(two, transformers.AdamWeightDecay(), variables)
    with pytest.raises(ValueError, match="has shape \\(3,\\) .* has shape \\(4,\\)"):
        wrong = funcopt.adam_weight_decay().init([jnp.ones(4)])
        ftf.state_to_keras(wrong, tf_keras.optimizers.Adam(), variables)
    with pytest.raises(ValueError, match="has dtype float32 .* bfloat16"):
        bf16 = funcopt.adam_weight_decay().init([jnp.ones(3, jnp.bfloat16)])
        ftf.state_to_keras(bf16, transformers.AdamWeightDecay(), variables)
    built = tf_keras.optimizers.Adam()
    built.build([tf.Variable(np.ones(3, np.float32), name="other")])
    with pytest.raises(ValueError, match="built for other variables than 'w:0'"):
        ftf.state_to_keras(plain, built, variables)
