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
from procs import is_running

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
        cwd = str(kwargs.pop("cwd", blend.parent))
        runner = await Runner.start(BLENDER, str(blend), cwd=cwd,
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
        # at the frame's start, not at a progress report: adaptive sampling may end a
        # tiny frame before any report comes on a fast machine
        if event["ev"] == "frame_start":
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
        while is_running(blender_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_running(blender_pid), "Blender outlived its agent"
    finally:
        agent.kill()
        agent.wait(10)
        if blender_pid and is_running(blender_pid):  # the feature failed: still leave no orphan
            os.killpg(blender_pid, signal.SIGKILL)


# Runs in Blender: formats.blend, one scene per case (linked copies of one Cycles scene,
# 32x32, stamps and their metadata off so files compare byte for byte), each with its
# output path "//direct/<case>_###" and its image settings.
FORMAT_CASES = {
    # case: (file_format, color_mode, color_depth, extra settings)
    "PNG16_RGBA": ("PNG", "RGBA", "16", {"compression": 30}),
    "PNG8_BW": ("PNG", "BW", "8", {}),
    "JPEG": ("JPEG", "RGB", "8", {"quality": 70}),
    "TIFF16": ("TIFF", "RGB", "16", {"tiff_codec": "LZW"}),
    "TIFF8_RGBA": ("TIFF", "RGBA", "8", {"tiff_codec": "NONE"}),
    "EXR_HALF": ("OPEN_EXR", "RGBA", "16", {"exr_codec": "ZIP"}),
    "EXR_MULTI": ("OPEN_EXR_MULTILAYER", "RGBA", "32", {"exr_codec": "PIZ"}),
    "HDR": ("HDR", "RGB", "32", {}),
    "DPX": ("DPX", "RGB", "10", {}),
    "CINEON": ("CINEON", "RGB", "10", {}),
    "TARGA": ("TARGA", "RGBA", "8", {}),
    "TARGA_RAW": ("TARGA_RAW", "RGB", "8", {}),
    "BMP": ("BMP", "RGB", "8", {}),
    "IRIS": ("IRIS", "RGBA", "8", {}),
    "WEBP": ("WEBP", "RGBA", "8", {"quality": 80}),
    "MOVIE": ("FFMPEG", "RGB", "8", {}),
    "PNG16_AS_TIFF": ("PNG", "RGBA", "16", {}),
    "NEG": ("PNG", "RGBA", "8", {}),
}
MAKE_FORMATS = textwrap.dedent("""
    import json, sys, bpy
    out, cases = sys.argv[-2], json.loads(sys.argv[-1])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    base = bpy.context.scene
    base.render.engine = "CYCLES"
    base.cycles.samples = 2
    base.cycles.use_denoising = False
    base.render.resolution_x = base.render.resolution_y = 32
    base.render.resolution_percentage = 100
    base.render.film_transparent = True
    for attr in dir(base.render):
        if attr.startswith("use_stamp"):
            setattr(base.render, attr, False)
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(-1, 0, 0))
    bpy.ops.object.camera_add(location=(0, -8, 0), rotation=(1.5708, 0, 0))
    base.camera = bpy.context.object
    bpy.ops.object.light_add(type="POINT", location=(0, -3, 3))
    bpy.context.object.data.energy = 1000
    for case, (fmt, mode, depth, extra) in cases.items():
        bpy.context.window.scene = base
        bpy.ops.scene.new(type="LINK_COPY")
        scene = bpy.context.scene
        scene.name = case
        scene.render.filepath = "//direct/" + case + "_###"
        settings = scene.render.image_settings
        settings.file_format = fmt
        settings.color_mode = mode
        settings.color_depth = depth
        for key, value in extra.items():
            setattr(settings, key, value)
    bpy.ops.wm.save_as_mainfile(filepath=out + "/formats.blend")
""")
# Runs in Blender: frame -2 of scene NEG, rendered and named by Blender itself
RENDER_NEGATIVE = (
    "import bpy, os\n"
    "scene = bpy.data.scenes['NEG']\n"
    "scene.frame_set(-2)\n"
    "scene.render.filepath = scene.render.frame_path(frame=-2)\n"
    "bpy.ops.render.render(write_still=True, scene='NEG')\n"
)


@pytest.fixture(scope="module")
def formats_blend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """formats.blend and, in direct/, Blender's own ``blender -b -f 1`` of each case."""
    import json

    out = tmp_path_factory.mktemp("formats")
    assert BLENDER is not None
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python-exit-code", "1",
                    "--python-expr", MAKE_FORMATS, "--", str(out), json.dumps(FORMAT_CASES)],
                   check=True, capture_output=True, timeout=120)
    args = [BLENDER, "-b", str(out / "formats.blend")]
    for case in FORMAT_CASES:
        if case == "MOVIE":  # the farm renders a movie scene's frames as PNG
            args += ["-S", case, "-F", "PNG", "-f", "1"]
        elif case == "PNG16_AS_TIFF":
            args += ["-S", case, "-F", "TIFF", "-f", "1"]
        elif case != "NEG":
            args += ["-S", case, "-f", "1"]
    args += ["--python-expr", RENDER_NEGATIVE]
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    return out / "formats.blend"


async def test_every_still_format_comes_back_as_blenders_own_render(
        formats_blend: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(formats_blend)
    direct = formats_blend.parent / "direct"
    out = tmp_path / "out"
    got: dict[str, str] = {}
    for case in FORMAT_CASES:
        overrides = {"format": "TIFF"} if case == "PNG16_AS_TIFF" else {}
        frame = -2 if case == "NEG" else 1
        [(_, path)] = await runner.render(
            case, [frame], scene=case, overrides=overrides, output_dir=str(out / case),
            output_name="job", output_pattern=f"{case}_###", on_event=lambda e: None)
        got[case] = path
    names = {case: os.path.basename(p) for case, p in got.items()}
    assert names["TIFF16"] == "TIFF16_001.tif" and names["EXR_MULTI"] == "EXR_MULTI_001.exr"
    assert names["MOVIE"] == "MOVIE_001.png" and names["PNG16_AS_TIFF"] == "PNG16_AS_TIFF_001.tif"
    assert names["NEG"] == "NEG_-002.png" and names["WEBP"] == "WEBP_001.webp"
    assert names["CINEON"] == "CINEON_001.cin" and names["IRIS"] == "IRIS_001.rgb"
    for case, path in got.items():
        assert sorted(os.listdir(os.path.dirname(path))) == [names[case]], case
    # Byte for byte: the same format, colour mode, depth, codec and quality as Blender's.
    # PNG, JPEG and OpenEXR carry Cycles' render times as metadata, DPX and Cineon a
    # creation time: those are compared pixel for pixel as Blender decodes them, with
    # their depth and channels.
    timed = {case for case in got if FORMAT_CASES[case][0] in
             ("PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER", "DPX", "CINEON", "FFMPEG")}
    for case in set(got) - timed:
        assert Path(got[case]).read_bytes() == (direct / names[case]).read_bytes(), case
    decoded = _blender_decode([p for case in sorted(timed)
                               for p in (got[case], str(direct / names[case]))])
    for i, case in enumerate(sorted(timed)):
        assert decoded[2 * i] == decoded[2 * i + 1], case
    assert _png_header(got["PNG16_RGBA"]) == (16, 6)  # 16 bits, RGBA
    assert _png_header(got["PNG8_BW"]) == (8, 0)  # 8 bits, grey
    assert _png_header(got["MOVIE"]) == (8, 2)  # the movie's RGB, as lossless PNG
    kinds = {"EXR_MULTI": "OPEN_EXR", "EXR_HALF": "OPEN_EXR", "MOVIE": "PNG",
             "PNG16_AS_TIFF": "TIFF", "NEG": "PNG"}
    for case, path in got.items():
        fmt = FORMAT_CASES[case][0]
        assert check_image(path) == kinds.get(case, {"TARGA_RAW": "TARGA"}.get(fmt, fmt))
    # the next task without overrides starts from each scene's own settings again
    [(_, again)] = await runner.render(
        "again", [1], scene="PNG16_AS_TIFF", overrides={}, output_dir=str(out / "again"),
        output_name="job", output_pattern="again_###", on_event=lambda e: None)
    assert check_image(again) == "PNG" and _png_header(again) == (16, 6)


# Runs in Blender: each image's pixels as Blender decodes them, with its depth and channels
DECODE = textwrap.dedent("""
    import bpy, hashlib, json, struct, sys
    out = []
    for path in json.loads(sys.argv[-1]):
        img = bpy.data.images.load(path)
        px = img.pixels[:]
        out.append({"depth": img.depth, "channels": img.channels, "float": img.is_float,
                    "size": list(img.size), "format": img.file_format,
                    "pixels": hashlib.sha256(struct.pack(f"{len(px)}f", *px)).hexdigest()})
    print("BFJSON:" + json.dumps(out))
""")


def _blender_decode(paths: list[str]) -> list[dict[str, Any]]:
    import json

    assert BLENDER is not None
    proc = subprocess.run([BLENDER, "-b", "--factory-startup", "--python-expr", DECODE, "--",
                           json.dumps(paths)], capture_output=True, text=True, timeout=120)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BFJSON:"))
    return json.loads(line[len("BFJSON:"):])


def _png_header(path: str) -> tuple[int, int]:
    """A PNG's bit depth and colour type (0 grey, 2 RGB, 6 RGBA), from its IHDR."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24], head[25]


# Runs in Blender: stamp.blend, its stamp burned in with the file's path on it
MAKE_STAMP = textwrap.dedent("""
    import sys, bpy
    out = sys.argv[-1]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = 320, 32
    scene.render.resolution_percentage = 100
    for attr in dir(scene.render):
        if attr.startswith("use_stamp_"):
            setattr(scene.render, attr, False)
    scene.render.use_stamp = True
    scene.render.use_stamp_filename = True
    scene.render.stamp_font_size = 12
    bpy.ops.object.camera_add(location=(0, -8, 0), rotation=(1.5708, 0, 0))
    scene.camera = bpy.context.object
    bpy.ops.wm.save_as_mainfile(filepath=out)
""")


async def test_stamp_and_file_metadata_show_the_projects_path_on_every_node(
        tmp_path: Path, start_runner) -> None:
    assert BLENDER is not None
    frames = []
    for work in (tmp_path / "a", tmp_path / "node-with-a-longer-work-dir" / "w"):
        job = work / "jobs" / "0123abcd"
        blend = job / "shots" / "stamp.blend"
        blend.parent.mkdir(parents=True)
        subprocess.run([BLENDER, "-b", "--factory-startup", "--python-exit-code", "1",
                        "--python-expr", MAKE_STAMP, "--", str(blend)],
                       check=True, capture_output=True, timeout=120)
        runner = await start_runner(blend, cwd=job)  # as bf-node starts it
        [(_, path)] = await runner.render("s", [1], scene=None, overrides={},
                                          output_dir=str(work / "out"), output_name="s",
                                          on_event=lambda e: None)
        frames.append(path)
    for path in frames:
        with Image.open(path) as img:
            assert img.text["File"] == "./shots/stamp.blend"
    with Image.open(frames[0]) as a, Image.open(frames[1]) as b:
        assert a.convert("RGBA").tobytes() == b.convert("RGBA").tobytes()


# --- the spare: a warm Blender with no file, that opens a job's file later ----------------


@pytest.fixture
async def start_spare(tmp_path: Path):
    """Factory: start a spare (a Runner with no file) in ``work``; stopped in teardown."""
    started: list[Runner] = []

    async def start(work: Path) -> Runner:
        assert BLENDER is not None
        work.mkdir(parents=True, exist_ok=True)
        runner = await Runner.start(BLENDER, None, cwd=str(work),
                                    log_path=str(work / "spare.log"))
        started.append(runner)
        return runner

    yield start
    for runner in started:
        await runner.stop()
        assert not runner.alive


async def test_a_spare_opens_a_job_by_its_projects_path_and_renders_as_a_cold_runner_does(
        tmp_path: Path, start_runner, start_spare) -> None:
    assert BLENDER is not None
    job = tmp_path / "work" / "jobs" / "0123abcd"
    blend = job / "shots" / "stamp.blend"
    blend.parent.mkdir(parents=True)
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python-exit-code", "1",
                    "--python-expr", MAKE_STAMP, "--", str(blend)],
                   check=True, capture_output=True, timeout=120)
    spare = await start_spare(tmp_path / "work")
    pid = spare.pid
    job_log = tmp_path / "work" / "job.log"
    await spare.open(str(blend), cwd=str(job), log_path=str(job_log))
    assert spare.pid == pid and spare.hello["file"].endswith("stamp.blend")
    [(_, warm)] = await spare.render("s", [1], scene=None, overrides={},
                                     output_dir=str(tmp_path / "warm"), output_name="s",
                                     on_event=lambda e: None)
    cold = await start_runner(blend, cwd=job)
    [(_, ref)] = await cold.render("s", [1], scene=None, overrides={},
                                   output_dir=str(tmp_path / "cold"), output_name="s",
                                   on_event=lambda e: None)
    with Image.open(warm) as a, Image.open(ref) as b:
        assert a.text["File"] == b.text["File"] == "./shots/stamp.blend"
        assert a.convert("RGBA").tobytes() == b.convert("RGBA").tobytes()
    # the job's log holds the job's Blender output; the spare's log only its start
    assert "Fra:1" in job_log.read_text(errors="replace")
    assert "Fra:1" not in (tmp_path / "work" / "spare.log").read_text(errors="replace")


async def test_a_corrupt_blend_opened_by_a_spare_is_bad_blend(tmp_path: Path,
                                                              start_spare) -> None:
    blend = tmp_path / "corrupt.blend"
    blend.write_bytes(os.urandom(4096))
    spare = await start_spare(tmp_path / "work")
    with pytest.raises(RunnerError) as err:
        await spare.open(str(blend), cwd=str(tmp_path), log_path=str(tmp_path / "job.log"))
    assert err.value.reason == "bad_blend" and not err.value.retryable
    assert "could not open the .blend file" in err.value.message
    assert "corrupt.blend" in err.value.message  # (the log tail may lag the event)
    assert not spare.alive


async def test_a_spare_runs_a_files_scripts_only_when_the_job_allows_them(
        scenes: Path, tmp_path: Path, start_spare) -> None:
    hung = await start_spare(tmp_path / "a")  # started without --enable-autoexec
    await hung.open(str(scenes / "driver.blend"), cwd=str(scenes),
                    log_path=str(tmp_path / "a.log"), allow_scripts=True)
    with pytest.raises(RunnerError) as err:  # the driver runs and sleeps on frame 7
        await hung.render("t1", [7], scene=None, overrides={}, output_dir=str(tmp_path),
                          output_name="w", on_event=lambda e: None, watchdog=1.5)
    assert err.value.reason == "watchdog"
    safe = await start_spare(tmp_path / "b")
    await safe.open(str(scenes / "driver.blend"), cwd=str(scenes),
                    log_path=str(tmp_path / "b.log"))
    assert await safe.render("t2", [7], scene=None, overrides={}, output_dir=str(tmp_path),
                             output_name="w", on_event=lambda e: None, watchdog=30)
