"""One bf-node per work dir: an exclusive lock on ``<work_dir>/node.lock``.

The node's identity (``node-id``), blob cache and job folders live in its work dir.
Two nodes sharing one would announce the same uid, so each connection would replace
the other on the server and tasks would be rendered twice. :func:`lock_work_dir`
takes the lock before the node probes Blender or connects, and the node holds it for
its whole life.

It is an ``flock``: the kernel drops it when the process dies however it dies
(``kill -9`` included), so a stale lock file never keeps a node from starting. The
holder's pid and host name are written into the file only for the refusal message;
the lock itself, not the file's content, is what counts. This module must not decide
anything about the rest of the work dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = "node.lock"


class WorkDirBusy(Exception):
    """Another bf-node holds this work dir; the message says what to do."""

    def __init__(self, work_dir: Path, pid: int | None, host: str | None) -> None:
        who = "another bf-node"
        if pid is not None:
            where = f" on {host}" if host and host != socket.gethostname() else ""
            who += f" (pid {pid}{where})"
        super().__init__(f"{who} is using the work dir {work_dir}; "
                         "give each node on a machine its own --work-dir")
        self.work_dir = work_dir
        self.pid = pid
        self.host = host


class WorkDirLock:
    """The held lock; :meth:`release` (or leaving the ``with``) gives it up."""

    def __init__(self, work_dir: Path, fd: int) -> None:
        self.work_dir = work_dir
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> WorkDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_work_dir(work_dir: Path) -> WorkDirLock:
    """Create ``work_dir`` if needed and lock it, or raise :class:`WorkDirBusy`.

    An ``OSError`` (no permission, a read-only disk) is left to the caller: that is
    a setting to fix, not another node.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / LOCK_NAME
    # No O_TRUNC: the file may belong to the running holder, whose pid we want to read.
    # Python's descriptors are not inherited (PEP 446), so a Blender this node starts
    # cannot keep the lock alive after the node itself was killed.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, host = _read_holder(fd)
        os.close(fd)
        raise WorkDirBusy(work_dir, pid, host) from None
    except BaseException:
        os.close(fd)
        raise
    # Only for the message a second node prints: a full disk must not stop this one.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return WorkDirLock(work_dir, fd)


def _read_holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and host the holder wrote; (None, None) while it has not written yet."""
    try:
        words = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
        return int(words[0]), (words[1] if len(words) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None
