"""What nodes report: progress, outputs (checked, linked, recorded), a task done or
failed, and what a failure means for the node (counted, blocklisted) and the job
(retried, taken back from slots that cannot run it, or failed).

A report is only believed from the node that holds the task (:meth:`held_by`). File
work (checking that blobs exist, linking outputs) runs in a thread; every change
leaves through :meth:`Farm.commit`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from ..protocol import messages as m
from ..protocol.video import EncodeError, SceneVideo
from . import graph, tilematch
from .compiler import tiles_of
from .constraints import match
from .encode import encode_on_server
from .errors import FarmError
from .eta import InFrame
from .kinds import encode_inputs, is_preview, kind_of, place_preview, video_settings
from .models import JOB_FINAL, TASK_HELD, Job, NodeRecord, Output, Task
from .outputs import BadOutputs
from .state import FarmState
from .store import Store

log = logging.getLogger(__name__)

NO_OIDN = ("The scene has Cycles denoising on, but no connected node's Blender has "
           "OpenImageDenoise. Resubmit with --no-denoise (or turn denoising off), "
           "or add a node whose Blender can denoise.")


class ResultsMixin(FarmState):
    """The farm's side of what nodes say about their tasks."""

    def held_by(self, rec: NodeRecord, task_id: str) -> Task | None:
        task = self.tasks.get(task_id)
        if task is None or task.node != rec.uid or task.status not in TASK_HELD:
            return None
        return task

    def render_again(self, task: Task) -> None:
        """Back to the queue, through no fault of the node that had it."""
        if task.status in TASK_HELD:
            self.requeue_task(task)
            self.commit(self.jobs[task.job_id], [task])

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
        if task.tile is not None:  # a tile is its share of its frame
            self.in_frame.setdefault(job.id, InFrame()).report(
                task.id, task.progress / tiles_of(job.spec), 1, 0)
        elif task.kind != m.ENCODE:
            self.in_frame.setdefault(job.id, InFrame()).report(
                task.id, task.progress, len(task.frames), msg.frames_done)
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
        kind = kind_of(task)
        try:
            checked = kind.check(job, task, outputs)
        except BadOutputs as exc:
            raise FarmError(str(exc)) from exc
        await asyncio.to_thread(self._link_outputs, job.id, checked, kind.parts(task))
        return checked

    def _link_outputs(self, job_id: str, outputs: list[Output], parts: bool = False) -> None:
        """Check every output's blob is stored, then link each into the job's folder
        (parts, a tile's file, stay blobs only: no output of the job)."""
        for out in outputs:  # all checked before any is linked
            if not self.blobs.exists(out.sha256):
                raise FarmError(f"output {out.name} was not uploaded", "missing_blobs")
        for out in outputs if not parts else ():
            self.blobs.link_to(out.sha256, self.output_path(job_id, out.name))

    def output_path(self, job_id: str, name: str) -> Path:
        return self.jobs_dir / job_id / name

    def add_outputs(self, task: Task, outputs: list[Output]) -> list[Any]:
        """Make checked outputs the job's (a tile's are its task's parts instead: inputs
        of the merge, no outputs of the job); the rows to write."""
        job = self.jobs[task.job_id]
        kind = kind_of(task)
        if kind.parts(task):  # each file once, by name: reported alone, then all together
            parts = {p["name"]: p for p in task.parts}
            for o in outputs:
                if o.name in parts and parts[o.name]["sha256"] == o.sha256:
                    continue
                parts[o.name] = {"sha256": o.sha256, "size": o.size, "frame": o.frame,
                                 "name": o.name, **({"preview": True} if is_preview(o.name)
                                                    else {})}
                self.emit("tile", job_id=job.id, task_id=task.id, frame=o.frame,
                          tile=task.tile, name=o.name, preview=is_preview(o.name))
            task.parts = list(parts.values())
            return []
        ops = []
        for out in outputs:
            known = job.outputs.get(out.name)
            if known is not None and known.sha256 == out.sha256:
                continue
            job.add_output(out, frame=kind.frames)
            if task.kind == m.ENCODE:
                job.video_output = out.name
            ops.append(Store.output_op(out))
            self.emit("frame", job_id=job.id, task_id=task.id, frame=out.frame, name=out.name)
        return ops

    def complete_task(self, rec: NodeRecord | None, task: Task, outputs: list[Output],
                      seconds: float, info: dict[str, Any] | None = None
                      ) -> asyncio.Future[None]:
        """``task`` is done with these outputs, by ``rec`` (None: the server itself, an
        encode no node could run); ``info`` is what its render learned of the scene."""
        job = self.jobs[task.job_id]
        ops = self.add_outputs(task, outputs)
        place_preview(task, info)
        if task.node and (rec is None or task.node != rec.uid):  # someone else still has it
            other = self.sessions.get(task.node)
            if other:
                other.send(m.Cancel(task_id=task.id, reason="done elsewhere"))
        self.sched.discard(task.id)
        self._release(task)
        task.status, task.node, task.progress = "done", rec.uid if rec else None, 1.0
        task.finished = time.time()
        if rec is not None and task.kind == m.RENDER and task.tile is None:
            rec.frames_rendered += len(task.frames)
        elif rec is not None and task.kind == m.RENDER:
            rec.tiles_rendered += 1
        self.metrics.add_render_seconds(seconds)
        if info and job.scene_video is None and isinstance(info.get("video"), dict):
            try:  # what a node says of the scene is checked like any of its reports
                job.scene_video = SceneVideo.from_dict(info["video"]).to_dict()
            except ValueError as exc:
                log.warning("task %s reported scene video settings that do not hold: %s",
                            task.id, exc)
        woken = graph.finished(job, task, self.tasks)
        again = self._unmix_tiles(job, woken)
        self.ready_tasks(job, [t for t in woken if t.pending == 0])
        if job.all_done:
            job.status, job.finished = "completed", time.time()
            self.sched.remove_job(job.id)
            log.info("job %s completed: %d frames", job.id, job.frames_done)
        session = self.sessions.get(rec.uid) if rec is not None else None
        # only this node's room changed, unless the task readied others (a merge, a video)
        offer: bool | list[Any] = True if woken else [session] if session else False
        return self.commit(job, [task, *again], [rec] if rec else [], ops,
                           offer=offer or bool(again))

    def _unmix_tiles(self, job: Job, woken: list[Task]) -> list[Task]:
        """A merge just readied whose tiles are not of one render kind (``tilematch``)
        waits: its tiles of another kind than the last done render again first."""
        again: list[Task] = []
        for merge in [t for t in woken if t.kind == m.MERGE]:
            kind, stale = tilematch.mixed(merge, self.tasks)
            if not stale:
                continue
            log.warning("job %s: %d tile(s) of frame %d came from %s, the others from %s: "
                        "they render again so that the tiles meet without seams", job.id,
                        len(stale), merge.frames[0],
                        ", ".join(sorted({t.rendered_with or "?" for t in stale})), kind)
            for tile in stale:
                self.requeue_task(tile)
                tile.parts, tile.rendered_with = [], None
                merge.pending += 1
            again.extend(stale)
        return again

    def fail_task(self, rec: NodeRecord, task: Task, msg: m.TaskFailed) -> asyncio.Future[None]:
        job = self.jobs[task.job_id]
        self._release(task)
        if msg.reason in ("node_stopping", "canceled"):  # handed back, not failed
            self.requeue_task(task)
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
            self.requeue_task(task)
        elif msg.reason == "needs_opengl":
            # the same: it cannot render Eevee or Workbench; the job waits for a node that
            # can (its page says so, and how to make one), rather than fail
            self.requeue_task(task)
            if not job.needs_opengl:
                job.needs_opengl = True
                changed += self._take_back_unable(job)
        elif not msg.retryable or task.failures >= self.config.max_attempts:
            task.status, task.node = "failed", rec.uid  # the node that failed it last
            tries = "" if not msg.retryable else f" after {task.failures} attempts"
            return self._stop_job(job, "failed", f"{kind_of(task).what(task)} failed{tries}: "
                                  f"{msg.error[:2000]}", settled=[task])
        else:
            self.requeue_task(task)
            if not self.capable_nodes(job):
                task.status, task.node = "failed", rec.uid
                return self._stop_job(job, "failed", self._no_capable_node(job),
                                      settled=[task])
        return self.commit(job, changed)

    def encode_here(self, job: Job, task: Task) -> None:
        """No online node has FFmpeg: the server encodes the video itself (FFmpeg in its
        own process, off the event loop), holding the task as a node would (running,
        on no node). A restart requeues it like any held task; a cancel stops it."""
        if task.id in self._encoding or task.status != "queued":
            return
        self.sched.discard(task.id)
        task.status, task.node, task.started, task.progress = "running", None, time.time(), 0.0
        task.attempts += 1
        self.journal.add(tasks=(task,))
        log.info("job %s: no online node has FFmpeg; the server encodes its video", job.id)
        self._encoding[task.id] = asyncio.get_running_loop().create_task(
            self._encode_here(job, task))

    async def _encode_here(self, job: Job, task: Task) -> None:
        t0 = time.monotonic()
        try:
            settings = video_settings(job)
            inputs = encode_inputs(job, task)
            if not inputs:
                raise EncodeError("The video has no frames to encode.", "bad_input", False)
            out_dir = self.config.data_dir / "encode"
            await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)

            def progress(fraction: float) -> None:
                task.progress = max(0.0, min(1.0, fraction))
                self.emit("progress", task_id=task.id, job_id=job.id, node=None, frame=None,
                          fraction=task.progress, job_progress=None, eta=None)

            path = await encode_on_server(settings, [self.blobs.path(i.sha256) for i in inputs],
                                          out_dir, on_progress=progress)
            sha, size = await asyncio.to_thread(self.blobs.adopt, path)
            out = Output(job.id, task.id, inputs[0].frame, settings.output, sha, size)
            await asyncio.to_thread(self._link_outputs, job.id, [out])
        except (EncodeError, OSError, ValueError) as exc:
            message = exc.message if isinstance(exc, EncodeError) else str(exc)
            log.error("job %s: the server could not encode its video: %s", job.id, message)
            if task.status == "running" and task.node is None and job.status not in JOB_FINAL:
                task.status, task.error = "failed", message[:2000]
                task.failures += 1
                self._stop_job(job, "failed", f"the video failed: {message[:2000]}",
                               settled=[task])
            return
        finally:
            self._encoding.pop(task.id, None)
        if task.status == "running" and task.node is None:  # not canceled meanwhile
            self.complete_task(None, task, [out], time.monotonic() - t0)

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
                self.requeue_task(self.tasks[tid])
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
                self.requeue_task(task)
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
