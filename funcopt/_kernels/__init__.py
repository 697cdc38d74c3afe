"""funcopt's CPU kernels: C++ XLA FFI handlers, compiled on first use and cached.

A kernel is built once per source, compiler, jaxlib and CPU with the system's C++ compiler
(:func:`compiler`: ``$CXX`` if set, else ``c++``, ``g++`` or ``clang++``) against the FFI
headers jaxlib ships (``jax.ffi.include_dir()``), into ``$FUNCOPT_CACHE_DIR`` (default
``$XDG_CACHE_HOME/funcopt`` or ``~/.cache/funcopt``, created with mode 0700), and registered
with XLA for the CPU platform. The compiler may run ``$FUNCOPT_COMPILE_TIMEOUT`` seconds
(default 120); processes that start together compile once (a file lock), and a cached library
is loaded only if it is this user's and no one else can write it or its folder
(``_cache.py`` says how). A cache that cannot be written, or is not trusted (with a warning),
is replaced by a private temporary folder, removed once the kernel is loaded.

Without a compiler, or with ``FUNCOPT_DISABLE_KERNELS=1``, :func:`target` returns ``None``
(with one warning saying why, in the first case) and callers take their pure-XLA path, which
gives the same numbers, only slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shlex
import shutil
import warnings
from pathlib import Path

import jax
import jaxlib

from funcopt._kernels import _cache

_HERE = Path(__file__).parent
_DEFAULT_TIMEOUT_S = 120.0

# -ffp-contract=off: the only fused multiply-adds are the explicit std::fma calls, so the
# kernels round exactly like the XLA expressions they replace. -fno-math-errno lets sqrt
# vectorize (it does not change its result). -march=native: built where it runs (the cache key
# includes the CPU), for the FMA and vector units.
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off",
          "-fno-math-errno"]
if platform.machine().lower() in ("x86_64", "amd64"):
    _FLAGS.append("-march=native")


def compiler() -> tuple[str, ...] | None:
    """The command that compiles the kernels (the compiler's path, then any arguments given
    in ``$CXX``), or None if there is none: ``$CXX`` when set (and only it), else the first of
    ``c++``, ``g++``, ``clang++`` on the PATH."""
    words = shlex.split(os.environ.get("CXX", ""))
    for name in words[:1] or ["c++", "g++", "clang++"]:
        found = shutil.which(name)
        if found:
            return (found, *words[1:])
    return None


def cache_dir() -> Path:
    """``$FUNCOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/funcopt``, else ``~/.cache/funcopt``."""
    if os.environ.get("FUNCOPT_CACHE_DIR"):
        return Path(os.environ["FUNCOPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "funcopt"


def _timeout_s() -> float:
    text = os.environ.get("FUNCOPT_COMPILE_TIMEOUT", "")
    try:
        seconds = float(text) if text else _DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise RuntimeError(f"FUNCOPT_COMPILE_TIMEOUT={text!r} is not a positive number of seconds")
    return seconds


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + platform.processor() + flags


def _build_of(source: Path, command: tuple[str, ...]) -> _cache.Build:
    timeout_s = _timeout_s()
    _, version, _ = _cache.run([*command, "--version"], timeout_s)
    headers = [h.read_text() for h in sorted(_HERE.glob("*.h"))]  # parallel.h
    key = hashlib.sha256(
        "\0".join([source.read_text(), *headers, " ".join(_FLAGS), version,
                   jaxlib.__version__, _cpu_fingerprint()]).encode()
    ).hexdigest()[:16]
    full = (*command, *_FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{_HERE}", str(source))
    return _cache.Build(full, f"{source.stem}-{key}.so", timeout_s)


def load(source: Path) -> ctypes.CDLL:
    """The library compiled from C++ ``source``: from the cache, else built there; from a
    private temporary folder if the cache cannot be written (EACCES, EROFS, EPERM) or is not
    trusted (with a RuntimeWarning). Raises RuntimeError (no compiler, a failed or timed-out
    build) or OSError (any other reason, which it names)."""
    if _cache.fcntl is None:
        raise RuntimeError("funcopt builds its kernels on POSIX systems only")
    command = compiler()
    if command is None:
        cxx = os.environ.get("CXX")
        raise RuntimeError(f"the compiler in $CXX ({cxx!r}) was not found" if cxx else
                           "no C++ compiler found (tried $CXX, c++, g++, clang++)")
    build = _build_of(Path(source), command)
    try:
        return _cache.load_cached(cache_dir(), build)
    except _cache.Refused as why:
        warnings.warn(
            f"funcopt does not trust its kernel cache: {why}. It builds {Path(source).name} in "
            "a private temporary folder instead, on every run until this is fixed (make the "
            "cache yours and writable by you only, or set FUNCOPT_CACHE_DIR).",
            RuntimeWarning, stacklevel=3,
        )
    except OSError as err:
        if err.errno not in _cache.NOT_WRITABLE:
            raise
    return _cache.load_private(build)


def disabled() -> bool:
    """Whether ``FUNCOPT_DISABLE_KERNELS`` is set (to anything but empty or ``0``)."""
    return os.environ.get("FUNCOPT_DISABLE_KERNELS", "") not in ("", "0")


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """Kernel ``name``'s loaded library (``_kernels/<name>.cc``), building it if needed; its
    FFI handlers registered with XLA for the CPU (targets ``funcopt_<symbol>``). ``None`` if
    kernels are disabled or cannot be built here (with one warning saying why)."""
    if disabled():
        return None
    try:
        handle = load(_HERE / f"{name}.cc")
        for symbol, registered in _handlers(name):
            jax.ffi.register_ffi_target(registered, jax.ffi.pycapsule(getattr(handle, symbol)),
                                        platform="cpu")
    except (OSError, RuntimeError, AttributeError) as err:
        warnings.warn(
            f"funcopt could not build its CPU kernel {name!r}, so it uses the XLA path instead "
            f"(same numbers, slower on CPU): {err}. Install a C++17 compiler (or set CXX) to "
            "get it; set FUNCOPT_DISABLE_KERNELS=1 to silence this.",
            RuntimeWarning, stacklevel=3,
        )
        return None
    return handle


def _handlers(name: str) -> list[tuple[str, str]]:
    """(symbol, registered target) of each FFI handler ``_kernels/<name>.cc`` defines: its
    own as ``funcopt_<symbol>``, and ``parallel.h``'s ``FuncoptFpControl`` as
    ``funcopt_<name>_FuncoptFpControl`` (every library has one)."""
    source = (_HERE / f"{name}.cc").read_text()
    symbols = [(s, f"funcopt_{s}")
               for s in re.findall(r"XLA_FFI_DEFINE_HANDLER_SYMBOL\((\w+),", source)]
    if "FUNCOPT_DEFINE_COMMON_ENTRY_POINTS()" in source:
        symbols.append(("FuncoptFpControl", f"funcopt_{name}_FuncoptFpControl"))
    return symbols


@functools.cache
def target(name: str, symbol: str) -> str | None:
    """The registered XLA CPU target name of kernel ``name``'s FFI handler ``symbol``,
    building the kernel if needed; ``None`` if kernels are disabled or cannot be built here."""
    if library(name) is None:
        return None
    return f"funcopt_{symbol}"


@functools.cache
def xla_fp_control(name: str) -> int | None:
    """The floating-point control word (MXCSR on x86-64, FPCR on AArch64) that XLA runs kernel
    ``name``'s handlers with, read by its ``FuncoptFpControl`` handler; ``None`` without the
    kernel. The direct entry points run with it, so that they round as under XLA (which
    flushes subnormals to zero)."""
    if library(name) is None:
        return None
    call = jax.ffi.ffi_call(f"funcopt_{name}_FuncoptFpControl",
                            jax.ShapeDtypeStruct((2,), jax.numpy.uint32))
    with jax.ensure_compile_time_eval():
        low, high = (int(x) for x in jax.device_get(jax.jit(call)()))
    return high << 32 | low

