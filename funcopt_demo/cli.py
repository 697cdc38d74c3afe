"""Command line of ``python -m funcopt_demo``: run both halves, print, plot."""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import warnings
from typing import NamedTuple

from funcopt_demo import data as data_lib
from funcopt_demo import report
from funcopt_demo.config import SCHEDULES, Config
from funcopt_demo.results import RunResult

INSTALL_HINT = (
    "The torch half needs torch and transformers; install them with\n"
    "    pip install -e '.[torch]' 'transformers==4.49.0'\n"
    "(or `make test`'s full set: pip install -e '.[test]')."
)


def missing_torch_packages() -> list[str]:
    """The packages the torch half needs that are not installed (nothing is imported)."""
    return [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]


class Summary(NamedTuple):
    """What :func:`run` produced: the two runs, their difference and the plot's path."""

    jax: RunResult
    torch: RunResult | None
    difference: report.Difference | None
    png: str


def parse_args(argv=None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m funcopt_demo",
        description="Train the same MLP on scikit-learn's digits with funcopt (JAX) and with "
        "transformers.AdamW (torch), and compare the loss curves.",
    )
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate,
                        help="peak learning rate")
    parser.add_argument("--warmup-fraction", type=float, default=defaults.warmup_fraction)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--torch-optimizer", choices=("transformers", "funcopt"),
                        default="transformers",
                        help="the torch reference: transformers.AdamW or funcopt.torch.AdamW")
    parser.add_argument("--no-torch", action="store_true", help="run the JAX half only")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--output", default="funcopt_demo.png", help="where to write the PNG")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    return Config(
        steps=args.steps, batch_size=args.batch_size, hidden=args.hidden,
        learning_rate=args.lr, warmup_fraction=args.warmup_fraction,
        weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed,
    )


def run(config: Config, output: str = "funcopt_demo.png", use_torch: bool = True,
        torch_optimizer: str = "transformers", progress: bool = True) -> Summary:
    """Both training runs, the printed comparison and the plot; returns the :class:`Summary`."""
    from funcopt_demo import train_jax

    dataset = data_lib.load_digits(config.seed)
    init = data_lib.init_params(config, dataset.num_features, dataset.num_classes)
    batches = data_lib.batch_indices(config, len(dataset.x_train))
    print(
        f"Digits: {len(dataset.x_train)} train / {len(dataset.x_test)} test images; MLP "
        f"{dataset.num_features}-{config.hidden}-{dataset.num_classes} with LayerNorm; "
        f"{config.steps} steps of {config.batch_size}; AdamW lr={config.learning_rate:g} "
        f"wd={config.weight_decay:g} (not on bias/LayerNorm), {config.schedule} schedule with "
        f"{config.warmup_steps} warmup steps."
    )

    jax_run = train_jax.train(config, dataset, init, batches, progress=progress)
    torch_run = None
    if use_torch:
        absent = missing_torch_packages()
        if absent:
            print(f"\nSkipping the torch half: {', '.join(absent)} not installed. {INSTALL_HINT}")
        else:
            from funcopt_demo import train_torch

            torch_run = train_torch.train(config, dataset, init, batches, progress=progress,
                                          which=torch_optimizer)

    print()
    print(report.table(jax_run, torch_run))
    print()
    for r in (jax_run, torch_run):
        if r is not None:
            print(f"{r.name:>30}: {r.seconds:5.2f} s for {config.steps} steps, "
                  f"test accuracy {r.test_accuracy:.4f}")
    diff = None
    if torch_run is not None:
        diff = report.difference(jax_run, torch_run)
        print(report.describe(diff, config.steps))
    title = f"funcopt vs {torch_optimizer}.AdamW, {config.schedule} warmup schedule"
    png = report.plot(output, jax_run, torch_run, title=title)
    print(f"Plot of loss and learning rate against step: {os.path.abspath(png)}")
    return Summary(jax_run, torch_run, diff, png)


def main(argv=None) -> int:
    """Runs the demo with command-line arguments ``argv``; returns the exit status."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    start = time.perf_counter()
    run(config_from(args), output=args.output, use_torch=not args.no_torch,
        torch_optimizer=args.torch_optimizer, progress=not args.no_progress)
    print(f"Done in {time.perf_counter() - start:.1f} s.")
    return 0
