"""The farm's state machine: jobs, tasks and nodes, and every transition between them.

All decisions are synchronous and happen on the event loop, so no two handlers
ever see a half-made change. Side effects leave through three doors only:
``NodeSession.send`` (queued websocket frames), ``Farm.commit`` (the one funnel of every
state change: it journals the changed rows, announces them to watchers and offers work
to nodes, so no transition can forget a step) and ``BlobStore`` calls made in threads
by the async handlers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..protocol import messages as m
from ..protocol.jobspec import OPENGL_ENGINES, JobSpec, output_stem
from . import slots
from .blobs import BlobStore
from .compiler import compile_job
from .config import ServerConfig
from .constraints import can_run, lacks, match, may_wait, waiting_reason
from .eta import InFrame, estimate_eta, job_progress
from .logs import TaskLogs
from .metrics import FarmMetrics
from .models import JOB_FINAL, TASK_FINAL, TASK_HELD, Job, NodeRecord, Output, Task
from .news import NodeNews
from .outputs import BadOutputs, check_outputs
from .scheduler import Scheduler
from .store import Journal, Store, StoreError

log = logging.getLogger(__name__)

#: a node heard from (any frame: a message, a ping, a pong) is news for watchers when its
#: last_seen moved this far since they last heard, and worth a row write this far since
#: the last one: heartbeats never cost a journal write each
SEEN_NEWS = 5.0
SEEN_SAVE = 60.0

NO_OIDN = ("The scene has Cycles denoising on, but no connected node's Blender has "
           "OpenImageDenoise. Resubmit with --no-denoise (or turn denoising off), "
           "or add a node whose Blender can denoise.")


class FarmError(Exception):
    """A request the farm refuses; ``code`` and ``status`` go to the HTTP answer."""

    def __init__(self, message: str, code: str = "bad_request", status: int = 400,
                 field: str | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.status, self.field, self.data = code, status, field, data


class NodeSession:
    """One live websocket of a node: frames to send wait in a queue."""

    def __init__(self, record: NodeRecord) -> None:
        self.record = record
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self._manifests: OrderedDict[str, None] = OrderedDict()  # jobs, most recent last

    def has_manifest(self, job_id: str) -> bool:
        """Whether the node has this job's manifest from this connection; either way it
        counts as sent now (the caller sends it when the answer is no)."""
        known = job_id in self._manifests
        self._manifests[job_id] = None
        self._manifests.move_to_end(job_id)
        if len(self._manifests) > m.MANIFESTS_REMEMBERED:
            self._manifests.popitem(last=False)
        return known

    def send(self, msg: m.Message) -> bool:
        """Queue a frame; False (and nothing sent) when it cannot be encoded."""
        if self.closed:
            return True
        try:
            data = m.encode(msg)
        except m.ProtocolError as exc:
            log.error("not sent to node %s: %s", self.record.name, exc)
            return False
        self.outbox.put_nowait(data)
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


class Farm:
    def __init__(self, config: ServerConfig, store: Store, blobs: BlobStore) -> None:
        self.config = config
        self.store = store
        self.journal = Journal(store)
        self.blobs = blobs
        self.jobs_dir = config.data_dir / "jobs"
        self.logs = TaskLogs(config.data_dir / "logs", config.max_log_bytes)
        self.metrics = FarmMetrics()
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Task] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.sessions: dict[str, NodeSession] = {}
        self.sched = Scheduler()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        #: job id -> how far its running tasks are inside their frames (for its ETA)
        self.in_frame: dict[str, InFrame] = {}
        self._seq = 0
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: every change of a node reaches watchers through here, a few times a second at most
        self.news = NodeNews(self._announce)
        self.started = time.time()

    # --- start-up and shutdown --------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.config.data_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(self.blobs.prepare)
        loaded = await self.store.open()
        for job in loaded.jobs:
            self.jobs[job.id] = job
            self._seq = max(self._seq, job.seq)
        # A job's tasks are compiled again from its spec (the compiler is a pure
        # function); the rows stored are those of tasks that changed since submit.
        rows: dict[str, dict[str, Task]] = {}
        for task in loaded.tasks:
            rows.setdefault(task.job_id, {})[task.id] = task
        for job in self.jobs.values():
            changed = rows.pop(job.id, {})
            for task in compile_job(job.id, job.spec):
                task = changed.pop(task.id, task)
                self.tasks[task.id] = task
                job.add_task(task)
            for task in changed.values():  # rows of a task this compiler no longer makes
                self.tasks[task.id] = task
                job.add_task(task)
        for out in loaded.outputs:
            if out.job_id in self.jobs:
                self.jobs[out.job_id].add_output(out)
        for rec in loaded.nodes:
            self.nodes[rec.uid] = rec
        self._recover()
        self._prune_every_hour()

    def _prune_every_hour(self) -> None:
        self.prune_nodes()
        self._timers["\0prune"] = asyncio.get_running_loop().call_later(
            3600, self._prune_every_hour)

    def prune_nodes(self, now: float | None = None) -> list[str]:
        """Forget the records of nodes offline for longer than ``node_retention_days``
        and, past ``max_nodes`` records, of the longest-offline ones; never of a node
        that is online or holds a task. Returns the uids forgotten."""
        now = time.time() if now is None else now
        idle = sorted((r for r in self.nodes.values()
                       if not r.online and not r.tasks and r.uid not in self.sessions),
                      key=lambda r: r.last_seen)
        cutoff = now - self.config.node_retention_days * 86400
        excess = len(self.nodes) - self.config.max_nodes
        gone = [r.uid for i, r in enumerate(idle) if r.last_seen < cutoff or i < excess]
        for uid in gone:
            del self.nodes[uid]
            timer = self._timers.pop(uid, None)
            if timer:
                timer.cancel()
            self.news.forget(uid)
            self.emit("node_deleted", node_id=uid)
        if gone:
            log.info("forgot %d node record(s) offline since before %s, or past max_nodes",
                     len(gone), time.strftime("%Y-%m-%d", time.localtime(cutoff)))
            self.commit(ops=[("DELETE FROM nodes WHERE uid=?", [(u,) for u in gone])],
                        offer=False)
        return gone

    def _recover(self) -> None:
        """Rebuild queues after a restart; held tasks wait a grace period for their node."""
        requeued: list[Task] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.seq):
            if job.status in JOB_FINAL:
                continue
            paused = job.status == "paused"  # its renders in flight still finish
            if not paused:
                self.sched.add_job(job.id, job.priority, job.seq, job.owner)
            for tid in job.task_ids:
                task = self.tasks[tid]
                if task.status == "queued":
                    if not paused:
                        self.sched.push(job.id, tid)
                elif task.status in TASK_HELD and task.node in self.nodes:
                    self.nodes[task.node].tasks.append(tid)
                    self.sched.hold(job.owner)
                elif task.status in TASK_HELD:
                    self._requeue(task)
                    requeued.append(task)
        for rec in self.nodes.values():
            if rec.tasks:
                self._arm_grace(rec.uid)
        if requeued:
            self.journal.add(tasks=requeued)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self.news.close()
        for session in list(self.sessions.values()):
            session.close()
        await self.journal.drain()
        await self.store.close()

    # --- events for watchers (dashboard, add-on) ------------------------------------------------
    def emit(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "time": time.time(), **data}
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a broken watcher must not break the farm
                log.exception("event listener failed")

    def commit(self, job: Job | None = None, tasks: list[Task] | None = None,
               nodes: list[NodeRecord] | None = None, ops: list[Any] | None = None, *,
               offer: bool | list[NodeSession] = True,
               room: Job | None = None) -> asyncio.Future[None]:
        """The one way a state change leaves the farm, whoever made it: journal the
        changed rows (they commit with the rest of this loop pass), announce the job and
        nodes to watchers, then offer work: to every node (``offer=True``), to the
        nodes given, or none; ``room`` means a job entered the queue (see
        :meth:`make_room`). The future resolves once the rows are committed."""
        if job is not None:
            job.updated = time.time()
        fut = self.journal.add((job,) if job is not None else (), tasks or (), nodes or (),
                               ops or ())
        if job is not None and job.id in self.jobs:
            self.emit("job", job=self.job_json(job))
        for rec in nodes or ():
            self.news.changed(rec.uid)
        if room is not None:
            self.make_room(room)
        elif offer is True:
            self.dispatch()
        elif offer:
            self.dispatch(offer)
        return fut

    def check_writable(self) -> None:
        """Refuse an action up front while the database cannot be written: the change
        would live in memory only (the journal retries what is already queued)."""
        error = self.journal.failure
        if error is not None:
            raise store_refusal(error, "nothing was changed")

    async def saved(self, fut: asyncio.Future[None]) -> None:
        """Wait for a person's change to be committed; a store that cannot write becomes
        a 507 (disk full) or 503 answer that says the change is kept and retried."""
        try:
            await fut
        except StoreError as exc:
            raise store_refusal(exc, "the change is made and will be saved as soon as the "
                                "database can be written again") from exc

    # --- jobs ---------------------------------------------------------------------------------
    async def submit(self, spec: JobSpec, owner: str = "") -> Job:
        missing = await asyncio.to_thread(self.blobs.missing, list(spec.manifest.values()))
        if missing:
            raise FarmError(f"{len(missing)} file(s) of the manifest were never uploaded; "
                            "upload them first (bf submit does this)", "missing_blobs",
                            field="manifest", data={"missing": missing[:1000]})
        self.check_writable()
        self._seq += 1
        job_id = secrets.token_hex(6)
        job = Job(id=job_id, seq=self._seq, spec=spec, output_name=output_stem(spec.name),
                  priority=spec.priority, status="paused" if spec.paused else "queued",
                  owner=owner or spec.user or "",
                  # the engine asked for needs OpenGL: no node without it loads the file
                  needs_opengl=spec.overrides.engine in OPENGL_ENGINES)
        # In a thread: a 100,000-frame job takes a few tenths of a second to compile,
        # and the nodes' messages go on being answered meanwhile.
        tasks = await asyncio.to_thread(compile_job, job_id, spec)
        job.frames_total = sum(len(t.frames) for t in tasks)
        for t in tasks:
            job.add_task(t)
        # The job's row and its spec are enough: tasks get rows once they change. They
        # are written straight to the store, before the job exists in memory: a job the
        # database refused is answered with an error and never scheduled.
        try:
            await self.store.put([Store.job_op(job), Store.spec_op(job)])
        except StoreError as exc:
            raise store_refusal(exc, "the job was not submitted") from exc
        self.jobs[job_id] = job
        self.tasks.update((t.id, t) for t in tasks)
        if not spec.paused:
            self.sched.add_job(job_id, job.priority, job.seq, job.owner)
            for t in tasks:
                self.sched.push(job_id, t.id)
        log.info("job %s submitted: %r, %d frames in %d tasks", job_id, spec.name,
                 job.frames_total, len(tasks))
        self.emit("job", job=self.job_json(job))
        self.make_room(job)
        return job

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise FarmError(f"no job {job_id!r}", "not_found", 404)
        return job

    def job_json(self, job: Job, nodes: bool = False) -> dict[str, Any]:
        """The job's JSON, with why it waits when no online node takes it (``waiting``),
        its ``progress`` and ``eta`` (job_pace), and, while it is not final, which online
        nodes can take it and why the others cannot (``nodes``): always when ``nodes``
        (the job's own page), else only while it waits (a busy job's events, one per
        finished task, would each cost a look at every node)."""
        data = {**job.to_json(), **self.job_pace(job)}
        # only a job with nothing on a node can wait: a busy farm's jobs cost nothing here
        waits = may_wait(job)
        data["waiting"] = None
        if job.status not in JOB_FINAL and (nodes or waits):
            online = [s.record for s in self.sessions.values()]
            data["waiting"] = waiting_reason(job, online) if waits else None
            data["nodes"] = can_run(job, online)
        return data

    def job_pace(self, job: Job) -> dict[str, Any]:
        """``progress`` (0..1, counting the parts of frames being rendered) and ``eta``
        (seconds left, None while unknown or not running) of a job's view."""
        in_frame = 0.0
        parts = self.in_frame.get(job.id)
        if parts is not None and job.status in JOB_FINAL:
            del self.in_frame[job.id]  # an ended job counts only the frames it has
        elif parts is not None:
            for tid in [t for t in parts.parts if getattr(self.tasks.get(t), "status", "")
                        != "running"]:
                parts.drop(tid)
            in_frame = parts.total()
            if not parts.parts:
                del self.in_frame[job.id]
        eta = None
        if job.status == "completed":
            eta = 0.0
        elif job.status == "active" and job.started is not None:
            eta = estimate_eta(job.frames_total, job.frames_done, in_frame,
                               time.time() - job.started)
        done = job.frames_total if job.status == "completed" else job.frames_done
        return {"progress": round(job_progress(job.frames_total, done, in_frame), 4),
                "eta": eta}

    def cancel(self, job_id: str) -> tuple[Job, asyncio.Future[None]]:
        job = self.job(job_id)
        if job.status in JOB_FINAL:  # nothing to change, nothing to wait for
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return job, done
        self.check_writable()
        fut = self._stop_job(job, "canceled", None)
        log.info("job %s canceled", job_id)
        return job, fut

    def _stop_job(self, job: Job, status: str, error: str | None,
                  settled: list[Task] | None = None) -> asyncio.Future[None]:
        """End a job: queued tasks are dropped, held ones canceled on their nodes.
        ``settled`` are tasks the caller has just made final (a failed task): their
        rows are written with the rest."""
        job.status, job.error, job.finished = status, error, time.time()
        self.sched.remove_job(job.id)
        changed = list(settled or ())
        for tid in job.task_ids:
            task = self.tasks[tid]
            if task.status in TASK_FINAL:
                continue
            if task.status in TASK_HELD and task.node:
                self._release(task)
                session = self.sessions.get(task.node or "")
                if session:
                    session.send(m.Cancel(task_id=tid, reason=status))
            task.status, task.node = "canceled", None
            changed.append(task)
        return self.commit(job, changed)

    # --- nodes --------------------------------------------------------------------------------
    def node_connected(self, hello: m.Hello, session: NodeSession) -> None:
        rec = session.record
        self._add_session(session)
        timer = self._timers.pop(rec.uid, None)
        if timer:
            timer.cancel()
        rec.online, rec.lost_at, rec.connected_at = True, None, time.time()
        rec.last_seen = rec.seen_saved = time.time()  # the commit below writes the row
        rec.frames.clear()
        changed = self._reconcile(rec, session, hello.running, hello.holding)
        log.info("node %s (%s) connected: Blender %s, %d slot(s), holds %d task(s)", rec.name,
                 rec.uid, ", ".join(b.version for b in rec.blenders), len(rec.slots),
                 len(rec.tasks))
        # only this node's room changed, unless it gave tasks back to the queue
        self.commit(tasks=changed, nodes=[rec], offer=True if changed else [session])

    def _reconcile(self, rec: NodeRecord, session: NodeSession, claimed: list[str],
                   holding: dict[str, str]) -> list[Task]:
        """Match what a (re)connecting node says it holds, and in which slot, with what we
        think it holds."""
        kept: list[str] = []
        changed: list[Task] = []
        for tid in dict.fromkeys(claimed):  # a task named twice is held once
            task = self.tasks.get(tid)
            job = self.jobs.get(task.job_id) if task else None
            if task is None or job is None or task.status in TASK_FINAL or job.status in JOB_FINAL:
                session.send(m.Cancel(task_id=tid, reason="no longer wanted"))
                continue
            if rec.uid not in task.assignees:  # a claim on a task it was never given
                session.send(m.Cancel(task_id=tid, reason="never given to this node"))
                continue
            if task.status == "queued" and not self.sched.is_queued(tid):
                # queued but not in the scheduler: its job is paused; it waits there
                session.send(m.Cancel(task_id=tid, reason="job paused"))
                continue
            if task.status in TASK_HELD and task.node != rec.uid:
                session.send(m.Cancel(task_id=tid, reason="given to another node"))
                continue
            if not slots.place(rec, holding, task):  # back to the queue, below
                session.send(m.Cancel(task_id=tid, reason="held in a slot the node does "
                                      "not have"))
                continue
            if self.sched.discard(tid):
                task.status = "assigned"
                changed.append(task)
            if tid not in rec.tasks:
                self.sched.hold(job.owner)
            task.node = rec.uid
            if rec.uid not in task.assignees:
                task.assignees.append(rec.uid)
            kept.append(tid)
        for tid in list(rec.tasks):  # a copy: _requeue removes from rec.tasks
            if tid not in kept and tid in self.tasks and self.tasks[tid].node == rec.uid:
                self._requeue(self.tasks[tid])  # the node lost it (restarted)
                changed.append(self.tasks[tid])
        rec.tasks = kept
        return changed

    def _add_session(self, session: NodeSession) -> None:
        """Keep ``sessions`` in order of Blender version, oldest first: dispatch offers
        work in this order, so a job goes to the oldest Blender that can open its file
        (the closest to the artist's). Re-sorted only when a node joins out of order."""
        self.sessions.pop(session.record.uid, None)
        last = next(reversed(self.sessions.values()), None)
        self.sessions[session.record.uid] = session
        if last is not None and _blender_order(session) < _blender_order(last):
            ordered = sorted(self.sessions.values(), key=_blender_order)  # stable
            self.sessions.clear()
            self.sessions.update((s.record.uid, s) for s in ordered)

    def node_disconnected(self, session: NodeSession) -> None:
        rec = session.record
        session.close()
        if self.sessions.get(rec.uid) is not session:
            return
        del self.sessions[rec.uid]
        rec.online, rec.lost_at = False, time.time()
        log.info("node %s (%s) disconnected; holding %d task(s) for %.0fs", rec.name, rec.uid,
                 len(rec.tasks), self.config.grace_period)
        self._arm_grace(rec.uid)
        self.commit(nodes=[rec], offer=False)

    def node_seen(self, rec: NodeRecord) -> None:
        """Any frame from the node (a message, a ping, a pong) says it is alive. Watchers
        hear of it every :data:`SEEN_NEWS` seconds and its row is written every
        :data:`SEEN_SAVE`, so an idle node looks alive and heartbeats stay cheap."""
        now = rec.last_seen = time.time()
        if now - rec.seen_saved >= SEEN_SAVE:
            rec.seen_saved = now
            self.journal.add(nodes=(rec,))
        if now - rec.seen_told >= SEEN_NEWS:
            self.news.changed(rec.uid)

    def _announce(self, uid: str) -> None:
        """:attr:`news`' voice: the node's view as it is now, to every watcher."""
        rec = self.nodes.get(uid)
        if rec is not None:
            rec.seen_told = rec.last_seen
            self.emit("node", node=self.node_json(rec))

    def node_json(self, rec: NodeRecord) -> dict[str, Any]:
        """A node's view, with what each busy slot renders now (``current``: the first
        busy slot's)."""
        busy = slots.doing(rec, self.tasks, self.jobs)
        current = next((busy[s.id] for s in rec.slots if s.id in busy), None)
        return rec.to_json(current, busy)

    def _arm_grace(self, uid: str) -> None:
        loop = asyncio.get_running_loop()
        old = self._timers.pop(uid, None)
        if old:
            old.cancel()
        self._timers[uid] = loop.call_later(self.config.grace_period, self._node_lost, uid)

    def _node_lost(self, uid: str) -> None:
        self._timers.pop(uid, None)
        rec = self.nodes.get(uid)
        if rec is None or rec.online:
            return
        lost = [self.tasks[t] for t in rec.tasks if t in self.tasks]
        for task in lost:
            self._requeue(task)
        rec.tasks = []
        if lost:
            log.warning("node %s (%s) gone for %.0fs: requeued %d task(s)", rec.name, uid,
                        self.config.grace_period, len(lost))
        self.commit(tasks=lost)

    # --- dispatch -----------------------------------------------------------------------------
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
                    task = self._pick(rec, slot)
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

    def _pick(self, rec: NodeRecord, slot_id: str) -> Task | None:
        """The best queued task for one slot of ``rec``, taken off the queue, or None."""
        slot = rec.slot(slot_id)
        tid = self.sched.pick(lambda j: match(self.jobs[j], rec, slot) is not None,
                              lambda t: self._may_retry(rec, t))
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
                        self._requeue(task)
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
        return [s.record for s in self.sessions.values() if self._may_run(s.record, job.id)]

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
        sent = session.send(m.Assign(task_id=task.id, job_id=job.id, frames=task.frames,
                                     blend=spec.blend, manifest=manifest,
                                     output_name=job.output_name, scene=spec.scene,
                                     overrides=spec.overrides.to_dict(),
                                     attempt=task.attempts, allow_scripts=spec.scripts,
                                     output_pattern=job.output_pattern, slot=slot_id,
                                     blender=blender or 0))
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

    def render_again(self, task: Task) -> None:
        """Back to the queue, through no fault of the node that had it."""
        if task.status in TASK_HELD:
            self._requeue(task)
            self.commit(self.jobs[task.job_id], [task])

    def _release(self, task: Task) -> None:
        rec = self.nodes.get(task.node or "")
        task.slot = None
        if rec and task.id in rec.tasks:
            rec.tasks.remove(task.id)
            rec.frames.pop(task.id, None)
            self.sched.unhold(self.jobs[task.job_id].owner)
            self.news.changed(rec.uid)

    def _requeue(self, task: Task) -> None:
        self._release(task)
        task.status, task.node, task.progress = "queued", None, 0.0
        if self.sched.has_job(task.job_id):
            self.sched.push(task.job_id, task.id, front=True)

    # --- reports from nodes -------------------------------------------------------------------
    def held_by(self, rec: NodeRecord, task_id: str) -> Task | None:
        task = self.tasks.get(task_id)
        if task is None or task.node != rec.uid or task.status not in TASK_HELD:
            return None
        return task

    def on_progress(self, rec: NodeRecord, msg: m.Progress) -> None:
        task = self.held_by(rec, msg.task_id)
        if task is None:
            return
        if task.status == "assigned":
            task.status, task.started = "running", time.time()
            self.commit(tasks=[task], offer=False)
        task.progress = max(0.0, min(1.0, float(msg.fraction)))
        if msg.frame is not None:
            rec.frames[task.id] = msg.frame
        job = self.jobs[task.job_id]
        self.in_frame.setdefault(job.id, InFrame()).report(task.id, task.progress,
                                                          len(task.frames), msg.frames_done)
        # The job's pace rides along: a watcher's ETA moves inside a long frame too.
        pace = self.job_pace(job)
        self.emit("progress", task_id=task.id, job_id=task.job_id, node=rec.uid,
                  frame=msg.frame, fraction=task.progress, job_progress=pace["progress"],
                  eta=pace["eta"])
        self.news.changed(rec.uid)

    async def record_outputs(self, task: Task, outputs: list[m.OutputRef]) -> list[Output]:
        """Check and link outputs (safe name, frame of this task, blob exists): one trip
        to a thread for all the file work of a task."""
        job = self.jobs[task.job_id]
        try:
            checked = check_outputs(job, task, outputs)
        except BadOutputs as exc:
            raise FarmError(str(exc)) from exc
        await asyncio.to_thread(self._link_outputs, job.id, checked)
        return checked

    def _link_outputs(self, job_id: str, outputs: list[Output]) -> None:
        for out in outputs:  # all checked before any is linked
            if not self.blobs.exists(out.sha256):
                raise FarmError(f"output {out.name} was not uploaded", "missing_blobs")
        for out in outputs:
            self.blobs.link_to(out.sha256, self.output_path(job_id, out.name))

    def output_path(self, job_id: str, name: str) -> Path:
        return self.jobs_dir / job_id / name

    def add_outputs(self, task: Task, outputs: list[Output]) -> list[Any]:
        job = self.jobs[task.job_id]
        ops = []
        for out in outputs:
            known = job.outputs.get(out.name)
            if known is not None and known.sha256 == out.sha256:
                continue
            job.add_output(out)
            ops.append(Store.output_op(out))
            self.emit("frame", job_id=job.id, task_id=task.id, frame=out.frame, name=out.name)
        return ops

    def complete_task(self, rec: NodeRecord, task: Task, outputs: list[Output],
                      seconds: float) -> asyncio.Future[None]:
        job = self.jobs[task.job_id]
        ops = self.add_outputs(task, outputs)
        if task.node and task.node != rec.uid:  # someone else still renders it: stop them
            other = self.sessions.get(task.node)
            if other:
                other.send(m.Cancel(task_id=task.id, reason="done elsewhere"))
        self.sched.discard(task.id)
        self._release(task)
        task.status, task.node, task.progress = "done", rec.uid, 1.0
        task.finished = time.time()
        rec.frames_rendered += len(task.frames)
        self.metrics.add_render_seconds(seconds)
        if job.all_done:
            job.status, job.finished = "completed", time.time()
            self.sched.remove_job(job.id)
            log.info("job %s completed: %d frames", job.id, job.frames_done)
        session = self.sessions.get(rec.uid)
        # only this node's room changed
        return self.commit(job, [task], [rec], ops, offer=[session] if session else False)

    def fail_task(self, rec: NodeRecord, task: Task, msg: m.TaskFailed) -> asyncio.Future[None]:
        job = self.jobs[task.job_id]
        self._release(task)
        if msg.reason in ("node_stopping", "canceled"):  # handed back, not failed
            self._requeue(task)
            return self.commit(job, [task])
        task.failed_nodes[rec.uid] = msg.error[:2000]
        task.error, task.log_tail = msg.error[:2000], msg.log_tail[-20_000:]
        task.node = None
        task.failures += 1
        changed = [task]
        if msg.reason not in ("needs_denoise", "needs_opengl", "unsendable"):  # the node's fault
            changed += self._count_node_failure(job, rec)
        log.warning("task %s failed on %s (%s): %s", task.id, rec.name, msg.reason,
                    msg.error[:2000])
        if msg.reason == "needs_denoise":
            # not this node's fault (it just cannot denoise), but who refused it and why
            # stays on the task
            job.needs_oidn = True
            if not any(b.oidn for n in self.nodes.values() if n.online for b in n.blenders):
                task.status, task.node = "failed", rec.uid
                return self._stop_job(job, "failed", NO_OIDN, settled=[task])
            self._requeue(task)
        elif msg.reason == "needs_opengl":
            # the same: it cannot render Eevee or Workbench; the job waits for a node that
            # can (its page says so, and how to make one), rather than fail
            self._requeue(task)
            if not job.needs_opengl:
                job.needs_opengl = True
                changed += self._take_back_unable(job)
        elif not msg.retryable or task.failures >= self.config.max_attempts:
            task.status, task.node = "failed", rec.uid  # the node that failed it last
            frames = f"frame {task.frames[0]}" if len(task.frames) == 1 else \
                f"frames {task.frames[0]}-{task.frames[-1]}"
            tries = "" if not msg.retryable else f" after {task.failures} attempts"
            return self._stop_job(job, "failed", f"{frames} failed{tries}: {msg.error[:2000]}",
                                  settled=[task])
        else:
            self._requeue(task)
            if not self.capable_nodes(job):
                task.status, task.node = "failed", rec.uid
                return self._stop_job(job, "failed", self._no_capable_node(job),
                                      settled=[task])
        return self.commit(job, changed)

    def _count_node_failure(self, job: Job, rec: NodeRecord) -> list[Task]:
        """Count a failure of ``rec`` on ``job``; return the tasks taken back from it when
        that blocklists it."""
        taken: list[Task] = []
        job.node_failures[rec.uid] = job.node_failures.get(rec.uid, 0) + 1
        if job.node_failures[rec.uid] >= self.config.blocklist_after and \
                rec.uid not in job.blocklist:
            job.blocklist.append(rec.uid)
            log.warning("node %s failed %d tasks of job %s: it gets no more of it", rec.name,
                        job.node_failures[rec.uid], job.id)
            session = self.sessions.get(rec.uid)
            for tid in [t for t in rec.tasks if self.tasks[t].job_id == job.id]:
                if session is not None:  # what it holds of the job goes to other nodes
                    session.send(m.Cancel(task_id=tid, reason="node blocklisted for this job"))
                self._requeue(self.tasks[tid])
                taken.append(self.tasks[tid])
        return taken

    def _take_back_unable(self, job: Job) -> list[Task]:
        """``job`` needs more than it did: what slots that cannot run it hold of it (not
        yet reported running) goes back to the queue, for slots that can."""
        taken: list[Task] = []
        for session in self.sessions.values():
            rec = session.record
            for task in [self.tasks[t] for t in rec.tasks]:
                if task.job_id != job.id or task.status != "assigned" or \
                        match(job, rec, rec.slot(task.slot or rec.slots[0].id)) is not None:
                    continue
                session.send(m.Cancel(task_id=task.id, reason="this node cannot render the job"))
                self._requeue(task)
                taken.append(task)
        return taken

    def _no_capable_node(self, job: Job) -> str:
        names = [self.nodes[u].name for u in job.blocklist if u in self.nodes]
        last = next((self.tasks[t].error for t in reversed(job.task_ids)
                     if self.tasks[t].error), None)
        return (f"no connected node can render this job any more: "
                f"{', '.join(names) or 'every node'} failed it too often"
                + (f" (last error: {last})" if last else "")
                + "; fix the cause, then requeue it (bf requeue JOB)")

    # --- views ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        failure = self.journal.failure
        return {"nodes_online": len(self.sessions), "nodes_known": len(self.nodes),
                "store": "ok" if failure is None else f"refusing writes: {failure}",
                "tasks_queued": self.sched.queued,
                "jobs_active": sum(1 for j in self.jobs.values() if j.status == "active")}



def store_refusal(exc: BaseException, what: str) -> FarmError:
    """The answer to a person while the database cannot be written: 507 when its disk
    is full, 503 otherwise; ``what`` says what became of their action."""
    full = isinstance(exc, StoreError) and exc.full
    cause = "the server's disk is full" if full else "the server cannot write its database"
    return FarmError(f"{cause} ({exc}); {what}. Free space on the server (or fix the "
                     "database) and try again.", "disk_full" if full else "store_unavailable",
                     507 if full else 503)


def _blender_order(session: NodeSession) -> tuple[int, int]:
    return session.record.oldest_key
