"""The job compiler: a pure function from a job spec to the tasks that run it, a graph.

- Whole frames: one ``render`` task per chunk of frames.
- Tiles (``spec.tiles`` N > 1): per frame, N ``render`` tasks (one tile each) and one
  ``merge`` task that depends on them and makes the frame.
- A video (``spec.video``): one ``encode`` task that depends on every task that makes
  a frame (the renders, or the merges).

Task ids are ``<job>-<index>``, in this order, so a job's tasks compile to the same ids
at every start (only tasks that changed since submit have rows; see Farm.start).
"""

from __future__ import annotations

import dataclasses

from ..protocol import messages as m
from ..protocol.frames import chunk_frames, parse_frames
from ..protocol.jobspec import JobSpec
from ..protocol.tiles import auto_tiles
from .models import Task


def tiles_of(spec: JobSpec) -> int:
    """Tiles per frame (1: whole frames); ``auto`` is resolved at submit."""
    return spec.tiles if isinstance(spec.tiles, int) else 1


def compile_job(job_id: str, spec: JobSpec) -> list[Task]:
    tasks: list[Task] = []

    def add(frames: list[int], kind: str = m.RENDER, depends_on: list[str] | None = None,
            tile: int | None = None) -> Task:
        task = Task(id=f"{job_id}-{len(tasks):05d}", job_id=job_id, index=len(tasks),
                    frames=frames, kind=kind, depends_on=depends_on, tile=tile)
        tasks.append(task)
        return task

    frames = parse_frames(spec.frames)
    tiles = tiles_of(spec)
    if tiles > 1:
        finals = []
        for frame in frames:
            parts = [add([frame], tile=i).id for i in range(tiles)]
            finals.append(add([frame], m.MERGE, parts))
    else:
        finals = [add(chunk) for chunk in chunk_frames(frames, spec.chunk)]
    if spec.video:
        add([], m.ENCODE, [t.id for t in finals])
    return tasks


def resolve_tiles(spec: JobSpec, slots: int) -> JobSpec:
    """The spec with ``tiles: "auto"`` made a number for a farm of ``slots`` online slots
    (protocol.tiles.auto_tiles), and a count of 1 made None: what is stored and compiled."""
    tiles = spec.tiles
    if tiles == "auto":
        res = spec.resolution
        tiles = auto_tiles(slots, *(res if res else (None, None)))
    if tiles == 1:
        tiles = None
    return dataclasses.replace(spec, tiles=tiles) if tiles != spec.tiles else spec
