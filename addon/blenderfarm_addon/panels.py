"""The "Render on Farm" panel in Properties > Output, with its sub-panels.

Settings (job name, frames, chunk size, priority, tags), Overrides (the camera too),
the submit button (a progress bar with Cancel while a submit or download runs, and the
missing-files question), and this file's jobs with live progress, each told apart by
its short id, when it was submitted, its frames and overrides. Why the farm cannot be
used (down, refused, online access off) shows once, at the top. Drawing only: every
action is an operator, every value a property; nothing here changes data or talks to
the farm.
"""

import os

import bpy
from bpy.types import Panel

from . import job_operators, preferences, status
from .wording import wrapped_label

STATUS_ICONS = {
    "queued": "SORTTIME",
    "active": "RENDER_ANIMATION",
    "paused": "PAUSE",
    "completed": "CHECKMARK",
    "failed": "ERROR",
    "canceled": "CANCEL",
    "deleted": "TRASH",
}
MESSAGE_ICONS = {"INFO": "INFO", "DONE": "CHECKMARK", "WARNING": "ERROR", "ERROR": "CANCEL"}


def progress_bar(layout, owner, attr: str, text: str) -> None:
    """A bar: Blender 4's ``layout.progress``; before that a slider of a read-only
    property (a getter), which cannot be dragged."""
    percent = getattr(owner, attr)
    if hasattr(layout, "progress"):
        layout.progress(factor=percent / 100.0, type="BAR", text=text)
    else:
        row = layout.row()
        row.prop(owner, attr, text=text, slider=True)


class FarmPanel:
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "output"


class BLENDERFARM_PT_render_on_farm(FarmPanel, Panel):
    bl_label = "Render on Farm"

    def draw_header(self, context) -> None:
        self.layout.label(text="", icon="NETWORK_DRIVE")

    def draw(self, context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = context.scene.blenderfarm

        row = layout.row(align=True)
        row.label(text=preferences.get(context).server_url, icon="URL")
        row.operator("blenderfarm.open_dashboard", text="", icon="WORLD")
        row.operator("preferences.addon_show", text="", icon="PREFERENCES").module = \
            preferences.__package__
        problem = status.farm_problem(context)
        if problem:
            wrapped_label(layout, context, problem, "ERROR")

        layout.prop(settings, "job_name")
        col = layout.column(align=True)
        col.prop(settings, "frame_start", text="Frame Start")
        col.prop(settings, "frame_end", text="End")
        col.prop(settings, "frame_step", text="Step")
        if settings.use_custom_frames:
            row = col.row()
            row.alignment = "RIGHT"
            row.operator("blenderfarm.reset_frames", icon="LOOP_BACK")
        col = layout.column()
        col.prop(settings, "chunk")
        col.prop(settings, "priority", slider=True)
        col.prop(settings, "tags")
        col.prop(settings, "blender")


class BLENDERFARM_PT_render_on_farm_overrides(FarmPanel, Panel):
    bl_label = "Overrides"
    bl_parent_id = "BLENDERFARM_PT_render_on_farm"

    def draw(self, context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = context.scene.blenderfarm
        for toggle, value, heading in (("use_samples", "samples", "Samples"),
                                       ("use_resolution", "resolution_percent", "Resolution")):
            row = layout.row(align=True, heading=heading)
            row.prop(settings, toggle, text="")
            sub = row.row(align=True)
            sub.active = getattr(settings, toggle)
            sub.prop(settings, value, text="")
        layout.prop(settings, "camera")  # empty: the scene's camera
        layout.prop(settings, "file_format")
        layout.prop(settings, "denoise")
        layout.prop(settings, "device")
        layout.prop(settings, "persistent_data")
        row = layout.row(align=True, heading="Tiles")
        row.prop(settings, "tiles_mode", text="")
        sub = row.row(align=True)
        sub.active = settings.tiles_mode == "COUNT"
        sub.prop(settings, "tiles", text="")
        layout.prop(settings, "video")


class BLENDERFARM_PT_render_on_farm_submit(FarmPanel, Panel):
    bl_label = "Submit"
    bl_parent_id = "BLENDERFARM_PT_render_on_farm"
    bl_options = {"HIDE_HEADER"}

    def draw(self, context) -> None:
        layout = self.layout
        state = context.window_manager.blenderfarm
        if state.task:
            if state.awaiting_decision:
                self.draw_missing(context, state)
            row = layout.row(align=True)
            progress_bar(row, state, "progress", state.stage)
            row.operator("blenderfarm.cancel_task", text="", icon="X").kind = state.task
        else:
            row = layout.row()
            row.scale_y = 1.6
            row.operator("blenderfarm.submit", icon="RENDER_ANIMATION")
        # Said once: the top of the panel already shows why the farm cannot be used.
        if state.message and state.message != status.farm_problem(context):
            wrapped_label(layout, context, state.message, MESSAGE_ICONS[state.message_kind])

    def draw_missing(self, context, state) -> None:
        box = self.layout.box()
        box.label(text=f"{len(state.missing)} file(s) the project uses are missing:",
                  icon="ERROR")
        col = box.column(align=True)
        for item in list(state.missing)[:5]:
            col.label(text=bpy.path.basename(item.name) + "  (" + item.name + ")")
        if len(state.missing) > 5:
            col.label(text=f"... and {len(state.missing) - 5} more")
        row = box.row(align=True)
        row.operator("blenderfarm.resolve_missing", text="Submit Anyway").go_on = True
        row.operator("blenderfarm.resolve_missing", text="Cancel").go_on = False


class BLENDERFARM_PT_render_on_farm_jobs(FarmPanel, Panel):
    bl_label = "Jobs"
    bl_parent_id = "BLENDERFARM_PT_render_on_farm"

    def draw_header_preset(self, context) -> None:
        self.layout.operator("blenderfarm.refresh_jobs", text="", icon="FILE_REFRESH",
                             emboss=False)

    def draw(self, context) -> None:
        layout = self.layout
        settings = context.scene.blenderfarm
        if not settings.jobs:
            layout.label(text="No jobs submitted from this file yet.")
        for ref in settings.jobs:
            self.draw_job(context, ref, status.job_state(context.window_manager, ref.job_id))
        col = layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(settings, "download_dir")
        col.prop(settings, "download_per_job")
        col.prop(settings, "download_overwrite")

    def draw_job(self, context, ref, job) -> None:
        box = self.layout.box()
        code = job.status if job is not None else ""
        row = box.row(align=True)
        row.label(text=ref.name or ref.job_id, icon=STATUS_ICONS.get(code, "TIME"))
        row.operator("blenderfarm.open_dashboard", text="", icon="URL").job_id = ref.job_id
        if code in ("queued", "active", "paused"):
            row.operator("blenderfarm.cancel_job", text="", icon="CANCEL").job_id = ref.job_id
        row.operator("blenderfarm.forget_job", text="", icon="X").job_id = ref.job_id
        if job is None:
            box.label(text=f"{ref.job_id[:6]} · waiting for the farm...")
            return
        if job.summary:
            wrapped_label(box, context, job.summary)
        text = f"{job.frames_done} / {job.frames_total} frames, {job.status}"
        if job.eta:
            text += f", ETA {job.eta}"
        progress_bar(box, job, "progress", text)
        if job.error:
            wrapped_label(box, context, job.error, "ERROR")
        row = box.row(align=True)
        sub = row.row(align=True)
        sub.enabled = job.frames_done > 0
        sub.operator("blenderfarm.download", icon="IMPORT").job_id = ref.job_id
        folder = job_operators.job_folder(context, ref.job_id, ref.name or job.name)
        if folder and os.path.isdir(folder):
            row.operator("blenderfarm.open_folder", icon="FILE_FOLDER").path = folder


classes = (
    BLENDERFARM_PT_render_on_farm,
    BLENDERFARM_PT_render_on_farm_overrides,
    BLENDERFARM_PT_render_on_farm_submit,
    BLENDERFARM_PT_render_on_farm_jobs,
)

register, unregister = bpy.utils.register_classes_factory(classes)
