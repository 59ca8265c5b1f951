"""The add-on's data in Blender: per-file job settings on the Scene, live status on the
WindowManager.

``Scene.blenderfarm`` (saved with the file): job name, frame range, chunk size,
priority, required node tags, render overrides (the camera too), the download folder
and the ids of the jobs submitted from this file. The job name and frame range follow the file name and the scene until
the user edits them (getters, not copies, so they never go stale).
``WindowManager.blenderfarm`` (never saved): the running submit's progress, the last
message, missing files awaiting a decision, and the live state of each job. Progress
values are read-only (getters): Blender 3.x draws them as sliders, which must not be
draggable.

Only property definitions and their getters: no network, no threads. No ``from
__future__ import annotations`` here: Blender reads the properties from the classes'
annotations, which must stay objects, not strings.
"""

import os

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy.types import PropertyGroup

FRAME_ATTRS = ("frame_start", "frame_end", "frame_step")
MAX_RECENT_JOBS = 8


def default_job_name() -> str:
    name = os.path.splitext(os.path.basename(bpy.data.filepath))[0]
    return name or "untitled"


def _get_job_name(self) -> str:
    return self.job_name_custom or default_job_name()


def _set_job_name(self, value: str) -> None:
    # Clearing the field goes back to following the file name.
    self.job_name_custom = "" if value.strip() == default_job_name() else value.strip()


def _frame_get(attr: str):
    def get(self) -> int:
        source = self if self.use_custom_frames else self.id_data
        return int(getattr(source, ("custom_" if self.use_custom_frames else "") + attr))

    return get


def _frame_set(attr: str):
    def set_(self, value: int) -> None:
        if not self.use_custom_frames:  # start from the scene's range, then change one
            for name in FRAME_ATTRS:
                setattr(self, "custom_" + name, getattr(self.id_data, name))
            self.use_custom_frames = True
        setattr(self, "custom_" + attr, value)

    return set_


def _is_camera(self, obj) -> bool:
    # Of this scene: the node looks the override up among the scene's objects.
    return obj.type == "CAMERA" and obj.name in self.id_data.objects


def _progress(self) -> float:
    """A progress bar the panel shows but nobody can drag: code sets progress_value."""
    return self.progress_value


class BLENDERFARM_PG_job_ref(PropertyGroup):
    """A job submitted from this file (``name`` is the job's name)."""

    job_id: StringProperty(name="Job ID")


class BLENDERFARM_PG_settings(PropertyGroup):
    job_name: StringProperty(
        name="Job Name", description="Name of the job on the farm (default: the file name)",
        get=_get_job_name, set=_set_job_name)
    job_name_custom: StringProperty(options={"HIDDEN"})

    use_custom_frames: BoolProperty(
        name="Custom Frame Range", options={"HIDDEN"},
        description="Render these frames rather than the scene's frame range")
    frame_start: IntProperty(
        name="Frame Start", description="First frame to render (default: the scene's)",
        get=_frame_get("frame_start"), set=_frame_set("frame_start"))
    frame_end: IntProperty(
        name="End", description="Last frame to render (default: the scene's)",
        get=_frame_get("frame_end"), set=_frame_set("frame_end"))
    frame_step: IntProperty(
        name="Step", description="Render every n-th frame (default: the scene's)", min=1,
        get=_frame_get("frame_step"), set=_frame_set("frame_step"))
    custom_frame_start: IntProperty(options={"HIDDEN"})
    custom_frame_end: IntProperty(options={"HIDDEN"})
    custom_frame_step: IntProperty(min=1, default=1, options={"HIDDEN"})

    chunk: IntProperty(
        name="Chunk Size", default=1, min=1, max=10_000,
        description="Frames per task: more frames per task, less start-up per frame")
    priority: IntProperty(
        name="Priority", default=50, min=0, max=100,
        description="Higher priority jobs render first (0-100)")

    use_samples: BoolProperty(
        name="Override Samples", description="Render with this many samples")
    samples: IntProperty(
        name="Samples", default=64, min=1, max=1_000_000, soft_max=4096)
    use_resolution: BoolProperty(
        name="Override Resolution", description="Render at this percentage of the resolution")
    resolution_percent: IntProperty(
        name="Resolution %", default=50, min=1, max=1000, soft_max=100, subtype="PERCENTAGE")
    file_format: EnumProperty(
        name="Format", description="Image format of the rendered frames",
        items=[("SCENE", "Scene's Format", "Keep the scene's output format"),
               ("PNG", "PNG", ""), ("OPEN_EXR", "OpenEXR", ""),
               ("OPEN_EXR_MULTILAYER", "OpenEXR MultiLayer", ""), ("TIFF", "TIFF", ""),
               ("JPEG", "JPEG", "")])
    denoise: EnumProperty(
        name="Denoise", description="Cycles denoising on the farm",
        items=[("SCENE", "Scene's Setting", "Keep the scene's denoising setting"),
               ("ON", "On", "Denoise (only nodes with OpenImageDenoise take the job)"),
               ("OFF", "Off", "Do not denoise")])
    device: EnumProperty(
        name="Device", description="What Cycles renders with on the farm",
        items=[("SCENE", "Scene's Setting", "Keep the scene's device: a node's GPU slot "
                "renders it with its GPUs, a CPU slot with the CPU"),
               ("CPU", "CPU", "Render on the CPU (only nodes' CPU slots take the job)"),
               ("GPU", "GPU", "Render on GPUs (only nodes' GPU slots take the job)")])
    persistent_data: EnumProperty(
        name="Persistent Data", description="Keep the scene's data (BVH, images) in "
                                            "memory from one frame to the next on a node",
        items=[("SCENE", "Scene's Setting", "Keep the scene's persistent data setting"),
               ("ON", "On", "Build the scene once in each node's Blender, not for every "
                "frame: faster for heavy scenes, at the cost of memory"),
               ("OFF", "Off", "Rebuild the scene's data for every frame")])
    tiles_mode: EnumProperty(
        name="Tiles", description="Split each frame into tiles that nodes render side by "
                                  "side, merged into the frame on the farm",
        items=[("OFF", "Whole Frames", "Each node renders whole frames"),
               ("AUTO", "Auto", "Enough tiles for every online node to take several, "
                "none under 64 pixels"),
               ("COUNT", "Count", "This many tiles per frame")])
    tiles: IntProperty(name="Tile Count", default=8, min=2, max=256,
                       description="Tiles per frame")
    video: BoolProperty(
        name="Video", default=False,
        description="Also make a video of the frames when they are done (H.264 MP4 at the "
                    "scene's frame rate, or the scene's own movie settings)")
    camera: PointerProperty(
        name="Camera", type=bpy.types.Object, poll=_is_camera,
        description="Render through this camera of the scene (empty: the scene's camera)")
    tags: StringProperty(
        name="Tags", description="Node tags the job requires, like gpu, big-ram: only "
                                 "nodes that have every one of them render it")
    blender: StringProperty(
        name="Blender", description="Nodes' Blender for the job: 4.5 (4.5.x only) or "
                                    ">=4.5 (4.5 or newer). Empty: this Blender's version "
                                    "or newer, since older ones may not open its file")

    download_dir: StringProperty(
        name="Download To", default="//renders/", subtype="DIR_PATH",
        description="Folder the rendered frames are downloaded into")
    download_per_job: BoolProperty(
        name="Folder per Job", default=True,
        description="Download each job into its own folder, <job name>-<short id>, so "
                    "that jobs of the same name never mix")
    download_overwrite: BoolProperty(
        name="Overwrite", default=False,
        description="Replace files in the folder whose content differs (else they are "
                    "never replaced, and nothing is downloaded)")
    jobs: CollectionProperty(type=BLENDERFARM_PG_job_ref)


class BLENDERFARM_PG_path(PropertyGroup):
    """One missing file (``name`` is its path)."""


class BLENDERFARM_PG_job_state(PropertyGroup):
    """A job as the farm last reported it (``name`` is the job's name)."""

    job_id: StringProperty()
    status: StringProperty()
    frames_done: IntProperty()
    frames_total: IntProperty()
    error: StringProperty()
    summary: StringProperty(description="Short id, when submitted, frames, overrides")
    progress: FloatProperty(
        name="Progress", min=0.0, max=100.0, subtype="PERCENTAGE", precision=0,
        get=_progress)  # read-only in the panel: set progress_value
    progress_value: FloatProperty(options={"HIDDEN"})
    eta: StringProperty(description="Time left, as the farm estimates it (empty: unknown)")
    downloaded_to: StringProperty(subtype="DIR_PATH")


class BLENDERFARM_PG_status(PropertyGroup):
    task: StringProperty(description="The running task: submit, download or empty")
    stage: StringProperty()
    progress_value: FloatProperty(options={"HIDDEN"})
    progress: FloatProperty(
        name="Progress", min=0.0, max=100.0, subtype="PERCENTAGE", precision=0,
        get=_progress)
    message: StringProperty()
    message_kind: StringProperty(default="INFO")
    missing: CollectionProperty(type=BLENDERFARM_PG_path)
    awaiting_decision: BoolProperty()
    last_job_id: StringProperty(name="Last Job ID")
    connection: StringProperty()
    connection_ok: BoolProperty()
    watch_error: StringProperty()
    farm_error: StringProperty(description="Why the farm cannot be reached, checked "
                                           "every few seconds; empty while it answers")
    jobs: CollectionProperty(type=BLENDERFARM_PG_job_state)


classes = (
    BLENDERFARM_PG_job_ref,
    BLENDERFARM_PG_settings,
    BLENDERFARM_PG_path,
    BLENDERFARM_PG_job_state,
    BLENDERFARM_PG_status,
)

_register, _unregister = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register()
    bpy.types.Scene.blenderfarm = PointerProperty(type=BLENDERFARM_PG_settings)
    bpy.types.WindowManager.blenderfarm = PointerProperty(type=BLENDERFARM_PG_status)


def unregister() -> None:
    del bpy.types.WindowManager.blenderfarm
    del bpy.types.Scene.blenderfarm
    _unregister()
