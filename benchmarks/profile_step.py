"""Where one ``funcopt.torch`` step's time goes (the profile in ``benchmarks/NOTES.md``).

``python -m benchmarks.profile_step [OPTIMIZER] [REFERENCE] [--steps 30]``

OPTIMIZER and REFERENCE are names from :data:`benchmarks.torch_bridge.OPTIMIZERS` (default
``funcopt.torch.AdamW`` after ``torch.AdamW(fused)``; ``none`` for no reference step), on the
benchmark's 12.6M parameters in 40 tensors. Each timed step follows one step of the reference,
as in the benchmark's interleaved rounds. Timers wrap the pieces of the step (whichever exist
in this version of funcopt.torch): the kernel's direct call, the step scalars, the jitted XLA
call and the wait for it, DLPack imports, the torch views of the new state, the write-back of
the parameters. ``cProfile`` would attribute the time spent in C++ (XLA, the kernel) to the
calling line; these timers measure it. The last line compares the process's CPU time with
the wall time: threads spinning while they wait push it towards the number of CPUs.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def _timer(times, label, fn):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times.setdefault(label, []).append(time.perf_counter() - start)
    return timed


def instrument(times, opt) -> None:
    """Wraps the pieces of a funcopt.torch step (class and module attributes, for good)."""
    import jax

    from funcopt._kernels import _direct as kernel_direct
    from funcopt.torch import _direct, _dlpack, _update

    pieces = [(kernel_direct, "call", "the kernel, called directly"),
              (kernel_direct.Scalars, "__call__", "step scalars (jitted, tabulated)"),
              (_direct, "takes", "which tensors the kernel takes"),
              (type(opt), "direct_stepped", "bookkeeping after the kernel"),
              (_direct, "write", "write-back of the new parameters"),
              (_dlpack, "to_jax", "DLPack imports"),
              (jax, "block_until_ready", "waiting for XLA"),
              (type(opt), "_install", "torch views of the new state"),
              (type(opt), "_inputs", "state/scratch gathering"),
              (type(opt), "step", "total")]
    for owner, name, label in pieces:
        if hasattr(owner, name):
            setattr(owner, name, _timer(times, label, getattr(owner, name)))
    compiled = _update.compiled_update

    def timed_compiled(*args, **kwargs):
        return _timer(times, "the jitted XLA call", compiled(*args, **kwargs))

    _update.compiled_update = timed_compiled


def main(argv=None) -> dict:
    import torch

    from benchmarks import torch_bridge as tb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("optimizer", nargs="?", default="funcopt.torch.AdamW")
    ap.add_argument("reference", nargs="?", default="torch.AdamW(fused)")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in tb.shapes()]
    opt = tb.OPTIMIZERS[args.optimizer](tb._params(grads, 0))
    ref = None if args.reference == "none" else tb.OPTIMIZERS[args.reference](
        tb._params(grads, 0))
    for _ in range(3):
        opt.step()
        if ref is not None:
            ref.step()
    times: dict = {}
    instrument(times, opt)
    cpu = wall = 0.0
    for _ in range(args.steps):
        if ref is not None:
            ref.step()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        opt.step()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        wall += t1 - t0
        cpu += r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    print(f"{args.optimizer}, each step after one of {args.reference}; {tb.header()}")
    per_step = {k: sum(v) / args.steps for k, v in times.items()}
    for label, seconds in sorted(per_step.items(), key=lambda kv: -kv[1]):
        calls = len(times[label]) // args.steps
        print(f"  {label:36s} {seconds * 1e3:7.2f} ms/step  ({calls} call{'s' * (calls > 1)})")
    print(f"  process CPU time / wall time during the steps: {cpu / wall:.2f}")
    return {k: float(np.float64(v)) for k, v in per_step.items()}


if __name__ == "__main__":
    main()
