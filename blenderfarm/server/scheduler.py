"""Which queued task a node gets next: a pure, in-memory structure with no I/O.

Jobs are kept sorted by (priority desc, submit order); each job has a FIFO of its
ready tasks. ``pick`` walks jobs in that order and returns the first task the node
may run, so a dispatch costs O(active jobs) plus O(1) per task in the common case,
never a scan of all tasks. Removal is lazy: a task leaves ``_queued`` at once and
its stale queue entry is dropped when ``pick`` meets it.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _JobQueue:
    job_id: str
    key: tuple[int, int]  # (-priority, seq)
    tasks: deque[str] = field(default_factory=deque)
    live: int = 0  # queued tasks of this job (ignoring stale entries)


class Scheduler:
    def __init__(self) -> None:
        self._jobs: dict[str, _JobQueue] = {}
        self._order: list[tuple[tuple[int, int], str]] = []
        self._queued: dict[str, str] = {}  # task id -> job id

    # --- jobs -----------------------------------------------------------------------
    def add_job(self, job_id: str, priority: int, seq: int) -> None:
        if job_id in self._jobs:
            return
        q = _JobQueue(job_id, (-priority, seq))
        self._jobs[job_id] = q
        bisect.insort(self._order, (q.key, job_id))

    def remove_job(self, job_id: str) -> list[str]:
        """Forget a job (paused, canceled, finished); return the task ids it had queued."""
        q = self._jobs.pop(job_id, None)
        if q is None:
            return []
        self._order.remove((q.key, job_id))
        dropped = [t for t in q.tasks if self._queued.get(t) == job_id]
        for t in dropped:
            del self._queued[t]
        return list(dict.fromkeys(dropped))

    def set_priority(self, job_id: str, priority: int) -> None:
        q = self._jobs.get(job_id)
        if q is None:
            return
        self._order.remove((q.key, job_id))
        q.key = (-priority, q.key[1])
        bisect.insort(self._order, (q.key, job_id))

    def has_job(self, job_id: str) -> bool:
        return job_id in self._jobs

    # --- tasks ----------------------------------------------------------------------
    def push(self, job_id: str, task_id: str, front: bool = False) -> None:
        q = self._jobs[job_id]
        if task_id in self._queued:
            return
        self._queued[task_id] = job_id
        q.live += 1
        if front:
            q.tasks.appendleft(task_id)
        else:
            q.tasks.append(task_id)

    def discard(self, task_id: str) -> bool:
        job_id = self._queued.pop(task_id, None)
        if job_id is None:
            return False
        self._jobs[job_id].live -= 1
        return True

    def is_queued(self, task_id: str) -> bool:
        return task_id in self._queued

    @property
    def queued(self) -> int:
        return len(self._queued)

    def queued_in(self, job_id: str) -> int:
        q = self._jobs.get(job_id)
        return q.live if q else 0

    def pick(self, accept_job: Callable[[str], bool],
             accept_task: Callable[[str], bool] = lambda _t: True) -> str | None:
        """Take the best task a node may run off its queue, or None."""
        for _key, job_id in self._order:
            q = self._jobs[job_id]
            if q.live == 0 or not accept_job(job_id):
                continue
            task_id = self._take(q, accept_task)
            if task_id is not None:
                return task_id
        return None

    def _take(self, q: _JobQueue, accept_task: Callable[[str], bool]) -> str | None:
        tasks = q.tasks
        while tasks and self._queued.get(tasks[0]) != q.job_id:
            tasks.popleft()  # stale entry
        for i, task_id in enumerate(tasks):
            if self._queued.get(task_id) != q.job_id or not accept_task(task_id):
                continue
            if i == 0:
                tasks.popleft()
            else:
                del tasks[i]
            del self._queued[task_id]
            q.live -= 1
            return task_id
        return None
