"""funcopt's CPU kernels: C++ XLA FFI handlers, compiled on first use and cached.

A kernel is built once per source, compiler, jaxlib and CPU with the system's C++ compiler
(``$CXX``, else ``c++``, ``g++`` or ``clang++``) against the FFI headers jaxlib ships
(``jax.ffi.include_dir()``), into ``$FUNCOPT_CACHE_DIR`` (default
``$XDG_CACHE_HOME/funcopt`` or ``~/.cache/funcopt``), and registered with XLA for the CPU
platform. Without a compiler, or with ``FUNCOPT_DISABLE_KERNELS=1``, :func:`target` returns
``None`` (with one warning saying why) and callers take their pure-XLA path, which gives the
same numbers, only slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jaxlib

_HERE = Path(__file__).parent

# -ffp-contract=off: the only fused multiply-adds are the explicit std::fma calls, so the
# kernels round exactly like the XLA expressions they replace. -fno-math-errno lets sqrt
# vectorize (it does not change its result). -march=native: built where it runs (the cache key
# includes the CPU), for the FMA and vector units.
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off",
          "-fno-math-errno"]
if platform.machine().lower() in ("x86_64", "amd64"):
    _FLAGS.append("-march=native")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + platform.processor() + flags


def _cache_dir() -> Path:
    if os.environ.get("FUNCOPT_CACHE_DIR"):
        return Path(os.environ["FUNCOPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "funcopt"


def _build(name: str, compiler: str, cache: Path) -> Path:
    source = _HERE / f"{name}.cc"
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join([source.read_text(), " ".join(_FLAGS), version, jaxlib.__version__,
                   _cpu_fingerprint()]).encode()
    ).hexdigest()[:16]
    library = cache / f"{name}-{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name, then rename: concurrent processes never see half a file.
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=cache)
    os.close(fd)
    try:
        command = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(source), "-o", tmp]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
        os.chmod(tmp, 0o755)  # mkstemp's 0600 would lock other users of a shared cache out
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


def _load(name: str, compiler: str) -> ctypes.CDLL:
    """Builds (or finds) and loads the library: in the cache directory, or in a temporary one
    if that is not writable; a cached file that does not load is rebuilt once."""
    try:
        library = _build(name, compiler, _cache_dir())
    except OSError:
        library = _build(name, compiler, Path(tempfile.mkdtemp(prefix="funcopt-")))
    try:
        return ctypes.cdll.LoadLibrary(str(library))
    except OSError:
        library.unlink(missing_ok=True)
        return ctypes.cdll.LoadLibrary(str(_build(name, compiler, library.parent)))


@functools.cache
def target(name: str, symbol: str) -> str | None:
    """The registered XLA CPU target name of kernel ``name`` (``_kernels/<name>.cc``'s FFI
    handler ``symbol``), building it if needed; ``None`` if kernels are disabled or cannot be
    built here."""
    if os.environ.get("FUNCOPT_DISABLE_KERNELS", "") not in ("", "0"):
        return None
    compiler = _compiler()
    try:
        if compiler is None:
            raise RuntimeError("no C++ compiler found (tried $CXX, c++, g++, clang++)")
        library = _load(name, compiler)
        registered = f"funcopt_{symbol}"
        jax.ffi.register_ffi_target(registered, jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
    except (OSError, RuntimeError, AttributeError) as err:
        warnings.warn(
            f"funcopt could not build its CPU kernel {name!r}, so it uses the XLA path instead "
            f"(same numbers, slower on CPU): {err}. Install a C++17 compiler (or set CXX) to "
            "get it; set FUNCOPT_DISABLE_KERNELS=1 to silence this.",
            RuntimeWarning, stacklevel=3,
        )
        return None
    return registered
