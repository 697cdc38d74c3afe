"""funcopt.adam_weight_decay and create_optimizer without TF: kernel math, clipping, decisions.

The live comparison against transformers' TF classes is in test_tensorflow_parity.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcopt
from funcopt._keras_clipping import clip_by_global_norm, clip_by_norm


def numpy_legacy_adam(p, grads, lr, b1, b2, eps, wd, decays, amsgrad=False):
    """A float32 NumPy transcription of spec §7.3 (decay first, then the legacy kernel)."""
    f = np.float32
    p, m, v, vhat = p.astype(f), np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for i, g in enumerate(grads):
        k = f(i + 1)
        b1p, b2p = f(b1) ** k, f(b2) ** k
        alpha = f(lr) * np.sqrt(f(1) - b2p) / (f(1) - b1p)
        if decays:
            p = p - (f(lr) * p) * f(wd)
        m = m + (g - m) * (f(1) - f(b1))
        v = v + (g * g - v) * (f(1) - f(b2))
        vhat = np.maximum(vhat, v)
        p = p - (m * alpha) / (np.sqrt(vhat if amsgrad else v) + f(eps))
    return p


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decays", [False, True])
def test_matches_numpy_transcription(amsgrad, decays):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((4, 5)).astype(np.float32)
    grads = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(20)]
    opt = funcopt.adam_weight_decay(0.05, 0.9, 0.99, 1e-7, amsgrad, weight_decay_rate=0.1,
                                    exclude_from_weight_decay=[] if decays else ["w"])
    params = {"w": jnp.asarray(p0)}
    state = opt.init(params)
    step = jax.jit(opt.update)
    for g in grads:
        updates, state = step({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    expected = numpy_legacy_adam(p0, grads, 0.05, 0.9, 0.99, 1e-7, 0.1, decays, amsgrad)
    np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=2e-6, atol=2e-7)
    assert int(state.iterations) == 20 and (state.vhat is not None) == amsgrad


def test_decay_follows_names():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
              "LayerNorm": {"gamma": jnp.ones(2)}}
    grads = jax.tree.map(jnp.zeros_like, params)
    opt = funcopt.adam_weight_decay(0.1, weight_decay_rate=0.5,
                                    exclude_from_weight_decay=["bias", "LayerNorm"],
                                    include_in_weight_decay=["dense/bias"])
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["dense"]["bias"], -0.05, rtol=1e-6)
    np.testing.assert_array_equal(updates["LayerNorm"]["gamma"], 0.0)


def test_clipping_formulas_and_order():
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0, 0.0])}
    np.testing.assert_allclose(clip_by_norm(g, 1.0)["a"], [0.6, 0.8], rtol=1e-7)
    np.testing.assert_array_equal(clip_by_norm(g, 1.0)["b"], [0.0, 0.0])
    np.testing.assert_allclose(clip_by_global_norm(g, 2.5)["a"], [1.5, 2.0], rtol=1e-7)
    np.testing.assert_allclose(clip_by_global_norm(g, 10.0)["a"], [3.0, 4.0])
    assert np.isnan(clip_by_global_norm({"a": jnp.array([jnp.inf, 1.0])}, 1.0)["a"]).all()
    # clipvalue runs before clipnorm: (3, -4) clipped to [-1, 1] is (1, -1), then to norm 1
    # (1, -1) / sqrt(2); the other order would give (0.6, -0.8). The first moment shows it:
    # m = (1 - b1) * g = 0.1 * g.
    opt = funcopt.adam_weight_decay(1.0, clipvalue=1.0, clipnorm=1.0)
    _, state = opt.update({"a": jnp.array([3.0, -4.0])}, opt.init({"a": jnp.zeros(2)}))
    np.testing.assert_allclose(state.m["a"], np.array([0.1, -0.1]) / np.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(clipnorm=1.0, global_clipnorm=1.0), "cannot both be set"),
    (dict(clipnorm=0.0), "clipnorm=0.0 is invalid"),
    (dict(clipvalue=-1.0), "clipvalue=-1.0 is invalid"),
    (dict(learning_rate=-0.1), "learning_rate=-0.1 is invalid"),
    (dict(b1=1.5), "b1=1.5 is invalid"),
    (dict(eps=-1.0), "eps=-1.0 is invalid"),
    (dict(weight_decay_rate=-0.1), "weight_decay_rate=-0.1 is invalid"),
    (dict(exclude_from_weight_decay=["[bias"]), "invalid regex"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        funcopt.adam_weight_decay(**kwargs)


def test_create_optimizer_choices_and_errors():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    grads = jax.tree.map(jnp.zeros_like, params)
    opt, schedule = funcopt.create_optimizer(0.1, 10, 0, weight_decay_rate=0.5)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.05, rtol=1e-6)  # decays
    np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)  # "bias" excluded
    opt, _ = funcopt.create_optimizer(0.1, 10, 0)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_array_equal(updates["dense"]["kernel"], 0.0)  # plain Adam
    with pytest.raises(ValueError, match="cannot both be set"):
        funcopt.create_optimizer(0.1, 10, 2, adam_clipnorm=1.0, adam_global_clipnorm=1.0)
    with pytest.raises(ValueError, match="must be greater than num_warmup_steps"):
        funcopt.create_optimizer(0.1, 5, 5)
    with pytest.raises(TypeError, match="num_train_steps must be an integer"):
        funcopt.create_optimizer(0.1, 5.5, 2)


def test_create_optimizer_golden_schedules(golden_tf):
    _, schedule = funcopt.create_optimizer(1.0, 10, 3, min_lr_ratio=0.1)
    np.testing.assert_allclose([float(schedule(i)) for i in range(13)],
                               golden_tf["create_optimizer_sched_1.0_10_3_min0.1"], rtol=1e-7)
    _, schedule = funcopt.create_optimizer(2.0, 10, 4, power=2.0)
    np.testing.assert_allclose([float(schedule(i)) for i in range(12)],
                               golden_tf["create_optimizer_power2_sched_2.0_10_4"], rtol=1e-7,
                               atol=1e-7)
    _, schedule = funcopt.create_optimizer(1.0, 10, 0)
    gold = golden_tf["create_optimizer_nowarmup_sched"]
    np.testing.assert_allclose([float(schedule(i)) for i in range(len(gold))], gold, rtol=1e-7)
