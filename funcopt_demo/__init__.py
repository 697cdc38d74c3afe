"""``python -m funcopt_demo``: the same small training run in JAX with funcopt and in PyTorch
with ``transformers.AdamW``, showing that the two loss curves agree to float32 round-off.

The run trains a small MLP with a LayerNorm on scikit-learn's bundled handwritten digits
(``sklearn.datasets.load_digits``: no download). Both frameworks start from the same NumPy
initial weights, see the same minibatches in the same order and use the same hyperparameters:
AdamW with weight decay on every parameter except biases and LayerNorm, and a linear (or
cosine) warmup schedule. The torch half is optional: without torch and transformers the demo
says how to install them and runs the JAX half alone.

Modules: :mod:`~funcopt_demo.config` (hyperparameters), :mod:`~funcopt_demo.data` (dataset,
initial weights, minibatch order), :mod:`~funcopt_demo.train_jax`,
:mod:`~funcopt_demo.train_torch`, :mod:`~funcopt_demo.report` (table and plot) and
:mod:`~funcopt_demo.cli` (``main``).
"""

from funcopt_demo.cli import main as main
from funcopt_demo.config import Config as Config

__all__ = ["Config", "main"]
