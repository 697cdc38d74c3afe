"""``benchmarks/torch_bridge.py``'s menu groups time what they say: each reference is the class
transformers 5.23's Trainer builds for the group's name, with the Trainer's hyperparameters
(default TrainingArguments, the benchmark's learning rate and weight decay), and funcopt's side
runs the same hyperparameters (the bridge's own reference -> funcopt mapping)."""

import sys
from pathlib import Path

import pytest
from conftest import reference

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's benchmarks
from benchmarks import torch_bridge as tb  # noqa: E402
from funcopt.torch import _registry  # noqa: E402

torch = reference("torch")
transformers = reference("transformers")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4))


def _trainers(group, model):
    """The optimizer the Trainer builds for ``optim=group`` on ``model`` (the decay group)."""
    args = transformers.TrainingArguments(
        "unused", optim=group, learning_rate=tb.LR, weight_decay=tb.WD, report_to=[],
        use_cpu=True, optim_target_modules="all-linear" if "galore" in group else None)
    cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(args, model)
    if "params" not in kwargs:  # the Trainer's create_optimizer: the decay group
        kwargs["params"] = [{"params": list(model.parameters()),
                             "weight_decay": args.weight_decay}]
    return cls(**kwargs)


def _settings(group) -> dict:
    return {k: v for k, v in group.items() if k != "params"}


@pytest.mark.parametrize("group", list(tb.MENU_PAIRS))
def test_reference_is_the_trainers(group):
    ours, peer = tb.MENU_PAIRS[group]
    model = _model()
    expected = _trainers(group, model)
    if hasattr(expected, "train"):  # schedule-free: the benchmark steps in train mode
        expected.train()
    got = tb.OPTIMIZERS[peer](list(model.parameters()))
    assert type(got) is type(expected)
    assert len(got.param_groups) == len(expected.param_groups)
    for g, e in zip(got.param_groups, expected.param_groups, strict=True):
        assert [id(p) for p in g["params"]] == [id(p) for p in e["params"]]
        assert _settings(g) == _settings(e)


@pytest.mark.parametrize("group", list(tb.MENU_PAIRS))
def test_funcopt_side_runs_the_references_hyperparameters(group):
    ours, peer = tb.MENU_PAIRS[group]
    params = list(_model().parameters())
    ref = tb.OPTIMIZERS[peer](params)
    opt = tb.OPTIMIZERS[ours]([torch.nn.Parameter(p.detach().clone()) for p in params])
    layout, entry = _registry.reference_of(ref)
    assert layout.optimizer_fn is opt._optimizer_fn
    assert len(opt.param_groups) == len(ref.param_groups)
    for g, r in zip(opt.param_groups, ref.param_groups, strict=True):
        expected, got = entry.group_config(ref, r), opt.group_config(g)
        # the Optimizer takes GaLore's own targets (every 2-D tensor): the same ones here
        mask = expected.pop("mask", None)
        assert mask is None or mask == all(p.ndim == 2 for p in g["params"])
        assert set(expected) <= set(got)
        assert {k: got[k] for k in expected} == expected


def test_fresh_gradients_are_restored_after_every_step(monkeypatch):
    """``time_steps(fresh=True)``: every step of every optimizer sees the original gradients,
    though the optimizers overwrite them (as schedulefree's do)."""
    seen = {}

    def overwriting(name):
        def make(params):
            class Overwrites:
                def step(self):
                    seen.setdefault(name, []).append([p.grad.clone() for p in params])
                    for p in params:
                        p.grad.mul_(-3.0)
            return Overwrites()
        return make

    monkeypatch.setattr(tb, "shapes", lambda: [(3,), (2, 2)])
    monkeypatch.setattr(tb, "OPTIMIZERS", {"a": overwriting("a"), "b": overwriting("b")})
    times = tb.time_steps(["a", "b"], rounds=6, budget=60.0, warmup=2, fresh=True)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6}
    first = seen["a"][0]
    for name in ("a", "b"):
        assert len(seen[name]) == 8
        for grads in seen[name]:
            assert all(torch.equal(g, f) for g, f in zip(grads, first, strict=True))
