"""What limits XLA:CPU on the optimizer step: the experiments behind ``benchmarks/NOTES.md``.

``python -m benchmarks.xla_cpu [--size 25m] [--rounds 30] [--cores N]``

Runs, interleaved in one process (so every variant sees the same machine load), variants of
the donated AdamW and Adafactor steps: without donation, with XLA's memory-optimized
scheduler (``compile(compiler_options=...)``, so one process holds both), on one flattened
leaf, and a cache-blocked prototype of funcopt.adamw (:func:`blocked_adamw_step`) whose
results are checked bit for bit against funcopt.adamw. For each it reports the median and
minimum step time, the ratio to the group's reference, XLA's temp allocation and the minor
page faults per step. ``--cores 1`` pins the process to one CPU before JAX and torch start.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.xla_cpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="25m", choices=["25m", "124m"])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cores", type=int, default=0, help="pin to this many CPUs (0: all)")
    ap.add_argument("--block", type=int, default=16384,
                    help="elements per block of the blocked AdamW prototype")
    return ap.parse_args(argv)


MEMORY_OPTIMIZED = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


# --- the cache-blocked AdamW prototype --------------------------------------------------


def blocked_adamw_step(lr, b1, b2, eps, weight_decay, block=16384):
    """``funcopt.adamw(lr, b1, b2, eps, weight_decay)`` + ``apply_updates`` for float32 leaves,
    with each large leaf updated block by block in a ``fori_loop``.

    XLA:CPU gives every leaf three loop fusions (new m; new v; new p reading both back), so
    m and v make a round trip through DRAM: 10 accesses per parameter where 7 are needed.
    Here each block's new m and v are written in place and read back while the block is
    still in L1/L2. The arithmetic is funcopt.adamw's expression for expression (same fused
    multiply-adds), so the results are bitwise equal. A leaf whose size has no divisor
    between ``block / 4`` and ``block`` takes the plain path.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    import funcopt
    from funcopt._numerics import one_minus_power

    f32 = jnp.float32

    def moments(g, m, v):
        return f32(1.0 - b1) * g + m * f32(b1), (f32(1.0 - b2) * g) * g + v * f32(b2)

    def new_param(p, m32, v32, step_size, decay_factor):
        u = (-step_size * m32) / (jnp.sqrt(v32) + f32(eps))
        new = p + u
        new = decay_factor * new + new
        return p + (new - p)  # funcopt hands back new - p; apply_updates adds it to p

    def plain(p, g, m, v, step_size, decay_factor):
        m32, v32 = moments(g, m, v)
        return new_param(p, m32, v32, step_size, decay_factor), m32, v32

    def divisor(n):
        for c in range(min(block, n), block // 4 - 1, -1):
            if n % c == 0:
                return c
        return None

    def blocked(p, g, m, v, step_size, decay_factor, c):
        shape = p.shape
        p, g, m, v = (x.reshape(-1) for x in (p, g, m, v))

        def body(i, carry):
            p, m, v = carry
            at = i * c
            take = lambda x: lax.dynamic_slice_in_dim(x, at, c)
            put = lambda x, y: lax.dynamic_update_slice_in_dim(x, y, at, 0)
            m32, v32 = moments(take(g), take(m), take(v))
            m, v = put(m, m32), put(v, v32)
            # Read the block back from the updated buffers: XLA then runs this fusion after
            # the two above and updates all three buffers in place, with no copy.
            p = put(p, new_param(take(p), take(m), take(v), step_size, decay_factor))
            return p, m, v

        p, m, v = lax.fori_loop(0, p.size // c, body, (p, m, v))
        return p.reshape(shape), m.reshape(shape), v.reshape(shape)

    def step(params, state, grads):
        lr32 = jnp.asarray(lr, f32)
        wd = jnp.asarray(weight_decay, f32)
        decay_factor = jnp.where(wd > 0, -lr32 * wd, f32(0))
        treedef = jax.tree.structure(params)
        leaves = [treedef.flatten_up_to(x) for x in
                  (params, grads, state.exp_avg, state.exp_avg_sq, state.step)]
        out = []
        for p, g, m, v, t in zip(*leaves, strict=True):
            t = optax.safe_increment(t)
            step_size = lr32 * jnp.sqrt(one_minus_power(b2, t)) / one_minus_power(b1, t)
            c = divisor(p.size) if p.size >= 2 * block else None
            fn = plain if c is None else lambda *a, c=c: blocked(*a, c)
            out.append((*fn(p, g, m, v, step_size, decay_factor), t))
        field = lambda i: jax.tree_util.tree_unflatten(treedef, [o[i] for o in out])
        return field(0), funcopt.AdamWState(optax.safe_increment(state.count), field(3),
                                            field(1), field(2))

    return step


# --- variants ---------------------------------------------------------------------------


class JaxVariant:
    def __init__(self, name, group, step, init, params_np, grads, donate=True, options=None,
                 flatten=False):
        import jax
        import jax.numpy as jnp

        self.name, self.group = name, group
        params = jax.tree.map(lambda a: jnp.array(a, copy=True), params_np)
        if flatten:
            params = {"flat": jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])}
            grads = {"flat": jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(grads)])}
        self.grads = grads
        state = jax.jit(init)(params)
        jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
        self.compiled = jitted.lower(params, state, grads).compile(
            compiler_options=options or {})
        self.temp = self.compiled.memory_analysis().temp_size_in_bytes
        self.params, self.state = params, state

    def step(self):
        import jax
        self.params, self.state = self.compiled(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))


class TorchVariant:
    temp = None

    def __init__(self, name, group, runner, threads=None):
        self.name, self.group, self.runner, self.threads = name, group, runner, threads

    def step(self):
        if self.threads is None:
            self.runner.step()
            return
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            self.runner.step()
        finally:
            torch.set_num_threads(before)


class Probe:
    temp = None
    group = "bandwidth"

    def __init__(self, probes, name):
        self.probes, self.name = probes, name

    def step(self):
        self.probes.run(self.name)


def build(args):
    import jax
    import jax.numpy as jnp
    import optax

    import funcopt
    from benchmarks.update_step import (
        EPS,
        LR,
        PEERS,
        WD,
        BandwidthProbes,
        make_runner,
        make_tree,
    )

    params_np, grads_np = make_tree(args.size, 0)
    grads = jax.tree.map(jnp.asarray, grads_np)

    def full_step(opt):
        def step(params, state, grads):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state
        return step

    adamw = funcopt.adamw(LR, eps=EPS, weight_decay=WD)
    adafactor = funcopt.adafactor()
    oadamw = optax.adamw(LR, eps=EPS, weight_decay=WD)
    oadafactor = optax.adafactor(learning_rate=1e-2)
    v = []
    A, F = "adamw", "adafactor"
    v.append(JaxVariant("funcopt.adamw", A, full_step(adamw), adamw.init, params_np, grads))
    v.append(JaxVariant("funcopt.adamw, not donated", A, full_step(adamw), adamw.init,
                        params_np, grads, donate=False))
    v.append(JaxVariant("funcopt.adamw, memory-optimized scheduler", A, full_step(adamw),
                        adamw.init, params_np, grads, options=MEMORY_OPTIMIZED))
    v.append(JaxVariant("funcopt.adamw, one flattened leaf", A, full_step(adamw), adamw.init,
                        params_np, grads, flatten=True))
    v.append(JaxVariant(f"blocked AdamW prototype ({args.block // 1024}k)", A,
                        blocked_adamw_step(LR, 0.9, 0.999, EPS, WD, args.block), adamw.init,
                        params_np, grads))
    v.append(JaxVariant("optax.adamw", A, full_step(oadamw), oadamw.init, params_np, grads))
    cache = {}
    fused = make_runner(PEERS["torch.AdamW(fused)"], params_np, grads_np, cache)
    v.append(TorchVariant("torch.AdamW(fused)", A, fused))
    v.append(TorchVariant("torch.AdamW(fused), 1 thread", A,
                          make_runner(PEERS["torch.AdamW(fused)"], params_np, grads_np, cache),
                          threads=1))
    v.append(JaxVariant("funcopt.adafactor", F, full_step(adafactor), adafactor.init,
                        params_np, grads))
    v.append(JaxVariant("funcopt.adafactor, memory-optimized scheduler", F,
                        full_step(adafactor), adafactor.init, params_np, grads,
                        options=MEMORY_OPTIMIZED))
    v.append(JaxVariant("optax.adafactor", F, full_step(oadafactor), oadafactor.init,
                        params_np, grads))
    v.append(JaxVariant("optax.adafactor, memory-optimized scheduler", F,
                        full_step(oadafactor), oadafactor.init, params_np, grads,
                        options=MEMORY_OPTIMIZED))
    v.append(TorchVariant("transformers.Adafactor", F,
                          make_runner(PEERS["transformers.Adafactor"], params_np, grads_np,
                                      cache)))
    probes = BandwidthProbes()
    v += [Probe(probes, name) for name in probes.names]
    return v, probes


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    import jax
    import numpy as np
    import torch

    variants, probes = build(args)
    for x in variants:  # warm-up: two steps each
        x.step()
        x.step()
    times = {x.name: [] for x in variants}
    faults = {x.name: 0 for x in variants}
    order = list(variants)
    rng = random.Random(0)
    load0 = os.getloadavg()[0]
    for _ in range(args.rounds):
        rng.shuffle(order)
        for x in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            x.step()
            times[x.name].append(time.perf_counter() - t0)
            faults[x.name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    by_name = {x.name: x for x in variants}
    exact = all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(by_name["funcopt.adamw"].params),
        jax.tree.leaves(by_name[next(n for n in by_name if n.startswith("blocked"))].params),
        strict=True))
    refs = {"adamw": "funcopt.adamw", "adafactor": "funcopt.adafactor",
            "bandwidth": probes.names[0]}
    cpus = len(os.sched_getaffinity(0))
    print(f"### XLA:CPU experiments, {args.size}, {args.rounds} interleaved rounds, {cpus} "
          f"CPU(s) (torch threads {torch.get_num_threads()}), load average "
          f"{load0:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print(f"`python -m benchmarks.xla_cpu {' '.join(sys.argv[1:] if argv is None else argv)}`"
          f"; blocked prototype bitwise equal to funcopt.adamw after "
          f"{args.rounds + 2} steps: **{'yes' if exact else 'NO'}**\n")
    print("| variant | median ms | min ms | ratio to group ref (median of per-round) "
          "| XLA temp MB | minor faults / step |")
    print("|---|---:|---:|---:|---:|---:|")
    for x in variants:
        t = np.asarray(times[x.name])
        ref = np.asarray(times[refs[x.group]])
        temp = "—" if x.temp is None else f"{x.temp / 1e6:.1f}"
        print(f"| {x.name} | {np.median(t) * 1e3:.1f} | {t.min() * 1e3:.1f} "
              f"| {np.median(t / ref):.2f} | {temp} | {faults[x.name] / args.rounds:,.0f} |")
    bw = {n: probes.bytes / np.median(times[n]) / 1e9 for n in probes.names}
    print("\nbandwidth GB/s: " + ", ".join(f"{k[4:]} {b:.1f}" for k, b in bw.items()))


if __name__ == "__main__":
    main()
