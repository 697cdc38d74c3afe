"""funcopt.galore_adafactor against galore-torch 1.0's GaLoreAdafactor (the class the Trainer's
``optim="galore_adafactor"`` builds), with galore-torch's own SVD injected (see
test_galore.py for the SVD itself), plus one JAX-SVD run before any re-projection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import reference
from menu_parity import bitwise, problem, report, run_funcopt, run_reference, worst
from test_galore import OTHERS, TARGETS, torch_svd

import funcopt

torch = reference("torch")
galore_torch = reference("galore_torch")

FIELDS = ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")


def random_config(seed):
    rng = np.random.default_rng(seed)
    if rng.integers(2):  # the Trainer's call
        kw = dict(lr=float(rng.choice([1e-3, 1e-2])), scale_parameter=False, relative_step=False)
    else:  # the class's defaults: relative step, parameter scale
        kw = dict(warmup_init=bool(rng.integers(2)))
    kw.update(beta1=[None, 0.9][int(rng.integers(2))], weight_decay=float(rng.choice([0.0, 0.1])),
              clip_threshold=float(rng.choice([1.0, 0.5])))
    galore = dict(rank=int(rng.choice([1, 2, 4, 16])),
                  update_proj_gap=int(rng.choice([1, 3, 7, 200])),
                  scale=float(rng.choice([0.25, 1.0])),
                  proj_type=str(rng.choice(["std", "right", "left"])))
    return kw, galore


def ours(kw, galore, mask, **extra):
    rest = {("learning_rate" if k == "lr" else k): v for k, v in kw.items()}
    return funcopt.galore_adafactor(**rest, **galore, mask=mask, **extra)


def reference_run(kw, galore, mask, init, grads, dtype="float32"):
    def make(params):
        groups = [{"params": [p for p, m in zip(params, mask, strict=True) if not m]},
                  {"params": [p for p, m in zip(params, mask, strict=True) if m], **galore}]
        return galore_torch.GaLoreAdafactor(groups, **kw)

    return run_reference(torch, make, init, grads, dtype)


def pairs_of(state, params, opt, tparams):
    """Params and moments (in sign_free's order: param, first moment, then the rest)."""
    values = []
    for i, tp in enumerate(tparams):
        s = opt.state[tp]
        assert int(state.step[i]) == s["step"]
        values.append((params[i], tp))
        for k in FIELDS:
            mine = getattr(state, k)
            assert (k in s) == (mine is not None and mine[i] is not None), k
            values += [(mine[i], s[k])] if k in s else [(params[i], tp)]
        values.append((state.rms[i], s["RMS"]))
    return values


def case(seed):
    kw, galore = random_config(seed)
    shapes = TARGETS + OTHERS
    mask = [i < len(TARGETS) for i in range(len(shapes))]
    init, grads = problem(shapes, 25, seed)
    return kw, galore, mask, init, grads


def noise(kw, galore, mask, init, grads):
    o32, p32 = reference_run(kw, galore, mask, init, grads)
    o64, p64 = reference_run(kw, galore, mask, init, grads, "float64")
    pairs = list(zip(p32, p64, strict=True))
    for a, b in zip(p32, p64, strict=True):
        pairs += [(o32.state[a][k], o64.state[b][k]) for k in FIELDS if k in o32.state[a]]
    return worst(pairs)


@pytest.mark.parametrize("seed", range(6))
def test_injected_projection_parity(seed):
    kw, galore, mask, init, grads = case(seed)
    opt, tparams = reference_run(kw, galore, mask, init, grads)
    state, params = run_funcopt(ours(kw, galore, mask, svd=torch_svd), init, grads)
    values = pairs_of(state, params, opt, tparams)
    report(f"galore_adafactor injected svd {kw} {galore}", worst(values),
           noise(kw, galore, mask, init, grads), bitwise(values))
    for i, tp in enumerate(tparams[:len(TARGETS)]):  # the projections are torch's own
        theirs = opt.state[tp]["projector"].ortho_matrix
        mine = [x[i] for x in (state.ortho_left, state.ortho_right) if x is not None
                and x[i] is not None]
        assert bitwise(list(zip(mine, [theirs], strict=True)))
    assert worst(values) <= 1e-6


def test_jax_svd_one_projection():
    kw, galore, mask, init, grads = case(2)
    galore["update_proj_gap"] = 200
    opt, tparams = reference_run(kw, galore, mask, init, grads)
    state, params = run_funcopt(ours(kw, galore, mask), init, grads)
    # per leaf: param, exp_avg, row, col, sq, RMS; a flipped singular vector flips only the
    # matching entries of the first moment
    values = [(jnp.abs(a), b.abs()) if j % 6 == 1 else (a, b)
              for j, (a, b) in enumerate(pairs_of(state, params, opt, tparams))]
    report(f"galore_adafactor jax svd, one projection {kw} {galore}", worst(values),
           noise(kw, galore, mask, init, grads))
    assert worst(values) <= 1e-4


def test_jit_scan_dtypes_and_errors():
    kw, galore, mask, init, grads = case(1)
    _, ref_params = run_funcopt(ours(kw, galore, mask), init, grads)
    _, params = run_funcopt(ours(kw, galore, mask), init, grads, scan=True)
    assert bitwise(list(zip(params, ref_params, strict=True)))
    bf = {"w": jnp.ones((6, 4), jnp.bfloat16), "b": jnp.ones(4, jnp.bfloat16)}
    opt = funcopt.galore_adafactor(rank=2)
    s0 = opt.init(bf)
    assert s0.ortho_right["w"].dtype == jnp.float32 and s0.exp_avg_sq_col["w"].shape == (2,)
    _, s1 = jax.jit(opt.update)(jax.tree.map(lambda x: x * 0.5, bf), s0, bf)
    assert jax.tree.map(lambda x: x.dtype, s1) == jax.tree.map(lambda x: x.dtype, s0)
    injected = optax.inject_hyperparams(
        funcopt.galore_adafactor, static_args=("rank", "update_proj_gap", "proj_type"))(
        learning_rate=1e-2, relative_step=False, scale_parameter=False, rank=2)
    _, s2 = jax.jit(injected.update)(bf, injected.init(bf), bf)
    assert s2.inner_state.exp_avg_sq_row["w"].shape == (6,)
    with pytest.raises(ValueError, match="relative_step"):
        funcopt.galore_adafactor(learning_rate=1e-3)
    with pytest.raises(ValueError, match="warmup_init"):
        funcopt.galore_adafactor(learning_rate=1e-3, relative_step=False, warmup_init=True)
    with pytest.raises(ValueError, match="proj_type"):
        funcopt.galore_adafactor(proj_type="diag")
    with pytest.raises(ValueError, match="update_proj_gap"):
        funcopt.galore_adafactor(update_proj_gap=0)
    p = [torch.nn.Parameter(torch.zeros(2))]
    for bad in (dict(lr=1e-3), dict(lr=1e-3, relative_step=False, warmup_init=True)):
        with pytest.raises(ValueError):  # the reference rejects the same
            galore_torch.GaLoreAdafactor(p, **bad)
