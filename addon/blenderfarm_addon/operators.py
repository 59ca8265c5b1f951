"""Operators that run background work: submit, test the connection, and their controls.

:class:`TaskOperator` is the one pattern for work that must not freeze Blender: it
starts a :class:`worker.Task` thread, and a modal timer drains the task's queue within
a time budget; ESC or the panel's Cancel button stops it; ``_quit()`` is the one place
the timer is removed. Where there is no event loop (``blender -b``, or an operator
called from a script, which runs ``execute``) the task runs inline instead, so
``bpy.ops.blenderfarm.submit()`` returns when the job is queued and reports its id.

Saving a copy of the file as it is in memory is the only bpy work of a submit (always:
Python edits do not mark a file dirty); the rest is ``submit.py``. Errors end as one
sentence in the panel and the status bar, worded for the panel (``wording.py``).
"""

import dataclasses
import logging
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy.types import Operator

from . import preferences, status, wording
from .submit import (
    MISSING_ASK,
    MISSING_CANCEL,
    MISSING_CONTINUE,
    SubmitRequest,
    SubmitTask,
    check_settings,
    discard_copy,
    frame_range,
    load_pack,
    panel_overrides,
    panel_tiles,
    parse_tags,
    plan_copy,
    scene_naming,
)
from .worker import (
    Canceled,
    ConnectionTest,
    Done,
    Failed,
    MissingFiles,
    Problem,
    Progress,
    Task,
    describe_error,
    drain,
    progress_text,
)

log = logging.getLogger(__name__)

TIMER_STEP = 0.05  # seconds between drains of a running task's queue
CANCEL_GRACE = 5.0  # seconds a canceled task has to say how it ended

#: The task of each kind that runs now (submit, download, connection); the panel's
#: buttons reach it here.
running: dict[str, Task] = {}


def busy() -> bool:
    """A submit or a download is running (they share the panel's progress bar)."""
    return "submit" in running or "download" in running


class TaskOperator:
    """Mixin: run a Task in a thread under a modal timer, or inline without a UI."""

    _task = None
    _timer = None
    _result = None
    _canceled_at = None
    #: Whether the panel's progress bar follows this task (one such task at a time).
    shows_progress = True

    def run_task(self, context, task: Task, modal: bool) -> set:
        self._task, self._result, self._canceled_at = task, None, None
        if not modal:
            task.run()
            drain(task.queue, lambda m: self.handle(context, m), budget=float("inf"))
            return self._result or {"CANCELLED"}
        running[task.kind] = task
        if self.shows_progress:
            state = context.window_manager.blenderfarm
            state.task, state.stage, state.progress_value = task.kind, "Starting...", 0.0
        task.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_STEP, window=context.window)
        wm.modal_handler_add(self)
        status.tag_redraw(context)
        return {"RUNNING_MODAL"}

    def modal(self, context, event) -> set:
        if (event.type == "ESC" and event.value == "PRESS") or self._task.canceled:
            # Ask the thread to stop, and go on draining until it says how it ended: a
            # job it had already created is taken back or reported, never left behind
            # a "Canceled." (unless the thread hangs past CANCEL_GRACE).
            if self._canceled_at is None:
                self._task.cancel()
                self._canceled_at = time.monotonic()
                if self.shows_progress:
                    context.window_manager.blenderfarm.stage = "Canceling..."
            elif time.monotonic() - self._canceled_at > CANCEL_GRACE:
                self._quit(context)
                self.say(context, "Canceled.", "WARNING")
                return {"CANCELLED"}
            if event.type == "ESC":
                return {"RUNNING_MODAL"}  # handled: not for the editor under the mouse
        if event.type == "TIMER":
            try:
                drain(self._task.queue, lambda m: self.handle(context, m))
            except Exception as exc:  # a bug: stop cleanly, the console keeps the trace
                log.exception("Blenderfarm: handling %s failed", self._task.kind)
                self._task.cancel()
                self._result = {"CANCELLED"}
                self.say(context, describe_error(exc), "ERROR")
            if self._result is not None:
                self._quit(context)
                return self._result
        return {"PASS_THROUGH"}

    def cancel(self, context) -> None:
        """Blender ends the modal itself (a file is loading, the window closes)."""
        if self._task is not None:
            self._task.cancel()
        self._quit(context)

    def _quit(self, context) -> None:
        if self.shows_progress:
            state = context.window_manager.blenderfarm
            state.task, state.awaiting_decision = "", False
            state.missing.clear()
            self.status_bar(context, None)
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        if self._task is not None and running.get(self._task.kind) is self._task:
            del running[self._task.kind]
        status.tag_redraw(context)

    def status_bar(self, context, text) -> None:
        """While it runs, a modal operator says what it does in the status bar."""
        workspace = getattr(context, "workspace", None)
        if self.shows_progress and self._timer is not None and workspace is not None:
            workspace.status_text_set(text)

    def handle(self, context, message) -> None:
        state = context.window_manager.blenderfarm
        if isinstance(message, Progress):
            state.stage = progress_text(message)
            state.progress_value = 100.0 * message.fraction
            self.status_bar(context, f"Blenderfarm: {state.stage}   (Esc: cancel)")
            status.tag_redraw(context)
        elif isinstance(message, MissingFiles):
            self.missing_files_found(context, message)
        elif isinstance(message, Done):
            self.on_done(context, message)
            self._result = {"FINISHED"}
        elif isinstance(message, Failed):
            self.say(context, message.message, "ERROR")
            self._result = {"CANCELLED"}
        elif isinstance(message, Canceled):
            self.say(context, message.message, "WARNING")
            self._result = {"CANCELLED"}

    def say(self, context, text: str, kind: str = "INFO") -> None:
        """One sentence in the panel and in the status bar (or the console, with -b)."""
        status.set_message(context, text, kind)
        self.report({"INFO" if kind == "DONE" else kind}, text)

    def missing_files_found(self, context, message: MissingFiles) -> None:
        pass

    def on_done(self, context, message: Done) -> None:
        self.say(context, message.summary, "DONE")


class BLENDERFARM_OT_submit(TaskOperator, Operator):
    bl_idname = "blenderfarm.submit"
    bl_label = "Render on Farm"
    bl_description = ("Pack this file as it is now (unsaved changes included) with "
                      "everything it uses, upload it and queue a render job on the farm")
    bl_options = {"REGISTER"}

    frames: StringProperty(
        name="Frames", options={"SKIP_SAVE"},
        description="Frames like 1-250, 1-10,20 or 1-100x5 (default: the panel's range)")
    on_missing: EnumProperty(
        name="Missing Files", default="ASK",
        items=[("ASK", "Ask", "Ask whether to go on (in the background: go on, with a warning)"),
               ("CONTINUE", "Continue", "Submit anyway; the render will lack them"),
               ("CANCEL", "Cancel", "Do not submit")])

    @classmethod
    def poll(cls, context) -> bool:
        return context.scene is not None and not busy()

    def invoke(self, context, event) -> set:
        return self.submit(context, modal=not bpy.app.background)

    def execute(self, context) -> set:
        return self.submit(context, modal=False)

    def submit(self, context, modal: bool) -> set:
        if not wording.online_access(bpy.app):
            self.say(context, wording.OFFLINE, "ERROR")
            return {"CANCELLED"}
        server = preferences.server(context)
        try:
            pack = load_pack()
            request = self.request(context, ask=modal)
        except (ImportError, ValueError, Problem) as exc:  # no BAT, bad settings or frames
            self.say(context, describe_error(exc, bool(server.token)), "ERROR")
            return {"CANCELLED"}
        try:
            self.save_copy(request)
        except RuntimeError as exc:
            discard_copy(request.plan)
            self.say(context, f"Cannot save a copy of this file to submit: "
                              f"{str(exc).strip().splitlines()[-1]}", "ERROR")
            return {"CANCELLED"}
        self._scene_name = context.scene.name
        status.set_message(context, "")
        return self.run_task(context, SubmitTask(server, request, pack), modal)

    def request(self, context, ask: bool) -> SubmitRequest:
        s = context.scene.blenderfarm
        frames = self.frames.strip() or frame_range(s.frame_start, s.frame_end, s.frame_step)
        policy = {"ASK": MISSING_ASK if ask else MISSING_CONTINUE, "CONTINUE": MISSING_CONTINUE,
                  "CANCEL": MISSING_CANCEL}[self.on_missing]
        fields = dict(name=s.job_name, frames=frames, chunk=s.chunk, priority=s.priority,
                      overrides=panel_overrides(s), scene=context.scene.name, on_missing=policy,
                      tags=parse_tags(s.tags), blender=s.blender.strip() or None,
                      tiles=panel_tiles(s), video=s.video)
        check_settings(**fields)  # before saving anything
        if s.camera is None and context.scene.camera is None:
            raise Problem(f"The scene {context.scene.name!r} has no active camera: pick a "
                          "Camera in the panel's Overrides, or set the scene's camera in "
                          "the Scene properties.")
        naming = scene_naming(context.scene.render.filepath,
                              context.scene.render.image_settings.file_format)
        # Always the state in memory: bpy.data.is_dirty misses edits made from Python.
        # This Blender saves the copy the nodes get: an older one may crash opening it.
        saved = "{}.{}".format(*bpy.app.version[:2])
        render = context.scene.render
        percent = s.resolution_percent if s.use_resolution else render.resolution_percentage
        size = (render.resolution_x * percent // 100, render.resolution_y * percent // 100)
        return SubmitRequest(plan_copy(bpy.data.filepath), blender_saved=saved, **fields,
                             **naming, resolution=size if min(size) > 0 else None)

    @staticmethod
    def save_copy(request: SubmitRequest) -> None:
        if request.plan.save_to is None:
            return
        # copy=True: the open file keeps its path and its unsaved state. Uncompressed,
        # so that BAT reads it without the zstandard module, which Blender may lack.
        bpy.ops.wm.save_as_mainfile(filepath=request.plan.save_to, copy=True,
                                    relative_remap=True, compress=False,
                                    check_existing=False)

    def missing_files_found(self, context, message: MissingFiles) -> None:
        if not message.ask:
            self.report({"WARNING"}, f"{len(message.paths)} missing file(s); the render will "
                                     f"lack them: {', '.join(message.paths)}")
            return
        state = context.window_manager.blenderfarm
        state.missing.clear()
        for path in message.paths:
            state.missing.add().name = path
        state.awaiting_decision = True
        status.tag_redraw(context)
        bpy.ops.blenderfarm.missing_files("INVOKE_DEFAULT", task_id=str(id(self._task)))

    def on_done(self, context, message: Done) -> None:
        job = message.result
        state = context.window_manager.blenderfarm
        state.last_job_id = str(job["id"])
        scene = bpy.data.scenes.get(getattr(self, "_scene_name", "")) or context.scene
        status.remember_job(scene, job)
        print(f"Blenderfarm: submitted job {job['id']}", flush=True)
        self.say(context, message.summary, "DONE")


class BLENDERFARM_OT_missing_files(Operator):
    bl_idname = "blenderfarm.missing_files"
    bl_label = "Missing Files"
    bl_description = "Some files this project uses do not exist"
    bl_options = {"INTERNAL"}

    LIMIT = 12

    # The submit this question is about: a dialog left open must not answer the next.
    task_id: StringProperty(options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event) -> set:
        return context.window_manager.invoke_props_dialog(self, width=560)

    def draw(self, context) -> None:
        missing = context.window_manager.blenderfarm.missing
        col = self.layout.column(align=True)
        col.label(text=f"{len(missing)} file(s) this project uses do not exist:", icon="ERROR")
        for item in list(missing)[: self.LIMIT]:
            col.label(text=item.name)
        if len(missing) > self.LIMIT:
            col.label(text=f"... and {len(missing) - self.LIMIT} more")
        self.layout.label(text="OK submits anyway (the render will lack them).")

    def execute(self, context) -> set:
        decide_missing(context, True, self.task_id)
        return {"FINISHED"}

    def cancel(self, context) -> None:
        decide_missing(context, False, self.task_id)


def decide_missing(context, go_on: bool, task_id: str = "") -> None:
    """Answer the running submit's question about missing files (if it still asks)."""
    task = running.get("submit")
    state = context.window_manager.blenderfarm
    if task_id and (task is None or str(id(task)) != task_id):
        return
    if task is not None and state.awaiting_decision:
        state.awaiting_decision = False
        task.decide_missing(go_on)
        status.tag_redraw(context)


class BLENDERFARM_OT_resolve_missing(Operator):
    bl_idname = "blenderfarm.resolve_missing"
    bl_label = "Missing Files"
    bl_description = "Submit without the missing files, or stop"
    bl_options = {"INTERNAL"}

    go_on: BoolProperty(name="Go On")

    def execute(self, context) -> set:
        decide_missing(context, self.go_on)
        return {"FINISHED"}


class BLENDERFARM_OT_cancel_task(Operator):
    bl_idname = "blenderfarm.cancel_task"
    bl_label = "Cancel"
    bl_description = "Stop packing, uploading or downloading"
    bl_options = {"INTERNAL"}

    kind: StringProperty(default="submit")

    def execute(self, context) -> set:
        task = running.get(self.kind)
        if task is not None:
            task.cancel()  # the running modal sees it on its next tick and quits
        return {"FINISHED"}


class BLENDERFARM_OT_reset_frames(Operator):
    bl_idname = "blenderfarm.reset_frames"
    bl_label = "Use Scene Range"
    bl_description = "Render the scene's frame range again"
    bl_options = {"INTERNAL", "UNDO"}

    def execute(self, context) -> set:
        context.scene.blenderfarm.use_custom_frames = False
        return {"FINISHED"}


class BLENDERFARM_OT_test_connection(TaskOperator, Operator):
    bl_idname = "blenderfarm.test_connection"
    bl_label = "Test Connection"
    bl_description = "Ask the server for its version and its nodes"
    shows_progress = False

    @classmethod
    def poll(cls, context) -> bool:
        return "connection" not in running

    def invoke(self, context, event) -> set:
        return self.start(context, modal=not bpy.app.background)

    def execute(self, context) -> set:
        return self.start(context, modal=False)

    def start(self, context, modal: bool) -> set:
        if not wording.online_access(bpy.app):
            self.say(context, wording.OFFLINE, "ERROR")
            return {"CANCELLED"}
        server = preferences.server(context)
        context.window_manager.blenderfarm.connection = f"Connecting to {server.url}..."
        task = ConnectionTest(dataclasses.replace(server, timeout=10.0))
        return self.run_task(context, task, modal)

    def say(self, context, text: str, kind: str = "INFO") -> None:
        state = context.window_manager.blenderfarm
        state.connection, state.connection_ok = text, kind == "DONE"
        status.tag_redraw(context)
        self.report({"INFO" if kind == "DONE" else kind}, text)


classes = (
    BLENDERFARM_OT_submit,
    BLENDERFARM_OT_missing_files,
    BLENDERFARM_OT_resolve_missing,
    BLENDERFARM_OT_cancel_task,
    BLENDERFARM_OT_reset_frames,
    BLENDERFARM_OT_test_connection,
)

register, unregister = bpy.utils.register_classes_factory(classes)
