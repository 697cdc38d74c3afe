"""Benchmarks for funcopt (not part of the installed package).

- ``python -m benchmarks`` (``make bench``, :mod:`benchmarks.__main__`): everything below in
  one plain process, and every ratio against its goal.
- :mod:`benchmarks.update_step`: the optimizer update step of funcopt's optimizers against
  optax, torch and transformers on a GPT-2-shaped pytree, interleaved, with bandwidth, state
  and memory figures (:mod:`benchmarks.memory` measures peak RSS in a subprocess per
  optimizer).
- ``python -m benchmarks.torch_bridge``: ``funcopt.torch``'s optimizers against the torch
  optimizers they replace (``benchmarks.torch_adamw``: its AdamW group).
- ``python -m benchmarks.menu_speed``, ``python -m benchmarks.eight_bit``: the Trainer menu's
  optimizers against optax, and the 8-bit optimizers.
- ``python -m benchmarks.xla_cpu``: the XLA:CPU experiments behind ``benchmarks/NOTES.md``.
- ``python -m benchmarks.multihost``: funcopt over two ``jax.distributed`` processes.
"""
