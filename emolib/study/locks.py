"""One writer at a time: an OS-level lock per run folder, store or shard folder.

Two processes appending to one story store each wrote every record (96 lines for 48 ids), and
the store was refused as corrupt on the next run. Every writer therefore holds an exclusive lock
for as long as it writes: :func:`exclusive` takes ``fcntl.flock`` on a small lock file and writes
who holds it (pid, host, start time, what) into that file. A second writer fails at once with a
:class:`LockedError` that names the holder; it never waits and never writes.

Stale locks cannot block anyone: the kernel releases a ``flock`` when its process dies, so a
lock file left by a killed process is simply taken over (and the takeover is reported).

Nesting: a process that already holds a lock may enter it again (a count is kept). A child
process (a papermill kernel) inherits the locks of the pipeline that started it through the
``EMOLIB_HELD_LOCKS`` environment variable, so the stage it runs is not refused by its own parent.
POSIX only (Linux, macOS), like the rest of the tooling.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_NAME = ".emolib.lock"
ENV = "EMOLIB_HELD_LOCKS"

_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth), this process


class LockedError(RuntimeError):
    """Another process is writing here; the message names it."""


FILE_SUFFIXES = (".jsonl", ".json", ".safetensors", ".txt")


def lock_path_for(target: str | Path) -> Path:
    """The lock file guarding ``target``: ``<file>.lock`` beside a file (an existing file, or a path
    ending in .jsonl/.json/.safetensors/.txt), else ``<folder>/.emolib.lock`` inside a folder."""
    target = Path(target)
    if target.is_file() or (not target.is_dir() and target.suffix in FILE_SUFFIXES):
        return target.with_name(target.name + ".lock")
    return target / LOCK_NAME


def _inherited() -> set[str]:
    return {p for p in os.environ.get(ENV, "").split(os.pathsep) if p}


def _describe(info: dict) -> str:
    return (f"pid {info.get('pid')} on {info.get('host')}, {info.get('what') or 'a writer'} "
            f"since {info.get('since')}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def exclusive(target: str | Path, what: str = "") -> Iterator[Path]:
    """Hold the writer lock of ``target`` (a folder or a file) inside the ``with`` block.

    Raises :class:`LockedError` at once if another process holds it, and :class:`PermissionError`
    with a clear message if the lock cannot be created (a read-only folder). Yields the lock path.
    """
    path = lock_path_for(target).resolve()
    key = str(path)
    if key in _inherited():
        yield path
        return
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield path
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        raise PermissionError(f"Cannot write in {path.parent}: it is read-only for this user, so nothing can be "
                              "written there. Choose another run folder (--run-dir) or fix its permissions.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise LockedError(f"{target} is being written by another process ({_describe(holder)}). "
                          "Wait for it to finish, or stop it; two writers would corrupt it.") from None
    previous = _read(fd)
    if previous.get("pid") and previous.get("host") == socket.gethostname() and not _alive(int(previous["pid"])):
        warnings.warn(f"Taking over the lock of {target}: its last holder ({_describe(previous)}) is no longer "
                      "running (killed or crashed); its work up to the last complete batch is kept.", stacklevel=3)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what or " ".join(sys.argv[:3]),
            "since": datetime.now(UTC).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _held[key] = (fd, 1)
    try:
        yield path
    finally:
        fd, depth = _held.pop(key)
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def handed_to_children(*targets: str | Path) -> Iterator[None]:
    """Let child processes started inside the block (papermill kernels) write under locks this
    process holds for ``targets``: their paths go into ``EMOLIB_HELD_LOCKS`` for the block."""
    old = os.environ.get(ENV)
    paths = [str(lock_path_for(t).resolve()) for t in targets]
    os.environ[ENV] = os.pathsep.join(([old] if old else []) + paths)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def check_writable(folder: str | Path) -> None:
    """Fail before any work starts if ``folder`` (created if needed) cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".emolib-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"Cannot write in {folder} ({err.strerror}). Choose another run folder "
                              "(--run-dir / RUN=...) or fix its permissions; nothing was started.") from None
