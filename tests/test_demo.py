"""``python -m funcopt_demo``: it runs, writes its plot, and JAX matches torch to round-off."""

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import reference

from funcopt_demo import cli, data, report
from funcopt_demo.config import Config

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_module_runs_and_reports_a_tiny_difference(tmp_path):
    reference("torch")
    reference("transformers")
    png = tmp_path / "demo.png"
    result = subprocess.run(
        [sys.executable, "-m", "funcopt_demo", "--steps", "30", "--no-progress",
         "--output", str(png)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in out
    largest = re.search(r"Largest loss difference over all 30 steps: (\S+) at step", out)
    assert largest, out
    assert float(largest.group(1)) < 1e-5
    relative = re.search(r"Largest relative loss difference: (\S+) at step", out)
    assert float(relative.group(1)) < 1e-5
    assert "FutureWarning" not in result.stderr


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_jax_matches_transformers_adamw(tmp_path, schedule, capsys):
    reference("torch")
    reference("transformers")
    config = Config(steps=40, batch_size=32, hidden=32, schedule=schedule)
    summary = cli.run(config, output=str(tmp_path / "d.png"), progress=False)
    d = summary.difference
    assert d.max_abs < 1e-5 and d.ulps <= 8
    assert d.max_lr_abs < 1e-9
    assert d.max_param_rel < 1e-5
    np.testing.assert_allclose(summary.jax.learning_rates, summary.torch.learning_rates,
                               rtol=1e-6, atol=1e-10)
    assert summary.jax.learning_rates[0] == 0.0  # warmup starts at 0, as LambdaLR does
    assert "Largest loss difference" in capsys.readouterr().out


def test_funcopt_torch_adamw_as_the_torch_half(tmp_path):
    reference("torch")
    reference("transformers")
    config = Config(steps=20, batch_size=32, hidden=32)
    summary = cli.run(config, output=str(tmp_path / "d.png"), progress=False,
                      torch_optimizer="funcopt")
    assert summary.torch.name == "torch + funcopt.AdamW"
    assert summary.difference.max_abs < 1e-5


def test_without_torch_prints_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "missing_torch_packages", lambda: ["torch", "transformers"])
    png = tmp_path / "jax_only.png"
    summary = cli.run(Config(steps=10, batch_size=32, hidden=16), output=str(png),
                      progress=False)
    assert summary.torch is None and summary.difference is None
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "pip install -e '.[torch]'" in capsys.readouterr().out


def test_same_inputs_for_both_frameworks():
    config = Config(steps=50, batch_size=64)
    dataset = data.load_digits(config.seed)
    assert dataset.x_train.dtype == np.float32 and dataset.num_classes == 10
    batches = data.batch_indices(config, len(dataset.x_train))
    assert batches.shape == (50, 64)
    # Within an epoch no example repeats; the order is reproducible.
    per_epoch = len(dataset.x_train) // 64
    assert len(np.unique(batches[:per_epoch])) == per_epoch * 64
    np.testing.assert_array_equal(batches, data.batch_indices(config, len(dataset.x_train)))
    init = data.init_params(config, dataset.num_features, dataset.num_classes)
    assert init["dense"]["weight"].shape == (config.hidden, 64)
    assert all(a.dtype == np.float32 for layer in init.values() for a in layer.values())


def test_difference_report():
    from funcopt_demo.results import RunResult

    losses = np.array([2.0, 1.0, 0.5], np.float32)
    params = {"w": np.array([1.0, -2.0], np.float32)}
    shifted = losses + np.array([0.0, 0.0, 2**-22], np.float32)
    a = RunResult("a", shifted, losses, 1.0, 0.0, params)
    b = RunResult("b", losses, losses, 1.0, 0.0, params)
    d = report.difference(a, b)
    assert d.step == 2 and d.max_param_rel == 0.0 and d.max_lr_abs == 0.0
    assert d.max_rel == pytest.approx(2**-22 / 0.5, rel=1e-3)
    assert "at step 2" in report.describe(d, 3)


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--schedule", "step"]])
def test_bad_arguments_are_rejected(argv):
    with pytest.raises((SystemExit, ValueError)):
        cli.config_from(cli.parse_args(argv))
