"""Moving tensors between torch and JAX through DLPack, without copies where DLPack allows.

Facts this module relies on (jax 0.10, torch 2.13, CPU):

* ``jax.dlpack.from_dlpack(t)`` shares ``t``'s memory when ``t`` is contiguous and its data
  is 64-byte aligned (fresh torch allocations are); otherwise JAX copies and logs a warning, so
  such tensors are cloned in torch first (quietly, into an aligned buffer).
* ``torch.from_dlpack(a)`` shares ``a``'s memory and the tensor is *writable*: a torch view of
  a JAX array must not outlive the array's use as an immutable value. While any torch view of
  a JAX buffer is alive, JAX refuses (silently) to donate that buffer.
* A parameter that requires grad cannot be exported; its ``detach()`` can.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch

_ALIGNMENT = 64

_DTYPES = {
    torch.float32: jnp.float32,
    torch.bfloat16: jnp.bfloat16,
    torch.float16: jnp.float16,
    torch.float64: jnp.float64,
    torch.int32: jnp.int32,
    torch.int64: jnp.int64,
    torch.uint8: jnp.uint8,  # bitsandbytes' 8-bit state codes
}

FLOATING = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def jax_dtype(dtype: torch.dtype):
    """The JAX dtype of a torch dtype."""
    try:
        return jnp.dtype(_DTYPES[dtype])
    except KeyError:
        raise TypeError(f"torch dtype {dtype} has no JAX counterpart here.") from None


def check_param(p: torch.Tensor, where: str) -> None:
    """Raises TypeError for a parameter funcopt cannot optimize (dtype, layout, x64)."""
    if p.dtype not in FLOATING:
        raise TypeError(
            f"{where}: parameters must be floating point ({', '.join(map(str, FLOATING))}), "
            f"got {p.dtype}."
        )
    if p.dtype == torch.float64 and not jax.config.jax_enable_x64:
        raise TypeError(
            f"{where}: float64 parameters need JAX's 64-bit mode: call "
            "jax.config.update('jax_enable_x64', True) before building the optimizer, or "
            "convert the model with model.float()."
        )
    if p.layout != torch.strided:
        raise TypeError(f"{where}: only dense (strided) parameters are supported, got {p.layout}.")


def _exportable(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if not t.is_contiguous() or t.data_ptr() % _ALIGNMENT:
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def to_jax(t: torch.Tensor) -> jax.Array:
    """A JAX array sharing ``t``'s memory (a contiguous aligned clone's if ``t`` is a strided
    or misaligned view). The array aliases torch memory: torch must not write ``t`` while JAX
    may still read it."""
    t = _exportable(t)
    fast = _cpu_import() if t.is_cpu else None
    if fast is not None:
        try:
            return fast(t)
        except Exception:  # noqa: BLE001  (anything odd: the public path, which explains)
            pass
    return jax.dlpack.from_dlpack(t)


@functools.cache
def _cpu_import():
    """``jax.dlpack.from_dlpack`` for CPU tensors without its per-call device and stream
    lookups (about 50 us each, 10x the import itself): jaxlib's DLPack import called directly
    with the CPU device. Used only if it behaves like the public function on a probe (same
    memory, shape and dtype); None otherwise (another jaxlib), and then the public one
    serves."""
    try:
        from jax._src.lib import _jax, jaxlib_extension_version

        device = jax.devices("cpu")[0]
        if jaxlib_extension_version >= 467:
            convert = lambda capsule: _jax.dlpack_managed_tensor_to_buffer(
                capsule, device, None, None, 1)  # 1: DLPack's kDLCPU
        else:
            convert = lambda capsule: _jax.dlpack_managed_tensor_to_buffer(
                capsule, device, None, None)

        def fast(t):
            return convert(torch.utils.dlpack.to_dlpack(t))

        probe = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        x = fast(probe)
        if (x.unsafe_buffer_pointer() == probe.data_ptr() and x.shape == (2, 3)
                and x.dtype == jnp.float32 and isinstance(x, jax.Array)
                and np.array_equal(np.asarray(x), probe.numpy())):
            return fast
    except Exception:  # noqa: BLE001
        pass
    return None


def to_jax_owned(value, dtype=None) -> jax.Array:
    """A JAX-owned copy of ``value`` (a tensor, a JAX array or a Python number), cast to
    ``dtype``: safe to donate, immune to later in-place torch writes to ``value``, and
    committed to its device like the arrays DLPack gives (so that jitted updates see one
    kind of input and compile once)."""
    if isinstance(value, jax.Array):
        value = torch.from_dlpack(value)
    elif not isinstance(value, torch.Tensor):
        value = torch.tensor(value)
    x = to_jax(value)
    if dtype is not None and x.dtype != dtype:
        x = x.astype(dtype)
    else:
        x = jnp.array(x, copy=True)
    return x.block_until_ready()  # done reading torch memory before torch may write it


def to_jax_value(value, dtype) -> jax.Array:
    """A JAX-owned copy of a tensor, in ``dtype``, placed like ``jnp.zeros`` results
    (uncommitted): what a JAX training loop expects of an optimizer state."""
    host = np.asarray(to_jax(value)) if isinstance(value, torch.Tensor) else np.asarray(value)
    return jnp.array(host, dtype=dtype)


def write(p: torch.Tensor, a: jax.Array) -> None:
    """``p.copy_(a)``, keeping ``p``'s storage. On the CPU it is one plain memcpy through NumPy
    views: torch's multi-threaded ``copy_`` contends with XLA's spinning worker threads right
    after a computation (measured 3-7x slower on 2 vCPUs). ``p``'s version counter is bumped
    as by any in-place op, so autograd still notices a parameter changed under it."""
    if p.device.type != "cpu":
        p.detach().copy_(torch.from_dlpack(a))
        return
    dst, src = p.detach(), np.asarray(a)
    if p.dtype == torch.bfloat16:  # NumPy has no torch bfloat16: copy the bits
        dst, src = dst.view(torch.int16), src.view(np.int16)
    np.copyto(dst.numpy(), src)
    torch.autograd.graph.increment_version(p)


def to_torch(a: jax.Array) -> torch.Tensor:
    """A writable torch view of ``a``'s memory (no copy)."""
    return torch.utils.dlpack.from_dlpack(a.__dlpack__())


def to_torch_owned(a: jax.Array, device: torch.device | None = None) -> torch.Tensor:
    """A torch-owned copy of ``a``, on ``device`` if given."""
    t = torch.from_dlpack(a).clone()
    return t if device is None else t.to(device)
