"""Benchmarks for funcopt (not part of the installed package).

- ``python -m benchmarks`` (:mod:`benchmarks.update_step`): the optimizer update step of
  funcopt's optimizers against optax, torch and transformers on a GPT-2-shaped pytree,
  interleaved, with bandwidth, state and memory figures (:mod:`benchmarks.memory` measures
  peak RSS in a subprocess per optimizer).
- ``python -m benchmarks.xla_cpu``: the XLA:CPU experiments behind ``benchmarks/NOTES.md``.
- ``python -m benchmarks.multihost``: funcopt over two ``jax.distributed`` processes.
"""
