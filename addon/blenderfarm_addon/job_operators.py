"""Operators on the farm jobs of this file: download results, cancel, open, forget.

Each job downloads into its own folder under Download To by default
(``<job name>-<short id>``, :func:`job_folder`), which Open Folder opens; a file
there whose content differs is replaced only with the panel's Overwrite.

Downloads run as a :class:`worker.DownloadTask` under the same modal pattern as a
submit (``operators.TaskOperator``); cancelling a job goes through the job watcher's
thread. Nothing here waits on the network on Blender's main thread, except when
called from a script or in ``blender -b``, where waiting is what the caller asked for.
"""

import os

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import Operator

from . import preferences, status, wording
from .operators import TaskOperator, busy
from .vendor.blenderfarm.client.api import job_folder_name
from .worker import Done, DownloadTask


def _job_name(context, job_id: str) -> str:
    state = status.job_state(context.window_manager, job_id)
    return state.name if state is not None and state.name else job_id


def job_folder(context, job_id: str, name: str) -> str:
    """The folder a job's frames are in: where it was downloaded to, else where the
    panel's settings put them ("" for a file never saved with a relative folder)."""
    state = status.job_state(context.window_manager, job_id)
    if state is not None and state.downloaded_to:
        return state.downloaded_to
    settings = context.scene.blenderfarm
    raw = settings.download_dir
    if raw.startswith("//") and not bpy.data.filepath:
        return ""
    folder = os.path.normpath(bpy.path.abspath(raw))
    if settings.download_per_job:
        folder = os.path.join(folder, job_folder_name(name, job_id))
    return folder


class BLENDERFARM_OT_download(TaskOperator, Operator):
    bl_idname = "blenderfarm.download"
    bl_label = "Download Results"
    bl_description = ("Download the job's rendered frames into its own folder under the "
                      "download folder")

    job_id: StringProperty(name="Job ID")
    folder: StringProperty(
        name="Folder", subtype="DIR_PATH", options={"SKIP_SAVE"},
        description="Where to put the frames (default: the panel's download folder)")

    @classmethod
    def poll(cls, context) -> bool:
        return not busy()

    def invoke(self, context, event) -> set:
        return self.start(context, modal=not bpy.app.background)

    def execute(self, context) -> set:
        return self.start(context, modal=False)

    def start(self, context, modal: bool) -> set:
        if not wording.online_access(bpy.app):
            self.say(context, wording.OFFLINE, "ERROR")
            return {"CANCELLED"}
        settings = context.scene.blenderfarm
        raw = self.folder or settings.download_dir
        if raw.startswith("//") and not bpy.data.filepath:
            self.say(context, "Save the file first, or choose a download folder that is not "
                              "relative (// means: next to the saved file).", "ERROR")
            return {"CANCELLED"}
        folder = os.path.normpath(bpy.path.abspath(raw))
        job_id = self.job_id or context.window_manager.blenderfarm.last_job_id
        if not job_id:
            self.say(context, "No job to download: submit one first.", "ERROR")
            return {"CANCELLED"}
        self._job_id = job_id
        status.set_message(context, "")
        task = DownloadTask(preferences.server(context), job_id, folder, raw,
                            per_job=settings.download_per_job,
                            overwrite=settings.download_overwrite)
        return self.run_task(context, task, modal)

    def on_done(self, context, message: Done) -> None:
        state = status.job_state(context.window_manager, self._job_id)
        if state is not None:
            state.downloaded_to = message.result.folder
        print(f"Blenderfarm: downloaded job {self._job_id} to {message.result.folder}",
              flush=True)
        self.say(context, message.summary, "DONE")


class BLENDERFARM_OT_cancel_job(Operator):
    bl_idname = "blenderfarm.cancel_job"
    bl_label = "Cancel Job"
    bl_description = "Cancel this job on the farm: queued frames are dropped, renders stop"
    bl_options = {"INTERNAL"}

    job_id: StringProperty(name="Job ID")

    def invoke(self, context, event) -> set:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context) -> set:
        if not wording.online_access(bpy.app):
            self.report({"ERROR"}, wording.OFFLINE)
            return {"CANCELLED"}
        status.sync(context)
        status.watcher.cancel_job(self.job_id)
        if bpy.app.background:
            status.poll_now(context)
        else:
            status.watcher.start()
        self.report({"INFO"}, f"Canceling job {_job_name(context, self.job_id)!r}")
        return {"FINISHED"}


class BLENDERFARM_OT_open_dashboard(Operator):
    bl_idname = "blenderfarm.open_dashboard"
    bl_label = "Open Dashboard"
    bl_description = "Open the farm's dashboard in the web browser"

    job_id: StringProperty(name="Job ID", options={"SKIP_SAVE"})

    def execute(self, context) -> set:
        url = preferences.server(context).url.rstrip("/")
        if "://" not in url:
            url = "http://" + url
        bpy.ops.wm.url_open(url=f"{url}/#/jobs/{self.job_id}" if self.job_id else f"{url}/")
        return {"FINISHED"}


class BLENDERFARM_OT_open_folder(Operator):
    bl_idname = "blenderfarm.open_folder"
    bl_label = "Open Folder"
    bl_description = "Open the folder this job's frames were downloaded into"
    bl_options = {"INTERNAL"}

    path: StringProperty(subtype="DIR_PATH")

    def execute(self, context) -> set:
        if not os.path.isdir(self.path):
            self.report({"ERROR"}, f"The folder {self.path} does not exist (any more).")
            return {"CANCELLED"}
        bpy.ops.wm.path_open(filepath=self.path)
        return {"FINISHED"}


class BLENDERFARM_OT_forget_job(Operator):
    bl_idname = "blenderfarm.forget_job"
    bl_label = "Remove From List"
    bl_description = "Remove this job from this file's list (the farm keeps it)"
    bl_options = {"INTERNAL", "UNDO"}

    job_id: StringProperty(name="Job ID")

    def execute(self, context) -> set:
        jobs = context.scene.blenderfarm.jobs
        for i, ref in enumerate(jobs):
            if ref.job_id == self.job_id:
                jobs.remove(i)
                break
        states = context.window_manager.blenderfarm.jobs
        for i, state in enumerate(states):
            if state.job_id == self.job_id:
                states.remove(i)
                break
        status.sync(context)
        status.tag_redraw(context)
        return {"FINISHED"}


class BLENDERFARM_OT_notify(Operator):
    """Puts a sentence in the status bar for code that is not an operator (a timer).

    Blender shows the reports of an operator that a script calls only if the operator
    is modal, so this one waits one timer tick before it reports.
    """

    bl_idname = "blenderfarm.notify"
    bl_label = "Blenderfarm Notice"
    bl_options = {"INTERNAL"}

    message: StringProperty()
    #: INFO for good news (a job completed), WARNING for the rest
    level: EnumProperty(items=(("WARNING", "Warning", ""), ("INFO", "Info", "")),
                        default="WARNING")

    def invoke(self, context, event) -> set:
        self._timer = context.window_manager.event_timer_add(0.01, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event) -> set:
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        # A warning, not an error: an error report would pop up under the mouse, in
        # the middle of whatever the artist is doing.
        self.report({self.level}, self.message)
        return {"FINISHED"}


class BLENDERFARM_OT_refresh_jobs(Operator):
    bl_idname = "blenderfarm.refresh_jobs"
    bl_label = "Refresh Jobs"
    bl_description = "Ask the farm for the state of this file's jobs now"

    def execute(self, context) -> set:
        if not wording.online_access(bpy.app):
            self.report({"ERROR"}, wording.OFFLINE)
            return {"CANCELLED"}
        if bpy.app.background:
            status.poll_now(context)  # no timers run in the background: poll here
        else:
            status.sync(context)
            status.watcher.refresh()
            status.watcher.start()
        error = context.window_manager.blenderfarm.watch_error
        if error:
            self.report({"ERROR"}, error)
        return {"FINISHED"}


classes = (
    BLENDERFARM_OT_download,
    BLENDERFARM_OT_cancel_job,
    BLENDERFARM_OT_open_dashboard,
    BLENDERFARM_OT_open_folder,
    BLENDERFARM_OT_forget_job,
    BLENDERFARM_OT_refresh_jobs,
    BLENDERFARM_OT_notify,
)

register, unregister = bpy.utils.register_classes_factory(classes)
