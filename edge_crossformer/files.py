"""Outputs that appear whole or not at all: staging directories named after their owner process (so a later run
can remove what a killed one left), a lock per output, converters' temporary files kept inside the staging
directory, free-space checks, and JSON that stays JSON."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; the O_EXCL lock file still refuses
    fcntl = None


class OutputBusy(Exception):
    """Another live process is writing the same output."""


def inputs_at_risk(output: str | Path, inputs) -> list[Path]:
    """The inputs (paths the user gave; None entries skipped) that replacing or removing `output` would delete:
    `output` itself or anything inside it, reached however the user named it: symlinks, `..`, and (through the
    file system's own identity, device and inode) bind mounts and other aliases of a directory. Every command that
    writes an output it may replace asks this one function, for every input it was given."""
    out = Path(os.path.abspath(os.path.expanduser(output)))
    if not out.exists():
        return []
    real_out = out.resolve()
    risky = []
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(os.path.abspath(os.path.expanduser(item)))
        if path == out or path.is_relative_to(out) or _inside(path.resolve(), real_out):
            risky.append(Path(item))
    return risky


def _inside(path: Path, directory: Path) -> bool:
    """Whether `path` is `directory` or lies under it, by path or by file identity of an existing ancestor."""
    if path == directory or path.is_relative_to(directory):
        return True
    for ancestor in (path, *path.parents):
        try:
            if ancestor.exists() and os.path.samefile(ancestor, directory):
                return True
        except OSError:
            continue
    return False


def _owned(kind: str, target: Path) -> str:
    """Prefix of a scratch entry beside `target`, tagged with this process id."""
    return f".{target.name}.{kind}-{os.getpid()}-"


def staging_dir(target: Path, kind: str = "staging") -> Path:
    """A fresh, empty directory beside `target` (same filesystem, so it can be renamed onto it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_owned(kind, target), dir=target.parent))


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block ends: for steps that must not stop half-way (two renames
    that swap an output into place). A signal that arrives meanwhile is raised again right after, to the handler
    that was in place. (Python-level: a blocked signal mask is per thread, and the runtimes' threads would take it.)"""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not None:  # None: a handler set outside Python, which could not be restored
            previous[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


def remove(path: Path) -> None:
    """Remove a file, link or directory tree, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


def sweep_stale(target: Path) -> list[Path]:
    """Remove the scratch entries beside `target` (staging, old, tmp) whose owner process is gone: what a run
    killed with SIGKILL, or a power cut, left behind. Entries of live processes are left alone."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(staging|old|tmp)-(\d+)-")
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if not match or pid_alive(int(match.group(2))):
            continue
        remove(entry)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def output_lock(target: Path, what: str = "export"):
    """Hold an exclusive lock on `target` for the whole run; a second process is refused at once (OutputBusy)
    instead of racing for the same directory. The lock file is removed on the way out."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            owner = _read_pid(path)
            raise OutputBusy(f"another {what}{f' (pid {owner})' if owner else ''} is writing {target}; wait for it "
                             "to finish or choose another output directory") from None
        # The holder before us may have removed the file between our open and our lock: lock the file on disk.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def private_tmpdir(directory: Path):
    """Point Python's tempfile and child libraries (TMPDIR) at `directory` while converters run, so their
    temporary files (coremltools' tmp*.mlpackage, ...) go away with the staging directory on every way out."""
    directory.mkdir(parents=True, exist_ok=True)
    saved_env = {k: os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")}
    saved_tempdir = tempfile.tempdir
    for key in saved_env:
        os.environ[key] = str(directory)
    tempfile.tempdir = str(directory)
    try:
        yield directory
    finally:
        tempfile.tempdir = saved_tempdir
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def atomic_path(target: str | Path, *, directory: bool = False):
    """Yield a temporary path beside `target`; on success rename it onto `target`, on error remove it.

    Readers see the old file or the complete new one, never a half-written one; a run killed before the rename
    leaves an entry `sweep_stale` removes later.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = staging_dir(target, "tmp")
    else:
        fd, name = tempfile.mkstemp(prefix=_owned("tmp", target), suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o755 if directory else 0o644)  # mkstemp/mkdtemp create owner-only entries
        with signals_deferred():  # a directory is removed, then renamed: nothing may stop in between
            if directory and target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(tmp, target)
    except BaseException:
        remove(tmp)
        raise


@contextlib.contextmanager
def atomic_files(*targets: str | Path, stale: tuple[Path, ...] = ()):
    """Several files that belong together (a checkpoint and its record), replaced together: yield a temporary path
    beside each; on success rename them all and delete `stale` (files that would not fit the new ones), with
    signals held until the last step, so a reader never finds a new checkpoint beside an old record; on error
    remove the temporary files and leave the old ones."""
    targets = [Path(t) for t in targets]
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_owned("tmp", target), suffix=".tmp", dir=target.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        with signals_deferred():
            for tmp, target in zip(temps, targets):
                os.chmod(tmp, 0o644)  # mkstemp creates owner-only files
                os.replace(tmp, target)
            for path in stale:
                path.unlink(missing_ok=True)
    except BaseException:
        for tmp in temps:
            remove(tmp)
        raise


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def json_safe(value):
    """`value` with every NaN / Inf float replaced by None: json.dumps would write bare NaN, which is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
