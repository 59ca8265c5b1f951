"""The node's Blender side with a real Blender: probing, the persistent runner, its errors.

Scenes are made here, by Blender itself, tiny (64x64, 4 Cycles samples) so the whole
file runs in well under a minute. Every Blender a test starts is stopped in
teardown, and a test checks that none survives its agent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from blenderfarm.node.blender import BlenderNotFound, find_blender, probe_blender, probe_opengl
from blenderfarm.node.outputs import check_image, frame_file_name
from blenderfarm.node.runner_proc import Runner, RunnerError

BLENDER = shutil.which("blender") or os.environ.get("BLENDER")
pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(BLENDER is None, reason="needs a real Blender on PATH or in $BLENDER"),
]

# Runs in Blender: writes anim.blend (denoise off), denoise.blend (denoise on) and
# driver.blend (a Python driver that hangs on frame 7, for the watchdog).
MAKE_SCENES = textwrap.dedent("""
    import sys, bpy
    out = sys.argv[sys.argv.index("--") + 1]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = 64
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 10
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(-2, 0, 0))
    cube = bpy.context.object
    cube.keyframe_insert("location", frame=1)
    cube.location = (2, 0, 0)
    cube.keyframe_insert("location", frame=5)
    bpy.ops.object.camera_add(location=(0, -8, 0), rotation=(1.5708, 0, 0))
    scene.camera = bpy.context.object
    bpy.ops.object.light_add(type="POINT", location=(0, -3, 3))
    bpy.context.object.data.energy = 1000
    bpy.ops.wm.save_as_mainfile(filepath=out + "/anim.blend")
    scene.cycles.use_denoising = True
    bpy.ops.wm.save_as_mainfile(filepath=out + "/denoise.blend")
    scene.cycles.use_denoising = False
    driver = cube.driver_add("scale", 2).driver
    driver.type = "SCRIPTED"
    driver.expression = "(__import__('time').sleep(60) or 1.0) if frame == 7 else 1.0"
    bpy.ops.wm.save_as_mainfile(filepath=out + "/driver.blend")
""")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    assert BLENDER is not None
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python-exit-code", "1",
                    "--python-expr", MAKE_SCENES, "--", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture
async def start_runner(tmp_path: Path):
    """Factory: start a Runner on a .blend; every one is stopped in teardown."""
    started: list[Runner] = []

    async def start(blend: Path, **kwargs: Any) -> Runner:
        assert BLENDER is not None
        runner = await Runner.start(BLENDER, str(blend), cwd=str(blend.parent),
                                    log_path=str(tmp_path / "blender.log"), **kwargs)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        await runner.stop()
        assert not runner.alive


def _pixels(path: str) -> bytes:
    with Image.open(path) as img:
        assert img.size == (64, 64)
        return img.convert("RGBA").tobytes()


async def test_probe_finds_blender_without_oidn() -> None:
    info = await probe_blender(find_blender(None))
    assert info.version.startswith("3.4.") and info.version_tuple[:2] == (3, 4)
    assert info.oidn is False  # Debian's Blender is built without OpenImageDenoise
    assert "CPU" in info.cycles_devices and info.threads >= 1
    assert info.to_dict()["version"] == info.version


def test_find_blender_explains_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLENDER", str(tmp_path / "nope"))
    with pytest.raises(BlenderNotFound, match="BLENDER"):
        find_blender(None)
    monkeypatch.delenv("BLENDER")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BlenderNotFound, match="install Blender.*--blender"):
        find_blender(None)
    assert find_blender(BLENDER) == os.path.abspath(str(BLENDER))


async def test_runner_renders_two_tasks_in_one_blender(scenes: Path, tmp_path: Path,
                                                        start_runner) -> None:
    runner = await start_runner(scenes / "anim.blend")
    assert runner.hello["version"].startswith("3.4.") and runner.hello["oidn"] is False
    pid, out = runner.pid, tmp_path / "out"
    events: list[dict[str, Any]] = []
    first = await runner.render("t1", [1, 2, 3], scene=None, overrides={}, output_dir=str(out),
                                output_name="shot", on_event=events.append)
    second = await runner.render("t2", [4, 5], scene="Scene", overrides={}, output_dir=str(out),
                                 output_name="shot", on_event=events.append)
    assert runner.pid == pid and runner.alive  # no restart between tasks
    done = dict(first + second)
    assert sorted(done) == [1, 2, 3, 4, 5]
    for frame, path in done.items():
        assert os.path.basename(path) == frame_file_name("shot", frame, "PNG")
        assert check_image(path, "PNG") == "PNG"
    assert _pixels(done[1]) != _pixels(done[5])  # the cube moved
    kinds = [e["ev"] for e in events]
    assert kinds.count("frame_start") == 5 and kinds.count("frame_done") == 5
    progress = [e for e in events if e["ev"] == "progress"]
    assert progress and all(0.0 <= e["fraction"] <= 1.0 for e in progress)
    assert any(e["fraction"] == 1.0 and "Sample" in e["stats"] for e in progress)


async def test_runner_overrides_formats_and_overwrites(scenes: Path, tmp_path: Path,
                                                       start_runner) -> None:
    runner = await start_runner(scenes / "anim.blend")
    out = str(tmp_path / "out")
    [(_, exr)] = await runner.render("t1", [2], scene=None, overrides={"format": "OPEN_EXR"},
                                     output_dir=out, output_name="f", on_event=lambda e: None)
    [(_, jpg)] = await runner.render(
        "t2", [2], scene=None, overrides={"format": "JPEG", "resolution_x": 32, "threads": 1},
        output_dir=out, output_name="f", on_event=lambda e: None)
    assert exr.endswith("f_0002.exr") and check_image(exr) == "OPEN_EXR"
    assert jpg.endswith("f_0002.jpg") and check_image(jpg) == "JPEG"
    with Image.open(jpg) as img:
        assert img.size == (32, 64)
    # the next task starts from the file's own settings again, and overwrites frame 2
    png = tmp_path / "out" / "f_0002.png"
    png.write_bytes(b"stale")
    [(_, again)] = await runner.render("t3", [2], scene=None, overrides={}, output_dir=out,
                                       output_name="f", on_event=lambda e: None)
    assert again == str(png) and check_image(again) == "PNG" and len(_pixels(again)) == 64 * 64 * 4


async def test_bad_scene_and_camera_are_reported_and_runner_carries_on(
        scenes: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(scenes / "anim.blend")
    common: dict[str, Any] = {"output_dir": str(tmp_path), "output_name": "x",
                              "on_event": lambda e: None}
    with pytest.raises(RunnerError) as err:
        await runner.render("t1", [1], scene="Nope", overrides={}, **common)
    assert err.value.reason == "bad_scene" and "Nope" in err.value.message
    with pytest.raises(RunnerError) as err:
        await runner.render("t2", [1], scene=None, overrides={"camera": "Cube"}, **common)
    assert err.value.reason == "bad_camera" and not err.value.retryable
    with pytest.raises(RunnerError) as err:
        await runner.render("t3", [1], scene=None, overrides={"engine": "NOPE"}, **common)
    assert err.value.reason == "bad_scene" and "NOPE" in err.value.message
    assert runner.alive
    assert await runner.render("t4", [1], scene=None, overrides={}, **common)


async def test_denoise_needs_oidn_unless_overridden(scenes: Path, tmp_path: Path,
                                                    start_runner) -> None:
    runner = await start_runner(scenes / "denoise.blend")
    t0 = time.monotonic()
    with pytest.raises(RunnerError) as err:
        await runner.render("t1", [1], scene=None, overrides={}, output_dir=str(tmp_path),
                            output_name="d", on_event=lambda e: None)
    assert time.monotonic() - t0 < 5
    assert err.value.reason == "needs_denoise" and err.value.retryable is False
    assert "--no-denoise" in err.value.message
    assert not list(tmp_path.glob("d_*"))  # refused, not rendered
    [(_, path)] = await runner.render("t2", [1], scene=None, overrides={"denoise": False},
                                      output_dir=str(tmp_path), output_name="d",
                                      on_event=lambda e: None)
    assert check_image(path) == "PNG"


async def test_a_blender_without_opengl_is_found_out_by_a_tiny_render(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # no display, and an EGL that finds no driver: what a bare server gives Blender
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl_vendor.json")
    t0 = time.monotonic()
    able, why = await probe_opengl(find_blender(None))
    assert not able and "SIGABRT" in why
    assert time.monotonic() - t0 < 30


async def test_without_opengl_eevee_and_workbench_are_refused_and_cycles_renders(
        scenes: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(scenes / "anim.blend")
    common: dict[str, Any] = {"scene": None, "output_dir": str(tmp_path), "output_name": "g",
                              "on_event": lambda e: None, "opengl": False}
    for engine, name in (("BLENDER_EEVEE", "Eevee"), ("BLENDER_WORKBENCH", "Workbench")):
        with pytest.raises(RunnerError) as err:
            await runner.render("t1", [1], overrides={"engine": engine}, **common)
        assert err.value.reason == "needs_opengl" and err.value.retryable is False
        assert name in err.value.message and "xvfb-run" in err.value.message
    assert not list(tmp_path.glob("g_*")) and runner.alive  # refused, not rendered
    [(_, path)] = await runner.render("t2", [1], overrides={}, **common)
    assert check_image(path) == "PNG"


async def test_corrupt_blend_is_bad_blend(tmp_path: Path, start_runner) -> None:
    blend = tmp_path / "corrupt.blend"
    blend.write_bytes(os.urandom(4096))
    with pytest.raises(RunnerError) as err:
        await start_runner(blend)
    assert err.value.reason == "bad_blend" and not err.value.retryable
    assert "could not open the .blend file" in err.value.message
    assert "corrupt.blend" in err.value.message and err.value.log_tail


async def test_kill_mid_render_is_a_crash_and_a_new_runner_works(
        scenes: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(scenes / "anim.blend")
    pid = runner.pid
    assert pid is not None

    def on_event(event: dict[str, Any]) -> None:
        if event["ev"] == "progress" and 0 < event["fraction"] < 1:
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(RunnerError) as err:
        await runner.render("t1", [1], scene=None, overrides={"samples": 1_000_000},
                            output_dir=str(tmp_path), output_name="k", on_event=on_event)
    assert err.value.reason == "crash" and err.value.retryable
    assert "SIGKILL" in err.value.message
    assert not runner.alive
    fresh = await start_runner(scenes / "anim.blend")
    assert fresh.pid != pid
    assert await fresh.render("t2", [1], scene=None, overrides={}, output_dir=str(tmp_path),
                              output_name="k", on_event=lambda e: None)


async def test_watchdog_kills_a_hung_blender(scenes: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(scenes / "driver.blend", allow_scripts=True)
    t0 = time.monotonic()
    with pytest.raises(RunnerError) as err:  # the driver sleeps on frame 7
        await runner.render("t1", [7], scene=None, overrides={}, output_dir=str(tmp_path),
                            output_name="w", on_event=lambda e: None, watchdog=1.5)
    assert err.value.reason == "watchdog" and time.monotonic() - t0 < 10
    assert "no sign of life" in err.value.message and not runner.alive
    # without --enable-autoexec the same driver never runs: frame 7 renders at once
    safe = await start_runner(scenes / "driver.blend")
    assert await safe.render("t2", [7], scene=None, overrides={}, output_dir=str(tmp_path),
                             output_name="w", on_event=lambda e: None, watchdog=30)


AGENT = textwrap.dedent("""
    import asyncio, sys
    from blenderfarm.node.runner_proc import Runner
    async def main():
        r = await Runner.start(sys.argv[1], sys.argv[2], cwd=sys.argv[3], log_path=sys.argv[4])
        print(r.pid, flush=True)
        await asyncio.sleep(600)
    asyncio.run(main())
""")


def test_blender_dies_with_an_agent_killed_by_sigkill(scenes: Path, tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    assert BLENDER is not None
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, BLENDER, str(scenes / "anim.blend"), str(tmp_path),
         str(tmp_path / "agent.log")], stdout=subprocess.PIPE, text=True)
    blender_pid = 0
    try:
        assert agent.stdout is not None
        blender_pid = int(agent.stdout.readline())
        agent.kill()
        agent.wait(10)
        deadline = time.monotonic() + 10
        while _running(blender_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(blender_pid), "Blender outlived its agent"
    finally:
        agent.kill()
        agent.wait(10)
        if blender_pid and _running(blender_pid):  # the feature failed: still leave no orphan
            os.killpg(blender_pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """True while pid exists and is not a zombie (init reaps orphans, maybe not at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
