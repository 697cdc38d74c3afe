"""The kernel cache: a folder of compiled libraries that funcopt trusts, builds into under a
lock, publishes into atomically, and cleans of what killed builds leave behind.

A folder or library is trusted only if it belongs to this user (or root) and no one else can
write it (a library must also be a regular file, not a link): anyone who can write a library,
or the folder it is in, could make this process run their code. A library is compiled as
``<name>~<pid>@<host>~<random>.so.tmp``, loaded, and only then renamed into place, so a
published library is one that loaded; one that fails to load is replaced (atomically: a process
that has it open keeps its copy), never unlinked. The compiler runs in its own process group
and is killed with it when it runs past its time.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: no kernels (the caller says so)
    fcntl = None

# The errors that mean "this folder is not ours to write": the kernel is built privately then.
NOT_WRITABLE = frozenset({errno.EACCES, errno.EROFS, errno.EPERM})
_TMP_OWNER = re.compile(r"~(\d+)@([A-Za-z0-9._-]+)~[^~]*\.so\.tmp$")
HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


class Refused(Exception):
    """A cache folder or library this process must not trust (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Build:
    """One kernel's build: the compiler's command line up to its output, the name of the
    library it makes, and how long the compiler may run (seconds)."""

    command: tuple[str, ...]
    filename: str
    timeout_s: float

    def into(self, output: str) -> None:
        """Compiles into ``output``; RuntimeError if the compiler fails or runs too long."""
        code, _, err = run([*self.command, "-o", output], self.timeout_s)
        if code != 0:
            raise RuntimeError(f"{' '.join(self.command)} -o {output} failed:\n{err[-4000:]}")


def run(command: list[str], timeout_s: float) -> tuple[int, str, str]:
    """Runs ``command`` to completion: (exit status, stdout, stderr). Past ``timeout_s`` (or
    on an interrupt) its whole process group is killed, and RuntimeError says so."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException as interrupted:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and what it started (cc1plus, ld)
        proc.communicate()
        if isinstance(interrupted, subprocess.TimeoutExpired):
            raise RuntimeError(f"{command[0]} did not finish within {timeout_s:g} s (it was "
                               "killed; FUNCOPT_COMPILE_TIMEOUT sets the limit)") from None
        raise
    return proc.returncode, out, err


def refusal(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` (a cache folder, or a library in one) must not be trusted; None if it may."""
    st = os.stat(path) if folder else os.lstat(path)
    if not folder and not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid not in (os.geteuid(), 0):
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _check(path: Path, *, folder: bool) -> None:
    why = refusal(path, folder=folder)
    if why is not None:
        raise Refused(why)


def _try_load(library: Path) -> ctypes.CDLL | None:
    """The library, if it is there, trusted (else Refused) and loads; None otherwise."""
    if not os.path.lexists(library):
        return None
    _check(library, folder=False)
    try:
        return ctypes.CDLL(str(library))
    except OSError:  # unloadable: rebuilt and replaced, never unlinked (others may use it)
        return None


def load_cached(folder: Path, build: Build) -> ctypes.CDLL:
    """Loads ``build``'s library from the cache ``folder`` (made with mode 0700 if missing),
    building and publishing it there under the folder's lock if it is missing or does not
    load. Raises Refused for an untrusted folder or library, OSError for a folder that cannot
    be written (errno in NOT_WRITABLE) or another failure, RuntimeError for a failed build."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _check(folder, folder=True)
    library = folder / build.filename
    seen = _identity(library)
    handle = _try_load(library)
    if handle is not None:
        return handle
    with _locked(folder / f"{build.filename}.lock", 2 * build.timeout_s):
        remove_stale(folder, max(300.0, build.timeout_s + 60))
        if _identity(library) not in (None, seen):  # another process built it meanwhile
            handle = _try_load(library)
        return handle if handle is not None else publish(folder, build)


def load_private(build: Build) -> ctypes.CDLL:
    """Builds and loads ``build``'s library in a new private temporary folder, removed as soon
    as the library is loaded (a loaded library stays mapped after its file is gone)."""
    folder = Path(tempfile.mkdtemp(prefix="funcopt-"))
    try:
        return publish(folder, build)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(folder: Path, build: Build) -> ctypes.CDLL:
    """Compiles into a temporary file in ``folder``, loads it, then renames it into place: only
    a library that loaded is published. The temporary file is removed whatever happens."""
    fd, tmp = tempfile.mkstemp(prefix=f"{Path(build.filename).stem}~{os.getpid()}@{HOST}~",
                               suffix=".so.tmp", dir=folder)
    os.close(fd)
    try:
        build.into(tmp)
        os.chmod(tmp, 0o755)
        handle = ctypes.CDLL(tmp)
        os.replace(tmp, folder / build.filename)
        return handle
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_stale(folder: Path, max_age_s: float) -> None:
    """Removes the ``*.so.tmp`` files that killed builds left in ``folder``: those older than
    ``max_age_s``, and those whose building process (on this host) is gone."""
    now = time.time()
    for tmp in folder.glob("*.so.tmp"):
        owner = _TMP_OWNER.search(tmp.name)
        with contextlib.suppress(OSError):  # removed meanwhile, or not ours to remove
            gone = owner is not None and owner[2] == HOST and not _alive(int(owner[1]))
            if gone or now - tmp.lstat().st_mtime > max_age_s:
                tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


@contextlib.contextmanager
def _locked(path: Path, wait_s: float):
    """Holds an exclusive ``flock`` on ``path`` (created if missing, never removed), waiting at
    most ``wait_s`` for another build to finish (RuntimeError after that)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another process has held {path} for over {wait_s:g} s "
                                       "(a build that does not finish)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
