"""Step time of funcopt.torch.AdamW against transformers.AdamW and torch.optim.AdamW.

About 25M float32 parameters in 40 GPT-2-like tensors (token and position embeddings, three
blocks of layer norms, qkv/proj/fc/fc_proj weights and biases, a final layer norm). Every
optimizer has its own copy of the parameters and fixed gradients; the optimizers take turns
step by step (interleaved, so that machine noise hits all alike) and each reports the median
of its step times. Run::

    .venv/bin/python -m benchmarks.torch_adamw [--rounds 15] [--blocks 3]

On a CPU, torch's OpenMP threads and XLA's thread pool spin-wait for each other after their
own work, which slows torch's optimizers too when they share a process with JAX;
``OMP_WAIT_POLICY=PASSIVE`` in the environment (it must be set before torch is imported) stops
torch's side of it and gives the fairer comparison. The header says which policy was used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch

import funcopt.torch

D, VOCAB, CONTEXT = 768, 4096, 1024


def gpt2_like_shapes(blocks: int) -> list[tuple[int, ...]]:
    shapes = [(VOCAB, D), (CONTEXT, D)]
    for _ in range(blocks):
        shapes += [(D,), (D,), (D, 3 * D), (3 * D,), (D, D), (D,),
                   (D,), (D,), (D, 4 * D), (4 * D,), (4 * D, D), (D,)]
    return shapes + [(D,), (D,)]


def optimizers() -> dict:
    """name -> factory(params); the same AdamW hyperparameters everywhere."""
    import transformers

    kw = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
    return {
        "funcopt.torch.AdamW": lambda ps: funcopt.torch.AdamW(ps, eps=1e-6, **kw),
        "transformers.AdamW": lambda ps: transformers.AdamW(ps, eps=1e-6, **kw),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, eps=1e-8, foreach=True, **kw),
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, eps=1e-8, fused=True, **kw),
    }


def make_params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params


def run(rounds: int, blocks: int, warmup: int = 2) -> dict[str, float]:
    shapes = gpt2_like_shapes(blocks)
    count = sum(torch.Size(s).numel() for s in shapes)
    print(f"{len(shapes)} tensors, {count / 1e6:.1f}M float32 parameters; torch threads "
          f"{torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"{rounds} interleaved rounds after {warmup} warm-up steps (compiles)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers.AdamW is deprecated
        opts = {name: make(make_params(shapes)) for name, make in optimizers().items()}
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
    times = {name: [] for name in opts}
    names = list(opts)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            opts[name].step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(medians: dict[str, float]) -> None:
    ours = medians["funcopt.torch.AdamW"]
    print(f"{'optimizer':<22}{'ms/step':>10}{'funcopt / this':>16}")
    for name, t in medians.items():
        print(f"{name:<22}{1e3 * t:>10.1f}{ours / t:>16.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per optimizer")
    parser.add_argument("--blocks", type=int, default=3, help="transformer blocks (7.1M each)")
    args = parser.parse_args(argv)
    report(run(args.rounds, args.blocks))


if __name__ == "__main__":
    main()
