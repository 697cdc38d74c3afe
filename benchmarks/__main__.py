"""``python -m benchmarks`` (``make bench``): funcopt's benchmarks in one plain process, and
every ratio against its goal.

``python -m benchmarks [--suites update_step,isolated,torch_bridge,menu,eight_bit]
[--torch-output FILE] [--goals-output FILE] [update_step's options: --size, --rounds,
--budget, --only, --no-memory, --output ...]``

1. ``update_step`` (:mod:`benchmarks.update_step`): the JAX update step against optax,
   torch and transformers (``--output`` writes its markdown; ``--size 124m`` for GPT-2 small).
2. ``isolated`` (:mod:`benchmarks.isolated`): the fused JAX steps and torch's fused AdamW each
   in its own process (no torch threads spinning beside XLA's, as in a JAX-only program).
3. ``torch_bridge`` (:mod:`benchmarks.torch_bridge`): ``funcopt.torch``'s optimizers against
   the torch optimizers they replace (``--torch-output`` writes its table).
4. ``menu`` (:mod:`benchmarks.menu_speed`, 10M parameters, 30 rounds): the menu's
   bitsandbytes and schedule-free JAX steps against optax's, each with the goal of being no
   slower; ``eight_bit`` (:mod:`benchmarks.eight_bit`, quick mode): the 8-bit optimizers
   against ``funcopt.adamw``.

Nothing is set in the environment (no ``OMP_WAIT_POLICY``, no ``XLA_FLAGS``): the figures are
a user's. The closing table lists every goal with the median of the per-round ratios and the
ratio of the minima; a goal counts as met when both are within it. On a shared machine the
minima approximate an uncontended run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys

SUITES = ("update_step", "isolated", "torch_bridge", "menu", "eight_bit")


def machine() -> str:
    """``nproc`` and the CPU model, as the README's table states them."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({model})"


def goals_table(rows) -> str:
    lines = ["| funcopt | reference | median of per-round ratios | ratio of minima | goal | met |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['ours']} | {r['peer']} | {r['median']:.2f} | "
                     f"{r['of_minima']:.2f} | ≤ {r['goal']:g} | {r['met']} |")
    return "\n".join(lines)


def _extras(suites) -> list[dict]:
    """Runs the ``menu`` and ``eight_bit`` suites; returns the menu's goal rows."""
    goals = []
    if "menu" in suites:
        from benchmarks import menu_speed
        short = ["--params", "10000000", "--rounds", "30"]
        goals += menu_speed.goal_rows(menu_speed.main(short))
        goals += menu_speed.goal_rows(menu_speed.schedule_free(short))
    if "eight_bit" in suites and importlib.util.find_spec("benchmarks.eight_bit"):
        from benchmarks import eight_bit
        eight_bit.main(["--params", "10m", "--rounds", "5"])
    return goals


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", default=",".join(SUITES), help="comma-separated, of "
                    + ", ".join(SUITES))
    ap.add_argument("--torch-output", help="write the torch bridge's table to this file")
    ap.add_argument("--goals-output", help="write the goal table to this file")
    ap.add_argument("--torch-budget", type=float, default=25.0,
                    help="seconds per torch bridge group (default 25)")
    args, rest = ap.parse_known_args(argv)
    suites = {s.strip() for s in args.suites.split(",") if s.strip()}
    unknown = sorted(suites - set(SUITES))
    if unknown:
        raise SystemExit(f"unknown suites {unknown}; choose from {list(SUITES)}")
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f}\n")
    goals = []
    if "update_step" in suites:
        from benchmarks import update_step
        goals += update_step.main(rest) or []
    if "isolated" in suites:
        from benchmarks import isolated
        goals += isolated.main([])
    if "torch_bridge" in suites:
        from benchmarks import torch_bridge
        rows = torch_bridge.main(["--budget", str(args.torch_budget)])
        if args.torch_output:
            with open(args.torch_output, "w") as f:
                f.write(f"{machine()}; {torch_bridge.header()}\n\n{torch_bridge.table(rows)}\n")
        goals += rows
    goals += _extras(suites)
    text = goals_table(goals)
    print(f"\n## Goals ({machine()}, load average now {os.getloadavg()[0]:.1f})\n\n{text}")
    if args.goals_output:
        with open(args.goals_output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
