"""Side-by-side loss table, the largest JAX-vs-torch difference, and the PNG plot."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from funcopt_demo.results import RunResult


class Difference(NamedTuple):
    """How far run ``a`` is from the reference run ``b``.

    Attributes:
      max_abs: largest ``|loss_a - loss_b|`` over all steps.
      step: the step where it occurs; ``loss_at_step`` is ``loss_b`` there.
      ulps: ``max_abs`` in float32 units in the last place of ``loss_at_step``.
      max_rel: largest ``|loss_a - loss_b| / |loss_b|`` over all steps (dominated by the
        smallest losses: float32 resolves ``-log p`` for ``p`` near 1 only to ~6e-8).
      rel_step: the step where ``max_rel`` occurs.
      max_lr_abs: largest learning-rate difference.
      max_param_rel: largest over parameters of ``max|p_a - p_b| / max|p_b|`` after training.
    """

    max_abs: float
    step: int
    loss_at_step: float
    ulps: float
    max_rel: float
    rel_step: int
    max_lr_abs: float
    max_param_rel: float


def difference(a: RunResult, b: RunResult) -> Difference:
    """Compares run ``a`` against the reference run ``b``, step by step."""
    la, lb = a.losses.astype(np.float64), b.losses.astype(np.float64)
    gap = np.abs(la - lb)
    rel = gap / np.maximum(np.abs(lb), np.finfo(np.float32).tiny)
    step = int(gap.argmax())
    ulp = float(np.spacing(np.abs(b.losses[step])))
    lr_gap = np.abs(a.learning_rates.astype(np.float64) - b.learning_rates.astype(np.float64))
    param_rel = max(
        float(np.abs(a.params[n].astype(np.float64) - p).max() / np.abs(p).max())
        for n, p in b.params.items()
    )
    return Difference(
        max_abs=float(gap[step]), step=step, loss_at_step=float(lb[step]),
        ulps=float(gap[step]) / ulp, max_rel=float(rel.max()), rel_step=int(rel.argmax()),
        max_lr_abs=float(lr_gap.max()), max_param_rel=param_rel,
    )


def describe(d: Difference, steps: int) -> str:
    """The comparison in words, for the end of the demo's output."""
    return "\n".join([
        f"Largest loss difference over all {steps} steps: {d.max_abs:.2e} at step {d.step} "
        f"(loss {d.loss_at_step:.4f}: {d.max_abs / abs(d.loss_at_step):.1e} relative, "
        f"{d.ulps:.1f} float32 ulps).",
        f"Largest relative loss difference: {d.max_rel:.1e} at step {d.rel_step} "
        f"(where the loss is smallest; float32 resolves -log p for p near 1 only to ~6e-8).",
        f"Largest learning-rate difference: {d.max_lr_abs:.1e}. Trained parameters differ by "
        f"at most {d.max_param_rel:.1e} of their largest magnitude.",
    ])


def table(a: RunResult, b: RunResult | None = None, rows: int = 12) -> str:
    """The loss curves side by side at ``rows`` evenly spaced steps (first and last included)."""
    steps = np.unique(np.linspace(0, len(a.losses) - 1, rows).round().astype(int))
    header = f"{'step':>6}  {'lr':>10}  {a.name:>22}"
    if b is not None:
        header += f"  {b.name:>28}  {'|difference|':>12}"
    lines = [header, "-" * len(header)]
    for s in steps:
        line = f"{s:>6}  {a.learning_rates[s]:>10.3e}  {a.losses[s]:>22.7f}"
        if b is not None:
            gap = abs(float(a.losses[s]) - float(b.losses[s]))
            line += f"  {b.losses[s]:>28.7f}  {gap:>12.2e}"
        lines.append(line)
    return "\n".join(lines)


def plot(path: str, a: RunResult, b: RunResult | None = None, title: str = "") -> str:
    """Writes a PNG of loss (and |difference|) and learning rate against step; returns
    ``path``. Uses matplotlib's non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(a.losses))
    panels = 3 if b is not None else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels + 0.6), sharex=True,
                             constrained_layout=True)
    ax = axes[0]
    ax.plot(steps, a.losses, label=a.name, lw=2.5, alpha=0.6)
    if b is not None:
        ax.plot(steps, b.losses, label=b.name, lw=1, ls="--", color="black")
    ax.set_yscale("log")
    ax.set_ylabel("training loss")
    ax.legend()
    if b is not None:
        gap = np.abs(a.losses.astype(np.float64) - b.losses.astype(np.float64))
        ax = axes[1]
        ax.semilogy(steps, np.maximum(gap, 1e-12), lw=0.8, color="tab:red")
        ax.set_ylabel("|loss difference|")
        ax.set_title("JAX - torch (zero shown as 1e-12)", fontsize=9)
    ax = axes[-1]
    ax.plot(steps, a.learning_rates, color="tab:green")
    ax.set_ylabel("learning rate")
    ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
