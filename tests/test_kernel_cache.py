"""The kernel cache's safeguards (funcopt/_kernels): which compiler, which folders and files are
trusted, the build lock, the compiler's time limit, what killed or failed builds leave behind.

Hermetic and fast: every test has its own cache (``FUNCOPT_CACHE_DIR`` in ``tmp_path``) and
temporary folder, builds a one-line C++ library rather than the AdamW kernel, and plays odd
compilers with small shell scripts in ``$CXX`` (in front of the real one where they must build).
"""

import errno
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import pytest

from funcopt import _kernels
from funcopt._kernels import _cache

COMPILER = _kernels.compiler()
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="needs a C++ compiler")
ANSWER = 'extern "C" int funcopt_answer() { return 42; }\n'


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A one-line library's source; the cache and the temporary folder are this test's own."""
    monkeypatch.setenv("FUNCOPT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    path = tmp_path / "answer.cc"
    path.write_text(ANSWER)
    return path


def script(tmp_path, name, body):
    """An executable shell script: a stand-in compiler for ``$CXX``."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def in_front(tmp_path, before_a_build):
    """A compiler that runs ``before_a_build`` (shell) before each build, then the real one."""
    return script(tmp_path, "wrapped-c++", f"""\
        [ "$1" = --version ] || {{ {before_a_build}; }}
        exec {COMPILER[0]} "$@"
        """)


def built(tmp_path):
    return sorted((tmp_path / "cache").glob("*.so"))


def leftovers(tmp_path):
    """Temporary build files in the cache, and anything in the temporary folder."""
    return sorted((tmp_path / "cache").glob("*.so.tmp")) + sorted((tmp_path / "tmp").iterdir())


def test_the_compiler_is_cxx_when_set_else_the_first_on_the_path(tmp_path, monkeypatch):
    fake = script(tmp_path, "my-c++", "exit 0\n")
    monkeypatch.setenv("CXX", f"{fake} -O0")
    assert _kernels.compiler() == (str(fake), "-O0")
    monkeypatch.setenv("CXX", str(tmp_path / "missing-c++"))  # set: no other compiler instead
    assert _kernels.compiler() is None
    monkeypatch.setenv("CXX", "")
    first = next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)
    assert _kernels.compiler() == (None if first is None else (first,))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _kernels.compiler() is None


@needs_compiler
@pytest.mark.parametrize("where", ["FUNCOPT_CACHE_DIR", "XDG_CACHE_HOME"])
def test_the_cache_is_created_private(source, tmp_path, monkeypatch, where):
    monkeypatch.delenv("FUNCOPT_CACHE_DIR")
    monkeypatch.setenv(where, str(tmp_path / "home" / "cache"))
    folder = _kernels.cache_dir()
    assert not folder.exists() and (tmp_path / "home") in folder.parents
    assert _kernels.load(source).funcopt_answer() == 42
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert len(list(folder.glob("answer-*.so"))) == 1


def refused_then_built_privately(source, tmp_path, why):
    with pytest.warns(RuntimeWarning, match="does not trust") as caught:
        library = _kernels.load(source)
    assert len(caught) == 1 and why in str(caught[0].message)
    assert library.funcopt_answer() == 42  # built, loaded, and its folder already removed
    assert leftovers(tmp_path) == []


@needs_compiler
def test_a_cache_folder_others_can_write_is_refused(source, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o777)
    refused_then_built_privately(source, tmp_path, "writable by others (mode 777)")
    assert built(tmp_path) == []


@needs_compiler
def test_a_cached_library_others_can_write_is_refused_and_left_alone(source, tmp_path):
    _kernels.load(source)
    [library] = built(tmp_path)
    library.chmod(0o757)
    before = library.stat()
    refused_then_built_privately(source, tmp_path, "writable by others")
    assert built(tmp_path) == [library]
    assert (library.stat().st_ino, library.stat().st_mtime_ns) == (before.st_ino,
                                                                  before.st_mtime_ns)


@needs_compiler
@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
@pytest.mark.parametrize("what", ["folder", "library"])
def test_a_cache_of_another_user_is_refused(source, tmp_path, what):
    _kernels.load(source)
    [library] = built(tmp_path)
    os.chown(library if what == "library" else tmp_path / "cache", 65534, 65534)
    refused_then_built_privately(source, tmp_path, "belongs to uid 65534")


@needs_compiler
def test_a_link_in_place_of_the_library_is_refused(source, tmp_path):
    _kernels.load(source)
    [library] = built(tmp_path)
    library.rename(tmp_path / "elsewhere.so")
    library.symlink_to(tmp_path / "elsewhere.so")
    refused_then_built_privately(source, tmp_path, "not a regular file")


def cannot_write(code):
    """A cache folder whose files cannot be created (as a read-only one, even for root)."""
    def locked(path, wait_s):
        raise OSError(code, os.strerror(code), str(path))
    return locked


@needs_compiler
@pytest.mark.parametrize("code", ["real", errno.EACCES, errno.EROFS, errno.EPERM])
def test_a_cache_that_cannot_be_written_builds_privately_and_quietly(
        source, tmp_path, monkeypatch, code):
    (tmp_path / "cache").mkdir(mode=0o700)
    if code == "real":
        if os.geteuid() == 0:
            pytest.skip("root writes read-only folders")
        (tmp_path / "cache").chmod(0o500)
    else:
        monkeypatch.setattr(_cache, "_locked", cannot_write(code))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _kernels.load(source).funcopt_answer() == 42
    assert built(tmp_path) == [] and leftovers(tmp_path) == []


@needs_compiler
def test_other_os_errors_are_not_read_as_not_writable(source, tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(FileExistsError):
        _kernels.load(source)
    assert leftovers(tmp_path) == []  # no private build: that would hide the reason
    register = _kernels.library.__wrapped__  # uncached: the warning the first step gives
    with pytest.warns(RuntimeWarning, match="could not build its CPU kernel 'adamw'") as caught:
        assert register("adamw") is None
    assert "File exists" in str(caught[0].message)


WAIT_THEN_LOAD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from funcopt import _kernels
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.01)
    print(_kernels.load(Path(sys.argv[1])).funcopt_answer())
""")


@needs_compiler
def test_processes_starting_together_compile_once(source, tmp_path):
    log = tmp_path / "builds.log"
    env = {**os.environ, "CXX": str(in_front(tmp_path, f"echo $$ >> {log}; sleep 0.5"))}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WAIT_THEN_LOAD, str(source), str(go)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 3
    go.touch()  # all three load at once; the first to lock builds, the others wait and load
    assert [p.communicate(timeout=120)[0] for p in procs] == ["42\n"] * 3
    assert len(log.read_text().split()) == 1
    assert len(built(tmp_path)) == 1 and leftovers(tmp_path) == []


@needs_compiler
def test_a_build_that_holds_the_lock_too_long_is_given_up(source, tmp_path, monkeypatch):
    _kernels.load(source)
    [library] = built(tmp_path)
    library.unlink()
    monkeypatch.setenv("FUNCOPT_COMPILE_TIMEOUT", "0.5")
    fd = os.open(f"{library}.lock", os.O_RDWR)  # another "process" building (its own open)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="another process has held"):
            _kernels.load(source)
        assert 0.9 < time.monotonic() - start < 10
    finally:
        os.close(fd)
    assert built(tmp_path) == []


@needs_compiler
def test_stale_temporary_files_are_removed_when_building(source, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    finished = subprocess.Popen(["true"])
    finished.wait()  # a process that is gone
    names = {"old": "x~1@elsewhere~a.so.tmp", "dead": f"x~{finished.pid}@{_cache.HOST}~b.so.tmp",
             "legacy_old": "tmpabc.so.tmp", "alive": f"x~{os.getpid()}@{_cache.HOST}~c.so.tmp",
             "elsewhere": f"x~{finished.pid}@not-{_cache.HOST}~d.so.tmp", "legacy": "tmpd.so.tmp"}
    for key, name in names.items():
        (cache / name).write_bytes(b"half a library")
        if key.endswith("old"):
            os.utime(cache / name, (time.time() - 3600,) * 2)
    _kernels.load(source)
    assert sorted(p.name for p in cache.glob("*.so.tmp")) == sorted(
        names[k] for k in ("alive", "elsewhere", "legacy"))


@needs_compiler
def test_a_cached_library_that_does_not_load_is_replaced_never_unlinked(
        source, tmp_path, monkeypatch):
    # Its name from a build elsewhere (dlopen would hand back a library this process has
    # loaded from the same path, whatever the file holds now).
    monkeypatch.setenv("FUNCOPT_CACHE_DIR", str(tmp_path / "elsewhere"))
    _kernels.load(source)
    [name] = [p.name for p in (tmp_path / "elsewhere").glob("*.so")]
    monkeypatch.setenv("FUNCOPT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir(mode=0o700)
    library = tmp_path / "cache" / name
    library.write_bytes(b"not a library")
    broken = library.stat().st_ino
    failing = script(tmp_path, "failing-c++", f"""\
        [ "$1" = --version ] && exec {COMPILER[0]} --version
        exit 1
        """)
    monkeypatch.setenv("CXX", str(failing))  # same --version, so the same cached file
    with pytest.raises(RuntimeError, match="failed"):
        _kernels.load(source)
    assert library.stat().st_ino == broken and leftovers(tmp_path) == []
    monkeypatch.delenv("CXX")
    assert _kernels.load(source).funcopt_answer() == 42
    assert library.stat().st_ino != broken and leftovers(tmp_path) == []


@needs_compiler
def test_a_build_that_does_not_load_is_removed_not_published(source, tmp_path, monkeypatch):
    writes_garbage = script(tmp_path, "garbage-c++", """\
        [ "$1" = --version ] && exec echo garbage 1.0
        for arg; do [ "$prev" = -o ] && echo "not a library" > "$arg"; prev=$arg; done
        exit 0
        """)
    monkeypatch.setenv("CXX", str(writes_garbage))
    with pytest.raises(OSError):
        _kernels.load(source)
    assert built(tmp_path) == [] and leftovers(tmp_path) == []


def test_a_hung_compiler_is_killed_in_time(source, tmp_path, monkeypatch):
    hung = script(tmp_path, "hung-c++", """\
        [ "$1" = --version ] && exec echo hung 1.0
        sleep 300  # a child: the whole process group must go, or its pipes keep us waiting
        """)
    monkeypatch.setenv("CXX", str(hung))
    monkeypatch.setenv("FUNCOPT_COMPILE_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="did not finish within 0.5 s"):
        _kernels.load(source)
    assert time.monotonic() - start < 10
    assert built(tmp_path) == [] and leftovers(tmp_path) == []
    monkeypatch.setenv("FUNCOPT_COMPILE_TIMEOUT", "soon")
    with pytest.raises(RuntimeError, match="FUNCOPT_COMPILE_TIMEOUT='soon'"):
        _kernels.load(source)

