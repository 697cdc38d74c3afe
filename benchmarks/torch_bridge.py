"""funcopt's torch optimizers against the torch optimizers they replace, in a plain process.

``python -m benchmarks.torch_bridge [--rounds 30] [--budget 60] [--menu-budget S]
[--only adamw,adafactor,...]``

The issue-15 setup: ~12.6M float32 parameters in 40 GPT-2-shaped tensors (token and position
embeddings, three blocks of layer norms and qkv/proj/fc/fc_proj weights and biases, a final
layer norm; ``d_model`` 512, a 5120-token vocabulary), fixed gradients, every optimizer on its
own copy of the parameters. Each round steps every optimizer once, in a shuffled order, so that
the machine's load hits all of them alike; a pair's ratio is the median (and the minimum) of
its per-round ratios, next to the ratio of the minimum step times. Nothing is set in the
environment: torch runs its default OpenMP threads and wait policy, as a user's process does.

Pairs (funcopt / reference, goal): ``funcopt.torch.AdamW`` / ``torch.optim.AdamW(fused=True)``
(<= 1.1) and / ``transformers.AdamW`` (<= 0.5); ``funcopt.torch.Adafactor`` /
``transformers.Adafactor`` (<= 0.8); ``funcopt.torch.Optimizer`` running ``funcopt.adamw_torch``
/ ``torch.optim.AdamW(fused=True)``, ``funcopt.sgd`` / ``torch.optim.SGD(foreach=True)`` and
``funcopt.lion`` / bitsandbytes' 32-bit ``Lion`` (<= 1.2 each).

The rest of the Trainer's menu (issue 13, goal <= 1.0: the drop-ins faster than the
references), one group per Trainer name (:data:`MENU_PAIRS`): ``funcopt.torch.Optimizer``
running ``funcopt.<name>`` (the schedule-free drop-ins ``AdamWScheduleFree``,
``SGDScheduleFree``, ``RAdamScheduleFree``) against the class the transformers 5.23 Trainer
builds for that name, with the kwargs it passes at default TrainingArguments (bitsandbytes'
32-bit ``AdEMAMix``/``RMSprop`` and 8-bit ``AdamW``/``Lion``/``AdEMAMix``/``RMSprop``,
schedulefree's classes in train mode, ``GrokAdamW``, optimi's ``StableAdamW``, galore-torch's
``GaLoreAdamW``/``GaLoreAdafactor`` with the Trainer's rank 128, gap 200, scale 0.25 on every
2-D tensor). These groups restore each optimizer's own gradients after each step (some
references overwrite ``p.grad``), warm up 3 steps (5 for RAdam's silent phase) and take
``--menu-budget`` seconds each. A group whose reference package is missing here
(:data:`NEEDS`: bitsandbytes, schedulefree, grokadamw, optimi, galore_torch live in
``.venv5``) runs there, in a subprocess.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

D, VOCAB, CONTEXT, BLOCKS = 512, 5120, 1024, 3
LR, WD = 1e-3, 0.01
ROOT = Path(__file__).resolve().parent.parent


def shapes() -> list[tuple[int, ...]]:
    """The 40 tensors' shapes (GPT-2's layout, Conv1D weights (in, out))."""
    out = [(VOCAB, D), (CONTEXT, D)]
    for _ in range(BLOCKS):
        out += [(D,), (D,), (D, 3 * D), (3 * D,), (D, D), (D,),
                (D,), (D,), (D, 4 * D), (4 * D,), (4 * D, D), (D,)]
    return out + [(D,), (D,)]


# -- the optimizers ---------------------------------------------------------------------


def _funcopt(fn_name, groups=None, **kw):
    def make(params):
        import funcopt
        import funcopt.torch
        params = groups(params) if groups else params
        return funcopt.torch.Optimizer(params, getattr(funcopt, fn_name), lr=LR, **kw)
    return make


def _dropin(name, train=False, **kw):
    def make(params):
        import funcopt.torch
        opt = getattr(funcopt.torch, name)(params, **kw)
        if train:  # schedule-free: step() raises outside train mode
            opt.train()
        return opt
    return make


def _torch(name, **kw):
    def make(params):
        import torch
        return getattr(torch.optim, name)(params, lr=LR, **kw)
    return make


def _transformers(name, **kw):
    def make(params):
        from transformers import optimization
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers.AdamW is deprecated
            return getattr(optimization, name)(params, **kw)
    return make


def _bnb_lion(params):
    import bitsandbytes
    return bitsandbytes.optim.Lion(params, lr=LR, betas=(0.9, 0.999), weight_decay=WD,
                                   optim_bits=32)  # as the Trainer builds it (lion_32bit)


# -- the rest of the Trainer's menu (issue 13), each reference class built with the kwargs
# transformers 5.23's Trainer passes it (``trainer_optimizer.py``) at the default
# TrainingArguments (adam_beta1/2 0.9/0.999, adam_epsilon 1e-8, warmup_steps 0, no
# optim_args), learning_rate LR and weight decay WD where the class takes it (the Trainer's
# decay group). funcopt's side gets the same hyperparameters.

TRAINER_ADAM = dict(betas=(0.9, 0.999), eps=1e-8)
TRAINER_ADEMAMIX = dict(betas=(0.9, 0.999, 0.9999), alpha=5.0, eps=1e-8)
FUNCOPT_ADEMAMIX = dict(b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8, weight_decay=WD)
TRAINER_SCHEDULE_FREE = dict(weight_decay=WD, weight_lr_power=2.0, r=0.0)
TRAINER_GROK = dict(alpha_init=0.98, lamb=2.0, gamma=0.1, grokking_signal_decay_rate=0.1,
                    gradient_clipping=1.0)
# The Trainer's GaLore defaults; every 2-D tensor is a target (its projection recomputed by an
# SVD at steps 0, 200, 400, ...: the warm-up's first step, never a timed one).
GALORE = dict(rank=128, update_proj_gap=200, scale=0.25, proj_type="std")


def galore_groups(params) -> list[dict]:
    """The Trainer's GaLore param groups: the other tensors, then the targets with GALORE."""
    return [{"params": [p for p in params if p.ndim != 2]},
            {"params": [p for p in params if p.ndim == 2], **GALORE}]


def _reference(module, name, groups=None, train=False, **kw):
    """``module.name(params, lr=LR, **kw)`` (``module`` dotted, imported when built)."""
    def make(params):
        import importlib
        cls = getattr(importlib.import_module(module), name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # galore-torch's AdamW
            opt = cls(groups(params) if groups else params, lr=LR, **kw)
        if train:
            opt.train()
        return opt
    return make


MENU_OPTIMIZERS: dict[str, Callable] = {
    "Optimizer(ademamix)": _funcopt("ademamix", **FUNCOPT_ADEMAMIX),
    "bnb.AdEMAMix(32-bit)": _reference("bitsandbytes.optim", "AdEMAMix", optim_bits=32,
                                       is_paged=False, weight_decay=WD, **TRAINER_ADEMAMIX),
    "Optimizer(rmsprop_bnb)": _funcopt("rmsprop_bnb", weight_decay=WD),
    "bnb.RMSprop(32-bit)": _reference("bitsandbytes.optim", "RMSprop", optim_bits=32,
                                      weight_decay=WD),
    "funcopt.torch.AdamWScheduleFree": _dropin("AdamWScheduleFree", train=True, lr=LR,
                                               warmup_steps=0, **TRAINER_ADAM,
                                               **TRAINER_SCHEDULE_FREE),
    "schedulefree.AdamWScheduleFree": _reference("schedulefree", "AdamWScheduleFree", train=True,
                                                 warmup_steps=0, **TRAINER_ADAM,
                                                 **TRAINER_SCHEDULE_FREE),
    "funcopt.torch.SGDScheduleFree": _dropin("SGDScheduleFree", train=True, lr=LR,
                                             warmup_steps=0, **TRAINER_SCHEDULE_FREE),
    "schedulefree.SGDScheduleFree": _reference("schedulefree", "SGDScheduleFree", train=True,
                                               warmup_steps=0, **TRAINER_SCHEDULE_FREE),
    "funcopt.torch.RAdamScheduleFree": _dropin("RAdamScheduleFree", train=True, lr=LR,
                                               **TRAINER_ADAM, **TRAINER_SCHEDULE_FREE),
    "schedulefree.RAdamScheduleFree": _reference("schedulefree", "RAdamScheduleFree", train=True,
                                                 **TRAINER_ADAM, **TRAINER_SCHEDULE_FREE),
    "Optimizer(grokadamw)": _funcopt("grokadamw", weight_decay=WD, **TRAINER_GROK),
    "grokadamw.GrokAdamW": _reference("grokadamw", "GrokAdamW", weight_decay=WD,
                                      **TRAINER_GROK),
    "Optimizer(stable_adamw)": _funcopt("stable_adamw", b1=0.9, b2=0.999, eps=1e-8,
                                        weight_decay=WD, decouple_lr=False, max_lr=None,
                                        kahan_sum=None),
    "optimi.StableAdamW": _reference("optimi", "StableAdamW", weight_decay=WD, decouple_lr=False,
                                     max_lr=None, kahan_sum=None, **TRAINER_ADAM),
    "Optimizer(galore_adamw)": _funcopt("galore_adamw", groups=galore_groups),
    "galore_torch.GaLoreAdamW": _reference("galore_torch", "GaLoreAdamW", groups=galore_groups,
                                           no_deprecation_warning=True),
    "Optimizer(galore_adafactor)": _funcopt("galore_adafactor", groups=galore_groups,
                                            scale_parameter=False, relative_step=False),
    "galore_torch.GaLoreAdafactor": _reference("galore_torch", "GaLoreAdafactor",
                                               groups=galore_groups, scale_parameter=False,
                                               relative_step=False),
    "Optimizer(adamw_8bit)": _funcopt("adamw_8bit", b1=0.9, b2=0.999, eps=1e-8,
                                      weight_decay=WD),
    "bnb.AdamW(8-bit)": _reference("bitsandbytes.optim", "AdamW", optim_bits=8, is_paged=False,
                                   weight_decay=WD, **TRAINER_ADAM),
    "Optimizer(lion_8bit)": _funcopt("lion_8bit", b1=0.9, b2=0.999, weight_decay=WD),
    "bnb.Lion(8-bit)": _reference("bitsandbytes.optim", "Lion", optim_bits=8, is_paged=False,
                                  betas=(0.9, 0.999), weight_decay=WD),
    "Optimizer(ademamix_8bit)": _funcopt("ademamix_8bit", **FUNCOPT_ADEMAMIX),
    "bnb.AdEMAMix(8-bit)": _reference("bitsandbytes.optim", "AdEMAMix", optim_bits=8,
                                      is_paged=False, weight_decay=WD, **TRAINER_ADEMAMIX),
    "Optimizer(rmsprop_8bit)": _funcopt("rmsprop_8bit", weight_decay=WD),
    "bnb.RMSprop(8-bit)": _reference("bitsandbytes.optim", "RMSprop", optim_bits=8,
                                     weight_decay=WD),
}


HF_ADAMW = dict(lr=LR, betas=(0.9, 0.999), eps=1e-6, weight_decay=WD)
OPTIMIZERS: dict[str, Callable] = {
    "funcopt.torch.AdamW": _dropin("AdamW", **HF_ADAMW),
    "transformers.AdamW": _transformers("AdamW", no_deprecation_warning=True, **HF_ADAMW),
    "torch.AdamW(fused)": _torch("AdamW", weight_decay=WD, fused=True),
    "torch.AdamW(foreach)": _torch("AdamW", weight_decay=WD, foreach=True),
    "funcopt.torch.Adafactor": _dropin("Adafactor"),
    "transformers.Adafactor": _transformers("Adafactor"),
    "Optimizer(adamw_torch)": _funcopt("adamw_torch", weight_decay=WD),
    "Optimizer(sgd)": _funcopt("sgd", momentum=0.9, weight_decay=WD),
    "torch.SGD(foreach)": _torch("SGD", momentum=0.9, weight_decay=WD, foreach=True),
    "Optimizer(lion)": _funcopt("lion", b1=0.9, b2=0.999, weight_decay=WD),
    "bnb.Lion(32-bit)": _bnb_lion,
    **MENU_OPTIMIZERS,
}


@dataclasses.dataclass(frozen=True)
class Pair:
    ours: str
    peer: str
    goal: float


# group name -> the pairs it times (the optimizers of a group run interleaved together).
GROUPS = {
    "adamw": [Pair("funcopt.torch.AdamW", "torch.AdamW(fused)", 1.1),
              Pair("funcopt.torch.AdamW", "transformers.AdamW", 0.5)],
    "adafactor": [Pair("funcopt.torch.Adafactor", "transformers.Adafactor", 0.8)],
    "adamw_torch": [Pair("Optimizer(adamw_torch)", "torch.AdamW(fused)", 1.2),
                    Pair("Optimizer(adamw_torch)", "torch.AdamW(foreach)", 1.2)],
    "sgd": [Pair("Optimizer(sgd)", "torch.SGD(foreach)", 1.2)],
    "lion": [Pair("Optimizer(lion)", "bnb.Lion(32-bit)", 1.2)],
}
# The rest of the Trainer's menu (issue 13: "on CPU, the torch drop-ins are faster than the
# reference classes"): group name (the Trainer's) -> (funcopt, reference), goal 1.0.
MENU_PAIRS = {
    "ademamix": ("Optimizer(ademamix)", "bnb.AdEMAMix(32-bit)"),
    "rmsprop_bnb": ("Optimizer(rmsprop_bnb)", "bnb.RMSprop(32-bit)"),
    "schedule_free_adamw": ("funcopt.torch.AdamWScheduleFree", "schedulefree.AdamWScheduleFree"),
    "schedule_free_sgd": ("funcopt.torch.SGDScheduleFree", "schedulefree.SGDScheduleFree"),
    "schedule_free_radam": ("funcopt.torch.RAdamScheduleFree", "schedulefree.RAdamScheduleFree"),
    "grokadamw": ("Optimizer(grokadamw)", "grokadamw.GrokAdamW"),
    "stable_adamw": ("Optimizer(stable_adamw)", "optimi.StableAdamW"),
    "galore_adamw": ("Optimizer(galore_adamw)", "galore_torch.GaLoreAdamW"),
    "galore_adafactor": ("Optimizer(galore_adafactor)", "galore_torch.GaLoreAdafactor"),
    "adamw_8bit": ("Optimizer(adamw_8bit)", "bnb.AdamW(8-bit)"),
    "lion_8bit": ("Optimizer(lion_8bit)", "bnb.Lion(8-bit)"),
    "ademamix_8bit": ("Optimizer(ademamix_8bit)", "bnb.AdEMAMix(8-bit)"),
    "rmsprop_bnb_8bit": ("Optimizer(rmsprop_8bit)", "bnb.RMSprop(8-bit)"),
}
GROUPS.update({g: [Pair(ours, peer, 1.0)] for g, (ours, peer) in MENU_PAIRS.items()})
# Warm-up steps of the menu's groups (default 3: compilation): schedulefree's RAdam steps with
# lr 0, skipping its denominator, while rho_t <= 4 (its first 4 steps at b2 = 0.999).
WARMUP = {"schedule_free_radam": 5}
# The package each group's reference needs: absent here, the group runs in .venv5.
NEEDS = {"lion": "bitsandbytes",
         **{g: peer.split(".")[0].replace("bnb", "bitsandbytes")
            for g, (_, peer) in MENU_PAIRS.items()}}


# -- timing ----------------------------------------------------------------------------------


def _params(grads, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s.shape, generator=g) * 0.02) for s in grads]
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad
    return params


def time_steps(names, rounds: int, budget: float, warmup: int = 2, seed: int = 0,
               fresh: bool = False) -> dict:
    """``{name: [seconds per step, one per round]}``, the optimizers interleaved.

    ``fresh``: every optimizer gets its own gradients, restored after each of its steps
    (outside the timer), as a training loop's backward pass would: some references
    (schedulefree, GrokAdamW's clipping, optimi's foreach path) overwrite ``p.grad``."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes()]
    params = {name: _params([g.clone() for g in grads] if fresh else grads, seed)
              for name in names}
    opts = {name: OPTIMIZERS[name](params[name]) for name in names}

    def restore(name):
        if fresh:
            for p, g in zip(params[name], grads, strict=True):
                p.grad.copy_(g)

    for name, opt in opts.items():
        for _ in range(warmup):
            opt.step()
            restore(name)
    times = {name: [] for name in names}
    order, rng = list(names), random.Random(seed)
    deadline = time.perf_counter() + budget
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            if r >= 5 and time.perf_counter() > deadline:
                break
            rng.shuffle(order)
            for name in order:
                start = time.perf_counter()
                opts[name].step()
                times[name].append(time.perf_counter() - start)
                restore(name)
    finally:
        gc.enable()
    return times


def ratios(times: dict, pairs) -> list[dict]:
    """Per pair: median ms of both, the median/quartiles/min of the per-round ratios and the
    ratio of the minima, the goal and whether both the median and the minima meet it."""
    rows = []
    for pair in pairs:
        a, b = np.asarray(times[pair.ours]), np.asarray(times[pair.peer])
        r = a / b
        q1, med, q3 = np.percentile(r, [25, 50, 75])
        of_minima = a.min() / b.min()
        ok = (med <= pair.goal, of_minima <= pair.goal)
        rows.append({"ours": pair.ours, "peer": pair.peer, "ours_ms": 1e3 * np.median(a),
                     "peer_ms": 1e3 * np.median(b), "ours_min_ms": 1e3 * a.min(),
                     "peer_min_ms": 1e3 * b.min(), "median": med, "q1": q1, "q3": q3,
                     "min_ratio": r.min(), "of_minima": of_minima, "goal": pair.goal,
                     "met": "yes" if all(ok) else ("no" if not any(ok) else "unclear"),
                     "rounds": len(r)})
    return rows


def run_groups(groups, rounds, budget, menu_budget=None) -> list[dict]:
    """The groups' rows, each group timed alone; the menu's groups (:data:`MENU_PAIRS`) with
    ``menu_budget`` seconds (default ``budget``), :data:`WARMUP` warm-up steps and fresh
    gradients (:func:`time_steps`)."""
    rows = []
    for group in groups:
        pairs = GROUPS[group]
        names = list(dict.fromkeys(n for p in pairs for n in (p.ours, p.peer)))
        if group in MENU_PAIRS:
            seconds = budget if menu_budget is None else menu_budget
            times = time_steps(names, rounds, seconds, warmup=WARMUP.get(group, 3), fresh=True)
        else:
            times = time_steps(names, rounds, budget)
        rows += [{**row, "group": group} for row in ratios(times, pairs)]
    return rows


def _importable(module) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def run_elsewhere(groups, rounds, budget, menu_budget=None) -> list[dict]:
    """The groups whose reference package (:data:`NEEDS`) is missing here, in ``.venv5`` (a
    subprocess), if it is there."""
    python = ROOT / ".venv5" / "bin" / "python"
    if not groups or not python.exists():
        return []
    command = [str(python), "-m", "benchmarks.torch_bridge", "--json", "--only",
               ",".join(groups), "--rounds", str(rounds), "--budget", str(budget)]
    if menu_budget is not None:
        command += ["--menu-budget", str(menu_budget)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        print(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
        return []
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows) -> str:
    lines = ["| funcopt | reference | ms (median, min) | reference ms (median, min) "
             "| ratio: median [IQR] of per-round | min per-round | ratio of minima | goal "
             "| met |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['ours']} | {r['peer']} | {r['ours_ms']:.1f}, {r['ours_min_ms']:.1f} "
            f"| {r['peer_ms']:.1f}, {r['peer_min_ms']:.1f} | {r['median']:.2f} "
            f"[{r['q1']:.2f}–{r['q3']:.2f}] | {r['min_ratio']:.2f} | {r['of_minima']:.2f} "
            f"| ≤ {r['goal']:g} | {r['met']} |")
    if any(str(r.get("group", "")).startswith("galore") for r in rows):
        lines += ["", f"GaLore: rank {GALORE['rank']}, every 2-D tensor a target; the timed "
                  "steps exclude re-projections (an SVD per target at steps 0, "
                  f"{GALORE['update_proj_gap']}, ...: only the first warm-up step has one)."]
    return "\n".join(lines)


def header() -> str:
    import torch

    count = sum(int(np.prod(s)) for s in shapes())
    return (f"{len(shapes())} tensors, {count / 1e6:.2f}M float32 parameters; torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY')!r}; load average "
            f"{os.getloadavg()[0]:.1f}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per group after which no round starts (>= 5 rounds)")
    parser.add_argument("--menu-budget", type=float, default=8.0,
                        help="the same for the menu's groups (MENU_PAIRS; default 8: "
                        "make bench's 13 of them take ~3 minutes)")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups of {list(GROUPS)}")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON only")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise SystemExit(f"unknown groups {unknown}; choose from {list(GROUPS)}")
    here = [g for g in groups if g not in NEEDS or _importable(NEEDS[g])]
    rows = run_groups(here, args.rounds, args.budget, args.menu_budget)
    rows += run_elsewhere([g for g in groups if g not in here], args.rounds, args.budget,
                          args.menu_budget)
    if args.json:
        print(json.dumps(rows))
    else:
        print(header())
        print(table(rows))
    return rows


if __name__ == "__main__":
    main()
