"""The farm's state machine: jobs, tasks and nodes, and every transition between them.

All decisions are synchronous and happen on the event loop, so no two handlers
ever see a half-made change. Side effects leave through three doors only:
``NodeSession.send`` (queued websocket frames), ``Farm._persist`` (the journal: batched SQLite
writes) and ``BlobStore`` calls made in threads by the async handlers.
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
from ..protocol.hashing import is_sha256
from ..protocol.jobspec import JobSpec, output_stem
from ..protocol.paths import PathError, normalize_relpath
from .blobs import BlobStore
from .compiler import compile_job
from .config import ServerConfig
from .logs import TaskLogs
from .metrics import FarmMetrics
from .models import JOB_FINAL, TASK_FINAL, TASK_HELD, Job, NodeRecord, Output, Task
from .scheduler import Scheduler
from .store import Journal, Store

log = logging.getLogger(__name__)

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

    def send(self, msg: m.Message) -> None:
        if not self.closed:
            self.outbox.put_nowait(m.encode(msg))

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
        self.logs = TaskLogs(config.data_dir / "logs")
        self.metrics = FarmMetrics()
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Task] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.sessions: dict[str, NodeSession] = {}
        self.sched = Scheduler()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._seq = 0
        self._timers: dict[str, asyncio.TimerHandle] = {}
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

    def _recover(self) -> None:
        """Rebuild queues after a restart; held tasks wait a grace period for their node."""
        for job in sorted(self.jobs.values(), key=lambda j: j.seq):
            if job.status in JOB_FINAL or job.status == "paused":
                continue
            self.sched.add_job(job.id, job.priority, job.seq, job.owner)
            for tid in job.task_ids:
                task = self.tasks[tid]
                if task.status == "queued":
                    self.sched.push(job.id, tid)
                elif task.status in TASK_HELD and task.node in self.nodes:
                    self.nodes[task.node].tasks.append(tid)
                    self.sched.hold(job.owner)
                elif task.status in TASK_HELD:
                    self._requeue(task)
        for rec in self.nodes.values():
            if rec.tasks:
                self._arm_grace(rec.uid)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for session in list(self.sessions.values()):
            session.close()
        self.journal.flush()
        await self.store.close()

    # --- events for watchers (dashboard, add-on) ------------------------------------------------
    def emit(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "time": time.time(), **data}
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a broken watcher must not break the farm
                log.exception("event listener failed")

    def _persist(self, job: Job | None = None, tasks: list[Task] | None = None,
                 extra: list[Any] | None = None,
                 nodes: list[NodeRecord] | None = None) -> asyncio.Future[None]:
        """Journal these changes; they commit together with the rest of this loop pass."""
        if job is not None:
            job.updated = time.time()
        return self.journal.add((job,) if job is not None else (), tasks or (), nodes or (),
                                extra or ())

    # --- jobs ---------------------------------------------------------------------------------
    async def submit(self, spec: JobSpec, owner: str = "") -> Job:
        missing = await asyncio.to_thread(self.blobs.missing, list(spec.manifest.values()))
        if missing:
            raise FarmError(f"{len(missing)} file(s) of the manifest were never uploaded; "
                            "upload them first (bf submit does this)", "missing_blobs",
                            field="manifest", data={"missing": missing[:1000]})
        self._seq += 1
        job_id = secrets.token_hex(6)
        job = Job(id=job_id, seq=self._seq, spec=spec, output_name=output_stem(spec.name),
                  priority=spec.priority, status="paused" if spec.paused else "queued",
                  owner=owner or spec.user or "")
        # In a thread: a 100,000-frame job takes a few tenths of a second to compile,
        # and the nodes' messages go on being answered meanwhile.
        tasks = await asyncio.to_thread(compile_job, job_id, spec)
        job.frames_total = sum(len(t.frames) for t in tasks)
        for t in tasks:
            job.add_task(t)
        self.jobs[job_id] = job
        self.tasks.update((t.id, t) for t in tasks)
        # The job's row and its spec are enough: tasks get rows once they change.
        await self._persist(job, extra=[Store.spec_op(job)])
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

    def job_json(self, job: Job) -> dict[str, Any]:
        return job.to_json()

    def cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.status in JOB_FINAL:
            return job
        self._stop_job(job, "canceled", None)
        log.info("job %s canceled", job_id)
        return job

    def _stop_job(self, job: Job, status: str, error: str | None) -> None:
        """End a job: queued tasks are dropped, held ones canceled on their nodes."""
        job.status, job.error, job.finished = status, error, time.time()
        self.sched.remove_job(job.id)
        changed = []
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
        self._persist(job, changed)
        self.emit("job", job=self.job_json(job))
        self.dispatch()

    # --- nodes --------------------------------------------------------------------------------
    def node_connected(self, hello: m.Hello, session: NodeSession) -> None:
        rec = session.record
        old = self.sessions.get(rec.uid)
        if old is not None and old is not session:
            old.close()  # a reconnect that beat the old socket's close
        self.sessions[rec.uid] = session
        timer = self._timers.pop(rec.uid, None)
        if timer:
            timer.cancel()
        rec.online, rec.lost_at, rec.connected_at = True, None, time.time()
        rec.last_seen = time.time()
        self._reconcile(rec, session, hello.running)
        self._persist(nodes=[rec])
        log.info("node %s (%s) connected: Blender %s, oidn=%s, holds %d task(s)", rec.name,
                 rec.uid, rec.info.get("blender", {}).get("version"), rec.oidn, len(rec.tasks))
        self.emit("node", node=rec.to_json())
        self.dispatch([session])  # the other nodes had their chance already

    def _reconcile(self, rec: NodeRecord, session: NodeSession, claimed: list[str]) -> None:
        """Match what a (re)connecting node says it holds with what we think it holds."""
        kept: list[str] = []
        changed: list[Task] = []
        for tid in claimed:
            task = self.tasks.get(tid)
            job = self.jobs.get(task.job_id) if task else None
            if task is None or job is None or task.status in TASK_FINAL or job.status in JOB_FINAL:
                session.send(m.Cancel(task_id=tid, reason="no longer wanted"))
                continue
            if task.status in TASK_HELD and task.node != rec.uid:
                session.send(m.Cancel(task_id=tid, reason="given to another node"))
                continue
            if self.sched.discard(tid):
                task.status = "assigned"
                changed.append(task)
            if tid not in rec.tasks:
                self.sched.hold(job.owner)
            task.node = rec.uid
            kept.append(tid)
        for tid in list(rec.tasks):  # a copy: _requeue removes from rec.tasks
            if tid not in kept and tid in self.tasks and self.tasks[tid].node == rec.uid:
                self._requeue(self.tasks[tid])  # the node lost it (restarted)
                changed.append(self.tasks[tid])
        rec.tasks = kept
        if changed:
            self._persist(tasks=changed)

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
        self._persist(nodes=[rec])
        self.emit("node", node=rec.to_json())

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
            self._persist(tasks=lost)
        self.dispatch()

    # --- dispatch -----------------------------------------------------------------------------
    def dispatch(self, sessions: list[NodeSession] | None = None) -> None:
        """Give queued tasks to nodes with room: first every idle node, then prefetch slots.

        ``sessions`` narrows the offer to the nodes whose room changed (one that just
        finished a task or connected): the others were offered everything queued when
        they last had room, and nothing they could not take then has become takeable.
        """
        if self.sched.queued == 0:
            return
        started = time.perf_counter()
        assigned: list[Task] = []
        for slot in range(1, self.config.prefetch + 2):
            for session in list(self.sessions.values()) if sessions is None else sessions:
                if session.closed:
                    continue
                rec = session.record
                if rec.drained or len(rec.tasks) >= slot:
                    continue
                tid = self.sched.pick(lambda j, r=rec: self._may_run(r, j),  # type: ignore[misc]
                                      lambda t, r=rec: self._may_retry(r, t))  # type: ignore[misc]
                if tid is None:
                    continue
                assigned.append(self._assign(session, self.tasks[tid]))
                if self.sched.queued == 0:
                    break
        if assigned:
            self._persist(tasks=assigned)
            self.metrics.observe_dispatch(time.perf_counter() - started)

    def make_room(self, job: Job) -> None:
        """Dispatch after ``job`` entered the queue (submitted, resumed, requeued, raised).

        Idle nodes take its tasks first. What it still has queued then may take the
        place of lower-priority tasks that nodes only hold in advance (prefetched, not
        started): those go back to the queue, so an urgent job waits for one render
        per node, not two. Only as many as the job can use are taken back.
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
            for tid in rec.tasks[1:]:  # a copy; [0] is the one it renders
                task = self.tasks[tid]
                if task.status == "assigned" and self.jobs[task.job_id].priority < job.priority:
                    session.send(m.Cancel(task_id=tid, reason="a job of higher priority came"))
                    self._requeue(task)
                    taken.append(task)
                    break
        if taken:
            log.info("job %s (priority %d) takes the place of %d prefetched task(s)", job.id,
                     job.priority, len(taken))
            self._persist(tasks=taken)
            self.dispatch()

    def _may_run(self, rec: NodeRecord, job_id: str) -> bool:
        job = self.jobs[job_id]
        return not (rec.disabled or rec.uid in job.blocklist or (job.needs_oidn and not rec.oidn))

    def capable_nodes(self, job: Job) -> list[NodeRecord]:
        return [s.record for s in self.sessions.values() if self._may_run(s.record, job.id)]

    def _may_retry(self, rec: NodeRecord, task_id: str) -> bool:
        """A node that failed a task gets it again only when every capable node has."""
        task = self.tasks[task_id]
        failed = task.failed_nodes
        if rec.uid not in failed:
            return True
        return all(n.uid in failed for n in self.capable_nodes(self.jobs[task.job_id]))

    def _assign(self, session: NodeSession, task: Task) -> Task:
        job = self.jobs[task.job_id]
        rec = session.record
        task.status, task.node, task.progress = "assigned", rec.uid, 0.0
        task.assigned = time.time()
        task.attempts += 1
        rec.tasks.append(task.id)
        self.sched.hold(job.owner)
        if job.status == "queued":
            job.status, job.started = "active", time.time()
            self._persist(job)
        spec = job.spec
        manifest = {} if session.has_manifest(job.id) else spec.manifest
        session.send(m.Assign(task_id=task.id, job_id=job.id, frames=task.frames,
                              blend=spec.blend, manifest=manifest,
                              output_name=job.output_name, scene=spec.scene,
                              overrides=spec.overrides.to_dict(), attempt=task.attempts,
                              allow_scripts=spec.scripts))
        return task

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
            self._persist(self.jobs[task.job_id], [task])
            self.dispatch()

    def _release(self, task: Task) -> None:
        rec = self.nodes.get(task.node or "")
        if rec and task.id in rec.tasks:
            rec.tasks.remove(task.id)
            self.sched.unhold(self.jobs[task.job_id].owner)

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
            self._persist(tasks=[task])
        task.progress = max(0.0, min(1.0, float(msg.fraction)))
        self.emit("progress", task_id=task.id, job_id=task.job_id, node=rec.uid,
                  frame=msg.frame, fraction=task.progress)

    async def record_outputs(self, task: Task, outputs: list[dict[str, Any]]) -> list[Output]:
        """Check and link outputs (safe name, frame of this task, blob exists): one trip
        to a thread for all the file work of a task."""
        job = self.jobs[task.job_id]
        checked: list[Output] = []
        for item in outputs:
            frame, sha, name, size = (item.get("frame"), item.get("sha256"), item.get("name"),
                                      item.get("size"))
            if not isinstance(frame, int) or frame not in task.frames:
                raise FarmError(f"output for frame {frame!r}, not a frame of {task.id}")
            if not isinstance(name, str) or not isinstance(size, int):
                raise FarmError("output needs a name and a size")
            try:
                name = normalize_relpath(name)
            except PathError as exc:
                raise FarmError(str(exc)) from exc
            if "/" in name:
                raise FarmError(f"output name {name!r} has a folder")
            if not isinstance(sha, str) or not is_sha256(sha):
                raise FarmError(f"output {name} has no valid sha256")
            checked.append(Output(job.id, task.id, frame, name, sha, size))
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
        fut = self._persist(job, [task], ops, [rec])
        self.emit("job", job=self.job_json(job))
        session = self.sessions.get(rec.uid)
        if session is not None:  # only this node's room changed
            self.dispatch([session])
        return fut

    def fail_task(self, rec: NodeRecord, task: Task, msg: m.TaskFailed) -> None:
        job = self.jobs[task.job_id]
        self._release(task)
        task.failed_nodes[rec.uid] = msg.error[:2000]
        task.error, task.log_tail = msg.error[:2000], msg.log_tail[-20_000:]
        task.node = None
        task.failures += 1
        if msg.reason in ("node_stopping", "canceled"):  # handed back, not failed
            task.failures -= 1
            task.failed_nodes.pop(rec.uid, None)
            self._requeue(task)
            self._persist(job, [task])
            self.dispatch()
            return
        if msg.reason != "needs_denoise":
            self._count_node_failure(job, rec)
        log.warning("task %s failed on %s (%s): %s", task.id, rec.name, msg.reason, msg.error)
        if msg.reason == "needs_denoise":
            job.needs_oidn = True
            task.failed_nodes.pop(rec.uid, None)  # not this node's fault; it just can't
            if not any(n.oidn for n in self.nodes.values() if n.online):
                task.status = "failed"
                self._stop_job(job, "failed", NO_OIDN)
                return
            self._requeue(task)
        elif not msg.retryable or task.failures >= self.config.max_attempts:
            task.status = "failed"
            frames = f"frame {task.frames[0]}" if len(task.frames) == 1 else \
                f"frames {task.frames[0]}-{task.frames[-1]}"
            tries = "" if not msg.retryable else f" after {task.failures} attempts"
            self._stop_job(job, "failed", f"{frames} failed{tries}: {msg.error}")
            return
        else:
            self._requeue(task)
            if not self.capable_nodes(job):
                task.status = "failed"
                self._stop_job(job, "failed", self._no_capable_node(job))
                return
        self._persist(job, [task])
        self.emit("job", job=self.job_json(job))
        self.dispatch()

    def _count_node_failure(self, job: Job, rec: NodeRecord) -> None:
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
        return {"nodes_online": len(self.sessions), "nodes_known": len(self.nodes),
                "tasks_queued": self.sched.queued,
                "jobs_active": sum(1 for j in self.jobs.values() if j.status == "active")}

