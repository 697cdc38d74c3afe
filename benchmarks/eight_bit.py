"""funcopt's 8-bit optimizers: step time against float32 ``funcopt.adamw`` and against
bitsandbytes 0.50.2 on CPU, and state bytes per parameter.

``python -m benchmarks.eight_bit [--params 10m|28m] [--rounds N] [--output FILE]``

Every optimizer updates its own copy of the same GPT-2-shaped leaves (``10m``: one block's
matrices and a 4096-token embedding, 10.2M parameters in 5 leaves; ``28m``: three blocks and
an 8192-token embedding, 27.5M in 13) with fixed gradients. A JAX step is ``update`` +
``optax.apply_updates`` in one ``jit`` with parameters and state donated, compiled ahead of
time; a bitsandbytes step is ``optimizer.step()`` with ``.grad`` set (only when bitsandbytes
is importable: run it with the ``.venv5`` interpreter for that column). Rounds interleave the
optimizers in a shuffled order; times are medians. State bytes count every state array
(bitsandbytes: its per-parameter tensors but the shared maps).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

SIZES = {"10m": (1, 4096), "28m": (3, 8192)}
D = 768
NAMES = ["adamw", "adamw_8bit", "lion_8bit", "ademamix_8bit", "rmsprop_8bit"]
BNB = {"adamw_8bit": ("AdamW", {}), "lion_8bit": ("Lion", {}),
       "ademamix_8bit": ("AdEMAMix", {}), "rmsprop_8bit": ("RMSprop", {})}


def shapes(size: str) -> list[tuple[int, int]]:
    blocks, vocab = SIZES[size]
    return [(vocab, D)] + [s for _ in range(blocks)
                           for s in ((D, 3 * D), (D, D), (D, 4 * D), (4 * D, D))]


def jax_runner(name: str, params_np, grads_np):
    import jax
    import optax

    import funcopt

    opt = getattr(funcopt, name)(learning_rate=1e-3)
    params = [jax.numpy.asarray(p) for p in params_np]
    grads = [jax.numpy.asarray(g) for g in grads_np]
    state = opt.init(params)

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    box = [params, state]

    def run():
        box[0], box[1] = compiled(box[0], box[1], grads)
        jax.block_until_ready(box)

    n = sum(p.size for p in params_np)
    return run, sum(x.nbytes for x in jax.tree.leaves(state)) / n


def bnb_runner(name: str, params_np, grads_np):
    import bitsandbytes as bnb
    import torch

    cls, kwargs = BNB[name]
    params = [torch.nn.Parameter(torch.tensor(p)) for p in params_np]
    for p, g in zip(params, grads_np, strict=True):
        p.grad = torch.tensor(g)
    opt = getattr(bnb.optim, cls)(params, lr=1e-3, optim_bits=8, **kwargs)
    opt.step()
    n = sum(p.size for p in params_np)
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values()
                      for k, v in s.items() if torch.is_tensor(v) and k not in ("qmap1", "qmap2"))
    return opt.step, state_bytes / n


def measure(size: str, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes(size)]
    grads = [(1e-2 * rng.standard_normal(s)).astype(np.float32) for s in shapes(size)]
    runners = {name: jax_runner(name, params, grads) for name in NAMES}
    try:
        import bitsandbytes  # noqa: F401
        runners.update({f"bitsandbytes {name}": bnb_runner(name, params, grads) for name in BNB})
    except ImportError:
        pass
    times = {name: [] for name in runners}
    for run, _ in runners.values():
        run()  # warm-up
    for _ in range(rounds):
        order = list(runners)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            runners[name][0]()
            times[name].append(time.perf_counter() - start)
    return {"params": sum(p.size for p in params),
            "rows": {name: (statistics.median(t), runners[name][1]) for name, t in times.items()}}


def table(result: dict) -> str:
    base = result["rows"]["adamw"][0]
    lines = [f"8-bit optimizers, {result['params'] / 1e6:.1f}M float32 parameters, CPU", "",
             "| optimizer | step (ms) | vs funcopt.adamw | vs bitsandbytes | state bytes/param |",
             "|---|---|---|---|---|"]
    for name, (t, per_param) in result["rows"].items():
        ref = result["rows"].get(f"bitsandbytes {name}")
        vs_bnb = f"{t / ref[0]:.2f}x" if ref else "-"
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / base:.2f}x | {vs_bnb} | {per_param:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", choices=sorted(SIZES), default="10m")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    text = table(measure(args.params, args.rounds))
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
