"""The server's in-memory records of jobs, tasks, outputs and nodes.

Plain dataclasses with their JSON forms (API) and row forms (SQLite). No I/O here:
``store.py`` persists them and ``farm.py`` changes them.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..protocol import messages as m
from ..protocol.blender_version import node_version
from ..protocol.frames import parse_frames
from ..protocol.jobspec import JobSpec, Overrides
from ..protocol.naming import pattern_of

JOB_STATES = ("queued", "active", "paused", "completed", "failed", "canceled")
JOB_FINAL = frozenset({"completed", "failed", "canceled"})
TASK_STATES = ("queued", "assigned", "running", "done", "failed", "canceled")
TASK_FINAL = frozenset({"done", "failed", "canceled"})
TASK_HELD = frozenset({"assigned", "running"})


@dataclass
class Output:
    job_id: str
    task_id: str
    frame: int
    name: str
    sha256: str
    size: int
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame, "name": self.name, "sha256": self.sha256,
                "size": self.size, "task_id": self.task_id, "created": self.created}


class Task:
    """One unit a node runs.

    A plain class with slots, not a dataclass: a 100,000-frame job makes 100,000 of
    them at once. Setting ``status`` keeps its job's per-state counts right (see
    :meth:`Job.add_task`), so no view or completion check counts a job's tasks.
    """

    __slots__ = ("id", "job_id", "index", "frames", "kind", "depends_on", "_status",
                 "attempts", "failures", "node", "assigned", "failed_nodes", "progress",
                 "started", "finished", "error", "log_tail", "assignees", "slot", "_counts",
                 "tile", "parts", "pending", "rendered_with")

    def __init__(self, id: str, job_id: str, index: int, frames: list[int],
                 kind: str = m.RENDER, depends_on: list[str] | None = None,
                 status: str = "queued", attempts: int = 0, failures: int = 0,
                 node: str | None = None, assigned: float | None = None,
                 failed_nodes: dict[str, str] | None = None, progress: float = 0.0,
                 started: float | None = None, finished: float | None = None,
                 error: str | None = None, log_tail: str = "",
                 assignees: list[str] | None = None, tile: int | None = None,
                 parts: list[dict[str, Any]] | None = None,
                 rendered_with: str | None = None) -> None:
        self.id, self.job_id, self.index, self.frames = id, job_id, index, frames
        self.kind = kind  # one of protocol.messages.TASK_KINDS (server/kinds.py)
        #: the tasks whose results it needs: it is ready when they are all done
        self.depends_on = depends_on if depends_on is not None else []
        #: a tile render: the cell of its frame it renders (the job's grid), else None
        self.tile = tile
        #: what it made that is no output of the job but an input of a later task (a
        #: tile's file: OutputRef fields), kept on the task
        self.parts = parts if parts is not None else []
        #: a tile: what its latest assign renders it with ("3.4.1 CPU": the Blender's
        #: version and the slot's device kind; server/tilematch.py), else None
        self.rendered_with = rendered_with
        #: how many of ``depends_on`` are not done (transient: graph.link makes it)
        self.pending = 0
        self._status = status
        self.attempts = attempts  # times assigned
        self.failures = failures
        self.node = node
        self.assigned = assigned  # when last given to a node
        self.failed_nodes = failed_nodes if failed_nodes is not None else {}  # uid -> error
        self.progress = progress
        self.started, self.finished = started, finished
        self.error, self.log_tail = error, log_tail
        #: every node it was ever given to: the only ones whose results count (a node it
        #: was taken from may still finish it: a late result is welcome)
        self.assignees = assignees if assignees is not None else []
        #: the slot of its node that holds it (transient: after a restart the node's hello
        #: says, see ``Farm._reconcile``; None while no node holds it)
        self.slot: str | None = None
        self._counts: Counter[str] | None = None

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        counts = self._counts
        if counts is not None:
            counts[self._status] -= 1
            counts[value] += 1
            if self.kind != m.RENDER or self.tile is not None:  # by kind too: kind_key
                key = self.kind_key
                counts[key + self._status] -= 1
                counts[key + value] += 1
        self._status = value

    @property
    def kind_key(self) -> str:
        """Its prefix of its job's counts by kind: ``tile:``, ``merge:``, ``encode:``
        (whole-frame renders are not counted apart: they are most tasks)."""
        return "tile:" if self.tile is not None else self.kind + ":"

    def __repr__(self) -> str:
        return f"Task({self.id!r}, {self._status}, node={self.node!r})"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "job_id": self.job_id, "index": self.index,
                "frames": self.frames, "kind": self.kind, "depends_on": self.depends_on,
                "status": self._status, "attempts": self.attempts, "failures": self.failures,
                "node": self.node, "assigned": self.assigned,
                "failed_nodes": self.failed_nodes, "progress": self.progress,
                "started": self.started, "finished": self.finished, "error": self.error,
                "log_tail": self.log_tail, "assignees": self.assignees,
                "tile": self.tile, "parts": self.parts, "rendered_with": self.rendered_with}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        return cls(**data)


@dataclass
class Job:
    id: str
    seq: int
    spec: JobSpec
    output_name: str
    status: str = "queued"
    priority: int = 50
    #: who submitted it: the token's name on a farm with tokens, else the spec's ``user``
    owner: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    needs_oidn: bool = False
    #: the scene (or its override) renders with Eevee or Workbench: only nodes whose
    #: Blender has OpenGL take it (set at submit from the override, or when a node
    #: without OpenGL refuses a task)
    needs_opengl: bool = False
    frames_total: int = 0
    #: what its first render reported of the scene for the video (TaskDone.info's
    #: "video": protocol.video.SceneVideo's dict), None until then
    scene_video: dict[str, Any] | None = None
    node_failures: dict[str, int] = field(default_factory=dict)  # node uid -> failed tasks
    blocklist: list[str] = field(default_factory=list)  # nodes that get no more of this job
    # Derived, rebuilt from tasks and outputs on load:
    outputs: dict[str, Output] = field(default_factory=dict)  # by file name
    task_ids: list[str] = field(default_factory=list)
    #: task id -> the tasks that depend on it (the graph's edges, the other way round)
    dependents: dict[str, list[str]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # tasks per status
    _frames: Counter[int] = field(default_factory=Counter)  # outputs per frame
    _counted: set[str] = field(default_factory=set)  # the outputs _frames counts
    #: the name of its video among its outputs (its encode task's), None while none
    video_output: str | None = None
    _range: tuple[int, int] | None = None

    @property
    def frame_range(self) -> tuple[int, int]:
        """Its first and last frame."""
        if self._range is None:
            frames = parse_frames(self.spec.frames)
            self._range = (frames[0], frames[-1])
        return self._range

    @property
    def output_pattern(self) -> str:
        """How its frames are named (protocol.naming): the scene's output pattern, or
        ``<output_name>_####`` for a spec that names none."""
        return pattern_of(self.spec.output_pattern, self.output_name)

    def add_task(self, task: Task) -> None:
        """Make ``task`` one of this job's: its status counts from now on."""
        self.task_ids.append(task.id)
        self.counts[task.status] += 1
        if task.kind != m.RENDER or task.tile is not None:
            self.counts[task.kind_key + task.status] += 1
        task._counts = self.counts
        for dep in task.depends_on:
            self.dependents.setdefault(dep, []).append(task.id)

    def add_output(self, out: Output, frame: bool = True) -> None:
        """Keep ``out`` as one of the job's outputs; ``frame``: it counts as its frame
        being done (a video does not)."""
        if out.name in self.outputs:
            self.remove_output(out.name)
        self.outputs[out.name] = out
        if frame:
            self._frames[out.frame] += 1
            self._counted.add(out.name)

    def remove_output(self, name: str) -> None:
        out = self.outputs.pop(name)
        if name in self._counted:
            self._counted.discard(name)
            self._frames[out.frame] -= 1
            if not self._frames[out.frame]:
                del self._frames[out.frame]

    @property
    def frames_done(self) -> int:
        return len(self._frames)

    @property
    def all_done(self) -> bool:
        return self.counts["done"] == len(self.task_ids)

    def encode_state(self) -> str | None:
        """Its video's task's status (None: it asked for no video)."""
        if not self.spec.video:
            return None
        return next((s for s in ("running", "assigned", "done", "failed", "canceled")
                     if self.counts["encode:" + s]), "queued")

    def to_row(self) -> dict[str, Any]:
        """The job's changing state; its spec (which never changes, and may list
        thousands of files) is stored once, apart (``Store.spec_op``)."""
        return {k: getattr(self, k) for k in ("id", "seq", "output_name", "status", "priority",
                                               "owner", "created", "updated", "started",
                                               "finished", "error", "needs_oidn",
                                               "needs_opengl", "frames_total", "scene_video",
                                               "node_failures", "blocklist")}

    @classmethod
    def from_row(cls, data: dict[str, Any], spec_data: dict[str, Any]) -> Job:
        spec = dict(spec_data)
        spec["overrides"] = Overrides(**spec.get("overrides", {}))
        return cls(spec=JobSpec(**spec), **data)

    def to_json(self) -> dict[str, Any]:
        counts = self.counts
        spec = self.spec
        return {
            "id": self.id, "name": spec.name, "status": self.status,
            "priority": self.priority, "owner": self.owner, "created": self.created,
            "updated": self.updated,
            "started": self.started, "finished": self.finished, "error": self.error,
            "frames": spec.frames, "chunk": spec.chunk, "blend": spec.blend,
            "scene": spec.scene, "overrides": spec.overrides.to_dict(),
            "output_name": self.output_name, "needs_oidn": self.needs_oidn,
            "needs_opengl": self.needs_opengl, "tags": list(spec.tags),
            "frames_total": self.frames_total, "frames_done": self.frames_done,
            "tasks_total": len(self.task_ids), "tasks_done": counts["done"],
            "tasks_failed": counts["failed"], "tasks_running": counts["running"] + counts["assigned"],
            "tasks_queued": counts["queued"], "files": len(spec.manifest),
            "blocklisted_nodes": list(self.blocklist), "scripts": spec.scripts,
            "output_pattern": self.output_pattern, "notes": spec.notes,
            "blender_saved": spec.blender_saved, "blender": spec.blender,
            "tiles": spec.tiles, "video": spec.video, "video_output": self.video_output,
            # the graph by kind: tiles rendered, frames merged, the video
            "tiles_total": self.frames_total * spec.tiles if isinstance(spec.tiles, int) and
            spec.tiles > 1 else 0, "tiles_done": counts["tile:done"],
            "merges_done": counts["merge:done"], "encode": self.encode_state(),
        }


@dataclass
class NodeRecord:
    """What the server remembers of a node, connected or not."""

    uid: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    online: bool = False
    drained: bool = False  # finishes what it renders, takes nothing new
    disabled: bool = False  # stopped at once, takes nothing new
    last_seen: float = field(default_factory=time.time)
    connected_at: float | None = None
    lost_at: float | None = None
    tasks: list[str] = field(default_factory=list)  # held task ids, in order of assignment
    frames_rendered: int = 0
    tiles_rendered: int = 0  # tiles of frames, each a part of a frame a merge made
    #: the node token that enrolled this uid (on a farm with tokens): while that token
    #: is valid, no other token may connect as this node
    token_id: str | None = None
    # Transient, never stored: the frame each held task's latest progress named (task id
    # -> frame); the last_seen watchers last heard, and the one last written to its row. A
    # heartbeat then costs no event and no write unless enough time has passed
    # (Farm.node_seen).
    frames: dict[str, int] = field(default_factory=dict, compare=False)
    seen_told: float = field(default=0.0, compare=False)
    seen_saved: float = field(default=0.0, compare=False)
    # Made from ``info`` (set_info):
    _blenders: list[m.BlenderCaps] = field(default_factory=list, init=False, repr=False,
                                           compare=False)
    _slots: list[m.SlotCaps] = field(default_factory=list, init=False, repr=False,
                                     compare=False)
    _slot_ids: dict[str, m.SlotCaps] = field(default_factory=dict, init=False, repr=False,
                                             compare=False)
    _blenders_json: list[dict[str, Any]] = field(default_factory=list, init=False,
                                                 repr=False, compare=False)
    blender_keys: list[tuple[int, int] | None] = field(default_factory=list, init=False,
                                                       repr=False, compare=False)
    blender_order: list[int] = field(default_factory=list, init=False, repr=False,
                                     compare=False)

    def __post_init__(self) -> None:
        self.set_info(self.info)

    def set_info(self, info: dict[str, Any]) -> None:
        """Take what its hello said (``info``, also its stored form) and make its typed
        Blenders and slots from it: records saved before a node had several of either
        hold one ``blender`` and mean one CPU slot, "0"."""
        self.info = info
        raw = info.get("blenders") or ([info["blender"]] if info.get("blender") else [])
        self._blenders = [_caps(b) for b in raw] or [m.BlenderCaps()]
        # (major, minor) of each Blender, None when its hello did not say
        self.blender_keys = [node_version(b.version) for b in self._blenders]
        # its Blenders' indices, oldest first: a job takes the oldest that fits
        self.blender_order = sorted(range(len(self._blenders)),
                                    key=lambda i: self.blender_keys[i] or (0, 0))
        self._slots = [m.SlotCaps(id=s["id"], device=s.get("device", "CPU"),
                                  gpus=list(s.get("gpus", [])))
                       for s in info.get("slots", ())] or [m.SlotCaps(id="0")]
        self._slot_ids = {s.id: s for s in self._slots}
        # their views, made once: a node's view goes out a few times a second
        self._blenders_json = [{"version": b.version, "kind": b.kind, "oidn": b.oidn,
                                "opengl": b.opengl,
                                "devices": [dataclasses.asdict(d) for d in b.devices]}
                               for b in self._blenders]

    @property
    def blenders(self) -> list[m.BlenderCaps]:
        """Every Blender of the node, as its hello listed them (an assign names one by
        its index here)."""
        return self._blenders

    @property
    def slots(self) -> list[m.SlotCaps]:
        """Its slots, as its hello listed them; the first takes a task no hello placed."""
        return self._slots

    def slot(self, slot_id: str) -> m.SlotCaps:
        """Its slot of that id (one its hello listed)."""
        return self._slot_ids[slot_id]

    @property
    def oldest_key(self) -> tuple[int, int]:
        """(major, minor) of its oldest Blender ((0, 0): unknown): nodes are offered work
        in this order."""
        return self.blender_keys[self.blender_order[0]] or (0, 0)

    @property
    def tags(self) -> list[str]:
        return self.info.get("tags") or []

    def to_json(self, current: dict[str, Any] | None = None,
                busy: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Its view; ``busy`` is what each busy slot renders now (slot id -> task, job,
        frame, progress) and ``current`` the first busy slot's (``Farm.node_json`` fills
        them in: only the farm knows the tasks)."""
        busy = busy or {}
        if not self.online:
            state = "offline"
        elif self.disabled:
            state = "disabled"
        elif self.drained:
            state = "drained"
        else:
            state = "rendering" if self.tasks else "idle"
        first = self._blenders[0]
        return {
            "id": self.uid, "name": self.name, "state": state, "online": self.online,
            "drained": self.drained, "disabled": self.disabled, "last_seen": self.last_seen,
            "tasks": list(self.tasks), "current": current,
            # its first Blender's, for clients from before several Blenders
            "blender": first.version or None, "oidn": first.oidn, "opengl": first.opengl,
            "blenders": self._blenders_json,
            "slots": [{"id": s.id, "device": s.device, "gpus": list(s.gpus),
                       "busy": busy.get(s.id)} for s in self._slots],
            "threads": self.info.get("threads"), "gpus": self.info.get("gpus", []),
            "tags": self.info.get("tags", []), "frames_rendered": self.frames_rendered,
            "tiles_rendered": self.tiles_rendered,
            "ffmpeg": self.info.get("ffmpeg") or None,
        }


def _caps(data: dict[str, Any]) -> m.BlenderCaps:
    """A Blender's capabilities from their stored form (``dataclasses.asdict``)."""
    known = {k: v for k, v in data.items() if k in _CAPS_FIELDS and k != "devices"}
    devices = [m.Device(**{k: v for k, v in d.items() if k in _DEVICE_FIELDS})
               for d in data.get("devices", ())]
    return m.BlenderCaps(**known, devices=devices)


_CAPS_FIELDS = frozenset(f.name for f in dataclasses.fields(m.BlenderCaps))
_DEVICE_FIELDS = frozenset(f.name for f in dataclasses.fields(m.Device))
