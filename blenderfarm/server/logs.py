"""Task logs: what Blender printed while rendering, as nodes stream it in.

``logs/<job>/<task>.log`` under the data dir, appended in threads (never on the
event loop's time), read back as a bounded tail for the API and the dashboard.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from .models import Task


class TaskLogs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, task: Task) -> Path:
        return self.root / task.job_id / f"{task.id}.log"

    async def append(self, task: Task, text: str) -> None:
        def write() -> None:
            path = self.path(task)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8", errors="replace") as f:
                f.write(text if text.endswith("\n") else text + "\n")

        await asyncio.to_thread(write)

    def read(self, task: Task, limit: int = 256 * 1024) -> str:
        """Blocking: the last ``limit`` bytes of a task's log, or its failure tail."""
        try:
            with open(self.path(task), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return task.log_tail

    def remove_job(self, job_id: str) -> None:
        """Blocking."""
        shutil.rmtree(self.root / job_id, ignore_errors=True)
