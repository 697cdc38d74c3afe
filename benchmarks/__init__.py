"""Benchmarks for funcopt (not part of the installed package).

``python -m benchmarks`` runs :mod:`benchmarks.update_step`: the optimizer update step of
funcopt's optimizers against optax, torch and transformers on a GPT-2-shaped pytree.
:mod:`benchmarks.xla_cpu` holds the experiments behind ``benchmarks/NOTES.md``.
"""
