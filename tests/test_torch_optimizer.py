"""funcopt.torch.Optimizer and the AdamW/Adafactor drop-ins against transformers' classes.

A small real model (Linear, LayerNorm, GELU, Linear; MSE loss) is trained with the drop-in and
with the reference, two param groups (the second overriding lr and weight decay), with and
without a transformers.get_scheduler schedule. Measured on CPU: the weights agree to ~1e-7
of the largest weight (float32 round-off: XLA's fused multiply-adds and reductions on one
side, torch's kernels on the other); TOL leaves a 10x margin.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compilations import compilations
from parity import applying
from torch_model import (  # noqa: F401  (one_torch_thread: an autouse fixture)
    batch,
    hf_adamw,
    make_model,
    one_torch_thread,
    raises,
    rel_diff,
    torch,
    transformers,
    weights,
)

import funcopt
import funcopt.torch
from funcopt import _fused_adamw
from funcopt.torch import _direct

TOL = 1e-6  # max |difference| / max |weight|
STEPS = 10
BF16_ULP = 2.0**-7  # relative spacing of bfloat16 numbers in [1, 2)


def groups(model, second=None):
    """Matrices (default hyperparameters) and vectors (no decay, plus ``second``)."""
    named = list(model.named_parameters())
    rest = {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0, **(second or {})}
    return [{"params": [p for _, p in named if p.ndim >= 2]}, rest]


def train(model, opt, steps, scheduler=None, dtype=torch.float32):
    x, y = batch(dtype)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


ADAMW = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)
ADAFACTOR_RELATIVE = dict(weight_decay=0.01)
ADAFACTOR_MANUAL = dict(lr=1e-2, relative_step=False, beta1=0.9, weight_decay=0.01)

CASES = {
    "adamw": (hf_adamw, funcopt.torch.AdamW, ADAMW, {"lr": 3e-3}),
    "adafactor-relative": (transformers.Adafactor, funcopt.torch.Adafactor,
                           ADAFACTOR_RELATIVE, None),
    "adafactor-manual": (transformers.Adafactor, funcopt.torch.Adafactor, ADAFACTOR_MANUAL,
                         {"lr": 3e-3}),
}


def trained(make, kw, second, schedule, dtype=torch.float32, steps=STEPS):
    model = make_model(dtype)
    opt = make(groups(model, second), **kw)
    scheduler = None
    if schedule:
        scheduler = transformers.get_scheduler(
            schedule, opt, num_warmup_steps=3, num_training_steps=steps
        )
    train(model, opt, steps, scheduler, dtype)
    return model, opt


# relative_step Adafactor has lr=None: there is nothing to schedule.
@pytest.mark.parametrize("case, schedule", [
    ("adamw", None), ("adamw", "linear"), ("adafactor-relative", None),
    ("adafactor-manual", None), ("adafactor-manual", "linear"),
])
def test_training_matches_transformers(case, schedule):
    reference_cls, dropin, kw, second = CASES[case]
    ref_model, ref_opt = trained(reference_cls, kw, second, schedule)
    model, opt = trained(dropin, kw, second, schedule)
    assert rel_diff(weights(ref_model), weights(model)) < TOL
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref_opt.param_groups]
    for p_ref, p in zip(ref_model.parameters(), model.parameters(), strict=True):
        ref_state, state = ref_opt.state[p_ref], opt.state[p]
        assert list(state) == list(ref_state)  # same keys, same order
        assert state["step"] == ref_state["step"] == STEPS and isinstance(state["step"], int)
        for key in ref_state:
            if key != "step":
                a, b = ref_state[key], state[key]
                assert a.dtype == b.dtype and a.shape == b.shape, key
                assert ((a - b).abs().max() / a.abs().max().clamp(min=1e-30)).item() < 1e-5


@pytest.mark.parametrize("case", ["adamw", "adafactor-relative"])
def test_bfloat16_parameters(case):
    reference_cls, dropin, kw, second = CASES[case]
    ref_model, ref_opt = trained(reference_cls, kw, second, None, torch.bfloat16)
    model, opt = trained(dropin, kw, second, None, torch.bfloat16)
    # A float32 round-off difference now and then flips a bf16 rounding (AdamW's bf16
    # moments round after every op): the weights agree to a bf16 ulp (measured 0.4 ulp).
    assert rel_diff(weights(ref_model), weights(model)) <= BF16_ULP
    state_dtype = torch.bfloat16 if case == "adamw" else torch.float32
    for p_ref, p in zip(ref_model.parameters(), model.parameters(), strict=True):
        for key, value in opt.state[p].items():
            if key != "step":
                assert value.dtype == ref_opt.state[p_ref][key].dtype == state_dtype


def test_fused_kernel_in_place_and_the_parameters_it_cannot_take():
    """float32 CPU parameters go through funcopt's fused kernel, written in place in torch's
    memory (a misaligned one too: the kernel needs no alignment); a non-contiguous view and a
    bf16 parameter in the same group take the XLA path and the write-back. All end where
    transformers.AdamW ends, and bit for bit where funcopt.adamw ends in JAX."""

    def make():
        g = torch.Generator().manual_seed(0)
        base = torch.randn(1001, generator=g)
        return [torch.nn.Parameter(torch.randn(300, 250, generator=g)),  # 75k: several blocks
                torch.nn.Parameter(base[1:]),  # 4 bytes past an aligned start
                torch.nn.Parameter(torch.randn(40, 30, generator=g).t()),  # not contiguous
                torch.nn.Parameter(torch.randn(33, generator=g).bfloat16())]

    ref, ours = make(), make()
    ref_opt, opt = hf_adamw(ref, **ADAMW), funcopt.torch.AdamW(ours, **ADAMW)
    pointers = [p.data_ptr() for p in ours]
    for p in ours:
        p.grad = torch.zeros_like(p)
    taken = _direct.takes(opt, ours, [0] * 4, ("exp_avg", "exp_avg_sq"))
    assert taken == [True, True, False, False] or not _fused_adamw.kernel_available()
    grad = lambda p, k: np.linspace(-1, 1, p.numel(), dtype=np.float32).reshape(
        p.shape) * np.float32(k)  # the same float32 numbers for torch and JAX
    for step in range(5):
        for params, o in ((ref, ref_opt), (ours, opt)):
            for k, p in enumerate(params):
                p.grad = torch.from_numpy(grad(p, k + step + 1)).to(p.dtype)
            o.step()
    assert [p.data_ptr() for p in ours] == pointers
    for a, b in zip(ref[:3], ours[:3], strict=True):
        assert rel_diff(a.detach().flatten(), b.detach().flatten()) < TOL
    assert rel_diff(ref[3].detach().float(), ours[3].detach().float()) <= BF16_ULP
    assert ours[0]._version > 0 and ours[2]._version > 0  # autograd sees the updates

    # Bit for bit what funcopt.adamw + apply_updates give in JAX, kernel or not.
    tx = funcopt.adamw(1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1)
    jax_params = [jnp.asarray(p.detach().float().numpy()).astype(
        jnp.bfloat16 if p.dtype == torch.bfloat16 else jnp.float32) for p in make()]
    state = tx.init(jax_params)
    step = jax.jit(applying(tx))
    for step_ in range(5):
        grads = [jnp.asarray(grad(p, k + step_ + 1)).astype(q.dtype)
                 for k, (p, q) in enumerate(zip(ours, jax_params, strict=True))]
        jax_params, state = step(grads, state, jax_params)
    for p, q in zip(ours, jax_params, strict=True):
        np.testing.assert_array_equal(p.detach().float().numpy(), np.asarray(q, np.float32))
    for p, m, v in zip(ours, state.exp_avg, state.exp_avg_sq, strict=True):
        np.testing.assert_array_equal(opt.state[p]["exp_avg"].float().numpy(),
                                      np.asarray(m, np.float32))
        np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"].float().numpy(),
                                      np.asarray(v, np.float32))

    a = torch.nn.Parameter(torch.randn(64))
    b = torch.nn.Parameter(a.detach())  # another parameter on the same storage
    a.grad, b.grad = torch.ones(64), torch.ones(64)
    # torch updates those one after the other: not concurrently
    assert _direct.takes(opt, [a, b], [0, 0], ("exp_avg", "exp_avg_sq")) == [False, False]


def test_generic_optimizer_is_the_dropin():
    """Optimizer(params, funcopt.adamw, ...) with funcopt's names gives the drop-in's numbers,
    bit for bit; its groups carry funcopt's hyperparameter names and defaults."""
    model_a, model_b = make_model(), make_model()
    a = funcopt.torch.AdamW(groups(model_a, {"lr": 3e-3}), **ADAMW)
    b = funcopt.torch.Optimizer(groups(model_b, {"lr": 3e-3}), funcopt.adamw, lr=1e-2, b1=0.9,
                                b2=0.99, eps=1e-6, weight_decay=0.1)
    train(model_a, a, 3)
    train(model_b, b, 3)
    assert torch.equal(weights(model_a), weights(model_b))
    assert b.param_groups[1]["correct_bias"] is True and b.param_groups[1]["lr"] == 3e-3
    c = funcopt.torch.Optimizer(make_model().parameters(), funcopt.adafactor, eps=[1e-30, 1e-3])
    assert c.param_groups[0]["lr"] is None and c.param_groups[0]["relative_step"] is True
    assert c.param_groups[0].keys() == transformers.Adafactor(
        make_model().parameters()).param_groups[0].keys()


def test_parameters_without_gradient_are_skipped():
    """No state, no step, no decay for a parameter whose grad is None, as in the reference."""
    models, opts = [], []
    for make in (hf_adamw, funcopt.torch.AdamW):
        model = make_model()
        models.append(model)
        opts.append(make(model.parameters(), lr=1e-2, weight_decay=0.5))
    x, y = batch()
    for step in range(4):
        for model, opt in zip(models, opts, strict=True):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            model[0].bias.grad = None  # never steps
            if step % 2:
                model[3].weight.grad = None  # steps every other time
            opt.step()
    ref, ours = models
    assert rel_diff(weights(ref), weights(ours)) < TOL
    assert torch.equal(ours[0].bias, make_model()[0].bias)  # untouched, not even decayed
    assert ours[0].bias not in opts[1].state or not opts[1].state[ours[0].bias]
    assert opts[1].state[ours[3].weight]["step"] == 2 == opts[0].state[ref[3].weight]["step"]
    assert opts[1].state[ours[0].weight]["step"] == 4


def test_learning_rate_changes_never_recompile():
    model = make_model()
    kw = dict(ADAMW, eps=1.25e-6)  # hyperparameters of this test only: its first step compiles
    opt = funcopt.torch.AdamW(groups(model, {"lr": 3e-3}), **kw)
    scheduler = transformers.get_scheduler("cosine", opt, num_warmup_steps=2,
                                           num_training_steps=12)
    with compilations() as first:
        train(model, opt, 1, scheduler)
    # The group's computation compiled (and the listener sees it): the XLA update, or the step
    # scalars of the kernel that float32 CPU parameters take.
    assert {"jit(update)", "jit(scalars)"} & set(first)
    lrs = set()
    with compilations() as later:
        for _ in range(6):
            train(model, opt, 1, scheduler)
            lrs.add(opt.param_groups[0]["lr"])
        opt.param_groups[1]["lr"] = 0.123  # by hand, too
        train(model, opt, 1)
    assert len(lrs) == 6
    assert later == []


def test_closure_zero_grad_and_storage():
    model = make_model()
    opt = funcopt.torch.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    x, y = batch()
    pointers = [p.data_ptr() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # needs grad mode: step() runs the closure with it enabled
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert [p.data_ptr() for p in model.parameters()] == pointers  # updated in place
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    before = weights(model)
    opt.step()  # nothing has a gradient: nothing changes
    assert torch.equal(before, weights(model))
    assert opt.state[model[0].weight]["step"] == 1


def test_state_memory_is_reused_and_held_views_stay_valid():
    """float32 CPU parameters: the state tensors are updated in place, as the reference's (a
    held tensor is the live state). Others (bf16 here) keep their state in JAX memory that is
    donated and reused; a held view blocks the reuse of its buffer, nothing else."""
    for make in (hf_adamw, funcopt.torch.AdamW):
        model = make_model()
        opt = make(model.parameters(), lr=1e-2, weight_decay=0.5)
        train(model, opt, 2)
        held = opt.state[model[0].weight]["exp_avg"]
        snapshot = held.clone()
        train(model, opt, 1)
        assert opt.state[model[0].weight]["exp_avg"] is held
        assert not torch.equal(held, snapshot)

    model = make_model(torch.bfloat16)
    opt = funcopt.torch.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    train(model, opt, 2, dtype=torch.bfloat16)
    w = model[0].weight
    pointer = opt.state[w]["exp_avg"].data_ptr()
    train(model, opt, 1, dtype=torch.bfloat16)
    assert opt.state[w]["exp_avg"].data_ptr() == pointer  # donated and reused in place
    held = opt.state[w]["exp_avg"]
    snapshot = held.clone()
    train(model, opt, 2, dtype=torch.bfloat16)  # the held view blocks the buffer's reuse
    assert torch.equal(held, snapshot)
    assert not torch.equal(opt.state[w]["exp_avg"], snapshot)


def test_parameter_writes_between_steps_are_seen():
    """In-place writes to a parameter, and a new tensor bound to it, between steps."""
    models, opts = [], []
    for make in (hf_adamw, funcopt.torch.AdamW):
        model = make_model()
        models.append(model)
        opts.append(make(model.parameters(), lr=1e-2, weight_decay=0.5))
    for step in range(4):
        for model, opt in zip(models, opts, strict=True):
            train(model, opt, 1)
            with torch.no_grad():
                model[0].weight.mul_(0.5)
                if step == 1:
                    model[3].weight.data = model[3].weight.detach().t().contiguous().t() + 1.0
    assert rel_diff(weights(models[0]), weights(models[1])) < TOL


def test_copies_and_pickles():
    model = make_model()
    opt = funcopt.torch.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    train(model, opt, 2)
    clone = copy.deepcopy(opt)
    assert clone.state_dict()["state"][0]["step"] == 2
    model_b = copy.deepcopy(model)
    opt_b = funcopt.torch.AdamW(model_b.parameters(), lr=1e-2, weight_decay=0.5)
    opt_b.load_state_dict(opt.state_dict())
    train(model, opt, 2)
    train(model_b, opt_b, 2)
    assert torch.equal(weights(model), weights(model_b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # C kernel, XLA path
def test_group_mask_false_is_no_decay(dtype):
    """``mask=False`` on a param group: its parameters do not decay, as weight_decay=0.0."""
    def run(groups_of):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3, dtype=dtype)) for _ in range(2)]
        opt = funcopt.torch.Optimizer(groups_of(params), funcopt.adamw, lr=0.1,
                                      weight_decay=0.5)
        for _ in range(3):
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
        return params
    masked = run(lambda ps: [{"params": ps[:1]}, {"params": ps[1:], "mask": False}])
    plain = run(lambda ps: [{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0}])
    decayed = run(lambda ps: [{"params": ps}])
    assert torch.equal(masked[0], plain[0]) and torch.equal(masked[1], plain[1])
    assert not torch.equal(masked[1], decayed[1])


# -- errors --------------------------------------------------------------------------------


def test_construction_errors():
    params = list(make_model().parameters())
    with raises(TypeError, "optimizer_fn", "runs funcopt.adamw", "funcopt.adafactor"):
        funcopt.torch.Optimizer(params, funcopt.adam_weight_decay)
    with raises(TypeError, "lr=..."):
        funcopt.torch.Optimizer(params, funcopt.adamw, learning_rate=0.1)
    with raises(TypeError, "param group 0", "mask={'w': True} is invalid", "a bool"):
        funcopt.torch.Optimizer(params, funcopt.adamw, mask={"w": True})
    with raises(TypeError, "beta1", "accepts"):
        funcopt.torch.Optimizer(params, funcopt.adamw, beta1=0.9)
    with raises(ValueError, "param group 0", "lr=-1.0"):
        funcopt.torch.AdamW(params, lr=-1.0)
    with raises(ValueError, "betas[1]=1.0"):
        funcopt.torch.AdamW(params, betas=(0.9, 1.0))
    with raises(ValueError, "betas="):
        funcopt.torch.AdamW(params, betas=0.9)
    with raises(ValueError, "relative_step=True", "lr=None"):
        funcopt.torch.Adafactor(params, lr=1e-3)
    with raises(ValueError, "warmup_init=True requires relative_step=True"):
        funcopt.torch.Adafactor(params, lr=1e-3, relative_step=False, warmup_init=True)
    with raises(ValueError, "param group 1", "lr=-0.5"):
        funcopt.torch.AdamW([{"params": params[:2]}, {"params": params[2:], "lr": -0.5}])
    with raises(TypeError, "floating point"):
        funcopt.torch.AdamW([torch.zeros(3, dtype=torch.int64)])
    with raises(TypeError, "jax_enable_x64"):
        funcopt.torch.AdamW([torch.zeros(3, dtype=torch.float64, requires_grad=True)])
    with raises(TypeError, "hashable", "Python numbers"):
        funcopt.torch.AdamW([{"params": params, "weight_decay": np.array(0.1)}])


def test_add_param_group_checks_and_keeps_the_optimizer_usable():
    model = make_model()
    matrices, vectors = groups(model, {"lr": 3e-3})
    opt = funcopt.torch.AdamW([matrices], **ADAMW)
    with raises(ValueError, "param group 1", "betas[0]"):
        opt.add_param_group({**vectors, "betas": (-0.1, 0.9)})
    assert len(opt.param_groups) == 1
    opt.add_param_group(vectors)
    train(model, opt, 1)
    assert opt.state[vectors["params"][0]]["step"] == 1


def test_sparse_gradients_are_refused():
    p = torch.nn.Parameter(torch.zeros(4, 2))
    opt = funcopt.torch.AdamW([p])
    p.grad = torch.zeros(4, 2).to_sparse()
    with raises(RuntimeError, "sparse"):
        opt.step()


def test_foreign_state_is_refused_clearly():
    model = make_model()
    adafactor = transformers.Adafactor(model.parameters())
    train(model, adafactor, 1)
    opt = funcopt.torch.AdamW(make_model().parameters())
    with raises(TypeError, "saved param group 0", "lr", "another optimizer"):
        opt.load_state_dict(adafactor.state_dict())
    sd = adafactor.state_dict()
    sd["param_groups"][0].update(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, correct_bias=True)
    with raises(ValueError, "saved state of parameter 0", "exp_avg_sq_row", "different"):
        opt.load_state_dict(sd)
    assert not opt.state  # nothing changed
    torch_adamw = torch.optim.AdamW(model.parameters(), amsgrad=True)
    train(model, torch_adamw, 1)
    with raises(ValueError, "max_exp_avg_sq"):
        opt.load_state_dict(torch_adamw.state_dict())
    bad = funcopt.torch.AdamW(model.parameters()).state_dict()
    bad["state"] = {0: {"step": 1, "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}}
    with raises(ValueError, "has shape (3,)", "needs (16, 8)"):
        opt.load_state_dict(bad)
    w = next(iter(opt.param_groups[0]["params"]))
    opt.state[w] = {"step": 3, "exp_avg": torch.zeros(2)}
    w.grad = torch.zeros_like(w)
    with raises(ValueError, "has shape (2,)"):
        opt.step()
    opt.state[w] = {"exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.zeros_like(w)}
    with raises(ValueError, "no 'step'", "optimizer.state.pop"):
        opt.step()
    opt.state[w] = {"step": 1, "exp_avg": torch.zeros_like(w)}
    with raises(ValueError, "no 'exp_avg_sq'", "optimizer.state.pop"):
        opt.step()
    opt.state.pop(w)
    opt.step()
    assert opt.state[w]["step"] == 1
    assert np.isfinite(w.detach().numpy()).all()
