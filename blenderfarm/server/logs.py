"""Task logs: what Blender printed while rendering, as nodes stream it in.

``logs/<job>/<task>.log`` under the data dir, appended in threads (never on the
event loop's time), read back as a bounded tail for the API and the dashboard.

A log is bounded on disk: its first quarter of ``max_bytes`` stays in ``<task>.log``
(how the render started), everything after goes to ``<task>.tail.log``, which is cut
back to its last three quarters of ``max_bytes`` whenever it grows to twice that (how
it ended). A node that prints without end costs the server at most about
``1.75 * max_bytes`` per task.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from .models import Task

CUT = "\n[... part of the log was cut: the server keeps its start and its end ...]\n"


class TaskLogs:
    def __init__(self, root: Path, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.root = root
        self.head_bytes = max(1024, max_bytes // 4)
        self.tail_bytes = max(1024, max_bytes - self.head_bytes)

    def path(self, task: Task) -> Path:
        return self.root / task.job_id / f"{task.id}.log"

    def tail_path(self, task: Task) -> Path:
        return self.root / task.job_id / f"{task.id}.tail.log"

    async def append(self, task: Task, text: str) -> None:
        data = (text if text.endswith("\n") else text + "\n").encode("utf-8", "replace")
        await asyncio.to_thread(self._append, task, data)

    def _append(self, task: Task, data: bytes) -> None:
        path = self.path(task)
        path.parent.mkdir(parents=True, exist_ok=True)
        tail = self.tail_path(task)
        try:
            head_size = path.stat().st_size
        except FileNotFoundError:
            head_size = 0
        room = self.head_bytes - head_size
        if room > 0 and not tail.exists():
            with open(path, "ab") as f:
                f.write(data[:room])
            data = data[room:]
        if not data:
            return
        with open(tail, "ab") as f:
            f.write(data)
            size = f.tell()
        if size > 2 * self.tail_bytes:
            _keep_last(tail, self.tail_bytes)

    def read(self, task: Task, limit: int = 256 * 1024) -> str:
        """Blocking: the log's last ``limit`` bytes; for a log that was cut, its first
        quarter of that from the start, then the rest from the end. The failure tail
        when no log came."""
        try:
            with open(self.path(task), "rb") as f:
                head = f.read()
        except FileNotFoundError:
            return task.log_tail
        try:
            end = _last(self.tail_path(task), limit - limit // 4)
        except FileNotFoundError:
            return head[-limit:].decode("utf-8", "replace")
        return head[:limit // 4].decode("utf-8", "replace") + CUT + end.decode("utf-8", "replace")

    def remove_job(self, job_id: str) -> None:
        """Blocking."""
        shutil.rmtree(self.root / job_id, ignore_errors=True)


def _last(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read()


def _keep_last(path: Path, keep: int) -> None:
    """Cut a file back to its last ``keep`` bytes (from a line start where one is near)."""
    with open(path, "rb") as f:
        f.seek(-keep, os.SEEK_END)
        data = f.read()
    newline = data.find(b"\n", 0, 4096)
    if newline >= 0:
        data = data[newline + 1:]
    tmp = path.with_suffix(".cut")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
