"""Counting JAX compilations with ``jax.monitoring`` (a public API), for no-recompile tests."""

import contextlib

import jax

# Recorded once per computation lowered for XLA (a jit cache miss), before the compiler or
# the persistent compilation cache is asked; jax.eval_shape traces without lowering.
LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


@contextlib.contextmanager
def compilations():
    """Yields a list that receives the name of every computation JAX compiles inside the
    block (``"jit(f)"`` for a jitted ``f``; eager ``jax.numpy`` ops by their primitive):
    an empty list afterwards means nothing was (re)compiled."""
    names = []

    def listener(event, duration, **kwargs):
        del duration
        if event == LOWERING_EVENT:
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
