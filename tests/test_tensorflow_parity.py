"""funcopt.adam_weight_decay and funcopt.create_optimizer against the live TF reference.

The same gradients go to transformers' Keras optimizer (eager tf_keras, as transformers runs
it) and to the jitted funcopt transformation for 25 steps, on parameters of every rank
named like a BERT's variables; parameters and the three moments are compared.
Worst deviations: ``pytest tests/test_tensorflow_parity.py -q -rP`` prints them per case.
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

STEPS = 25
# Keras variable names (without ":0") and shapes: every rank, names that the usual
# include/exclude regexes ("bias", "LayerNorm") select or not.
VARIABLES = {
    "encoder/scale": (),
    "encoder/dense/bias": (6,),
    "encoder/dense/kernel": (5, 6),
    "encoder/LayerNorm/gamma": (6,),
    "encoder/LayerNorm/beta": (2, 3, 4),
    "embeddings/conv/kernel": (2, 2, 3, 5),
}
# Per-step gradient scales: small, ordinary and large (so that every clip engages sometimes).
SCALES = [0.01, 1.0, 30.0, 0.3, 3.0]
# Tolerance, relative to max(1, |value|): float32 round-off, accumulated over the steps.
TOL = 1e-6


@pytest.fixture(scope="module")
def ref():
    reference("tensorflow")
    reference("tf_keras")
    transformers = reference("transformers")
    import funcopt.tensorflow as ftf

    return transformers, ftf


def nested(flat):
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``: the JAX pytree whose paths are the TF names."""
    out = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def problem(seed=0):
    rng = np.random.default_rng(seed)
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in VARIABLES.items()}
    grads = [{n: (SCALES[t % len(SCALES)] * rng.standard_normal(s)).astype(np.float32)
              for n, s in VARIABLES.items()} for t in range(STEPS)]
    return init, grads


def run_both(ref, keras_opt, transformation, seed=0):
    """Runs both; returns ``(keras variables, funcopt params, funcopt state, keras state)``
    with the funcopt side as pytrees keyed like :func:`nested`."""
    import tensorflow as tf

    _, ftf = ref
    init, grads = problem(seed)
    variables = [tf.Variable(x, name=n) for n, x in init.items()]
    params = nested({n: jnp.asarray(x) for n, x in init.items()})
    state = transformation.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads:
        keras_opt.apply_gradients(
            [(tf.constant(g[n]), v) for n, v in zip(init, variables, strict=True)])
        params, state = step(params, state, nested({n: jnp.asarray(x) for n, x in g.items()}))
    order = jax.tree.leaves(nested({n: i for i, n in enumerate(init)}))
    ordered_vars = [variables[i] for i in order]
    keras_state = ftf.state_from_keras(keras_opt, ordered_vars, params)
    return ordered_vars, params, state, keras_state


def deviations(ordered_vars, params, state, keras_state):
    """Worst |funcopt - keras| / max(1, |keras|) for params, m, v (and vhat)."""

    def worst(ours, theirs):
        return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))
                                / np.maximum(1.0, np.abs(np.asarray(b)))))
                   for a, b in zip(ours, theirs, strict=True))

    out = {"params": worst(jax.tree.leaves(params), [v.numpy() for v in ordered_vars])}
    for field in ("m", "v", "vhat"):
        if getattr(keras_state, field) is not None:
            out[field] = worst(jax.tree.leaves(getattr(state, field)),
                               jax.tree.leaves(getattr(keras_state, field)))
    assert int(state.iterations) == int(keras_state.iterations) == STEPS
    return out


def check(name, devs):
    print(f"{name:40s} " + "  ".join(f"{k}={v:.2e}" for k, v in devs.items()))
    assert max(devs.values()) <= TOL, (name, devs)


AWD_CASES = {
    "defaults": {},
    "decay_all": dict(weight_decay_rate=0.1),
    "exclude": dict(weight_decay_rate=0.1, exclude_from_weight_decay=["bias", "LayerNorm"]),
    "include_wins": dict(weight_decay_rate=0.1, include_in_weight_decay=["LayerNorm"],
                         exclude_from_weight_decay=["bias", "LayerNorm"]),
    "amsgrad": dict(amsgrad=True, weight_decay_rate=0.05, exclude_from_weight_decay=["bias"]),
    "betas_eps": dict(beta_1=0.8, beta_2=0.99, epsilon=1e-5, weight_decay_rate=0.01),
    "clipvalue": dict(clipvalue=0.05, weight_decay_rate=0.01),
    "clipnorm": dict(clipnorm=0.1, weight_decay_rate=0.01),
    "global_clipnorm": dict(global_clipnorm=0.2, weight_decay_rate=0.01),
    "clipvalue_clipnorm": dict(clipvalue=0.5, clipnorm=0.3, amsgrad=True),
    "clipvalue_global_clipnorm": dict(clipvalue=0.5, global_clipnorm=1.0),
}
FUNCOPT_NAMES = {"beta_1": "b1", "beta_2": "b2", "epsilon": "eps"}


@pytest.mark.parametrize("case", list(AWD_CASES))
def test_adam_weight_decay(ref, case):
    transformers, _ = ref
    kwargs = AWD_CASES[case]
    lr = 0.01
    keras_opt = transformers.AdamWeightDecay(learning_rate=lr, **kwargs)
    transformation = funcopt.adam_weight_decay(
        lr, **{FUNCOPT_NAMES.get(k, k): v for k, v in kwargs.items()})
    check(f"AdamWeightDecay {case}", deviations(*run_both(ref, keras_opt, transformation)))


def test_adam_weight_decay_schedule(ref):
    """A funcopt schedule on both sides (the Keras side through learning_rate_schedule)."""
    transformers, ftf = ref
    schedule = funcopt.get_cosine_schedule_with_warmup(0.02, num_warmup_steps=5,
                                                       num_training_steps=STEPS)
    keras_opt = transformers.AdamWeightDecay(
        learning_rate=ftf.learning_rate_schedule(schedule), weight_decay_rate=0.1,
        exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"], amsgrad=True)
    transformation = funcopt.adam_weight_decay(
        schedule, weight_decay_rate=0.1, amsgrad=True,
        exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"])
    check("AdamWeightDecay cosine schedule", deviations(*run_both(ref, keras_opt,
                                                                  transformation)))


CREATE_CASES = {
    "adam_warmup": dict(init_lr=0.02, num_train_steps=20, num_warmup_steps=5),
    "adam_nowarmup_power2": dict(init_lr=0.02, num_train_steps=20, num_warmup_steps=0,
                                 min_lr_ratio=0.1, power=2.0),
    "adam_clipnorm": dict(init_lr=0.02, num_train_steps=20, num_warmup_steps=3,
                          adam_clipnorm=0.2, adam_beta2=0.98),
    "adam_global_clipnorm": dict(init_lr=0.02, num_train_steps=20, num_warmup_steps=3,
                                 adam_global_clipnorm=0.5, adam_epsilon=1e-6),
    "awd": dict(init_lr=0.02, num_train_steps=20, num_warmup_steps=4, weight_decay_rate=0.1,
                min_lr_ratio=0.2, power=0.5),
    "awd_include_clipnorm": dict(init_lr=0.02, num_train_steps=30, num_warmup_steps=2,
                                 weight_decay_rate=0.05, include_in_weight_decay=["LayerNorm"],
                                 adam_clipnorm=0.3),
    "awd_global_clipnorm": dict(init_lr=0.02, num_train_steps=30, num_warmup_steps=2,
                                weight_decay_rate=0.05, adam_global_clipnorm=0.4),
}


@pytest.mark.parametrize("case", list(CREATE_CASES))
def test_create_optimizer(ref, case):
    transformers, _ = ref
    kwargs = CREATE_CASES[case]
    keras_opt, keras_schedule = transformers.create_optimizer(**kwargs)
    transformation, schedule = funcopt.create_optimizer(**kwargs)
    lrs = [float(keras_schedule(i)) for i in range(STEPS + 2)]
    ours = [float(schedule(i)) for i in range(STEPS + 2)]
    np.testing.assert_allclose(ours, lrs, rtol=1e-6, atol=1e-9)
    check(f"create_optimizer {case}", deviations(*run_both(ref, keras_opt, transformation)))
