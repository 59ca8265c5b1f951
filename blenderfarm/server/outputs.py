"""What a node may report as a task's outputs: the checks, pure (no I/O).

An output is one file of one frame of the task: a plain file name (no folder, nothing
a file system treats specially), named as the job's naming (its output pattern, as
Blender names frames; ``protocol.naming``) names that frame, with a
SHA-256. Whether its blob was uploaded is the farm's to check (that is I/O).
"""

from __future__ import annotations

from ..protocol import messages as m
from ..protocol.hashing import is_sha256
from ..protocol.naming import frame_base, frames_named
from ..protocol.paths import PathError, normalize_relpath
from .models import Job, Output, Task


class BadOutputs(ValueError):
    """A task's outputs that cannot be the task's: the message says which and why."""


def check_outputs(job: Job, task: Task, refs: list[m.OutputRef]) -> list[Output]:
    checked: list[Output] = []
    for item in refs:
        if item.frame not in task.frames:
            raise BadOutputs(f"output for frame {item.frame}, not a frame of {task.id}")
        try:
            name = normalize_relpath(item.name)
        except PathError as exc:
            raise BadOutputs(str(exc)) from exc
        if "/" in name:
            raise BadOutputs(f"output name {name!r} has a folder")
        if not names_frame(name, job.output_name, job.output_pattern, item.frame):
            raise BadOutputs(f"output name {name!r} is not a name of frame {item.frame} of "
                             f"this job ({frame_base(job.output_pattern, item.frame)}.<ext>, "
                             f"or {job.output_name}.<File Output node>.<Blender's name>)")
        if not is_sha256(item.sha256):
            raise BadOutputs(f"output {name} has no valid sha256")
        checked.append(Output(job.id, task.id, item.frame, name, item.sha256, item.size))
    return checked


def names_frame(name: str, stem: str, pattern: str, frame: int) -> bool:
    """Whether ``name`` is a file name the job's naming gives ``frame``, one of:

    - the frame: Blender's name for it from the job's output pattern
      (``protocol.naming``: ``shot_###`` gives ``shot_001.png``, ``shot_-005.png``);
    - a file a compositor File Output node wrote for it (the node's runner names them,
      ``runner.file_output_name``): ``<stem>.<rest>.<ext>``, ``rest`` of ``A-Z a-z
      0-9 . _ -``, not starting with a dot, whose last number (with a '-' right
      before it, its sign) is the frame (``shot.File_Output.Image0001.png``,
      Blender's ``Image0001.png`` of node "File Output"), and which is no frame's name.

    The frame is read from the name alone, so the names of two frames never meet: a
    task's outputs can never take the place of another frame's file, nor be named
    ``autorun.inf``."""
    named = frames_named(pattern, name)
    if named:
        return named == {frame}
    base, dot, ext = name.rpartition(".")
    if not dot or not ext.isalnum() or not ext.isascii() or len(ext) > 8:
        return False
    if not base.startswith(stem + "."):
        return False
    rest = base[len(stem) + 1:]
    if not rest or rest[0] == "." or \
            not all(c.isascii() and (c.isalnum() or c in "._-") for c in rest):
        return False
    end = len(rest)
    while end and not rest[end - 1].isdigit():
        end -= 1
    start = end
    while start and rest[start - 1].isdigit():
        start -= 1
    if start and rest[start - 1] == "-":
        start -= 1
    return end > 0 and int(rest[start:end]) == frame
