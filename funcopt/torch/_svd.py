"""torch's SVD as a JAX function: GaLore's projections as galore-torch computes them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

__all__ = ["torch_svd"]


def torch_svd(a):
    """``torch.linalg.svd(a, full_matrices=False)`` of a float32 matrix, called from JAX.

    The ``svd`` of :func:`funcopt.galore_adamw` and :func:`funcopt.galore_adafactor` that
    gives galore-torch's own projections: torch's LAPACK (MKL on x86 CPUs) picks other signs
    for some singular vectors than JAX's, and after a re-projection the moments carried over
    meet the new basis with those signs (see :mod:`funcopt._galore`). It runs on the host
    through ``jax.pure_callback`` (under ``jit``, ``vmap`` one matrix at a time), and is the
    default of :class:`funcopt.torch.Optimizer` for the GaLore optimizers, so a torch run
    re-projects exactly as galore-torch does.

    Returns ``(u, s, vh)`` with shapes ``(m, k)``, ``(k,)``, ``(k, n)``, ``k = min(m, n)``.

    Example:
      >>> import jax, jax.numpy as jnp, funcopt, funcopt.torch
      >>> u, s, vh = jax.jit(funcopt.torch.torch_svd)(jnp.array([[3.0, 0.0], [0.0, -2.0]]))
      >>> s
      Array([3., 2.], dtype=float32)
      >>> tx = funcopt.galore_adamw(1e-2, rank=1, svd=funcopt.torch.torch_svd)
    """
    a = jnp.asarray(a, jnp.float32)
    if a.ndim != 2:
        raise ValueError(f"torch_svd factors a matrix; got shape {a.shape}.")
    (m, n), k = a.shape, min(a.shape)

    def host(x):
        u, s, vh = torch.linalg.svd(torch.from_numpy(np.array(x, np.float32)),
                                    full_matrices=False)
        return u.numpy(), s.numpy(), vh.numpy()

    shapes = (jax.ShapeDtypeStruct((m, k), jnp.float32), jax.ShapeDtypeStruct((k,), jnp.float32),
              jax.ShapeDtypeStruct((k, n), jnp.float32))
    return jax.pure_callback(host, shapes, a, vmap_method="sequential")
