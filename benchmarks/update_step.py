"""The optimizer update step: funcopt against optax, torch and transformers, interleaved.

``python -m benchmarks [--size 25m|124m] [--rounds N] [--budget S] [--only NAME,...]
[--no-memory] [--output FILE]``

Every optimizer updates its own copy of a GPT-2-shaped pytree (``--size 25m``: 3 blocks and a
8192-token vocabulary, 28.3M parameters in 40 leaves; ``--size 124m``: GPT-2 small, 124.4M in
148 leaves) with the same fixed gradients. A JAX step is ``update`` + ``optax.apply_updates``
in one ``jit`` with the parameters and the state donated, compiled ahead of time; a torch step
is ``optimizer.step()`` with ``.grad`` already set. Each round runs one step of every
optimizer and of three memory-bandwidth probes in a shuffled order, so that all of them see
the same machine load; ratios are medians of per-round ratios, which cancels most of the drift
of a shared machine. Memory: the optimizer state's bytes, XLA's compiled memory analysis of
the donated step, and the peak resident-set growth of init + 3 steps measured in a fresh
subprocess per optimizer (:mod:`benchmarks.memory`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LR, WD, EPS = 1e-3, 0.01, 1e-6
MIN_ROUNDS = 10
BW_ELEMS = 64 * 1024 * 1024  # 256 MiB float32 per bandwidth probe array, well above L3

SIZES = {
    # name: (n_layer, vocab, n_positions, d_model)
    "25m": (3, 8192, 1024, 768),
    "124m": (12, 50257, 1024, 768),
}


def gpt2_shapes(size: str) -> dict:
    """A nested dict of shapes named like Hugging Face's GPT-2 (Conv1D weights are (in, out))."""
    n_layer, vocab, n_pos, d = SIZES[size]

    def dense(n_in, n_out):
        return {"weight": (n_in, n_out), "bias": (n_out,)}

    def norm():
        return {"weight": (d,), "bias": (d,)}

    blocks = {
        str(i): {
            "ln_1": norm(),
            "attn": {"c_attn": dense(d, 3 * d), "c_proj": dense(d, d)},
            "ln_2": norm(),
            "mlp": {"c_fc": dense(d, 4 * d), "c_proj": dense(4 * d, d)},
        }
        for i in range(n_layer)
    }
    return {"wte": {"weight": (vocab, d)}, "wpe": {"weight": (n_pos, d)}, "h": blocks,
            "ln_f": norm()}


def leaf_shapes(size: str) -> list[tuple[int, ...]]:
    import jax

    return jax.tree.leaves(gpt2_shapes(size), is_leaf=lambda x: isinstance(x, tuple))


def make_tree(size: str, seed: int):
    """(params, grads) as nested dicts of float32 numpy arrays."""
    import jax

    rng = np.random.default_rng(seed)
    shapes = gpt2_shapes(size)
    is_shape = lambda x: isinstance(x, tuple)
    draw = lambda s: rng.standard_normal(s, dtype=np.float32) * np.float32(0.02)
    return jax.tree.map(draw, shapes, is_leaf=is_shape), jax.tree.map(draw, shapes,
                                                                       is_leaf=is_shape)


# --- the optimizers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    name: str
    family: str  # "adamw" or "adafactor": decides the bytes model and the needed state
    framework: str  # "jax" or "torch"
    make: Callable  # jax: () -> GradientTransformation; torch: params -> torch optimizer


def _funcopt_adamw():
    import funcopt
    return funcopt.adamw(LR, eps=EPS, weight_decay=WD)


def _funcopt_fused_adamw():
    import funcopt
    return funcopt.fused_adamw(LR, eps=EPS, weight_decay=WD)


def _funcopt_adamw_torch_fused():
    import funcopt
    return funcopt.adamw_torch_fused(LR, eps=EPS, weight_decay=WD)  # torch AdamW(fused=True)


def _funcopt_fused_adamw_torch():
    import funcopt
    return funcopt.fused_adamw_torch(LR, eps=EPS, weight_decay=WD)


def _funcopt_awd():
    import funcopt
    return funcopt.adam_weight_decay(LR, eps=EPS, weight_decay_rate=WD)


def _funcopt_adafactor():
    import funcopt
    return funcopt.adafactor()  # HF defaults: relative step, parameter scale, no beta1


def _optax_adamw():
    import optax
    return optax.adamw(LR, eps=EPS, weight_decay=WD)


def _optax_adafactor():
    import optax
    # Defaults (factored, parameter scale, clipping 1.0); lr 1e-2 is HF's relative step.
    return optax.adafactor(learning_rate=1e-2)


def _torch_adamw(impl):
    def make(params):
        import torch
        return torch.optim.AdamW(params, lr=LR, eps=EPS, weight_decay=WD, **{impl: True})
    return make


def _hf_adamw(params):
    from transformers.optimization import AdamW
    return AdamW(params, lr=LR, eps=EPS, weight_decay=WD, no_deprecation_warning=True)


def _hf_adafactor(params):
    from transformers.optimization import Adafactor
    return Adafactor(params)  # defaults: lr=None, relative_step, scale_parameter


PEERS = {p.name: p for p in [
    Peer("funcopt.adamw", "adamw", "jax", _funcopt_adamw),
    Peer("funcopt.fused_adamw", "adamw", "jax", _funcopt_fused_adamw),
    Peer("funcopt.adamw_torch_fused", "adamw", "jax", _funcopt_adamw_torch_fused),
    Peer("funcopt.fused_adamw_torch", "adamw", "jax", _funcopt_fused_adamw_torch),
    Peer("funcopt.adam_weight_decay", "adamw", "jax", _funcopt_awd),
    Peer("optax.adamw", "adamw", "jax", _optax_adamw),
    Peer("torch.AdamW(fused)", "adamw", "torch", _torch_adamw("fused")),
    Peer("torch.AdamW(foreach)", "adamw", "torch", _torch_adamw("foreach")),
    Peer("transformers.AdamW", "adamw", "torch", _hf_adamw),
    Peer("funcopt.adafactor", "adafactor", "jax", _funcopt_adafactor),
    Peer("optax.adafactor", "adafactor", "jax", _optax_adafactor),
    Peer("transformers.Adafactor", "adafactor", "torch", _hf_adafactor),
]}

# (funcopt optimizer, peer, goal: the largest acceptable median time ratio, or None)
COMPARISONS = [
    ("funcopt.adamw", "optax.adamw", 1.0),
    ("funcopt.adamw", "torch.AdamW(fused)", 1.25),
    ("funcopt.adamw", "transformers.AdamW", None),
    ("funcopt.adamw", "torch.AdamW(foreach)", None),
    ("funcopt.fused_adamw", "optax.adamw", 1.0),
    ("funcopt.fused_adamw", "torch.AdamW(fused)", 1.25),
    ("funcopt.fused_adamw", "transformers.AdamW", None),
    ("funcopt.adamw_torch_fused", "torch.AdamW(fused)", None),
    ("funcopt.fused_adamw_torch", "torch.AdamW(fused)", 1.1),
    ("funcopt.fused_adamw_torch", "funcopt.adamw_torch_fused", None),
    ("funcopt.adam_weight_decay", "optax.adamw", None),
    ("funcopt.adam_weight_decay", "torch.AdamW(fused)", None),
    ("funcopt.adafactor", "optax.adafactor", 1.0),
    ("funcopt.adafactor", "transformers.Adafactor", 1.0),
]


class JaxRunner:
    """A donated, ahead-of-time compiled ``update`` + ``apply_updates`` step (or a
    :class:`funcopt.FusedOptimizer`'s ``step``, which is both)."""

    def __init__(self, peer: Peer, params_np, grads):
        import jax
        import jax.numpy as jnp
        import optax

        opt = peer.make()

        def step(params, state, grads):
            if hasattr(opt, "step"):  # a FusedOptimizer
                return opt.step(grads, state, params)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self.params = jax.tree.map(lambda a: jnp.array(a, copy=True), params_np)
        self.grads = grads
        self._init = jax.jit(opt.init).lower(self.params).compile()
        state_shapes = jax.eval_shape(opt.init, self.params)
        lowered = jax.jit(step, donate_argnums=(0, 1)).lower(self.params, state_shapes, grads)
        self._step = lowered.compile()
        self.memory = self._step.memory_analysis()
        self.state = None
        jax.block_until_ready(self.params)

    def init(self):
        import jax
        self.state = self._init(self.params)
        jax.block_until_ready(self.state)

    def step(self):
        import jax
        self.params, self.state = self._step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))

    def state_bytes(self) -> int:
        import jax
        return sum(x.nbytes for x in jax.tree.leaves(self.state))


class TorchRunner:
    """``optimizer.step()`` on torch parameters whose ``.grad`` is set once."""

    memory = None

    def __init__(self, peer: Peer, params_np, grads_t):
        import jax
        import torch

        self.params = [torch.nn.Parameter(torch.from_numpy(np.array(a, copy=True)))
                       for a in jax.tree.leaves(params_np)]
        for p, g in zip(self.params, grads_t, strict=True):
            p.grad = g
        self.opt = peer.make(self.params)

    def init(self):
        pass  # torch optimizers create their state lazily, at the first step

    def step(self):
        self.opt.step()

    def state_bytes(self) -> int:
        import torch
        return sum(v.nbytes for s in self.opt.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))


def make_runner(peer: Peer, params_np, grads_np, cache: dict):
    if peer.framework == "jax":
        if "jax" not in cache:
            import jax
            import jax.numpy as jnp
            cache["jax"] = jax.tree.map(jnp.asarray, grads_np)
        return JaxRunner(peer, params_np, cache["jax"])
    if "torch" not in cache:
        import jax
        import torch
        cache["torch"] = [torch.from_numpy(g) for g in jax.tree.leaves(grads_np)]
    return TorchRunner(peer, params_np, cache["torch"])


# --- bytes the step must move, and the state it needs ----------------------------------


def needed_state_elems(family: str, shapes) -> int:
    """Elements of state the algorithm needs: two moments (AdamW); row and column factors for
    matrices and a full second moment for vectors (Adafactor without beta1)."""
    if family == "adamw":
        return sum(2 * int(np.prod(s)) for s in shapes)
    return sum(s[-2] + s[-1] if len(s) >= 2 else int(np.prod(s)) for s in shapes)


def step_bytes(family: str, shapes) -> int:
    """Compulsory traffic of one step: every input read once, every output written once.

    AdamW reads p, g, m, v and writes p, m, v (7 x 4 bytes per parameter). Adafactor reads p
    and g, writes p, and reads and writes its (mostly factored) state. Adafactor cannot reach
    this in one pass: the factors need all of g before the update, and the update clipping
    needs RMS(update) before it is applied, so a fused implementation makes >= 3 passes over
    g (about 6 x 4 bytes per parameter), i.e. at most ~50% of this figure's efficiency.
    """
    n = sum(int(np.prod(s)) for s in shapes)
    state = needed_state_elems(family, shapes)
    if family == "adamw":
        return 4 * (4 * n + 3 * n)
    return 4 * (3 * n + 2 * state)


# --- memory-bandwidth probes -------------------------------------------------------------


class BandwidthProbes:
    """Three streams over 256 MiB float32 arrays, each reading and writing every byte once."""

    names = ("bw: jax x*s in place", "bw: numpy copyto", "bw: torch mul_ in place")

    def __init__(self):
        import jax
        import jax.numpy as jnp
        import torch

        self.bytes = 2 * 4 * BW_ELEMS
        self._scale = jax.jit(lambda x, s: x * s, donate_argnums=0)
        self._x = jnp.ones(BW_ELEMS, jnp.float32)
        self._s = jnp.float32(1.0)
        self._a = np.ones(BW_ELEMS, np.float32)
        self._b = np.empty_like(self._a)
        self._t = torch.ones(BW_ELEMS)
        for name in self.names:
            self.run(name)

    def run(self, name):
        if name == self.names[0]:
            self._x = self._scale(self._x, self._s)
            self._x.block_until_ready()
        elif name == self.names[1]:
            np.copyto(self._b, self._a)
        else:
            self._t.mul_(1.0)


# --- peak memory in a fresh process ------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap():
    """glibc keeps freed blocks below the mmap threshold (up to 32 MiB) resident; hand them
    back so that the baseline holds only live memory and reuse cannot hide growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssPeak:
    """Samples the resident set size every ~0.2 ms in a thread (JAX and torch release the GIL
    while they compute); ``peak - base`` is the growth over the ``with`` block."""

    def __enter__(self):
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(2e-4)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.end = _rss_bytes()


def measure_memory(name: str, size: str, seed: int = 0) -> dict:
    """Run in a fresh process: RSS growth over init + 3 steps of one optimizer, measured
    after the parameters and gradients exist and the JAX step is compiled."""
    peer = PEERS[name]
    params_np, grads_np = make_tree(size, seed)
    runner = make_runner(peer, params_np, grads_np, {})
    del params_np  # the runner holds its own copy
    gc.collect()
    _release_free_heap()
    with RssPeak() as rss:
        runner.init()
        for _ in range(3):
            runner.step()
    return {"peak_delta": rss.peak - rss.base, "end_delta": rss.end - rss.base,
            "state_bytes": runner.state_bytes()}


def memory_in_subprocess(name: str, size: str) -> dict | None:
    if not os.path.exists("/proc/self/statm"):
        return None
    cmd = [sys.executable, "-m", "benchmarks.memory", "--size", size, "--peer", name]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    if out.returncode != 0:
        print(f"memory probe for {name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the run -----------------------------------------------------------------------------


def _quartiles(x):
    q1, q2, q3 = np.percentile(np.asarray(x), [25, 50, 75])
    return q1, q2, q3


def _mb(n):
    return f"{n / 1e6:,.1f}"


def run(args) -> str:
    import jax
    import optax
    import torch
    import transformers

    names = list(PEERS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown optimizer(s) {unknown}; choose from {list(PEERS)}")
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    shapes = leaf_shapes(args.size)
    n_params = sum(int(np.prod(s)) for s in shapes)
    params_np, grads_np = make_tree(args.size, args.seed)
    cache: dict = {}
    runners = {}
    for name in names:
        runners[name] = make_runner(PEERS[name], params_np, grads_np, cache)
        runners[name].init()
        for _ in range(args.warmup):
            runners[name].step()
    del params_np
    probes = BandwidthProbes()
    setup_s = time.perf_counter() - t_start

    items = names + list(probes.names)
    times = {k: [] for k in items}
    faults = dict.fromkeys(items, 0)
    order = list(items)
    rng = random.Random(args.seed)
    gc.collect()
    gc.disable()
    deadline = time.perf_counter() + args.budget
    rounds = 0
    try:
        while rounds < args.rounds and (rounds < MIN_ROUNDS
                                        or time.perf_counter() < deadline):
            rounds += 1
            rng.shuffle(order)
            for k in order:
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                if k in runners:
                    runners[k].step()
                else:
                    probes.run(k)
                times[k].append(time.perf_counter() - t0)
                faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    finally:
        gc.enable()
    args.rounds = rounds
    timing_s = time.perf_counter() - t_start - setup_s
    load1 = os.getloadavg()

    bw = {k: probes.bytes / np.median(times[k]) for k in probes.names}
    machine_bw = max(bw.values())
    state_bytes = {k: r.state_bytes() for k, r in runners.items()}
    xla = {k: r.memory for k, r in runners.items()}
    del runners, probes, cache
    gc.collect()
    memory = {}
    if args.memory:
        for name in names:
            memory[name] = memory_in_subprocess(name, args.size)

    lines = []
    w = lines.append
    w(f"## Update step, GPT-2-shaped {args.size}: {n_params / 1e6:.1f}M float32 parameters in "
      f"{len(shapes)} leaves\n")
    w(f"`{' '.join(['python -m benchmarks'] + args.argv)}` — {rounds} interleaved rounds "
      f"(shuffled order), {args.warmup} warm-up steps; {os.cpu_count()} CPUs "
      f"({platform.processor() or platform.machine()}), torch threads "
      f"{torch.get_num_threads()}; jax {jax.__version__}, optax {optax.__version__}, torch "
      f"{torch.__version__}, transformers {transformers.__version__}; "
      f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average "
      f"{load0[0]:.1f} -> {load1[0]:.1f}; setup {setup_s:.0f} s, timing {timing_s:.0f} s.\n")
    w(f"Machine memory bandwidth (best probe, read+write, interleaved with the steps): "
      f"**{machine_bw / 1e9:.1f} GB/s** — "
      + ", ".join(f"{k[4:]} {v / 1e9:.1f}" for k, v in bw.items()) + " GB/s.\n")
    w("| optimizer | median ms | IQR ms | min ms | eff. GB/s | % of bw | state MB "
      "| state / needed | XLA temp MB | XLA out not aliased MB | peak ΔRSS MB "
      "| page faults / step |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    param_bytes = 4 * n_params
    for name in names:
        peer = PEERS[name]
        q1, med, q3 = _quartiles(times[name])
        eff = step_bytes(peer.family, shapes) / med
        needed = 4 * needed_state_elems(peer.family, shapes)
        m = xla[name]
        temp = "—" if m is None else _mb(m.temp_size_in_bytes)
        unaliased = "—" if m is None else _mb(m.output_size_in_bytes - m.alias_size_in_bytes)
        if m is not None and (m.temp_size_in_bytes + m.output_size_in_bytes
                              - m.alias_size_in_bytes) >= param_bytes:
            temp += " ⚠"
        mem = memory.get(name)
        rss = "—" if mem is None else _mb(mem["peak_delta"])
        w(f"| {name} | {med * 1e3:.1f} | {q1 * 1e3:.1f}–{q3 * 1e3:.1f} "
          f"| {min(times[name]) * 1e3:.1f} | {eff / 1e9:.1f} | {100 * eff / machine_bw:.0f}% "
          f"| {_mb(state_bytes[name])} | {state_bytes[name] / needed:.3f} | {temp} "
          f"| {unaliased} | {rss} | {faults[name] / args.rounds:,.0f} |")
    w("")
    w("| funcopt | peer | time ratio: median [IQR] of per-round ratios | ratio of minima "
      "| goal | met |")
    w("|---|---|---:|---:|---:|---|")
    args.goal_rows = []
    for a, b, goal in COMPARISONS:
        if a not in times or b not in times:
            continue
        r = np.asarray(times[a]) / np.asarray(times[b])
        q1, med, q3 = _quartiles(r)
        of_minima = min(times[a]) / min(times[b])
        if goal is None:
            met, goal_s = "", ""
        else:
            goal_s = f"≤ {goal:g}"
            ok = (med <= goal, of_minima <= goal)
            met = "yes" if all(ok) else ("**no**" if not any(ok) else "unclear")
            args.goal_rows.append({"ours": a, "peer": b, "median": med, "of_minima": of_minima,
                                   "goal": goal, "met": met.strip("*")})
        w(f"| {a} | {b} | {med:.2f} [{q1:.2f}–{q3:.2f}] | {of_minima:.2f} | {goal_s} | {met} |")
    w("")
    if max(load0[0], load1[0]) > 0.75 * (os.cpu_count() or 1):
        w(f"**The machine was loaded** (load average up to {max(load0[0], load1[0]):.1f} on "
          f"{os.cpu_count()} CPUs). Under contention torch's OpenMP threads lose far more "
          "than XLA's (a descheduled thread stalls every barrier), so median ratios against "
          "torch flatter JAX; the ratio of minima is the better estimate. A goal is met when "
          "both agree.\n")
    w(f"Parameters: {_mb(param_bytes)} MB. eff. GB/s = compulsory bytes / median time "
      "(AdamW: read p, g, m, v and write p, m, v; Adafactor: read p, g, write p, read+write "
      "the factored state — it needs >= 3 passes over g, so ~50% is its practical ceiling). "
      "state / needed: state bytes over what the algorithm needs (AdamW two moments; "
      "Adafactor row+column factors for matrices, a full moment for vectors). XLA columns "
      "from `compile().memory_analysis()` of the donated step (⚠: temp + non-aliased outputs "
      ">= one copy of the parameters). peak ΔRSS: resident-set growth over init + 3 steps in "
      "a fresh process (state + transient buffers; allocator-dependent, sampled every 0.2 ms). "
      "page faults / step: minor faults during the timed steps — fresh pages the kernel "
      "zeroes, i.e. buffers allocated (not reused) every step. On a shared machine the "
      "minima approximate an uncontended run; the median ratios cancel slow drift.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="25m")
    ap.add_argument("--rounds", type=int, default=None,
                    help="at most this many interleaved rounds (default 40 for 25m, 12 for "
                    "124m)")
    ap.add_argument("--budget", type=float, default=90.0,
                    help=f"stop starting rounds after this many seconds (at least "
                    f"{MIN_ROUNDS} rounds; default 90)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated optimizer names; choose from "
                    + ", ".join(PEERS))
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the per-optimizer peak-RSS subprocesses")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", help="also write the markdown to this file")
    args = ap.parse_args(argv)
    args.argv = list(argv)
    if args.rounds is None:
        args.rounds = 40 if args.size == "25m" else 12
    text = run(args)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return args.goal_rows


if __name__ == "__main__":
    main()
