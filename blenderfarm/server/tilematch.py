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


class Fit:
    """For one slot asking for work: ``fit(job, tile)``, whether the slot may take the
    tile, i.e. its frame has no kind yet, or is of the slot's kind, or no online slot of
    the frame's kind can take the job (a frame is never left waiting for a kind the
    farm no longer has). The slot's kind per job and the farm's answer per job and kind
    are worked out once for all the tiles one pick looks at."""

    def __init__(self, rec: NodeRecord, slot: m.SlotCaps, tasks: dict[str, Task],
                 online: list[NodeRecord]) -> None:
        self.rec, self.slot, self.tasks, self.online = rec, slot, tasks, online
        self._mine: dict[str, str | None] = {}
        self._reachable: dict[tuple[str, str], bool] = {}

    def __call__(self, job: Job, task: Task) -> bool:
        if job.id not in self._mine:
            blender = match(job, self.rec, self.slot)
            self._mine[job.id] = None if blender is None else \
                render_kind(self.rec, self.slot, blender)
        mine = self._mine[job.id]
        want = frame_kind(job, task, self.tasks)
        if mine is None or want is None or want == mine:
            return True
        key = (job.id, want)
        if key not in self._reachable:
            self._reachable[key] = any(
                blender is not None and render_kind(rec, slot, blender) == want
                for rec in self.online if not (rec.drained or rec.disabled)
                for slot in rec.slots for blender in (match(job, rec, slot),))
        return not self._reachable[key]


def mixed(merge: Task, tasks: dict[str, Task]) -> tuple[str | None, list[Task]]:
    """The kind of a ready merge's last tile done, and its tiles of another kind (none
    when they are all of one): those render again before the merge."""
    tiles = [tasks[d] for d in merge.depends_on]
    last = max(tiles, key=lambda t: t.finished or 0.0).rendered_with
    return last, [t for t in tiles if t.rendered_with != last]
