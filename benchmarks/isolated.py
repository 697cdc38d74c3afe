"""Update steps timed each in its own process: a JAX optimizer without torch's threads beside
it, against torch's fused AdamW without XLA's.

``python -m benchmarks.isolated [--pairs OURS:PEER,...] [--rounds 3] [--steps 20]``

In :mod:`benchmarks.update_step` every optimizer shares one process, so a JAX step may run
right after a torch step while torch's OpenMP threads still spin (libgomp spins ~300,000
iterations after each parallel region unless ``OMP_WAIT_POLICY=PASSIVE``), and the reverse:
a cost of mixing the two runtimes that a JAX-only training loop does not pay. Here each
round runs one fresh process per optimizer (alternating, so that both see the same machine
drift) on update_step's 28.3M-parameter tree; a pair's ratio is the median over rounds of the
per-round ratio of median step times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PAIRS = [("funcopt.fused_adamw_torch", "torch.AdamW(fused)", 1.1),
         ("funcopt.fused_adamw", "torch.AdamW(fused)", 1.25)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one(name: str, steps: int) -> None:
    """In the child: ``{"median": s, "min": s}`` of ``steps`` timed steps of ``name``."""
    from benchmarks import update_step

    params, grads = update_step.make_tree("25m", 0)
    runner = update_step.make_runner(update_step.PEERS[name], params, grads, {})
    runner.init()
    for _ in range(3):
        runner.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        runner.step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"median": statistics.median(times), "min": min(times)}))


def _in_process(name: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.isolated", "--child", name,
                          "--steps", str(steps)], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _one(args.child, args.steps)
        return []
    rows = []
    for ours, peer, goal in PAIRS:
        runs = [(_in_process(ours, args.steps), _in_process(peer, args.steps))
                for _ in range(args.rounds)]
        median = statistics.median(a["median"] / b["median"] for a, b in runs)
        of_minima = min(a["min"] for a, _ in runs) / min(b["min"] for _, b in runs)
        ok = (median <= goal, of_minima <= goal)
        rows.append({"ours": f"{ours} (own process)", "peer": f"{peer} (own process)",
                     "median": median, "of_minima": of_minima, "goal": goal,
                     "met": "yes" if all(ok) else ("no" if not any(ok) else "unclear")})
        print(f"{ours} {1e3 * statistics.median(a['median'] for a, _ in runs):.1f} ms, {peer} "
              f"{1e3 * statistics.median(b['median'] for _, b in runs):.1f} ms (medians over "
              f"{args.rounds} rounds of one process each): ratio {median:.2f}, of minima "
              f"{of_minima:.2f}")
    return rows


if __name__ == "__main__":
    main()
