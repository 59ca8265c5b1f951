"""What people do to jobs and nodes: pause, resume, requeue, reprioritise, delete;
drain, disable, enable. Each is a synchronous change of the farm's state (plus
``delete``'s file clean-up in a thread) that leaves through ``Farm.commit`` like any
other, and returns the future of its commit: the API answers only once it resolves.
Each refuses up front, changing nothing, while the database cannot be written, and
each takes the acting identity (``who``) and checks first that it may (``access``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from asyncio import Future

from ..protocol import messages as m
from . import graph, slots
from .access import Actor, require_admin, require_control
from .errors import FarmError
from .farm import Farm
from .models import JOB_FINAL, TASK_HELD, Job, NodeRecord, Task
from .store import Store

Done = tuple[Job, Future[None]]


def _mine(farm: Farm, job_id: str, who: Actor) -> Job:
    job = farm.job(job_id)
    require_control(who, job)
    return job


def cancel(farm: Farm, job_id: str, who: Actor) -> Done:
    _mine(farm, job_id, who)
    return farm.cancel(job_id)


def pause(farm: Farm, job_id: str, who: Actor, stop: bool = False) -> Done:
    """No new tasks start; running ones finish, or with ``stop`` go back to the queue
    (and the nodes that held them take other jobs' work at once)."""
    job = _mine(farm, job_id, who)
    if job.status in JOB_FINAL:
        raise FarmError(f"job {job_id} is {job.status}; only queued or active jobs pause",
                        "conflict", 409)
    farm.check_writable()
    job.status = "paused"
    farm.sched.remove_job(job.id)
    changed = _take_back(farm, [t.id for t in _held(farm, job)], "job paused") if stop else []
    return job, farm.commit(job, changed, offer=bool(changed))


def resume(farm: Farm, job_id: str, who: Actor) -> Done:
    job = _mine(farm, job_id, who)
    if job.status != "paused":
        raise FarmError(f"job {job_id} is {job.status}, not paused", "conflict", 409)
    farm.check_writable()
    _schedule(farm, job)
    return job, farm.commit(job, room=job)


def requeue(farm: Farm, job_id: str, who: Actor, which: str = "failed") -> Done:
    """Render again the failed (and canceled) tasks, or every task with ``all``."""
    if which not in ("failed", "all"):
        raise FarmError("which must be 'failed' or 'all'", field="which")
    job = _mine(farm, job_id, who)
    farm.check_writable()
    states = ("failed", "canceled") if which == "failed" else ("failed", "canceled", "done")
    again = [farm.tasks[t] for t in job.task_ids if farm.tasks[t].status in states]
    # what depends on them runs again after them: a tile's merge, a frame's video
    after = [t for t in graph.downstream(job, [t.id for t in again], farm.tasks)
             if t.status not in states]
    for task in after:
        if task.status in TASK_HELD:
            _cancel_on_node(farm, task, "what it depends on is rendered again")
            farm._release(task)
    again = sorted({t.id: t for t in again + after}.values(), key=lambda t: t.index)
    ops = []
    for task in again:
        task.status, task.node, task.progress = "queued", None, 0.0
        task.failures, task.failed_nodes, task.error = 0, {}, None
        task.parts = []
        for name in [n for n, o in job.outputs.items() if o.task_id == task.id]:
            job.remove_output(name)  # it will be rendered again; the file stays until then
            if name == job.video_output:
                job.video_output = None
            ops.append(("DELETE FROM outputs WHERE job_id=? AND name=?", (job.id, name)))
    graph.link(job, farm.tasks)
    if again or job.status in ("failed", "canceled"):
        job.node_failures, job.blocklist, job.error, job.finished = {}, [], None, None
        if job.status != "paused":
            _schedule(farm, job)
    return job, farm.commit(job, again, ops=ops, room=job)


def set_priority(farm: Farm, job_id: str, who: Actor, priority: object) -> Done:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise FarmError("priority must be an integer from 0 to 100", field="priority")
    job = _mine(farm, job_id, who)
    farm.check_writable()
    job.priority = priority
    farm.sched.set_priority(job.id, priority)
    return job, farm.commit(job, room=job)


async def delete(farm: Farm, job_id: str, who: Actor) -> None:
    """Forget a job, its outputs and every blob no other job uses."""
    job = _mine(farm, job_id, who)
    farm.check_writable()
    if job.status not in JOB_FINAL:
        await farm.saved(farm.cancel(job_id)[1])
    orphans = set(job.spec.manifest.values()) | {o.sha256 for o in job.outputs.values()}
    del farm.jobs[job_id]
    for tid in job.task_ids:
        farm.tasks.pop(tid, None)
    for other in farm.jobs.values():
        orphans -= set(other.spec.manifest.values())
        orphans -= {o.sha256 for o in other.outputs.values()}
    await farm.saved(farm.commit(ops=Store.delete_job_ops(job_id), offer=False))
    await asyncio.to_thread(_remove_files, farm, job_id, orphans)
    farm.emit("job_deleted", job_id=job_id)


def _remove_files(farm: Farm, job_id: str, blobs: set[str]) -> None:
    shutil.rmtree(farm.jobs_dir / job_id, ignore_errors=True)
    farm.logs.remove_job(job_id)
    for sha in blobs:
        with contextlib.suppress(FileNotFoundError):
            farm.blobs.path(sha).unlink()


# --- nodes ---------------------------------------------------------------------------------


def node(farm: Farm, uid: str) -> NodeRecord:
    rec = farm.nodes.get(uid) or next((n for n in farm.nodes.values() if n.name == uid), None)
    if rec is None:
        raise FarmError(f"no node {uid!r}", "not_found", 404)
    return rec


NodeDone = tuple[NodeRecord, Future[None]]


def drain(farm: Farm, uid: str, who: Actor) -> NodeDone:
    """Finish the task each slot renders; tasks they only hold in advance go back to the
    queue."""
    require_admin(who, "drain a node")
    rec = node(farm, uid)
    farm.check_writable()
    rec.drained = True
    ahead = [t.id for t in slots.prefetched(rec, farm.tasks)]
    return rec, farm.commit(tasks=_take_back(farm, ahead, "node drained"), nodes=[rec])


def disable(farm: Farm, uid: str, who: Actor) -> NodeDone:
    """Stop at once: every task it holds goes back to the queue."""
    require_admin(who, "disable a node")
    rec = node(farm, uid)
    farm.check_writable()
    rec.disabled = True
    return rec, farm.commit(tasks=_take_back(farm, rec.tasks, "node disabled"), nodes=[rec])


def enable(farm: Farm, uid: str, who: Actor) -> NodeDone:
    require_admin(who, "enable a node")
    rec = node(farm, uid)
    farm.check_writable()
    rec.drained = rec.disabled = False
    return rec, farm.commit(nodes=[rec])


# --- helpers -------------------------------------------------------------------------------


def _take_back(farm: Farm, task_ids: list[str], reason: str) -> list[Task]:
    """Cancel these tasks on their node and put them back in the queue."""
    tasks = [farm.tasks[t] for t in list(task_ids)]  # a copy: requeue_task edits the node's list
    for task in tasks:
        _cancel_on_node(farm, task, reason)
        farm.requeue_task(task)
    return tasks


def _held(farm: Farm, job: Job) -> list[Task]:
    return [farm.tasks[t] for t in job.task_ids if farm.tasks[t].status in TASK_HELD]


def _cancel_on_node(farm: Farm, task: Task, reason: str) -> None:
    session = farm.sessions.get(task.node or "")
    if session is not None:
        session.send(m.Cancel(task_id=task.id, reason=reason))


def _schedule(farm: Farm, job: Job) -> None:
    """(Re)enter a job into the scheduler with its queued tasks in order."""
    if job.all_done:
        job.status, job.finished = "completed", job.finished or time.time()
        return
    started = job.counts["queued"] != len(job.task_ids)
    job.status = "active" if started else "queued"
    farm.sched.add_job(job.id, job.priority, job.seq, job.owner)
    farm.ready_tasks(job, [farm.tasks[t] for t in job.task_ids
                           if farm.tasks[t].status == "queued" and graph.ready(farm.tasks[t])])
