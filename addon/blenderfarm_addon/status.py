"""Live job state in the UI: the job watcher's thread, the timer that drains it, and the
small helpers every operator uses to show a message.

One :class:`watcher.JobWatcher` follows the jobs of the open file (their ids are in
``Scene.blenderfarm.jobs``). A ``bpy.app.timers`` function drains its queue within a
time budget and copies each update into ``WindowManager.blenderfarm.jobs``, which the
panel draws; a ``load_post`` handler points it at the jobs of a newly opened file.
When a job it followed ends, the status bar says so (:mod:`endings` words it), even
while the panel is out of sight.
Unregistering stops the thread and removes the timer and the handler.

The same timer asks the server for ``/api/info`` every ``PING_EVERY`` seconds in a
:class:`worker.ConnectionTest` thread (:func:`check_farm`), so the panel says the farm
is down even while no job runs. Changing the server URL or token clears what was said
about the old one. With Blender 4.2+'s Allow Online Access off, nothing connects.

Here bpy is touched on the main thread only; the network is the threads'.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import bpy
from bpy.app.handlers import persistent

from . import endings, preferences, wording
from .properties import MAX_RECENT_JOBS
from .vendor.blenderfarm.client.progress import format_duration, job_eta, job_fraction
from .watcher import JobGone, JobUpdate, JobWatcher, WatchError
from .worker import ConnectionTest, Done, Failed, drain

log = logging.getLogger(__name__)

TICK_BUSY = 0.25  # seconds between drains while a job runs
TICK_IDLE = 1.0
PING_EVERY = 10.0  # seconds between checks that the farm answers
PING_TIMEOUT = 5.0

watcher = JobWatcher()
_ping: ConnectionTest | None = None
_ping_due = 0.0


# --- messages ------------------------------------------------------------------------------


def set_message(context: Any, text: str, kind: str = "INFO") -> None:
    """The one-sentence status the panel shows (kind: INFO, ERROR, WARNING, DONE)."""
    state = context.window_manager.blenderfarm
    state.message = text
    state.message_kind = kind
    tag_redraw(context)


def notify(context: Any, text: str, level: str = "WARNING") -> None:
    """A sentence in the status bar from a timer (where no operator can report);
    ``level`` INFO for good news."""
    wm = context.window_manager
    if bpy.app.background or not wm.windows:
        print(text if text.startswith("Farm: ") else f"Blenderfarm: {text}", flush=True)
        return
    window = wm.windows[0]
    if hasattr(context, "temp_override"):  # Blender 3.2+
        with context.temp_override(window=window, screen=window.screen):
            bpy.ops.blenderfarm.notify("INVOKE_DEFAULT", message=text, level=level)
    else:
        bpy.ops.blenderfarm.notify({"window": window, "screen": window.screen},
                                   "INVOKE_DEFAULT", message=text, level=level)


def tag_redraw(context: Any = None) -> None:
    wm = (context or bpy.context).window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("PROPERTIES", "PREFERENCES"):
                area.tag_redraw()


# --- the jobs of this file -----------------------------------------------------------------


def remember_job(scene: Any, job: dict[str, Any]) -> None:
    """Put a just-submitted job first in the file's list (at most MAX_RECENT_JOBS)."""
    jobs = scene.blenderfarm.jobs
    ref = jobs.add()
    ref.job_id, ref.name = str(job["id"]), str(job.get("name", ""))
    jobs.move(len(jobs) - 1, 0)
    while len(jobs) > MAX_RECENT_JOBS:
        jobs.remove(len(jobs) - 1)
    apply_job(bpy.context.window_manager, job)
    sync(bpy.context)


def job_state(wm: Any, job_id: str) -> Any:
    for state in wm.blenderfarm.jobs:
        if state.job_id == job_id:
            return state
    return None


def apply_job(wm: Any, job: dict[str, Any]) -> None:
    state = job_state(wm, str(job["id"]))
    if state is None:
        state = wm.blenderfarm.jobs.add()
        state.job_id = str(job["id"])
    state.name = str(job.get("name") or "")
    state.status = str(job.get("status") or "")
    state.frames_done = int(job.get("frames_done") or 0)
    state.frames_total = int(job.get("frames_total") or 0)
    state.error = wording.farm_error(str(job.get("error") or ""), str(job.get("reason") or ""))
    state.summary = wording.job_summary(job)
    # The farm's view counts the parts of frames being rendered, and estimates the rest.
    state.progress_value = 100.0 * job_fraction(job)
    eta = job_eta(job, None) if state.status == "active" else None
    state.eta = format_duration(eta) if eta is not None else ""


def apply_message(context: Any, message: Any) -> None:
    """Copy one watcher message into the WindowManager's state (main thread)."""
    wm = context.window_manager
    if isinstance(message, JobUpdate):
        before = job_state(wm, str(message.job.get("id")))
        old_status = before.status if before is not None else ""
        apply_job(wm, message.job)
        # The status bar tells of a job that ended while followed, panel shown or not.
        state = job_state(wm, str(message.job.get("id")))
        text = endings.ending(old_status, message.job, state.error)
        if text:
            if state.status == "failed":
                set_message(context, text, "ERROR")
            notify(context, text, "INFO" if state.status == "completed" else "WARNING")
    elif isinstance(message, JobGone):
        apply_job(wm, {"id": message.job_id, "status": "deleted",
                       "error": "The farm no longer has this job."})
    elif isinstance(message, WatchError):
        wm.blenderfarm.watch_error = message.message
        if message.message:
            notify(context, message.message)


def server_changed(context: Any) -> None:
    """The server URL or token changed: what was said about the old one no longer holds."""
    global _ping_due
    state = context.window_manager.blenderfarm
    state.connection, state.connection_ok = "", False
    state.watch_error = state.farm_error = ""
    if state.message_kind == "ERROR":
        state.message = ""
    _ping_due = 0.0  # check the new one at the next tick
    tag_redraw(context)


def farm_problem(context: Any) -> str:
    """The one sentence on why the farm cannot be used now ("" when it can)."""
    if not wording.online_access(bpy.app):
        return wording.OFFLINE
    state = context.window_manager.blenderfarm
    return state.watch_error or state.farm_error


def check_farm(context: Any, now: float | None = None) -> None:
    """Every PING_EVERY seconds, ask the farm whether it answers, in a thread; its
    answer sets ``farm_error``. Called by the timer (and by tests in ``blender -b``)."""
    global _ping, _ping_due
    state = context.window_manager.blenderfarm
    now = time.monotonic() if now is None else now
    if _ping is not None:
        ping, alive = _ping, _ping.is_alive()  # dead: all its messages are queued

        def answer(message: Any) -> None:
            if ping.server.url != preferences.server(context).url:
                return  # about a URL since changed
            if isinstance(message, Done):
                state.farm_error = ""
            elif isinstance(message, Failed):
                state.farm_error = message.message

        if drain(ping.queue, answer):
            tag_redraw(context)
        if not alive:
            _ping = None
        return
    if now < _ping_due or not wording.online_access(bpy.app):
        return
    _ping_due = now + PING_EVERY
    try:
        server = preferences.server(context)
    except KeyError:  # the add-on is being disabled
        return
    _ping = ConnectionTest(dataclasses.replace(server, timeout=PING_TIMEOUT))
    _ping.start()


def _stop_ping() -> None:
    global _ping
    if _ping is not None:
        _ping.cancel()
        _ping.join(1.0)  # a daemon thread: one stuck on a dead server ends by itself
        _ping = None


def sync(context: Any) -> None:
    """Point the watcher at the current server and the current file's jobs."""
    scene = getattr(context, "scene", None)
    ids = [ref.job_id for ref in scene.blenderfarm.jobs] if scene is not None else []
    if not wording.online_access(bpy.app):
        ids = []  # Blender forbids going online: follow nothing
    try:
        watcher.configure(preferences.server(context))
    except KeyError:  # the add-on is being disabled
        return
    watcher.watch(ids)
    if ids and not bpy.app.background:
        watcher.start()


def poll_now(context: Any) -> None:
    """Poll every job of this file at once, on this thread (scripts, background mode)."""
    sync(context)
    watcher.refresh()
    watcher.poll_once()
    drain(watcher.queue, lambda m: apply_message(context, m), budget=10.0)


def _tick() -> float:
    context = bpy.context
    try:
        sync(context)
        handled = drain(watcher.queue, lambda m: apply_message(context, m))
        check_farm(context)
    except Exception:  # Blender drops a timer that raises: the job list would freeze
        log.exception("Blenderfarm: updating the job list failed")
        return TICK_IDLE
    if handled:
        tag_redraw(context)
    running = any(s.status in ("queued", "active", "paused")
                  for s in context.window_manager.blenderfarm.jobs)
    return TICK_BUSY if running or handled else TICK_IDLE


@persistent
def _on_load_post(*_args: Any) -> None:
    bpy.context.window_manager.blenderfarm.jobs.clear()
    sync(bpy.context)


def register() -> None:
    bpy.app.handlers.load_post.append(_on_load_post)
    if not bpy.app.background:
        bpy.app.timers.register(_tick, first_interval=TICK_IDLE, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    watcher.stop()
    watcher.watch([])
    _stop_ping()
