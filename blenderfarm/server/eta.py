"""How far a job is, counting the frames being rendered, and how long it has left.

The one place the farm's ETA is computed: the job's view carries it (``progress``,
``eta``), so ``bf wait``, the add-on and the dashboard all show the same figure.
Pure: no clock, no farm; the caller passes the numbers and the time.
"""

from __future__ import annotations


def job_progress(frames_total: int, frames_done: int, in_frame: float) -> float:
    """The fraction of the job done, 0..1: whole frames plus the parts of frames that
    nodes are rendering now (``in_frame``, in frames)."""
    if frames_total <= 0:
        return 0.0
    return max(0.0, min(1.0, (frames_done + max(0.0, in_frame)) / frames_total))


def estimate_eta(frames_total: int, frames_done: int, in_frame: float,
                 elapsed: float) -> float | None:
    """Seconds left at the pace so far: the work done (whole frames plus ``in_frame``)
    over ``elapsed`` seconds since the job started. None before any work shows."""
    done = frames_done + max(0.0, in_frame)
    left = frames_total - done
    if left <= 0:
        return 0.0
    if done <= 0 or elapsed <= 0:
        return None
    return round(left * elapsed / done, 1)


class InFrame:
    """For one job: how much of its current frame each of its running tasks has done.

    Filled from the nodes' progress reports; a task that stops running is forgotten
    when the job's view is next taken (``drop``), so the table only ever holds
    the tasks that reported since (at most a few per node).
    """

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}  # task id -> fraction of its current frame

    def report(self, task_id: str, task_fraction: float, frames: int, frames_done: int) -> None:
        """A node's progress: ``task_fraction`` of a task of ``frames`` frames, of which
        ``frames_done`` are finished (those count as whole frames already)."""
        self.parts[task_id] = max(0.0, min(1.0, task_fraction * frames - frames_done))

    def drop(self, task_id: str) -> None:
        self.parts.pop(task_id, None)

    def total(self) -> float:
        return sum(self.parts.values())
