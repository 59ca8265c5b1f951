"""A node's slots as the server sees them: which hellos describe slots it can schedule,
which tasks each slot holds, and what each renders now (for the node's view).

A slot runs one task at a time (one runner) and may hold ``prefetch`` more in advance.
The truth of what a node holds stays ``NodeRecord.tasks`` (in order of assignment) and
each task's ``Task.slot``; what a slot holds is read from those, never kept twice, so
the two cannot disagree. A node holds at most slots x (prefetch + 1) tasks, so reading
them is O(slots). Pure code, no I/O: ``farm.py`` calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..protocol import messages as m
from .models import Job, NodeRecord, Task


def hello_slots_error(hello: m.Hello) -> str | None:
    """Why the slots of ``hello`` cannot be scheduled (one sentence), or None. A hello
    with no slots (a node from before) means one CPU slot and is fine."""
    known_gpus = {d.gpu for b in hello_blenders(hello) for d in b.devices if d.gpu}
    seen: set[str] = set()
    for slot in hello.slots:
        if slot.id in seen:
            return f"slot {slot.id!r} is listed twice; give each slot its own id"
        seen.add(slot.id)
        if slot.device not in m.SLOT_DEVICES:
            return (f"slot {slot.id!r} has device {slot.device!r}; a slot renders with "
                    f"one of {', '.join(m.SLOT_DEVICES)}")
        if slot.device == "GPU" and not slot.gpus:
            return f"GPU slot {slot.id!r} names no GPU; list the gpu keys it renders with"
        if slot.device == "CPU" and slot.gpus:
            return f"CPU slot {slot.id!r} names GPUs; only a GPU slot renders with GPUs"
        unknown = [g for g in slot.gpus if g not in known_gpus]
        if unknown:
            return (f"slot {slot.id!r} names GPU {unknown[0]!r}, which none of the node's "
                    "Blenders lists among its devices")
    return None


def hello_blenders(hello: m.Hello) -> list[m.BlenderCaps]:
    """Every Blender of a hello: ``blenders``, or ``[blender]`` from a node from before."""
    return list(hello.blenders) or [hello.blender]


def place(rec: NodeRecord, holding: Mapping[str, str], task: Task) -> bool:
    """Put ``task``, which a (re)connecting node says it holds, in the slot its hello
    names (a task not named is in the first slot); False when the node has no such slot
    (the claim is wrong: the caller takes the task back)."""
    slot = holding.get(task.id, rec.slots[0].id)
    if slot not in {s.id for s in rec.slots}:
        return False
    task.slot = slot
    return True


def held(rec: NodeRecord, tasks: Mapping[str, Task]) -> dict[str, list[Task]]:
    """What each slot of ``rec`` holds, in order of assignment (the first one renders,
    the rest are prefetched); every slot has an entry, and a task no slot claims (held
    from before a restart, until its node's hello places it) is in the first."""
    if len(rec.slots) == 1:  # most nodes: every task is the slot's, none to sort out
        return {rec.slots[0].id: [tasks[t] for t in rec.tasks if t in tasks]}
    out: dict[str, list[Task]] = {s.id: [] for s in rec.slots}
    first = out[rec.slots[0].id]
    for tid in rec.tasks:
        task = tasks.get(tid)
        if task is not None:
            out.get(task.slot or "", first).append(task)
    return out


def prefetched(rec: NodeRecord, tasks: Mapping[str, Task]) -> list[Task]:
    """The tasks ``rec`` holds in advance: all but the first of each slot."""
    return [t for slot in held(rec, tasks).values() for t in slot[1:]]


def busy(rec: NodeRecord, tasks: Mapping[str, Task]) -> int:
    """How many of its slots hold a task."""
    return sum(1 for slot in held(rec, tasks).values() if slot)


def doing(rec: NodeRecord, tasks: Mapping[str, Task], jobs: Mapping[str, Job]
          ) -> dict[str, dict[str, Any]]:
    """What each busy slot of ``rec`` renders now (slot id -> its view): the task it
    started last (else the first it was given; the others are prefetched), its job, and
    the frame and fraction of its latest progress. Chosen by times, not by the order of
    ``rec.tasks``, so that a restarted server says the same."""
    out = {}
    for slot, slot_tasks in held(rec, tasks).items():
        if not slot_tasks:
            continue
        running = [t for t in slot_tasks if t.status == "running"]
        if running:
            task = max(running, key=lambda t: (t.started or 0.0, t.id))
        else:
            task = min(slot_tasks, key=lambda t: (t.assigned or 0.0, t.id))
        job = jobs.get(task.job_id)
        out[slot] = {"task_id": task.id, "job_id": task.job_id,
                     "job_name": job.spec.name if job is not None else None,
                     "status": task.status, "frame": rec.frames.get(task.id),
                     "progress": task.progress}
    return out
