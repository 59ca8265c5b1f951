"""The farm's state machine: jobs, tasks and nodes, and every transition between them.

All decisions are synchronous and happen on the event loop, so no two handlers
ever see a half-made change. Side effects leave through three doors only:
``NodeSession.send`` (queued websocket frames), ``Farm.commit`` (the one funnel of every
state change: it journals the changed rows, announces them to watchers and offers work
to nodes, so no transition can forget a step) and ``BlobStore`` calls made in threads
by the async handlers.

This module is the core: start-up (recovering queues after a restart) and shutdown,
``emit`` and ``commit``, jobs (submit, cancel, their views) and the farm's summary.
The rest of the machine is composed in from mixins over :class:`.state.FarmState`:
:mod:`.sessions` (nodes come and go), :mod:`.dispatch` (work goes to slots) and
:mod:`.results` (what nodes report).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from ..protocol import messages as m
from ..protocol.jobspec import OPENGL_ENGINES, JobSpec, output_stem
from ..protocol.video import refuse_video
from . import graph
from .compiler import compile_job, resolve_tiles, tiles_of
from .constraints import can_run, may_wait, waiting_reason
from .dispatch import DispatchMixin
from .errors import FarmError, store_refusal
from .eta import estimate_eta, job_progress
from .kinds import kind_of, video_settings
from .models import JOB_FINAL, TASK_FINAL, TASK_HELD, Job, NodeRecord, Task
from .results import ResultsMixin
from .sessions import NodeSession, SessionsMixin
from .store import Store, StoreError

log = logging.getLogger(__name__)


class Farm(SessionsMixin, DispatchMixin, ResultsMixin):
    """The whole farm: its state (:class:`.state.FarmState`), the parts composed in, and
    the core below."""

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
            owner = self.jobs.get(out.job_id)
            if owner is None:
                continue
            made_by = self.tasks.get(out.task_id)
            owner.add_output(out, frame=made_by is None or kind_of(made_by).frames)
            if made_by is not None and made_by.kind == m.ENCODE:
                owner.video_output = out.name
        for job in self.jobs.values():
            graph.link(job, self.tasks)
        for rec in loaded.nodes:
            self.nodes[rec.uid] = rec
        self._recover()
        self._prune_every_hour()

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
                    if not paused and graph.ready(task):
                        self.ready_tasks(job, [task])
                elif task.status in TASK_HELD and task.node in self.nodes:
                    self.nodes[task.node].tasks.append(tid)
                    self.sched.hold(job.owner)
                elif task.status in TASK_HELD:
                    self.requeue_task(task)
                    requeued.append(task)
        for rec in self.nodes.values():
            if rec.tasks:
                self._arm_grace(rec.uid)
        if requeued:
            self.journal.add(tasks=requeued)
        # an encode the server ran itself was requeued above, or one became ready: once the
        # nodes had their time to come back, whatever no node can encode, the server does
        self._timers["encode-orphans"] = asyncio.get_running_loop().call_later(
            self.config.grace_period, self._orphans_after_start)

    def _orphans_after_start(self) -> None:
        self._timers.pop("encode-orphans", None)
        self.encode_orphans()

    async def stop(self) -> None:
        for encoding in list(self._encoding.values()):
            encoding.cancel()
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
        if spec.video:
            why = refuse_video(spec.overrides.format or spec.scene_format)
            if why is not None:
                raise FarmError(why, field="video")
        self.check_writable()
        if spec.tiles is not None:  # "auto" made a count for the farm as it is now
            spec = resolve_tiles(spec, sum(len(r.slots) for r in self.online()))
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
        job.frames_total = sum(len(t.frames) for t in tasks
                               if kind_of(t).frames and not kind_of(t).parts(t))
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
        graph.link(job, self.tasks)
        if not spec.paused:
            self.sched.add_job(job_id, job.priority, job.seq, job.owner)
            self.ready_tasks(job, [t for t in tasks if graph.ready(t)])
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
        if job.spec.video and job.scene_video is not None:
            note = video_settings(job).note  # what differs from the movie Blender writes
            if note:
                data["notes"] = [*data["notes"], note]
        # only a job with nothing on a node can wait: a busy farm's jobs cost nothing here
        waits = may_wait(job)
        data["waiting"] = None
        if job.status not in JOB_FINAL and (nodes or waits):
            online = self.online()
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
        if job.spec.tiles and job.status not in JOB_FINAL:  # tiles of frames not merged yet
            in_frame += max(0.0, job.counts["tile:done"] / tiles_of(job.spec)
                            - job.counts["merge:done"])
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
            encoding = self._encoding.pop(tid, None)  # the server's own encode of it
            if encoding is not None:
                encoding.cancel()
            task.status, task.node = "canceled", None
            changed.append(task)
        return self.commit(job, changed)

    # --- views ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        failure = self.journal.failure
        return {"nodes_online": len(self.sessions), "nodes_known": len(self.nodes),
                "store": "ok" if failure is None else f"refusing writes: {failure}",
                "tasks_queued": self.sched.queued,
                "max_blob_size": self.config.max_blob_size,
                "jobs_active": sum(1 for j in self.jobs.values() if j.status == "active")}
