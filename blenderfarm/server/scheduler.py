"""Which queued task a node gets next: a pure, in-memory structure with no I/O.

The order: job priority first (higher wins, always); among jobs of equal priority,
the owner who holds the fewest tasks on nodes right now (ties: the one served
longest ago), so users of equal priority share the farm evenly however many jobs
each queued; then that owner's oldest job; then the job's ready tasks, first in
first out. ``pick`` walks that order and returns the first task the node may run.

Cost of a pick: O(priority levels + owners at the first level with work), plus
O(1) per task in the common case; never a scan of all tasks or all jobs. Removal
is lazy: a task leaves ``_queued`` at once and its stale queue entry is dropped
when ``pick`` meets it.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _JobQueue:
    job_id: str
    owner: str
    priority: int
    seq: int
    tasks: deque[str] = field(default_factory=deque)
    live: int = 0  # queued tasks of this job (ignoring stale entries)


class Scheduler:
    def __init__(self) -> None:
        self._jobs: dict[str, _JobQueue] = {}
        # priority -> owner -> that owner's jobs at this priority, oldest first (seq, id)
        self._levels: dict[int, dict[str, list[tuple[int, str]]]] = {}
        self._priorities: list[int] = []  # negated, ascending: highest priority first
        self._live_at: Counter[int] = Counter()  # queued tasks per priority
        self._queued: dict[str, str] = {}  # task id -> job id
        self._held: Counter[str] = Counter()  # owner -> tasks held by nodes
        self._served: dict[str, int] = {}  # owner -> pick number of their last task
        self._picks = 0

    # --- jobs -----------------------------------------------------------------------
    def add_job(self, job_id: str, priority: int, seq: int, owner: str = "") -> None:
        if job_id in self._jobs:
            return
        q = _JobQueue(job_id, owner, priority, seq)
        self._jobs[job_id] = q
        self._enter(q)

    def _enter(self, q: _JobQueue) -> None:
        level = self._levels.get(q.priority)
        if level is None:
            level = self._levels[q.priority] = {}
            bisect.insort(self._priorities, -q.priority)
        bisect.insort(level.setdefault(q.owner, []), (q.seq, q.job_id))
        self._live_at[q.priority] += q.live

    def _leave(self, q: _JobQueue) -> None:
        level = self._levels[q.priority]
        jobs = level[q.owner]
        jobs.remove((q.seq, q.job_id))
        if not jobs:
            del level[q.owner]
        if not level:
            del self._levels[q.priority]
            self._priorities.remove(-q.priority)
        self._live_at[q.priority] -= q.live
        if not self._live_at[q.priority]:
            del self._live_at[q.priority]

    def remove_job(self, job_id: str) -> list[str]:
        """Forget a job (paused, canceled, finished); return the task ids it had queued."""
        q = self._jobs.pop(job_id, None)
        if q is None:
            return []
        self._leave(q)
        # A task may stand in the queue twice (a stale entry left by discard() and a
        # new one from a later push): each task once.
        dropped = [t for t in dict.fromkeys(q.tasks) if self._queued.get(t) == job_id]
        for t in dropped:
            del self._queued[t]
        return dropped

    def set_priority(self, job_id: str, priority: int) -> None:
        q = self._jobs.get(job_id)
        if q is None:
            return
        self._leave(q)
        q.priority = priority
        self._enter(q)

    def has_job(self, job_id: str) -> bool:
        return job_id in self._jobs

    # --- what owners hold (fair share) ---------------------------------------------------
    def hold(self, owner: str) -> None:
        """A task of ``owner``'s went to a node."""
        self._held[owner] += 1

    def unhold(self, owner: str) -> None:
        """A node gave back or finished a task of ``owner``'s."""
        self._held[owner] -= 1
        if self._held[owner] <= 0:
            del self._held[owner]

    def held(self, owner: str) -> int:
        return self._held[owner]

    # --- tasks ----------------------------------------------------------------------
    def push(self, job_id: str, task_id: str, front: bool = False) -> None:
        q = self._jobs[job_id]
        if task_id in self._queued:
            return
        self._queued[task_id] = job_id
        q.live += 1
        self._live_at[q.priority] += 1
        if front:
            q.tasks.appendleft(task_id)
        else:
            q.tasks.append(task_id)

    def discard(self, task_id: str) -> bool:
        job_id = self._queued.pop(task_id, None)
        if job_id is None:
            return False
        q = self._jobs[job_id]
        q.live -= 1
        self._live_at[q.priority] -= 1
        return True

    @property
    def queued(self) -> int:
        return len(self._queued)

    def queued_in(self, job_id: str) -> int:
        q = self._jobs.get(job_id)
        return q.live if q else 0

    def pick(self, accept_job: Callable[[str], bool],
             accept_task: Callable[[str], bool] = lambda _t: True) -> str | None:
        """Take the best task a node may run off its queue, or None."""
        for neg in self._priorities:
            if self._live_at[-neg] <= 0:
                continue
            level = self._levels[-neg]
            owners = level.items() if len(level) == 1 else sorted(
                level.items(), key=lambda kv: (self._held[kv[0]], self._served.get(kv[0], -1)))
            for owner, jobs in owners:
                for _seq, job_id in jobs:
                    q = self._jobs[job_id]
                    if q.live == 0 or not accept_job(job_id):
                        continue
                    task_id = self._take(q, accept_task)
                    if task_id is not None:
                        self._picks += 1
                        self._served[owner] = self._picks
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
            self._live_at[q.priority] -= 1
            return task_id
        return None
