"""Task kinds, one home each: what a kind's assign carries, which node can run it, how
its outputs are checked, and whether they are frames of the job.

The compiler (``compiler.py``) makes the tasks; the farm asks the kind of a task here
and nowhere else, so a new kind is one class in this module (and its runner on the
node). Pure: no I/O, no farm; the callers hand in the job and its tasks.

- ``render``: frames, or one tile of one frame (its file is a *part*, kept on the task
  for the merge, not a job output).
- ``merge``: one frame from its tiles (the parts of the tasks it depends on).
- ``encode``: the job's video from its frames (the frame outputs of the tasks it
  depends on, in frame order).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..protocol import messages as m
from ..protocol.hashing import is_sha256
from ..protocol.naming import frames_named
from ..protocol.tiles import tile_grid, tile_name, tile_preview_name
from ..protocol.video import SceneVideo, VideoSettings
from .compiler import tiles_of
from .models import Job, NodeRecord, Output, Task
from .outputs import BadOutputs, check_outputs


class Kind:
    name: ClassVar[str]
    #: its outputs are frames of the job: they count in frames_done
    frames: ClassVar[bool] = True

    def fields(self, job: Job, task: Task, tasks: dict[str, Task]) -> dict[str, Any]:
        """The assign's fields that say what to run (beyond frames and the job's)."""
        return {"kind": self.name}

    def lacks(self, rec: NodeRecord) -> str | None:
        """What ``rec`` lacks to run a task of this kind (beyond what the job needs)."""
        return None

    def check(self, job: Job, task: Task, refs: list[m.OutputRef]) -> list[Output]:
        """The task's outputs, checked (raise BadOutputs)."""
        return check_outputs(job, task, refs)

    def parts(self, task: Task) -> bool:
        """Whether its outputs are parts (kept on the task) rather than job outputs."""
        return False

    def incomplete(self, task: Task, outputs: list[Output]) -> str | None:
        """What the outputs of a finished task lack (None: nothing): every frame."""
        missing = set(task.frames) - {o.frame for o in outputs}
        return f"no output for frame(s) {sorted(missing)}" if missing else None

    def what(self, task: Task) -> str:
        """The task in words, for errors: "frame 3", "frames 1-10"."""
        frames = task.frames
        return f"frame {frames[0]}" if len(frames) == 1 else f"frames {frames[0]}-{frames[-1]}"


class Render(Kind):
    name = m.RENDER

    def fields(self, job: Job, task: Task, tasks: dict[str, Task]) -> dict[str, Any]:
        if task.tile is None:
            return {"kind": self.name}
        return {"kind": self.name, "tile": m.Tile(task.tile, *grid(job))}

    def parts(self, task: Task) -> bool:
        return task.tile is not None

    def check(self, job: Job, task: Task, refs: list[m.OutputRef]) -> list[Output]:
        if task.tile is None:
            return check_outputs(job, task, refs)
        # its EXR, and maybe its preview: reported one by one as each is uploaded, then
        # together when the task is done
        frame = task.frames[0]
        want = tile_name(job.output_name, frame, task.tile)
        allowed = {want, tile_preview_name(job.output_name, frame, task.tile)}
        names = [ref.name for ref in refs]
        if not refs or len(set(names)) != len(names) or not set(names) <= allowed or \
                any(ref.frame != frame or not is_sha256(ref.sha256) for ref in refs):
            raise BadOutputs(f"a tile render of {task.id} must report one file, {want} "
                             f"(and maybe its preview)")
        return [Output(job.id, task.id, frame, ref.name, ref.sha256, ref.size) for ref in refs]

    def incomplete(self, task: Task, outputs: list[Output]) -> str | None:
        if task.tile is None:
            return super().incomplete(task, outputs)
        if not any(not is_preview(o.name) for o in outputs):
            return f"no file for tile {task.tile} of frame {task.frames[0]}"
        return None

    def what(self, task: Task) -> str:
        if task.tile is None:
            return super().what(task)
        return f"tile {task.tile} of frame {task.frames[0]}"


class Merge(Kind):
    name = m.MERGE

    def fields(self, job: Job, task: Task, tasks: dict[str, Task]) -> dict[str, Any]:
        cols, rows = grid(job)
        inputs = [m.InputRef(sha256=p["sha256"], size=p["size"], frame=p["frame"],
                             name=p["name"], tile=m.Tile(tasks[d].tile or 0, cols, rows))
                  for d in task.depends_on for p in tasks[d].parts if not p.get("preview")]
        return {"kind": self.name, "inputs": inputs}

    def what(self, task: Task) -> str:
        return f"the merge of frame {task.frames[0]}"


class Encode(Kind):
    name = m.ENCODE
    frames = False

    def fields(self, job: Job, task: Task, tasks: dict[str, Task]) -> dict[str, Any]:
        return {"kind": self.name, "inputs": encode_inputs(job, task),
                "video": video_settings(job).to_dict()}

    def lacks(self, rec: NodeRecord) -> str | None:
        return None if rec.info.get("ffmpeg") else "no FFmpeg"

    def check(self, job: Job, task: Task, refs: list[m.OutputRef]) -> list[Output]:
        want = video_settings(job).output
        if len(refs) != 1 or refs[0].name != want or not is_sha256(refs[0].sha256):
            raise BadOutputs(f"an encode of {task.id} must report one file, {want}")
        ref = refs[0]
        return [Output(job.id, task.id, ref.frame, ref.name, ref.sha256, ref.size)]

    def what(self, task: Task) -> str:
        return "the video"


KINDS: dict[str, Kind] = {k.name: k for k in (Render(), Merge(), Encode())}


def kind_of(task: Task) -> Kind:
    return KINDS[task.kind]


def is_preview(name: str) -> bool:
    """Whether a tile's file is its preview (``tile_preview_name``), not its EXR."""
    return name.endswith(".preview.png")


def preview_of(task: Task) -> dict[str, Any] | None:
    """The preview part of a tile task, if its node sent one."""
    return next((p for p in task.parts if p.get("preview")), None)


def place_preview(task: Task, info: dict[str, Any] | None) -> None:
    """Keep where a tile's preview lies in its frame, as its node's runner reported it
    (``info["tile"]``: ``rect`` x0, y0, x1, y1 from the bottom left, and the ``frame``'s
    width and height), when that holds together; a report that does not is dropped,
    and the page shows no preview of that tile."""
    preview = preview_of(task)
    where = (info or {}).get("tile")
    if preview is None or not isinstance(where, dict):
        return
    rect, frame = where.get("rect"), where.get("frame")
    if not (isinstance(rect, list) and isinstance(frame, list) and len(rect) == 4
            and len(frame) == 2 and all(type(v) is int for v in (*rect, *frame))):
        return
    x0, y0, x1, y1 = rect
    w, h = frame
    if 0 < w <= 1 << 16 and 0 < h <= 1 << 16 and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h:
        preview["rect"], preview["frame_size"] = rect, frame


def grid(job: Job) -> tuple[int, int]:
    """(cols, rows) of the job's tiles."""
    res = job.spec.resolution
    return tile_grid(tiles_of(job.spec), *(res if res else (None, None)))


def encode_inputs(job: Job, task: Task) -> list[m.InputRef]:
    """The job's frames the encode reads: each frame's own image (not its File Output
    passes) from the tasks it depends on, in frame order."""
    deps = set(task.depends_on)
    frames = sorted((o for o in job.outputs.values()
                     if o.task_id in deps and frames_named(job.output_pattern, o.name)),
                    key=lambda o: (o.frame, o.name))
    seen: set[int] = set()
    inputs = []
    for o in frames:
        if o.frame not in seen:  # one image a frame
            seen.add(o.frame)
            inputs.append(m.InputRef(sha256=o.sha256, size=o.size, frame=o.frame, name=o.name))
    return inputs


def video_settings(job: Job) -> VideoSettings:
    """How the job's video is encoded: from what its renders reported of the scene."""
    scene = SceneVideo.from_dict(job.scene_video) if job.scene_video else None
    frames = job.frame_range
    return VideoSettings.for_job(scene, job.output_name, frames[0], frames[1])
