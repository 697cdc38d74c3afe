"""funcopt's torch optimizers against the torch optimizers they replace, in a plain process.

``python -m benchmarks.torch_bridge [--rounds 30] [--budget 60] [--only adamw,adafactor,...]``

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
``funcopt.lion`` / bitsandbytes' 32-bit ``Lion`` (<= 1.2 each). bitsandbytes lives in
``.venv5``: from another environment the Lion pair runs there, in a subprocess.
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


def _funcopt(fn_name, **kw):
    def make(params):
        import funcopt
        import funcopt.torch
        return funcopt.torch.Optimizer(params, getattr(funcopt, fn_name), lr=LR, **kw)
    return make


def _dropin(name, **kw):
    def make(params):
        import funcopt.torch
        return getattr(funcopt.torch, name)(params, **kw)
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
    return bitsandbytes.optim.Lion(params, lr=1e-4, weight_decay=WD, optim_bits=32)


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
    "Optimizer(lion)": _funcopt("lion", weight_decay=WD),
    "bnb.Lion(32-bit)": _bnb_lion,
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


# -- timing ----------------------------------------------------------------------------------


def _params(grads, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s.shape, generator=g) * 0.02) for s in grads]
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad
    return params


def time_steps(names, rounds: int, budget: float, warmup: int = 2, seed: int = 0) -> dict:
    """``{name: [seconds per step, one per round]}``, the optimizers interleaved."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes()]
    opts = {name: OPTIMIZERS[name](_params(grads, seed)) for name in names}
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
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


def run_groups(groups, rounds, budget) -> list[dict]:
    rows = []
    for group in groups:
        pairs = GROUPS[group]
        names = list(dict.fromkeys(n for p in pairs for n in (p.ours, p.peer)))
        rows += ratios(time_steps(names, rounds, budget), pairs)
    return rows


def _importable(module) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def run_elsewhere(groups, rounds, budget) -> list[dict]:
    """The groups that need bitsandbytes, in ``.venv5`` (a subprocess), if it is there."""
    python = ROOT / ".venv5" / "bin" / "python"
    if not groups or not python.exists():
        return []
    command = [str(python), "-m", "benchmarks.torch_bridge", "--json", "--only",
               ",".join(groups), "--rounds", str(rounds), "--budget", str(budget)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
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
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups of {list(GROUPS)}")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON only")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise SystemExit(f"unknown groups {unknown}; choose from {list(GROUPS)}")
    here = [g for g in groups if g != "lion" or _importable("bitsandbytes")]
    rows = run_groups(here, args.rounds, args.budget)
    rows += run_elsewhere([g for g in groups if g not in here], args.rounds, args.budget)
    if args.json:
        print(json.dumps(rows))
    else:
        print(header())
        print(table(rows))
    return rows


if __name__ == "__main__":
    main()
