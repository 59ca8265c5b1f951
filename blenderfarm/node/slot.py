"""One slot of a node: what runs one task at a time, with its own Blender.

A slot keeps the persistent :class:`~.runner_proc.Runner` of the job it renders (of the
Blender the task's assign names; a runner of another job or Blender is replaced) and
at most one warm spare (a Blender with the runner and no file) while it is idle, of
the Blender it used last, else the node's first. The agent (:mod:`.agent`) decides
what a slot renders and when; this module only starts, hands over and stops its
Blenders, and must not talk to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from ..protocol import messages as m
from .blender import BlenderInfo
from .devices import slot_devices
from .runner_proc import Runner, RunnerError

log = logging.getLogger(__name__)


class Slot:
    def __init__(self, caps: m.SlotCaps, blenders: list[BlenderInfo], work_dir: Path, *,
                 first: bool, threads: int | None, broken: set[int]) -> None:
        self.caps = caps
        self.id = caps.id
        self.blenders = blenders
        self.work_dir = work_dir
        #: the node's first slot keeps the names a node had before slots (its logs)
        self.suffix = "" if first else f".{caps.id}"
        #: render threads of its tasks (None: Blender's own, every core)
        self.threads = threads
        #: the Blenders whose spare could not start (shared by the node's slots)
        self._broken = broken
        self.runner: Runner | None = None
        self.runner_job: str | None = None
        self.runner_blender = 0
        self.last_blender = 0  # whose spare it warms
        self.spare: asyncio.Task[Runner] | None = None
        self.spare_blender = 0
        self.wake = asyncio.Event()  # a task came for it

    def devices(self, blender: int) -> tuple[str, list[str]]:
        """What its runner enables in that Blender (``devices.slot_devices``)."""
        return slot_devices(self.caps, self.blenders[blender].devices)

    def has_runner(self, job_id: str, blender: int) -> bool:
        return (self.runner is not None and self.runner_job == job_id
                and self.runner_blender == blender and self.runner.alive)

    async def start_runner(self, job_id: str, blender: int, blend: str, *, cwd: str,
                           log_path: str, allow_scripts: bool) -> Runner:
        """A runner of ``job_id`` in Blender ``blender`` in place of the one it has: its
        spare opening the job's file, or a new Blender."""
        await self.drop_runner()
        spare = await self.take_spare(blender)
        path = self.blenders[blender].path
        if spare is None:
            runner = await Runner.start(path, blend, cwd=cwd, log_path=log_path,
                                        kind=self.blenders[blender].kind,
                                        allow_scripts=allow_scripts)
        else:
            try:
                await spare.open(blend, cwd=cwd, log_path=log_path, allow_scripts=allow_scripts)
            except BaseException:
                await spare.stop()
                raise
            log.info("job %s opened in the warm Blender (pid %s)", job_id, spare.pid)
            runner = spare
        self.runner, self.runner_job, self.runner_blender = runner, job_id, blender
        self.last_blender = blender
        return runner

    async def drop_runner(self) -> None:
        runner, self.runner, self.runner_job = self.runner, None, None
        if runner is not None:
            await runner.stop()

    # --- the spare ------------------------------------------------------------------------
    def wants_spare(self) -> bool:
        return self.spare is None and self.last_blender not in self._broken

    def warm_spare(self) -> None:
        """Start a spare of the Blender it used last, in the background."""
        self.spare_blender = self.last_blender
        self.spare = asyncio.create_task(self._start_spare(self.spare_blender),
                                         name=f"bf-spare-{self.id}")
        # a failure is said when a job takes it (take_spare), or never needed: not
        # "Task exception was never retrieved" at exit
        self.spare.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _start_spare(self, blender: int) -> Runner:
        """A Blender with the runner loaded and no file; its output goes to the slot's
        spare log until it opens a job (``Runner.open``)."""
        await asyncio.to_thread(self.work_dir.mkdir, parents=True, exist_ok=True)
        info = self.blenders[blender]
        return await Runner.start(info.path, None, cwd=str(self.work_dir),
                                  log_path=str(self.work_dir / f"blender-spare{self.suffix}.log"),
                                  kind=info.kind)

    async def take_spare(self, blender: int) -> Runner | None:
        """The spare once it has started, if it is of ``blender`` (one of another
        Blender is stopped); None: none, or it could not start."""
        if self.spare is not None and self.spare_blender != blender:
            await self.drop_spare()
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        try:
            runner = await spare
        except (RunnerError, OSError) as exc:
            self._broken.add(blender)  # said once: the fall-back costs nothing after this
            log.warning("could not warm a spare Blender (%s); each job starts its own",
                        getattr(exc, "message", exc))
            return None
        if not runner.alive:  # it died while waiting (killed by hand, out of memory)
            await runner.stop()
            return None
        return runner

    async def drop_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is None:
            return
        spare.cancel()
        with contextlib.suppress(asyncio.CancelledError, RunnerError, OSError):
            runner = await spare
            await runner.stop()

    def kill(self) -> None:
        """Kill its Blenders now (the node is stopping)."""
        if self.runner is not None:
            self.runner.kill()
        if self.spare is not None:
            self.spare.cancel()  # a starting spare kills its Blender as it stops
            if self.spare.done() and not self.spare.cancelled() \
                    and self.spare.exception() is None:
                self.spare.result().kill()

    async def stop(self) -> None:
        await self.drop_runner()
        await self.drop_spare()
