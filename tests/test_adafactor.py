"""funcopt.adafactor against transformers.Adafactor: golden values, live parity, state, errors."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference
from parity import BF16_SHAPES, SHAPES, as_np, bf16_close, run_side_by_side, train_mse

import funcopt

MANUAL = dict(learning_rate=1e-2, relative_step=False, scale_parameter=False)


def test_golden_hf_test_problem(golden_pt):
    trajectory, _ = train_mse(funcopt.adafactor(**MANUAL), [0.1, -0.2, -0.1],
                              [0.4, 0.2, -0.5], 1000)
    gold = golden_pt["adafactor_test"]
    np.testing.assert_allclose(trajectory[:3], gold["first3"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(trajectory[-1], gold["final_after_1000"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(trajectory[-1], [0.4, 0.2, -0.5], atol=1e-2)  # HF's assert


@pytest.mark.parametrize("key", ["adafactor_2d_manual_lr1e-2", "adafactor_2d_default_relative",
                                 "adafactor_2d_relative_warmup_init",
                                 "adafactor_2d_beta1_0.9_wd0.01_manual"])
def test_golden_matrix_runs(golden_pt, key):
    gold = golden_pt[key]
    kwargs = {("learning_rate" if k == "lr" else k): v for k, v in gold.get("kwargs", {}).items()}
    trajectory, state = train_mse(funcopt.adafactor(**kwargs), golden_pt["adafactor_2d_init"],
                                  golden_pt["adafactor_2d_target"], 5)
    np.testing.assert_allclose(trajectory[:3], gold["first3"], rtol=0, atol=1.2e-7)
    np.testing.assert_allclose(trajectory[-1], gold["after5"], rtol=0, atol=1.2e-7)
    assert int(state.step) == gold["step"]
    np.testing.assert_allclose(float(state.rms), gold["RMS"], rtol=2e-7)
    np.testing.assert_allclose(state.exp_avg_sq_row, gold["exp_avg_sq_row"], rtol=2e-7)
    np.testing.assert_allclose(state.exp_avg_sq_col, gold["exp_avg_sq_col"], rtol=2e-7)
    np.testing.assert_allclose(float(funcopt.adafactor_learning_rates(state)),
                               gold["lr_from_get_lr"], rtol=1e-7)
    assert (state.exp_avg is not None) == ("exp_avg" in gold["state_keys"])
    assert state.exp_avg_sq is None


def test_golden_3d_and_bf16(golden_pt):
    gold = golden_pt["adafactor_3d"]
    trajectory, state = train_mse(funcopt.adafactor(**MANUAL), gold["init"], gold["target"], 3)
    np.testing.assert_allclose(trajectory[-1], gold["after3"], rtol=0, atol=2.4e-7)
    assert list(state.exp_avg_sq_row.shape) == gold["row_shape"]
    assert list(state.exp_avg_sq_col.shape) == gold["col_shape"]
    trajectory, state = train_mse(funcopt.adafactor(**MANUAL), golden_pt["adafactor_2d_init"],
                                  golden_pt["adafactor_2d_target"], 5, jnp.bfloat16)
    np.testing.assert_array_equal(trajectory[-1], golden_pt["adafactor_2d_bf16_param"]["after5"])
    assert state.exp_avg_sq_row.dtype == jnp.float32  # golden: state_dtype torch.float32


def test_adafactor_schedule_values(golden_pt):
    """AdafactorSchedule: 0.0 before the first step, then f32(RMS) * 1e-2."""
    opt = funcopt.adafactor()
    params = jnp.ones((2, 2))
    state = opt.init(params)
    assert float(funcopt.adafactor_learning_rates(state)) == \
        golden_pt["adafactor_schedule"]["before_step_get_lr"][0]
    _, state = opt.update(jnp.ones((2, 2)), state, params)
    assert float(funcopt.adafactor_learning_rates(state)) == \
        golden_pt["adafactor_schedule"]["after_1_step_get_last_lr"][0]
    wrapped = optax.chain(optax.identity(), opt).init(params)
    assert funcopt.adafactor_learning_rates(wrapped).shape == ()
    with pytest.raises(TypeError, match="needs a funcopt.adafactor state"):
        funcopt.adafactor_learning_rates(funcopt.adamw().init(params))


CONFIGS = [
    dict(),
    dict(warmup_init=True),
    dict(lr=1e-2, relative_step=False),
    dict(lr=1e-2, relative_step=False, scale_parameter=False, beta1=0.9, weight_decay=0.01),
    dict(beta1=0.0, weight_decay=0.1, clip_threshold=0.5, decay_rate=-0.5),
    dict(eps=(1e-20, 1e-2), scale_parameter=False),
]


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_live_parity(kw, dtype):
    torch = reference("torch")
    transformers = reference("transformers")
    fkw = {("learning_rate" if k == "lr" else k): v for k, v in kw.items()}
    topt, tparams, state, params = run_side_by_side(
        torch, transformers.Adafactor, kw, funcopt.adafactor(**fkw), steps=25, dtype=dtype,
        shapes=SHAPES if dtype == "float32" else BF16_SHAPES)
    fields = [("exp_avg", state.exp_avg), ("exp_avg_sq_row", state.exp_avg_sq_row),
              ("exp_avg_sq_col", state.exp_avg_sq_col), ("exp_avg_sq", state.exp_avg_sq)]
    ours, theirs = [], []
    for i, tp in enumerate(tparams):
        tstate = topt.state[tp]
        assert int(state.step[i]) == tstate["step"] == 25
        np.testing.assert_allclose(float(state.rms[i]), float(tstate["RMS"]), rtol=2e-6)
        ours.append(params[i])
        theirs.append(tp)
        for key, field in fields:
            present = field is not None and field[i] is not None
            assert present == (key in tstate), key
            if present:
                assert field[i].dtype == jnp.float32
                expected = as_np(tstate[key])
                scale = float(np.max(np.abs(expected))) if expected.size else 0.0
                np.testing.assert_allclose(as_np(field[i]), expected, rtol=2e-5,
                                           atol=2e-6 * scale)
    if dtype == "float32":
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(as_np(a), as_np(b), rtol=1e-5, atol=1e-6)
    else:
        bf16_close(ours, theirs)


@pytest.mark.parametrize("shape", [(3,), (3, 4), (2, 3, 4), (2, 3, 4, 5)])
def test_state_shapes(shape):
    state = funcopt.adafactor(beta1=0.9).init({"p": jnp.zeros(shape, jnp.bfloat16)})
    if len(shape) >= 2:
        assert state.exp_avg_sq_row["p"].shape == shape[:-1]
        assert state.exp_avg_sq_col["p"].shape == shape[:-2] + shape[-1:]
        assert state.exp_avg_sq is None
    else:
        assert state.exp_avg_sq["p"].shape == shape
        assert state.exp_avg_sq_row is None and state.exp_avg_sq_col is None
    assert state.exp_avg["p"].dtype == jnp.float32


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(learning_rate=1e-3), ValueError, "cannot be combined with relative_step=True"),
    (dict(warmup_init=True, relative_step=False, learning_rate=1.0), ValueError,
     "warmup_init=True requires relative_step=True"),
    (dict(relative_step=False), ValueError, "needs a learning_rate"),
    (dict(eps=1e-3), ValueError, "must be a pair"),
    (dict(eps=(-1.0, 1e-3)), ValueError, r"eps\[0\]=-1.0"),
    (dict(clip_threshold=0.0), ValueError, "clip_threshold=0.0 is invalid"),
    (dict(decay_rate=0.5), ValueError, "decay_rate=0.5 is invalid"),
    (dict(beta1=1.5), ValueError, "beta1=1.5"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay=-1.0"),
    (dict(scale_parameter=1), TypeError, "scale_parameter must be a bool"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        funcopt.adafactor(**kwargs)


def test_needs_params():
    opt = funcopt.adafactor()
    with pytest.raises(ValueError, match="needs the current parameters"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
