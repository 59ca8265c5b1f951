"""The job compiler: a pure function from a job spec to the tasks that render it.

Render tasks only for now (a chunk of frames each). Tasks carry ``depends_on`` so
merge (tiles) and encode (video) tasks can be added as later stages of the DAG.
"""

from __future__ import annotations

from ..protocol.frames import chunk_frames, parse_frames
from ..protocol.jobspec import JobSpec
from .models import Task


def compile_job(job_id: str, spec: JobSpec) -> list[Task]:
    frames = parse_frames(spec.frames)
    return [
        Task(id=f"{job_id}-{i:05d}", job_id=job_id, index=i, frames=chunk)
        for i, chunk in enumerate(chunk_frames(frames, spec.chunk))
    ]
