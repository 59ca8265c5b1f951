"""The tiles of one frame come from one kind of render: one Blender, one device kind.

A merged frame equals Blender's own full render only when its tiles do: Cycles on a
GPU and on a CPU, or two Blender releases, do not give the same pixels, and a frame
of mixed tiles would show its seams. Each tile task remembers what rendered it
(``Task.rendered_with``: ``"3.4.1 CPU"``, the Blender's version and the slot's device
kind). Dispatch gives a frame's next tile only to slots of the frame's kind (the kind
of its tiles held or done, the latest assigned) while an online slot of that kind can
take the job; and when a frame's tiles are all done but not of one kind (a node went
away and its tiles went elsewhere), the tiles of other kinds than the last one done
render again before the merge, so the frame ends of the kind its farm has now.

Pure: no I/O, no farm; the callers hand in the job, its tasks and the online nodes.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol import messages as m
from .constraints import match
from .models import TASK_HELD, Job, NodeRecord, Task


def render_kind(rec: NodeRecord, slot: m.SlotCaps, blender: int) -> str:
    """What a slot of ``rec`` renders with, running its Blender number ``blender``."""
    return f"{rec.blenders[blender].version} {slot.device}"


def siblings(job: Job, task: Task, tasks: dict[str, Task]) -> list[Task]:
    """The other tiles of ``task``'s frame: what its merge depends on, but itself."""
    merges = job.dependents.get(task.id, ())
    if not merges:
        return []
    return [tasks[d] for d in tasks[merges[0]].depends_on if d != task.id]


def frame_kind(job: Job, task: Task, tasks: dict[str, Task]) -> str | None:
    """The kind of render ``task``'s frame is made of so far: that of its latest
    assigned tile held or done; None while no tile of it is."""
    latest: Task | None = None
    for t in siblings(job, task, tasks):
        if t.rendered_with and (t.status in TASK_HELD or t.status == "done") and \
                (latest is None or (t.assigned or 0) > (latest.assigned or 0)):
            latest = t
    return latest.rendered_with if latest is not None else None


def fits(job: Job, task: Task, tasks: dict[str, Task], mine: str,
         online: Iterable[NodeRecord]) -> bool:
    """Whether a slot rendering ``mine`` may take tile ``task``: its frame has no
    kind yet, or is of this kind, or no online slot of the frame's kind can take the
    job (a frame is never left waiting for a kind the farm no longer has)."""
    want = frame_kind(job, task, tasks)
    if want is None or want == mine:
        return True
    for rec in online:
        if rec.drained or rec.disabled:
            continue
        for slot in rec.slots:
            blender = match(job, rec, slot)
            if blender is not None and render_kind(rec, slot, blender) == want:
                return False
    return True


def mixed(merge: Task, tasks: dict[str, Task]) -> tuple[str | None, list[Task]]:
    """The kind of a ready merge's last tile done, and its tiles of another kind (none
    when they are all of one): those render again before the merge."""
    tiles = [tasks[d] for d in merge.depends_on]
    last = max(tiles, key=lambda t: t.finished or 0.0).rendered_with
    return last, [t for t in tiles if t.rendered_with != last]
