"""A job's task graph: which tasks are ready, and what must run again after a change.

A task is ready when every task it depends on (``Task.depends_on``) is done; the
scheduler's queues hold only ready tasks. Each task keeps how many of its
dependencies are not done yet (``Task.pending``, in memory only, made again at
start), so a finished task readies its dependents in O(their number), never by
looking at all their dependencies: a video's encode depends on every frame.

Pure: no I/O, no farm; the callers hand in the job and its tasks.
"""

from __future__ import annotations

from .models import Job, Task


def link(job: Job, tasks: dict[str, Task]) -> None:
    """Count every task's dependencies not yet done (after a submit, a start, a
    requeue)."""
    for tid in job.task_ids:
        task = tasks[tid]
        task.pending = sum(1 for d in task.depends_on if tasks[d].status != "done")


def ready(task: Task) -> bool:
    return task.pending == 0


def finished(job: Job, task: Task, tasks: dict[str, Task]) -> list[Task]:
    """``task`` is done now: its dependents that became ready and wait in the queue
    (status ``queued``) are returned, for the scheduler."""
    woken = []
    for tid in job.dependents.get(task.id, ()):
        dep = tasks[tid]
        dep.pending -= 1
        if dep.pending == 0 and dep.status == "queued":
            woken.append(dep)
    return woken


def downstream(job: Job, task_ids: list[str], tasks: dict[str, Task]) -> list[Task]:
    """Every task that depends on these, directly or not, each once, in job order:
    what must run again when these do (a tile rendered again is merged again, a
    frame rendered again is encoded again)."""
    seen: set[str] = set(task_ids)
    stack = list(task_ids)
    found: set[str] = set()
    while stack:
        for tid in job.dependents.get(stack.pop(), ()):
            if tid not in seen:
                seen.add(tid)
                found.add(tid)
                stack.append(tid)
    return sorted((tasks[t] for t in found), key=lambda t: t.index)
