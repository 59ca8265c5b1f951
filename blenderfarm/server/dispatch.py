"""Queued tasks go to slots: dispatch, pick, make room for an urgent job, assign, and
a task's way back to the queue (release, requeue).

Every pass is synchronous, in memory, and bounded by the nodes offered and the tasks
they take: the scheduler picks (:mod:`.scheduler`), the constraints say which slot
may take which job (:mod:`.constraints`). Dispatch is the last step of
:meth:`Farm.commit`'s funnel: its rows go straight to the journal, and nothing here
calls ``commit``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from ..protocol import messages as m
from . import graph, slots, tilematch
from .constraints import lacks, match
from .kinds import kind_of
from .models import TASK_HELD, Job, NodeRecord, Task
from .sessions import NodeSession
from .state import FarmState

log = logging.getLogger(__name__)


class DispatchMixin(FarmState):
    """The farm's side of handing out work and taking it back."""

    def dispatch(self, sessions: list[NodeSession] | None = None) -> None:
        """Give queued tasks to slots with room: first every idle slot, then the places
        to prefetch into (``prefetch`` per slot), nodes in order of their oldest Blender.

        ``sessions`` narrows the offer to the nodes whose room changed (one that just
        finished a task or connected): the others were offered everything queued when
        they last had room, and nothing they could not take then has become takeable.
        """
        if self.sched.queued == 0:
            return
        started = time.perf_counter()
        assigned: list[Task] = []
        loads: dict[str, dict[str, list[Task]]] = {}  # node -> what each slot holds
        for depth in range(1, self.config.prefetch + 2):
            for session in list(self.sessions.values()) if sessions is None else sessions:
                rec = session.record
                if session.closed or rec.drained or \
                        len(rec.slots) == 1 and len(rec.tasks) >= depth:  # full, cheaply
                    continue
                load = loads.get(rec.uid)
                if load is None:
                    load = loads[rec.uid] = slots.held(rec, self.tasks)
                for slot, held in load.items():
                    if len(held) >= depth:
                        continue
                    task = self._pick(rec, slot, ahead=bool(held))
                    if task is not None:
                        assigned.append(self._assign(session, task, slot))
                        held.append(task)
                    if self.sched.queued == 0:
                        break
                if self.sched.queued == 0:
                    break
        if assigned:
            # dispatch is the funnel's last step: its rows go straight to the journal
            self.journal.add(tasks=assigned)
            self.metrics.observe_dispatch(time.perf_counter() - started)

    def _pick(self, rec: NodeRecord, slot_id: str, ahead: bool = False) -> Task | None:
        """The best queued task for one slot of ``rec``, taken off the queue, or None.
        ``ahead``: the slot is busy and would hold it in advance (prefetch), which a tile
        never is: a tile held ahead is a share of its frame one node is bound to while
        another may sit idle, and its frame's merge waits for the slowest."""
        slot = rec.slot(slot_id)
        fit = tilematch.Fit(rec, slot, self.tasks, self.online())  # one pick's answers
        tid = self.sched.pick(lambda j: match(self.jobs[j], rec, slot) is not None,
                              lambda t: not (ahead and self.tasks[t].tile is not None)
                              and self._may_take(rec, t, fit))
        return None if tid is None else self.tasks[tid]

    def make_room(self, job: Job) -> None:
        """Dispatch after ``job`` entered the queue (submitted, resumed, requeued, raised).

        Idle slots take its tasks first. What it still has queued then may take the
        place of lower-priority tasks that slots only hold in advance (prefetched, not
        started): those go back to the queue, so an urgent job waits for one render
        per slot, not two. Only as many as the job can use are taken back.
        """
        self.dispatch()
        wanted = self.sched.queued_in(job.id)
        taken: list[Task] = []
        for session in list(self.sessions.values()):
            rec = session.record
            if wanted <= len(taken):
                break
            if rec.drained or not self._may_run(rec, job.id):
                continue
            for slot_id, held in slots.held(rec, self.tasks).items():
                if wanted <= len(taken):
                    break
                if match(job, rec, rec.slot(slot_id)) is None:
                    continue
                for task in held[1:]:  # [0] is the one it renders
                    if task.status == "assigned" and self.jobs[task.job_id].priority < job.priority:
                        session.send(m.Cancel(task_id=task.id,
                                              reason="a job of higher priority came"))
                        self.requeue_task(task)
                        taken.append(task)
                        break
        if taken:
            log.info("job %s (priority %d) takes the place of %d prefetched task(s)", job.id,
                     job.priority, len(taken))
            self.journal.add(tasks=taken)
            self.dispatch()

    def _may_run(self, rec: NodeRecord, job_id: str) -> bool:
        return lacks(self.jobs[job_id], rec) is None

    def capable_nodes(self, job: Job) -> list[NodeRecord]:
        return [rec for rec in self.online() if self._may_run(rec, job.id)]

    def _may_take(self, rec: NodeRecord, task_id: str, fit: tilematch.Fit | None = None
                  ) -> bool:
        """Whether ``rec`` (its slot that ``fit`` asks for, when one is asking) may take
        this task of a job it may run: its kind's needs (an encode: FFmpeg), a tile's
        frame's render kind (``tilematch``), then the retry rule."""
        task = self.tasks[task_id]
        if task.kind != m.RENDER and kind_of(task).lacks(rec) is not None:
            return False
        if task.tile is not None and fit is not None and not fit(self.jobs[task.job_id], task):
            return False
        return self._may_retry(rec, task_id)

    def _may_retry(self, rec: NodeRecord, task_id: str) -> bool:
        """A node that failed a task gets it again only when every capable node has."""
        task = self.tasks[task_id]
        failed = task.failed_nodes
        if rec.uid not in failed:
            return True
        return all(n.uid in failed for n in self.capable_nodes(self.jobs[task.job_id]))

    def _assign(self, session: NodeSession, task: Task, slot_id: str) -> Task:
        job = self.jobs[task.job_id]
        rec = session.record
        blender = match(job, rec, rec.slot(slot_id))
        task.status, task.node, task.progress = "assigned", rec.uid, 0.0
        task.slot = slot_id
        if task.tile is not None:
            task.rendered_with = tilematch.render_kind(rec, rec.slot(slot_id), blender or 0)
        task.assigned = time.time()
        task.attempts += 1
        if rec.uid not in task.assignees:
            task.assignees.append(rec.uid)
        rec.tasks.append(task.id)
        self.news.changed(rec.uid)
        self.sched.hold(job.owner)
        if job.status == "queued":
            job.status, job.started = "active", time.time()
            job.updated = job.started
            self.journal.add(jobs=(job,))
            self.emit("job", job=self.job_json(job))
        spec = job.spec
        manifest = {} if session.has_manifest(job.id) else spec.manifest
        what = {} if task.kind == m.RENDER and task.tile is None else \
            kind_of(task).fields(job, task, self.tasks)
        sent = session.send(m.Assign(task_id=task.id, job_id=job.id, frames=task.frames,
                                     blend=spec.blend, manifest=manifest,
                                     output_name=job.output_name, scene=spec.scene,
                                     overrides=spec.overrides.to_dict(),
                                     attempt=task.attempts, allow_scripts=spec.scripts,
                                     output_pattern=job.output_pattern, slot=slot_id,
                                     blender=blender or 0, **what))
        if not sent:  # the spec's validation lets no such job in; never loop on one
            asyncio.get_running_loop().call_soon(self._unsendable, rec, task)
        return task

    def _unsendable(self, rec: NodeRecord, task: Task) -> None:
        if task.status in TASK_HELD and task.node == rec.uid:
            self.fail_task(rec, task, m.TaskFailed(
                task_id=task.id, retryable=False, reason="unsendable",
                error="the server could not encode this task for its nodes"))

    def slot_freed(self, session: NodeSession, task: Task) -> None:
        """The node is through with ``task`` (it reported it done; the server still checks
        the outputs): the node's slot takes its next task at once. The task stays held
        in its name until :meth:`complete_task` or :meth:`fail_task` settles it."""
        self._release(task)
        self.dispatch([session])

    def _release(self, task: Task) -> None:
        rec = self.nodes.get(task.node or "")
        task.slot = None
        if rec and task.id in rec.tasks:
            rec.tasks.remove(task.id)
            rec.frames.pop(task.id, None)
            self.sched.unhold(self.jobs[task.job_id].owner)
            self.news.changed(rec.uid)

    def requeue_task(self, task: Task) -> None:
        """Back to the front of its job's queue (when the job is in the scheduler: a
        paused job's tasks wait outside it), off the node that held it."""
        self._release(task)
        task.status, task.node, task.progress = "queued", None, 0.0
        if self.sched.has_job(task.job_id) and graph.ready(task):
            self.sched.push(task.job_id, task.id, front=True)

    def ready_tasks(self, job: Job, tasks: list[Task]) -> None:
        """These tasks of ``job`` became ready (what they depend on is done): into the
        queue, or, an encode no online node can run, to the server's own FFmpeg; but not
        in the grace period after a start while a known node that could run it may still
        come back (then :meth:`encode_orphans` looks again once it is over)."""
        settling = time.time() - self.started < self.config.grace_period
        for task in tasks:
            if task.kind == m.ENCODE and not self._encodable(task) and not (
                    settling and self._encodable(task, self.nodes.values())):
                self.encode_here(job, task)
            elif self.sched.has_job(job.id):
                self.sched.push(job.id, task.id)

    def _encodable(self, task: Task, nodes: Iterable[NodeRecord] | None = None) -> bool:
        """Whether one of ``nodes`` (default: the online ones) can run this encode (has
        FFmpeg)."""
        return any(kind_of(task).lacks(r) is None
                   for r in (self.online() if nodes is None else nodes))

    def encode_orphans(self) -> None:
        """Queued, ready encodes that no online node can run go to the server's FFmpeg:
        looked for when the grace period after a start ends, and when a node is gone
        for good (it may have been the last one with FFmpeg). Without this such a video
        would wait for a node that may never come."""
        for job in self.jobs.values():
            if not job.spec.video or not self.sched.has_job(job.id):
                continue
            for task in (self.tasks[t] for t in reversed(job.task_ids)):  # compiled last
                if task.kind == m.ENCODE:
                    if task.status == "queued" and graph.ready(task) and \
                            not self._encodable(task):
                        self.encode_here(job, task)
                    break
