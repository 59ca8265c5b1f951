"""The node's warm spare: a Blender with the runner and no file, waiting for a job.

Real bf-server and bf-node processes and a real Blender: a job's first task opens
its file in a Blender that was started before the job came (no Blender start on the
critical path), its frames equal Blender's own render bit for bit, and no spare outlives its node.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from procs import blender_pids, wait_for
from scenes import make_scene, needs_blender, read_rgba, render_frames
from test_e2e import bf, submit, wait_job

pytestmark = needs_blender


def _spare(work: Path) -> int:
    """The pid of the node's warm spare (a Blender working in the node's work dir)."""
    def found() -> int | None:
        pids = set(blender_pids(work, spares=True)) - set(blender_pids(work))
        return next(iter(pids), None)
    pid: int = wait_for(found, 60, "a warm spare Blender")
    return pid


def _opened_in(node_log: Path, job_id: str) -> int | None:
    """The pid of the warm Blender the node says it opened ``job_id`` in, if it says so."""
    m = re.search(rf"job {job_id} opened in the warm Blender \(pid (\d+)\)",
                  node_log.read_text(errors="replace"))
    return int(m.group(1)) if m else None


def test_each_jobs_first_task_opens_its_file_in_a_spare_started_before_it(
        farm_procs, tmp_path: Path) -> None:
    blend = make_scene("anim", tmp_path / "scene", frames=4, res=48, samples=2)
    direct = render_frames(blend, [1, 2, 3, 4], tmp_path / "direct")
    server = farm_procs.server()
    node = farm_procs.node("a")
    work = tmp_path / "node-a"
    farm_procs.wait_nodes(1)
    for n, frames in enumerate(("1-2", "3-4")):
        spare = _spare(work)  # warm before the job is submitted
        job_id, _ = submit(server.url, blend, "--frames", frames, "--name", f"job{n}")
        job = wait_job(server.url, job_id)
        assert job["status"] == "completed", job
        assert _opened_in(node.log_path, job_id) == spare, node.text()[-3000:]
        out = tmp_path / f"frames{n}"
        assert bf(server.url, "download", job_id, str(out), "--flat").returncode == 0
        got = sorted(out.glob("*.png"))
        assert len(got) == 2
        for f, ref in zip(got, direct[2 * n:2 * n + 2], strict=True):
            assert np.array_equal(read_rgba(f), read_rgba(ref)), f"{f.name} differs"
    # idle after the second job: a new spare waits beside the job's Blender
    spare = _spare(work)
    assert blender_pids(work) and spare not in blender_pids(work)
    node.stop()
    deadline = time.monotonic() + 10
    while blender_pids(work, spares=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert blender_pids(work, spares=True) == [], "a Blender outlived its node"
    assert not os.path.exists(f"/proc/{spare}/cwd")


async def test_a_spare_that_cannot_start_is_said_once_and_jobs_start_their_own(
        tmp_path: Path, caplog) -> None:
    from blenderfarm.node.agent import Agent
    from blenderfarm.node.blender import BlenderInfo
    from blenderfarm.node.config import NodeConfig

    broken = BlenderInfo(path=str(tmp_path / "no-blender"), version="3.4.1",
                         version_tuple=(3, 4, 1), oidn=False)
    agent = Agent(NodeConfig(work_dir=tmp_path / "work"), [broken])
    slot = agent.slots["cpu"]
    assert agent._wants_spare(slot)
    slot.warm_spare()
    assert await slot.take_spare(0) is None  # the job starts its own Blender, as before
    assert not agent._wants_spare(slot)  # and no spare is tried again
    said = [r for r in caplog.records if "could not warm a spare Blender" in r.getMessage()]
    assert len(said) == 1 and "no-blender" in said[0].getMessage()
    # runners that are not persistent (a Blender per task) need no spare
    lean = Agent(NodeConfig(work_dir=tmp_path / "w2", persistent=False), [broken])
    assert not lean._wants_spare(lean.slots["cpu"])

