"""The rest of the Trainer's menu across the torch bridge (the 5.x reference environment):
bitsandbytes, schedulefree, grokadamw, torch-optimi and galore-torch classes against their
funcopt twins. Each continues a reference run in JAX and back, and
``funcopt.torch.Optimizer`` runs it beside the class (two param groups, state dicts both
ways); see ``tests/bridge_parity.py``. Figures print with ``pytest -s``, the reference's own
float32-vs-float64 noise beside them (bitsandbytes computes in float32 whatever the
parameter's dtype: "n/a"; ``test_bnb32.py`` measures its noise against a float64 emulation).

The continuations are asserted bitwise where the optimizer is (bitsandbytes' 32-bit states
and parameters, see ``test_bnb32.py``). The ``Optimizer`` runs are not: it hands ``lr`` to
the jitted update as a traced float32, so step scalars the rules take from torch's float64
arithmetic for a Python ``learning_rate`` are float32 there (see ``tests/test_torch_menu.py``).
"""

import bridge_parity
import pytest
from bridge_parity import Pair
from conftest import reference

import funcopt
import funcopt.torch

torch = reference("torch")
bnb = reference("bitsandbytes")

N, M = 13, 13
TOL = 1e-6


def _bnb(cls, **kw):
    return lambda params: cls(params, **kw)


LION = dict(learning_rate=3e-3, b1=0.8, b2=0.95, weight_decay=0.1)
ADEMAMIX = dict(learning_rate=2e-3, b1=0.85, b2=0.99, b3=0.999, alpha=4.0, t_alpha=20,
                t_beta3=15, eps=1e-8, weight_decay=0.05)
RMSPROP = dict(learning_rate=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.01)
ADAMW = dict(learning_rate=2e-3, b1=0.85, b2=0.99, eps=1e-8, weight_decay=0.1)


def _pair(name, fn, kw, make, group, bitwise=False, **extra):
    return pytest.param(Pair(name, fn, kw, make, group=group, **extra), bitwise, id=name)


BNB32 = [
    _pair("lion", funcopt.lion, LION,
          _bnb(bnb.optim.Lion, lr=3e-3, betas=(0.8, 0.95), weight_decay=0.1),
          {"lr": 1e-3, "weight_decay": 0.0}, bitwise=True, float64=False),
    _pair("ademamix", funcopt.ademamix, ADEMAMIX,
          _bnb(bnb.optim.AdEMAMix, lr=2e-3, betas=(0.85, 0.99, 0.999), alpha=4.0, t_alpha=20,
               t_beta3=15, eps=1e-8, weight_decay=0.05),
          {"lr": 1e-3, "weight_decay": 0.0}, bitwise=True, float64=False),
    _pair("rmsprop_bnb", funcopt.rmsprop_bnb, RMSPROP,
          _bnb(bnb.optim.RMSprop, lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.01),
          {"lr": 3e-3, "eps": 1e-6}, float64=False),  # MKL's sqrt (test_bnb32.py)
    _pair("adamw_bnb", funcopt.adamw_bnb, ADAMW,
          _bnb(bnb.optim.AdamW, lr=2e-3, betas=(0.85, 0.99), eps=1e-8, weight_decay=0.1),
          {"lr": 1e-3, "weight_decay": 0.0}, bitwise=True, float64=False),
    _pair("lion-bf16", funcopt.lion, LION,
          _bnb(bnb.optim.Lion, lr=3e-3, betas=(0.8, 0.95), weight_decay=0.1),
          None, dtype="bfloat16", float64=False),
]

# 8-bit: shapes from 0-D to 3-D, some at least min_8bit_size (quantized), one with its last
# axis a multiple of 256 (funcopt's absmax in the block grid, bitsandbytes' flat).
SHAPES_8BIT = ((), (7,), (5, 60), (2, 512), (3, 3, 40))
MIN_8BIT = dict(min_8bit_size=64)
BNB8 = [
    _pair("lion_8bit", funcopt.lion_8bit, {**LION, **MIN_8BIT},
          _bnb(bnb.optim.Lion8bit, lr=3e-3, betas=(0.8, 0.95), weight_decay=0.1, **MIN_8BIT),
          {"lr": 1e-3, "weight_decay": 0.0}, shapes=SHAPES_8BIT, float64=False,
          bitwise=True),
    _pair("ademamix_8bit", funcopt.ademamix_8bit, {**ADEMAMIX, **MIN_8BIT},
          _bnb(bnb.optim.AdEMAMix, lr=2e-3, betas=(0.85, 0.99, 0.999), alpha=4.0, t_alpha=20,
               t_beta3=15, eps=1e-8, weight_decay=0.05, optim_bits=8, **MIN_8BIT),
          {"lr": 1e-3, "weight_decay": 0.0}, shapes=SHAPES_8BIT, float64=False,
          bitwise=True),
    _pair("rmsprop_8bit", funcopt.rmsprop_8bit, {**RMSPROP, **MIN_8BIT},
          _bnb(bnb.optim.RMSprop, lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.01,
               optim_bits=8, **MIN_8BIT),
          {"lr": 3e-3, "eps": 1e-6}, shapes=SHAPES_8BIT, float64=False),
    _pair("adamw_8bit", funcopt.adamw_8bit, {**ADAMW, **MIN_8BIT},
          _bnb(bnb.optim.AdamW8bit, lr=2e-3, betas=(0.85, 0.99), eps=1e-8, weight_decay=0.1,
               **MIN_8BIT),
          {"lr": 1e-3, "weight_decay": 0.0}, shapes=SHAPES_8BIT, float64=False,
          bitwise=True),
]


def check(pair, bitwise):
    bridge_parity.check(pair, bitwise, N, M, TOL)


@pytest.mark.parametrize(("pair", "bitwise"), BNB32)
def test_bitsandbytes_32bit(pair, bitwise):
    check(pair, bitwise)


@pytest.mark.parametrize(("pair", "bitwise"), BNB8)
def test_bitsandbytes_8bit(pair, bitwise):
    check(pair, bitwise)


def test_bitsandbytes_state_dict_nesting_and_refused_settings():
    """bitsandbytes' state_dict() nests state1/state2; funcopt's loads and reads it. A
    setting funcopt does not follow (max_unorm) is refused by name."""
    import numpy as np
    w = torch.nn.Parameter(torch.ones(3))
    ref = bnb.optim.AdEMAMix([w], lr=1e-3)
    w.grad = torch.ones(3)
    ref.step()
    saved = ref.state_dict()
    assert "__bnb_optimizer_quant_state__" in saved["state"][0]
    opt = funcopt.torch.Optimizer([torch.nn.Parameter(torch.ones(3))], funcopt.ademamix,
                                  lr=1e-3)
    opt.load_state_dict(saved)
    p = opt.param_groups[0]["params"][0]
    assert sorted(opt.state[p]) == ["state1", "state2", "step"]
    assert opt.state[p]["state1"].shape == (2, 3)
    clipped = bnb.optim.Lion([w], lr=1e-3)
    clipped.args.max_unorm = 1.0  # what Optimizer1State(max_unorm=1.0) sets
    with pytest.raises(ValueError, match="max_unorm=1.0"):
        funcopt.torch.state_from_torch(clipped, [np.ones(3, np.float32)])


# -- schedulefree --------------------------------------------------------------------------

sf = reference("schedulefree")

SF_ADAMW = dict(learning_rate=0.01, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01,
                warmup_steps=5, r=0.5, weight_lr_power=2.0)
SF_SGD = dict(learning_rate=0.05, momentum=0.8, weight_decay=0.01, warmup_steps=3, r=0.0,
              weight_lr_power=1.0)
SF_RADAM = dict(learning_rate=0.01, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, r=0.0,
                weight_lr_power=2.0, silent_sgd_phase=False)


def _sf_kwargs(kw):
    out = {k: v for k, v in kw.items() if k not in ("learning_rate", "b1", "b2")}
    out["lr"] = kw["learning_rate"]
    if "b1" in kw:
        out["betas"] = (kw["b1"], kw["b2"])
    return out


SF_CLASSES = {"adamw": ("AdamWScheduleFree", funcopt.schedule_free_adamw, SF_ADAMW),
              "sgd": ("SGDScheduleFree", funcopt.schedule_free_sgd, SF_SGD),
              "radam": ("RAdamScheduleFree", funcopt.schedule_free_radam, SF_RADAM)}


def _sf_pair(kind, group):
    name, fn, kw = SF_CLASSES[kind]
    cls = getattr(sf, name)
    return pytest.param(Pair(f"schedule_free_{kind}", fn, kw,
                             lambda params: cls(params, **_sf_kwargs(kw)), group=group,
                             prepare=lambda opt: opt.train()), False,
                        id=f"schedule_free_{kind}")


# The second group changes no group state (weight_sum, lr_max): a funcopt state keeps one.
SCHEDULE_FREE = [_sf_pair("adamw", {"weight_decay": 0.0, "eps": 1e-6}),
                 _sf_pair("sgd", {"weight_decay": 0.1}),
                 _sf_pair("radam", {"weight_decay": 0.1})]


@pytest.mark.parametrize(("pair", "bitwise"), SCHEDULE_FREE)
def test_schedule_free(pair, bitwise):
    check(pair, bitwise)


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.tensor(g)
        opt.step()


@pytest.mark.parametrize("kind", sorted(SF_CLASSES))
def test_schedule_free_dropins_train_eval_and_state_dicts(kind):
    """funcopt.torch's drop-ins beside the reference: train()/eval() swap y and x as the
    reference does (bitwise from the same y and z), step() refuses eval mode, and state
    dicts load both ways (eval mode included)."""
    from bridge_parity import compare, torch_params
    name, fn, kw = SF_CLASSES[kind]
    ref_cls, ours_cls = getattr(sf, name), getattr(funcopt.torch, name)
    pair = Pair(kind, fn, kw, None)
    init, grads = pair.problem(2 * N)
    ref_params, our_params = torch_params(init), torch_params(init)
    ref, ours = ref_cls(ref_params, **_sf_kwargs(kw)), ours_cls(our_params, **_sf_kwargs(kw))
    for opt, params in ((ref, ref_params), (ours, our_params)):
        assert opt.param_groups[0]["train_mode"] is False
        with pytest.raises(Exception, match="not in train mode"):
            opt.step()
        opt.train()
        _run(opt, params, grads[:N])
    # y and z (x = y + (1 - 1/beta1)(z - y) amplifies y's float32 noise where x is small).
    dev, _ = compare(our_params + [ours.state[p]["z"] for p in our_params],
                     ref_params + [ref.state[p]["z"] for p in ref_params])
    assert dev <= TOL, f"{kind}: {dev:.2e}"
    ref.eval()
    ours.eval()
    assert ours.param_groups[0]["k"] == ref.param_groups[0]["k"] == N
    # From the same y and z, eval()/train() are the reference's lerps bitwise.
    same = ours_cls(torch_params(ref_params), **_sf_kwargs(kw))
    same.load_state_dict(ref.state_dict())  # saved in eval mode: params hold x
    same.train()
    ref.train()
    assert compare(same.param_groups[0]["params"], ref_params) == (0.0, True)
    back = ref_cls(torch_params(our_params), **_sf_kwargs(kw))
    back.load_state_dict(ours.state_dict())
    back.train()
    ours.train()
    assert compare(back.param_groups[0]["params"], our_params) == (0.0, True)
    for opt in (ref, ours, same, back):
        _run(opt, opt.param_groups[0]["params"], grads[N:])
    for opt in (ours, same, back):
        dev, _ = compare(opt.param_groups[0]["params"], ref_params)
        assert dev <= TOL, f"{type(opt).__module__}: {dev:.2e}"


def test_schedule_free_state_from_a_reference_in_eval_mode():
    """The reference in eval mode (params hold x): the funcopt state says train_mode False;
    schedule_free_train_params gives y, as .train() would, and the run continues."""
    import jax.numpy as jnp
    from bridge_parity import compare, jax_params, step_jax, step_torch, torch_params
    pair = Pair("adamw", funcopt.schedule_free_adamw, SF_ADAMW, None)
    init, grads = pair.problem(2 * N)
    full_params = torch_params(init)
    full = sf.AdamWScheduleFree(full_params, **_sf_kwargs(SF_ADAMW))
    full.train()
    step_torch(full, full_params, grads)
    params = torch_params(init)
    ref = sf.AdamWScheduleFree(params, **_sf_kwargs(SF_ADAMW))
    ref.train()
    step_torch(ref, params, grads[:N])
    ref.eval()
    state = funcopt.torch.state_from_torch(ref, jax_params(params))
    assert not bool(state.train_mode) and int(state.k) == N
    y = funcopt.schedule_free_train_params(state, jax_params(params))
    out, state = step_jax(funcopt.schedule_free_adamw(**SF_ADAMW), y, state, grads[N:],
                          jnp.float32)
    dev, _ = compare(out, full_params)
    assert dev <= TOL


# -- grokadamw, optimi, galore-torch -------------------------------------------------------

grokadamw = reference("grokadamw")
optimi = reference("optimi")
galore_torch = reference("galore_torch")

GROK = dict(learning_rate=3e-3, b1=0.85, b2=0.99, eps=1e-8, weight_decay=0.05, alpha_init=0.9,
            lamb=1.5, gamma=0.2, grokking_signal_decay_rate=0.1, gradient_clipping=0.0)
STABLE = dict(learning_rate=3e-3, b1=0.9, b2=0.99, weight_decay=0.05, eps=1e-6,
              decouple_lr=False, max_lr=None, kahan_sum=None)
GALORE_SHAPES = ((), (7,), (2, 3, 4), (6, 4), (3, 5))  # the 2-D targets last (group order)
GALORE = dict(rank=2, update_proj_gap=10, scale=0.5)


def _grok(kw):
    return lambda params: grokadamw.GrokAdamW(
        params, lr=kw["learning_rate"], betas=(kw["b1"], kw["b2"]),
        **{k: kw[k] for k in ("eps", "weight_decay", "alpha_init", "lamb", "gamma",
                              "grokking_signal_decay_rate", "gradient_clipping")})


def _stable(kw):
    return lambda params: optimi.StableAdamW(
        params, lr=kw["learning_rate"], betas=(kw["b1"], kw["b2"]),
        **{k: kw[k] for k in ("weight_decay", "eps", "decouple_lr", "max_lr", "kahan_sum")})


def _targets_last(params):
    return [p for p in params if p.ndim != 2], [p for p in params if p.ndim == 2]


PACKAGES = [
    _pair("grokadamw", funcopt.grokadamw, GROK, _grok(GROK),
          {"lr": 1e-3, "weight_decay": 0.0}, bitwise=True),
    _pair("grokadamw-clipped", funcopt.grokadamw, {**GROK, "gradient_clipping": 1.0},
          _grok({**GROK, "gradient_clipping": 1.0}), {"gamma": 0.0}),
    _pair("stable_adamw", funcopt.stable_adamw, STABLE, _stable(STABLE),
          {"weight_decay": 0.0}),
    _pair("stable_adamw-decouple_lr", funcopt.stable_adamw,
          {**STABLE, "decouple_lr": True, "max_lr": 5e-3},
          _stable({**STABLE, "decouple_lr": True, "max_lr": 5e-3}), {"eps": 1e-5}),
    _pair("stable_adamw-bf16-kahan", funcopt.stable_adamw, STABLE, _stable(STABLE),
          {"weight_decay": 0.0}, dtype="bfloat16"),
    _pair("galore_adamw", funcopt.galore_adamw,
          dict(learning_rate=1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.0,
               svd=funcopt.torch.torch_svd, proj_type="std", **GALORE),
          lambda groups: galore_torch.GaLoreAdamW(groups, lr=1e-2, betas=(0.9, 0.99), eps=1e-6,
                                                  no_deprecation_warning=True),
          {**GALORE, "proj_type": "std"}, shapes=GALORE_SHAPES, split=_targets_last,
          grouped=True),
    _pair("galore_adafactor", funcopt.galore_adafactor,
          dict(learning_rate=1e-2, relative_step=False, scale_parameter=False, beta1=0.9,
               svd=funcopt.torch.torch_svd, proj_type="full", **GALORE),
          lambda groups: galore_torch.GaLoreAdafactor(groups, lr=1e-2, relative_step=False,
                                                      scale_parameter=False, beta1=0.9),
          {**GALORE, "proj_type": "full"}, shapes=GALORE_SHAPES, split=_targets_last,
          grouped=True),
]


@pytest.mark.parametrize(("pair", "bitwise"), PACKAGES)
def test_grokadamw_stable_adamw_galore(pair, bitwise):
    check(pair, bitwise)


def _jax_svd(a):
    import jax.numpy as jnp
    return jnp.linalg.svd(a, full_matrices=False)


@pytest.mark.parametrize("name", ["AdamW", "Adafactor"])
def test_galore_optimizer_reprojects_with_torchs_svd(name):
    """funcopt.torch.Optimizer's GaLore defaults to torch's SVD: through four re-projections
    of wide, tall and square targets it stays with galore-torch; JAX's SVD, passed
    explicitly, does not (MKL and JAX pick some singular vectors' signs differently)."""
    import numpy as np
    from bridge_parity import rel, step_torch, torch_params
    rng = np.random.default_rng(0)
    shapes = [(4, 9), (3, 8), (8, 5), (6, 6)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(12)]
    galore = dict(rank=2, update_proj_gap=3, scale=0.5, proj_type="std")
    if name == "AdamW":
        fn, kw = funcopt.galore_adamw, dict(lr=1e-2, weight_decay=0.0)
        reference_class, ref_kw = galore_torch.GaLoreAdamW, dict(no_deprecation_warning=True)
    else:
        fn = funcopt.galore_adafactor
        kw = dict(lr=1e-2, relative_step=False, scale_parameter=False, beta1=0.9)
        reference_class, ref_kw = galore_torch.GaLoreAdafactor, dict(
            relative_step=False, scale_parameter=False, beta1=0.9)
    ref_params = torch_params(init)
    step_torch(reference_class([{"params": ref_params, **galore}], lr=1e-2, **ref_kw),
               ref_params, grads)
    devs = {}
    for label, svd in (("torch (default)", {}), ("jax", {"svd": _jax_svd})):
        params = torch_params(init)
        opt = funcopt.torch.Optimizer(params, fn, **kw, **galore, **svd)
        assert (opt.defaults["svd"] is funcopt.torch.torch_svd) == (not svd)
        step_torch(opt, params, grads)
        devs[label] = max(rel(a, b) for a, b in zip(params, ref_params, strict=True))
    print(f"GaLore{name} through Optimizer, 12 steps, 4 re-projections, against galore-torch: "
          + ", ".join(f"{k} SVD {v:.1e}" for k, v in devs.items()))
    assert devs["torch (default)"] <= TOL
    assert devs["jax"] > 1e-4, devs  # the signs do differ on this problem


def test_galore_groups_as_the_trainer_makes_them():
    """The Trainer's GaLore groups: 2-D non-targets (an embedding) in a plain group, targets
    in a group with ``rank``. funcopt's Optimizer takes ``mask=False`` on the plain group,
    steps with galore-torch, and maps a galore-torch state dict's rank-less group to it."""
    import numpy as np
    from bridge_parity import rel, step_torch, torch_params
    rng = np.random.default_rng(1)
    shapes = [(6, 4), (4,), (5, 3), (3, 7)]  # embedding, bias | two targets
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(8)]
    galore = dict(rank=2, update_proj_gap=3, scale=0.5, proj_type="std")

    def reference_run(params, steps):
        ref = galore_torch.GaLoreAdamW([{"params": params[:2]}, {"params": params[2:], **galore}],
                                       lr=1e-2, no_deprecation_warning=True)
        step_torch(ref, params, steps)
        return ref

    ref_params = torch_params(init)
    reference_run(ref_params, grads)
    params = torch_params(init)
    opt = funcopt.torch.Optimizer([{"params": params[:2], "mask": False},
                                   {"params": params[2:]}], funcopt.galore_adamw, lr=1e-2,
                                  weight_decay=0.0, **galore)
    step_torch(opt, params, grads)
    assert set(opt.state[params[0]]) == {"step", "exp_avg", "exp_avg_sq"}  # not projected
    dev = max(rel(a, b) for a, b in zip(params, ref_params, strict=True))
    halfway = torch_params(init)
    ref = reference_run(halfway, grads[:4])
    loaded = funcopt.torch.Optimizer([{"params": halfway[:2]}, {"params": halfway[2:]}],
                                     funcopt.galore_adamw, lr=1e-2, weight_decay=0.0, **galore)
    loaded.load_state_dict(ref.state_dict())
    assert [g["mask"] for g in loaded.param_groups] == [False, True]
    step_torch(loaded, halfway, grads[4:])
    dev_loaded = max(rel(a, b) for a, b in zip(halfway, ref_params, strict=True))
    print(f"GaLoreAdamW with the Trainer's groups: {dev:.1e}, continued from its state dict "
          f"{dev_loaded:.1e}")
    assert dev <= TOL and dev_loaded <= TOL


def test_grokadamw_state_dict_by_position_and_its_limit():
    """GrokAdamW's state dict keys its state by tensor inside the param groups: funcopt's
    Optimizer maps it by position, and refuses when a parameter never stepped (the order is
    then unknown)."""
    import numpy as np
    from bridge_parity import torch_params
    params = torch_params([np.ones(3, np.float32), np.ones((2, 2), np.float32)])
    ref = grokadamw.GrokAdamW(params, lr=1e-3)
    params[1].grad = torch.ones(2, 2)
    ref.step()  # only the second parameter has state
    saved = ref.state_dict()
    assert "state" in saved["param_groups"][0] and not saved["state"]
    opt = funcopt.torch.Optimizer(torch_params(params), funcopt.grokadamw, lr=1e-3)
    with pytest.raises(ValueError, match="for 1 of its 2 parameters"):
        opt.load_state_dict(saved)
    state = funcopt.torch.state_from_torch(ref, [np.ones(3, np.float32),
                                                 np.ones((2, 2), np.float32)])
    assert [int(s) for s in state.step] == [0, 1]
