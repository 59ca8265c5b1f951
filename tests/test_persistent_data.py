"""Persistent data and device as job options: ``bf submit`` sets them, a real node
renders with them, and the frames are Blender's own.

With persistent data on, Cycles keeps the scene (its BVH, shaders, images) between the
frames a runner renders and updates only what a frame changed; a cache that missed a
change would show as a stale frame. The scene here changes in both ways that matter:
an object moves (a transform) and a static object's material is animated (a shader).
Which objects Cycles re-synchronized is read from Blender's own log, the lines
``Synchronizing object | NAME``: with persistent data the static ground is synced once
in a runner's Blender (from one task of the job to the next too), without it once per
frame.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blenderfarm.client.cli import build_parser, submit_overrides
from blenderfarm.node.runner_proc import Runner
from procs import get_json
from scenes import BLENDER, make_scene, needs_blender, read_rgba, render_frames, run_blender
from test_e2e import bf, submit, wait_job

FRAMES = 5
RES = 48

# Runs in Blender on the anim scene: the ground's colour is animated from the first to
# the last frame, then the file is saved where the argument says.
ANIMATE_GROUND = """
import bpy, sys
out = sys.argv[sys.argv.index("--") + 1]
scene = bpy.context.scene
color = bpy.data.materials["GroundMat"].node_tree.nodes["Principled BSDF"].inputs["Base Color"]
for frame, rgb in ((scene.frame_start, (0.9, 0.9, 0.2)), (scene.frame_end, (0.1, 0.3, 0.9))):
    color.default_value = (*rgb, 1.0)
    color.keyframe_insert("default_value", frame=frame)
bpy.ops.wm.save_as_mainfile(filepath=out)
"""


def with_blender(func: Any) -> Any:
    for mark in needs_blender:
        func = mark(func)
    return func


@pytest.fixture(scope="module")
def moving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The anim scene (a cube that moves over a ground) with the ground's colour animated."""
    src = make_scene("anim", tmp_path_factory.mktemp("anim"), frames=FRAMES, res=RES, samples=2)
    blend = src.parent / "moving.blend"
    proc = run_blender([str(src), "--python-expr", ANIMATE_GROUND, "--", str(blend)])
    assert blend.is_file(), proc.stdout[-2000:]
    return blend


@pytest.fixture(scope="module")
def direct(moving: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every frame rendered by Blender itself, with the file's settings (persistent data off)."""
    return render_frames(moving, list(range(1, FRAMES + 1)), tmp_path_factory.mktemp("direct"))


def synced(log: str, name: str) -> int:
    """How many times Cycles synchronized the object ``name`` in this Blender output."""
    return sum(1 for line in log.splitlines() if line.endswith(f"Synchronizing object | {name}"))


def test_bf_submit_options_set_device_and_persistent_data() -> None:
    parser = build_parser()

    def overrides(*options: str) -> dict[str, Any]:
        return {k: v for k, v in submit_overrides(parser.parse_args(
            ["submit", "x.blend", *options])).items() if v is not None}

    assert overrides() == {}  # the scene's own settings
    assert overrides("--device", "gpu", "--persistent-data") == {
        "device": "GPU", "persistent_data": True}
    assert overrides("--device", "CPU", "--no-persistent-data") == {
        "device": "CPU", "persistent_data": False}
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["submit", "x.blend", "--device", "TPU"])
    assert info.value.code == 2


@with_blender
def test_a_task_with_persistent_data_renders_every_frame_as_blender_does(
        farm_procs, moving: Path, direct: list[Path], tmp_path: Path) -> None:
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    # tasks of two frames (the last of one): several frames in a task, and tasks after it
    job_id, doc = submit(server.url, moving, "--frames", f"1-{FRAMES}", "--chunk", "2",
                         "--persistent-data", "--device", "CPU")
    assert doc["job"]["overrides"] == {"persistent_data": True, "device": "CPU"}
    job = wait_job(server.url, job_id)
    assert job["status"] == "completed" and job["frames_done"] == FRAMES
    out = tmp_path / "frames"
    assert bf(server.url, "download", job_id, str(out), "--flat").returncode == 0
    frames = sorted(out.glob("*.png"))
    assert [f.name for f in frames] == [d.name for d in direct]
    pixels = [read_rgba(f) for f in frames]
    assert all(not np.array_equal(a, b) for a, b in zip(pixels, pixels[1:], strict=False))
    for farm_frame, reference in zip(frames, direct, strict=True):
        assert np.array_equal(read_rgba(farm_frame), read_rgba(reference)), farm_frame.name
    tasks = get_json(f"{server.url}/api/jobs/{job_id}/tasks")["tasks"]
    assert len(tasks) == 3
    log = "".join(get_json(f"{server.url}/api/tasks/{t['id']}/log")["text"] for t in tasks)
    # the node's Blender kept the scene from task to task: the moving cube was synced
    # for every frame, the ground once
    assert synced(log, "Cube") == FRAMES and synced(log, "Ground") == 1, log[-3000:]


@with_blender
def test_a_jobs_next_task_keeps_the_scenes_data_and_one_without_the_option_does_not(
        moving: Path, direct: list[Path], tmp_path: Path) -> None:
    """One runner, three tasks: with persistent data, with it again (the farm's default
    is a task per frame, so the data must outlive a task), then without it."""
    assert BLENDER is not None
    log_path = tmp_path / "blender.log"
    tasks: list[tuple[str, list[int], dict[str, Any]]] = [
        ("t1", [1, 2], {"persistent_data": True}), ("t2", [3], {"persistent_data": True}),
        ("t3", [4, 5], {})]

    async def render() -> tuple[list[str], dict[int, str]]:
        runner = await Runner.start(BLENDER, str(moving), cwd=str(moving.parent),
                                    log_path=str(log_path))
        logs: list[str] = []
        done: dict[int, str] = {}
        seen = 0
        try:
            for task_id, frames, overrides in tasks:
                done.update(await runner.render(
                    task_id, frames, scene=None, overrides=overrides,
                    output_dir=str(tmp_path / task_id), output_name="f",
                    on_event=lambda e: None))
                text = log_path.read_text(errors="replace")
                logs.append(text[seen:])
                seen = len(text)
        finally:
            await runner.stop()
        return logs, done

    logs, done = asyncio.run(render())
    assert [synced(log, "Ground") for log in logs] == [1, 0, 2], logs[-1][-3000:]
    assert [synced(log, "Cube") for log in logs] == [2, 1, 2]  # it moves: every frame
    assert sorted(done) == list(range(1, FRAMES + 1))
    for frame, path in done.items():
        assert np.array_equal(read_rgba(path), read_rgba(direct[frame - 1])), frame
