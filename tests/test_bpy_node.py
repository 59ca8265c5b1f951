"""Nodes whose Blender is a Python with the ``bpy`` module (PyPI's Blender 5.0 wheel).

The probe tells such a Python from a Blender by running it; the runner starts in it as
a script (``python -u runner.py -- ...``) and speaks the same protocol, cold or as a warm
spare, scripts off unless allowed, killed, watched and dying with its agent as a
Blender is. Every frame is compared with a direct render in the same bpy 5.0 (pixel for
pixel as bpy decodes it: PNG and OpenEXR carry Cycles' render times), which also covers
the 5.x API the runner meets: media types, compositor node groups and their File Output
nodes, multilayer EXR, Eevee. On a real farm a file saved by 5.0 waits, saying why, while
only Debian's 3.4 is online, and then renders on the 5.0 node only.

Scenes are made by the same bpy (examples/make_scene.py and the scripts below), tiny
(32x32 or 64x64, a few samples, no denoising), and shared by the whole module.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from blenderfarm.node.blender import (
    BlenderNotFound,
    BlenderProbeError,
    find_blender,
    probe_blender,
    probe_opengl,
)
from blenderfarm.node.outputs import check_image
from blenderfarm.node.runner_proc import Runner, RunnerError
from procs import get_json, is_running, wait_for
from scenes import MAKE_SCENE, make_scene, needs_blender, read_rgba
from test_e2e import bf, submit, wait_job

pytestmark = [pytest.mark.blender]


def _run_bpy(python: str, script: str, *args: str, timeout: float = 300) -> str:
    """Run ``script`` in the bpy Python with ``args``; its output (it must exit 0)."""
    proc = subprocess.run([python, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


# --- the probe: what kind of Blender a path is -------------------------------------------


def _program(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


async def test_a_python_without_bpy_is_named_so() -> None:
    with pytest.raises(BlenderProbeError) as err:
        await probe_blender(sys.executable)  # the test venv's Python: no bpy in it
    assert err.value.message == (
        f"{sys.executable} is a Python without the bpy module: install it there "
        "(pip install bpy), or give the path of a Blender executable.")


async def test_a_python_whose_bpy_fails_says_so_with_its_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bpy.py").write_text("raise ImportError('libGL.so.1: cannot open')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(BlenderProbeError) as err:
        await probe_blender(sys.executable)
    assert err.value.message == (f"{sys.executable} is a Python whose bpy module failed "
                                 "(exit code 1); its traceback is below.")
    assert "libGL.so.1: cannot open" in err.value.output


async def test_a_program_that_is_neither_blender_nor_python_says_so(tmp_path: Path) -> None:
    neither = _program(tmp_path, "neither", 'echo "hello $1"\n')
    with pytest.raises(BlenderProbeError) as err:
        await probe_blender(neither)
    assert err.value.message.startswith(f"{neither} is neither a Blender nor a Python with "
                                        "the bpy module")
    garbage = _program(tmp_path, "garbage", "echo 'BLENDERFARM_PROBE:{not json'\n")
    with pytest.raises(BlenderProbeError, match="gave a probe answer we cannot read"):
        await probe_blender(garbage)
    assert await probe_opengl(neither, timeout=10) == (
        False, "a tiny Workbench render failed (exit code 0)")


async def test_a_crashing_blender_is_told_as_a_blender(tmp_path: Path) -> None:
    crashing = _program(tmp_path, "blender", 'echo "Blender 9.9.9 (hash 0123)"\nexit 139\n')
    with pytest.raises(BlenderProbeError) as err:
        await probe_blender(crashing)
    assert err.value.message == (f"Blender at {crashing} exited (code 139) without answering "
                                 "the probe; is it a working Blender 3.4 or newer?")


def test_a_file_that_cannot_run_is_refused_saying_what_to_give(tmp_path: Path) -> None:
    plain = tmp_path / "python3"
    plain.write_text("not a program")
    with pytest.raises(BlenderNotFound) as err:
        find_blender(str(plain))
    assert err.value.message == (
        f"Blender was not found at {str(plain)!r} (given by --blender); give the path of a "
        "Blender executable or of a Python with the bpy module.")


async def test_the_bpy_python_is_probed_as_a_module(bpy50_python: str) -> None:
    info = await probe_blender(bpy50_python)
    assert (info.kind, info.version_tuple[:2]) == ("module", (5, 0))
    assert info.oidn is True and "CPU" in info.cycles_devices  # PyPI's wheel has OIDN
    assert info.to_dict()["kind"] == "module"


@needs_blender[1]
async def test_debians_blender_is_probed_as_an_executable() -> None:
    info = await probe_blender(find_blender(None))
    assert (info.kind, info.version_tuple[:2]) == ("executable", (3, 4))
    assert info.to_dict()["kind"] == "executable"


# --- the scenes, made and rendered directly by bpy 5.0 -----------------------------------

# Runs in bpy 5.0: formats.blend (one linked copy of a Cycles scene per case, stamps off),
# comp.blend (File Output nodes: "Passes" with an absolute directory outside, the file
# name "../../p_" and items "beauty_" and "x", a multilayer "Layers", one inside the
# node group "Grp"),
# driver.blend (a Python driver that hangs on frame 7) and eevee.blend.
MAKE_50 = textwrap.dedent("""
    import json, sys, bpy
    out, outside, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

    def base_scene(res, samples=2):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        scene.render.engine = "CYCLES"
        scene.cycles.samples = samples
        scene.cycles.use_denoising = False
        scene.cycles.use_adaptive_sampling = False
        scene.render.resolution_x = scene.render.resolution_y = res
        scene.render.resolution_percentage = 100
        for attr in dir(scene.render):
            if attr.startswith("use_stamp"):
                setattr(scene.render, attr, False)
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
        return scene, cube

    base, _ = base_scene(32)
    base.render.film_transparent = True
    for case, (media, fmt, mode, depth, extra) in cases.items():
        bpy.context.window.scene = base
        bpy.ops.scene.new(type="LINK_COPY")
        scene = bpy.context.scene
        scene.name = case
        settings = scene.render.image_settings
        settings.media_type = media  # Blender 5: before the format, which it lists
        settings.file_format = fmt
        settings.color_mode = mode
        settings.color_depth = depth
        for key, value in extra.items():
            setattr(settings, key, value)
    bpy.data.scenes["EXR_MULTI"].view_layers[0].use_pass_z = True  # a second pass
    bpy.ops.wm.save_as_mainfile(filepath=out + "/formats.blend")

    scene, _ = base_scene(64)
    tree = bpy.data.node_groups.new("Compositing", "CompositorNodeTree")
    scene.compositing_node_group = tree
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = tree.nodes.new("CompositorNodeRLayers")
    tree.links.new(layers.outputs["Image"], tree.nodes.new("NodeGroupOutput").inputs[0])
    def file_output(tree, name, directory, file_name, items):
        node = tree.nodes.new("CompositorNodeOutputFile")
        node.name, node.directory, node.file_name = name, directory, file_name
        for i, (item, socket) in enumerate(items):  # (Blender 5 makes '/' in an item '_')
            node.file_output_items.new("FLOAT" if socket == "Alpha" else "RGBA", item)
            tree.links.new(layers.outputs[socket], node.inputs[i])
        return node

    passes = file_output(tree, "Passes", outside + "/", "../../p_",
                         [("beauty_", "Image"), ("x", "Alpha")])
    passes.format.media_type = "IMAGE"
    passes.format.file_format = "PNG"
    # left as Blender 5 makes it: a multilayer EXR of both items
    file_output(tree, "Layers", outside + "/", "layers_", [("rgba", "Image"), ("alpha", "Alpha")])
    group = bpy.data.node_groups.new("Grp", "CompositorNodeTree")
    group.interface.new_socket("Color", in_out="INPUT", socket_type="NodeSocketColor")
    inner = group.nodes.new("CompositorNodeOutputFile")
    inner.directory = outside + "/../grp/"
    inner.format.media_type = "IMAGE"
    inner.format.file_format = "PNG"
    inner.file_output_items.new("RGBA", "Image")
    group.links.new(group.nodes.new("NodeGroupInput").outputs[0], inner.inputs[0])
    holder = tree.nodes.new("CompositorNodeGroup")
    holder.node_tree = group
    tree.links.new(layers.outputs["Image"], holder.inputs[0])
    bpy.ops.wm.save_as_mainfile(filepath=out + "/comp.blend")

    scene, cube = base_scene(32)
    driver = cube.driver_add("scale", 2).driver
    driver.type = "SCRIPTED"
    driver.expression = "(__import__('time').sleep(60) or 1.0) if frame == 7 else 1.0"
    bpy.ops.wm.save_as_mainfile(filepath=out + "/driver.blend")

    # Eevee with nothing to shade but the world: its shaders compile in seconds on a
    # software OpenGL (a material's take minutes there)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_EEVEE"
    scene.eevee.taa_render_samples = 1
    scene.render.resolution_x = scene.render.resolution_y = 16
    scene.render.resolution_percentage = 100
    scene.world = bpy.data.worlds.new("World")
    scene.world.color = (0.2, 0.4, 0.6)
    bpy.ops.object.camera_add(location=(0, -8, 0), rotation=(1.5708, 0, 0))
    scene.camera = bpy.context.object
    bpy.ops.wm.save_as_mainfile(filepath=out + "/eevee.blend")
""")

#: case: (media type, file format, colour mode, depth, extra settings)
FORMATS = {
    "PNG16": ("IMAGE", "PNG", "RGBA", "16", {"compression": 30}),
    "JPEG": ("IMAGE", "JPEG", "RGB", "8", {"quality": 70}),
    "TIFF16": ("IMAGE", "TIFF", "RGB", "16", {"tiff_codec": "LZW"}),
    "EXR": ("IMAGE", "OPEN_EXR", "RGBA", "16", {"exr_codec": "ZIP"}),
    "EXR_MULTI": ("MULTI_LAYER_IMAGE", "OPEN_EXR_MULTILAYER", "RGBA", "32",
                  {"exr_codec": "PIZ"}),
    "MOVIE": ("VIDEO", "FFMPEG", "RGB", "8", {}),
}
#: case: the job's format override (the farm renders a movie scene's frames as PNG)
OVERRIDES = {"PNG16_AS_TIFF": ("PNG16", "TIFF"), "PNG16_AS_MULTI": ("PNG16", "OPEN_EXR_MULTILAYER"),
             "MOVIE": ("MOVIE", "PNG")}

# Runs in bpy 5.0: render each [blend, scene, frame, output path, format or null] as a
# user would without the farm (an animation of that one frame, named by Blender)
DIRECT = textwrap.dedent("""
    import json, sys, bpy
    opened = None
    for blend, name, frame, path, fmt in json.loads(sys.argv[1]):
        if blend != opened:
            bpy.ops.wm.open_mainfile(filepath=blend, load_ui=False)
            opened = blend
        scene = bpy.data.scenes[name] if name else bpy.context.scene
        scene.render.filepath = path
        scene.frame_start = scene.frame_end = frame
        if fmt:
            settings = scene.render.image_settings
            settings.media_type = "MULTI_LAYER_IMAGE" if fmt == "OPEN_EXR_MULTILAYER" else "IMAGE"
            settings.file_format = fmt
        bpy.ops.render.render(animation=True, scene=scene.name)
""")

EXR_MAGIC = b"\x76\x2f\x31\x01"

# Runs in bpy 5.0: each image's pixels as bpy decodes them, with its depth and channels
DECODE = textwrap.dedent("""
    import bpy, hashlib, json, struct, sys
    out = []
    for path in json.loads(sys.argv[1]):
        img = bpy.data.images.load(path)
        px = img.pixels[:]
        out.append({"depth": img.depth, "channels": img.channels, "float": img.is_float,
                    "size": list(img.size), "type": img.type, "n": len(px),
                    "pixels": hashlib.sha256(struct.pack(f"{len(px)}f", *px)).hexdigest()})
    print("BFJSON:" + json.dumps(out))
""")


def _decode(python: str, paths: list[str | Path]) -> list[dict[str, Any]]:
    text = _run_bpy(python, DECODE, json.dumps([str(p) for p in paths]))
    line = next(x for x in text.splitlines() if x.startswith("BFJSON:"))
    return list(json.loads(line[len("BFJSON:"):]))


def _assert_same_pixels(python: str, pairs: list[tuple[str | Path, str | Path]]) -> None:
    """Each pair holds the same pixels: an OpenEXR the same compressed chunks (bpy
    loads a multilayer one with no pixels), any other image the same pixels as bpy
    decodes them."""
    decodable = [(a, b) for a, b in pairs if not _is_exr(a)]
    decoded = _decode(python, [p for pair in decodable for p in pair])
    for i, (got, want) in enumerate(decodable):
        assert decoded[2 * i]["n"] > 0, got
        assert decoded[2 * i] == decoded[2 * i + 1], f"{got} differs from {want}"
    for got, want in pairs:
        if _is_exr(got):
            assert exr_parts(got) == exr_parts(want), want
            assert _exr_read(got)[1] == _exr_read(want)[1], f"{got} differs from {want}"


def _is_exr(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == EXR_MAGIC


def exr_parts(path: str | Path) -> list[str]:
    """The part names of an OpenEXR file (a multi-part file has several; a multilayer
    file of one part names it, a plain one does not: "")."""
    return _exr_read(path)[0]


def _exr_read(path: str | Path) -> tuple[list[str], bytes]:
    """An OpenEXR file's part names and its chunks: the pixels as written, without the
    headers (with their render times) and the offset tables (which follow from the
    headers' length)."""
    data = Path(path).read_bytes()
    assert data[:4] == EXR_MAGIC, "not an OpenEXR file"
    multipart = bool(struct.unpack("<I", data[4:8])[0] & 0x1000)
    pos, parts = 8, []
    while True:
        name = ""
        while data[pos] != 0:  # attributes: name\0 type\0 size value, up to an empty name
            end = data.index(b"\0", pos)
            type_end = data.index(b"\0", end + 1)
            size = struct.unpack("<i", data[type_end + 1:type_end + 5])[0]
            if data[pos:end] == b"name":
                name = data[type_end + 5:type_end + 5 + size].rstrip(b"\0").decode()
            pos = type_end + 5 + size
        pos += 1
        parts.append(name)
        if not multipart or data[pos] == 0:  # a multi-part file ends its headers with \0
            pos += multipart
            first_chunk = struct.unpack("<Q", data[pos:pos + 8])[0]
            return parts, data[first_chunk:]


@pytest.fixture(scope="module")
def made(bpy50_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenes, saved by bpy 5.0, and direct/: their direct renders in the same bpy
    (comp.blend's File Output nodes write to outside/ and grp/, where their paths say)."""
    out = tmp_path_factory.mktemp("bpy50")
    proc = subprocess.run([bpy50_python, str(MAKE_SCENE), "--", "anim", str(out / "anim"),
                           "--frames", "3", "--res", "32", "--samples", "4"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _run_bpy(bpy50_python, MAKE_50, str(out), str(out / "far" / "outside"), json.dumps(FORMATS))
    direct = out / "direct"
    jobs: list[list[Any]] = [[str(out / "anim" / "anim.blend"), None, f,
                              str(direct / "anim_####"), None] for f in (1, 2, 3)]
    for case in FORMATS:
        jobs.append([str(out / "formats.blend"), case, 1, str(direct / f"{case}_###"),
                     OVERRIDES.get(case, (None, None))[1]])
    for case, (scene, fmt) in OVERRIDES.items():
        if case != scene:
            jobs.append([str(out / "formats.blend"), scene, 1, str(direct / f"{case}_###"), fmt])
    jobs += [[str(out / "comp.blend"), None, f, str(direct / "comp_####"), None] for f in (1, 2)]
    _run_bpy(bpy50_python, DIRECT, json.dumps(jobs))
    return out


@pytest.fixture
async def start(bpy50_python: str, tmp_path: Path):
    """Factory: a module Runner on a .blend (or, with None, a spare in ``cwd``); every one
    is stopped in teardown and must be gone."""
    started: list[Runner] = []

    async def start_runner(blend: Path | None, cwd: Path, **kwargs: Any) -> Runner:
        runner = await Runner.start(bpy50_python, None if blend is None else str(blend),
                                    cwd=str(cwd), log_path=str(tmp_path / "bpy.log"),
                                    kind="module", **kwargs)
        started.append(runner)
        return runner

    yield start_runner
    for runner in started:
        await runner.stop()
        assert not runner.alive


def _quiet(event: dict[str, Any]) -> None:
    return None


# --- the runner in bpy 5.0 ----------------------------------------------------------------


async def test_a_module_runner_renders_two_tasks_like_a_direct_render(
        made: Path, tmp_path: Path, start, bpy50_python: str) -> None:
    runner = await start(made / "anim" / "anim.blend", made / "anim")
    assert runner.hello["version"].startswith("5.0.") and runner.hello["oidn"] is True
    pid, events = runner.pid, []
    # every override the runner applies, each to the scene's own value: 5.0 takes them
    same = {"threads": 1, "denoise": False, "samples": 4, "resolution_percent": 100,
            "resolution_x": 32, "resolution_y": 32, "camera": "Camera", "engine": "CYCLES"}
    first = await runner.render("t1", [1, 2], scene=None, overrides=same,
                                output_dir=str(tmp_path / "out"), output_name="anim",
                                on_event=events.append)
    second = await runner.render("t2", [3], scene=None, overrides={},
                                 output_dir=str(tmp_path / "out"), output_name="anim",
                                 on_event=events.append)
    assert runner.pid == pid and runner.alive  # one Python for both tasks
    done = dict(first + second)
    assert sorted(done) == [1, 2, 3]
    _assert_same_pixels(bpy50_python, [(done[f], made / "direct" / f"anim_{f:04d}.png")
                                       for f in (1, 2, 3)])
    assert not (read_rgba(done[1]) == read_rgba(done[3])).all()  # the cube moved
    kinds = [e["ev"] for e in events]
    assert kinds.count("frame_start") == 3 and kinds.count("frame_done") == 3
    assert any(e["ev"] == "progress" and 0 < e["fraction"] <= 1 for e in events)


async def test_formats_on_50_come_back_as_bpys_own_render(
        made: Path, tmp_path: Path, start, bpy50_python: str) -> None:
    runner = await start(made / "formats.blend", made)
    got: dict[str, str] = {}
    for case in [*FORMATS, *(c for c in OVERRIDES if c not in FORMATS)]:
        scene, fmt = OVERRIDES.get(case, (case, None))
        overrides = {"format": fmt} if fmt and case != "MOVIE" else {}
        [(_, got[case])] = await runner.render(
            case, [1], scene=scene, overrides=overrides, output_dir=str(tmp_path / case),
            output_name="job", output_pattern=f"{case}_###", on_event=_quiet)
    names = {case: os.path.basename(path) for case, path in got.items()}
    assert names == {"PNG16": "PNG16_001.png", "JPEG": "JPEG_001.jpg",
                     "TIFF16": "TIFF16_001.tif", "EXR": "EXR_001.exr",
                     "EXR_MULTI": "EXR_MULTI_001.exr", "MOVIE": "MOVIE_001.png",
                     "PNG16_AS_TIFF": "PNG16_AS_TIFF_001.tif",
                     "PNG16_AS_MULTI": "PNG16_AS_MULTI_001.exr"}
    # pixel for pixel as bpy reads them: PNG, JPEG and OpenEXR carry Cycles' render
    # times, and Blender 5 writes the time of writing into a TIFF (3.4 did not)
    _assert_same_pixels(bpy50_python, [(got[c], made / "direct" / names[c]) for c in sorted(got)])
    kinds = {"EXR": "OPEN_EXR", "EXR_MULTI": "OPEN_EXR", "PNG16_AS_MULTI": "OPEN_EXR",
             "PNG16": "PNG", "MOVIE": "PNG", "JPEG": "JPEG", "TIFF16": "TIFF",
             "PNG16_AS_TIFF": "TIFF"}
    for case, path in got.items():
        assert check_image(path) == kinds[case], case
    # Blender 5 writes a multilayer EXR as a multi-part file, one part per pass
    assert exr_parts(got["EXR"]) == [""]
    assert exr_parts(got["EXR_MULTI"]) == ["ViewLayer.Combined", "ViewLayer.Depth"]
    assert exr_parts(got["PNG16_AS_MULTI"]) == ["ViewLayer.Combined"]
    # the next task without overrides starts from the scene's own settings again
    [(_, again)] = await runner.render(
        "again", [1], scene="PNG16", overrides={}, output_dir=str(tmp_path / "again"),
        output_name="job", output_pattern="again_###", on_event=_quiet)
    assert check_image(again) == "PNG"
    with open(again, "rb") as f:
        assert f.read(26)[24:26] == bytes([16, 6])  # 16 bits, RGBA


async def test_file_output_nodes_of_a_50_compositor_write_inside_and_come_back(
        made: Path, tmp_path: Path, start, bpy50_python: str) -> None:
    # where Blender's own render (the fixture's) wrote them, as the nodes' paths say
    outside = made / "far" / "outside"
    theirs = {"Passes.p_beauty_": made / "p_beauty_", "Passes.p_x": made / "p_x",
              "Layers.layers_": outside / "layers_",
              "Grp.File_Output.file_nameImage": made / "far" / "grp" / "file_nameImage"}
    written = {p: p.stat().st_mtime_ns for p in made.rglob("*") if p.is_file()}
    runner = await start(made / "comp.blend", made)
    out = tmp_path / "out"
    frames = await runner.render("c", [1, 2], scene=None, overrides={}, output_dir=str(out),
                                 output_name="comp", output_pattern="comp_####",
                                 on_event=_quiet)
    assert [f for f, _ in frames] == [1, 2]
    assert {p: p.stat().st_mtime_ns for p in made.rglob("*") if p.is_file()} == written, \
        "a File Output node wrote outside the task's folder"
    # Blender 5 puts no frame number into a File Output node's file of a still render
    # (the farm's): the farm's name adds it (runner.file_output_name)
    ext = {"Layers.layers_": "exr"}
    delivered = sorted(p.name for p in out.iterdir())
    assert delivered == sorted([f"comp_{f:04d}.png" for f in (1, 2)] + [
        f"comp.{key}.{f:04d}.{ext.get(key, 'png')}" for f in (1, 2) for key in theirs])
    pairs: list[tuple[str | Path, str | Path]] = []
    for f in (1, 2):
        pairs.append((out / f"comp_{f:04d}.png", made / "direct" / f"comp_{f:04d}.png"))
        pairs += [(out / f"comp.{key}.{f:04d}.{ext.get(key, 'png')}",
                   f"{path}{f:04d}.{ext.get(key, 'png')}") for key, path in theirs.items()]
    _assert_same_pixels(bpy50_python, pairs)
    layers = out / "comp.Layers.layers_.0001.exr"
    assert check_image(str(layers)) == "OPEN_EXR"
    assert len(exr_parts(layers)) == 2, exr_parts(layers)  # a part per item


async def test_eevee_on_50_renders_headless_with_egl_and_is_refused_without(
        made: Path, tmp_path: Path, start, bpy50_python: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    opengl, why = await probe_opengl(bpy50_python)
    runner = await start(made / "eevee.blend", made)
    # told its node has no OpenGL, it refuses before trying, and serves on
    with pytest.raises(RunnerError) as err:
        await runner.render("no", [1], scene=None, overrides={}, output_dir=str(tmp_path),
                            output_name="e", on_event=_quiet, opengl=False)
    assert err.value.reason == "needs_opengl" and "Eevee" in err.value.message
    assert runner.alive
    if opengl:  # an EGL driver (a GPU's, or Mesa's llvmpipe): the frame is bpy's own
        [(_, path)] = await runner.render("e", [1], scene=None, overrides={},
                                          output_dir=str(tmp_path), output_name="e",
                                          on_event=_quiet, opengl=True, watchdog=120)
        direct = tmp_path / "direct"
        _run_bpy(bpy50_python, DIRECT, json.dumps([[str(made / "eevee.blend"), None, 1,
                                                    str(direct / "e_####"), None]]))
        _assert_same_pixels(bpy50_python, [(path, direct / "e_0001.png")])
        # a job's override of either Eevee name maps to 5.0's BLENDER_EEVEE
        [(_, named)] = await runner.render(
            "n", [1], scene=None, overrides={"engine": "BLENDER_EEVEE_NEXT"},
            output_dir=str(tmp_path / "next"), output_name="e", on_event=_quiet,
            watchdog=120)
        _assert_same_pixels(bpy50_python, [(named, path)])
    else:
        assert why, "the probe says why there is no OpenGL"
    # with no EGL driver at all bpy 5.0 aborts on the first such frame, as Blender 3.4
    # does: the probe finds that out (the suite's way to hide the drivers)
    monkeypatch.setenv("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl_vendor.json")
    assert await probe_opengl(bpy50_python) == (
        False, "a tiny Workbench render was killed by SIGABRT")


async def test_a_module_spare_opens_a_job_and_runs_its_scripts_only_when_allowed(
        made: Path, tmp_path: Path, start, bpy50_python: str) -> None:
    spare = await start(None, tmp_path)
    pid = spare.pid
    await spare.open(str(made / "anim" / "anim.blend"), cwd=str(made / "anim"),
                     log_path=str(tmp_path / "job.log"))
    assert spare.pid == pid and spare.hello["file"].endswith("anim.blend")
    [(_, warm)] = await spare.render("s", [2], scene=None, overrides={},
                                     output_dir=str(tmp_path / "warm"), output_name="a",
                                     on_event=_quiet)
    _assert_same_pixels(bpy50_python, [(warm, made / "direct" / "anim_0002.png")])
    hung = await start(None, tmp_path / "..")
    await hung.open(str(made / "driver.blend"), cwd=str(made), log_path=str(tmp_path / "h.log"),
                    allow_scripts=True)
    with pytest.raises(RunnerError) as err:  # the driver runs and sleeps on frame 7
        await hung.render("h", [7], scene=None, overrides={}, output_dir=str(tmp_path),
                          output_name="h", on_event=_quiet, watchdog=1.5)
    assert err.value.reason == "watchdog" and not hung.alive
    safe = await start(made / "driver.blend", made)  # cold, scripts not allowed
    assert await safe.render("ok", [7], scene=None, overrides={}, output_dir=str(tmp_path),
                             output_name="ok", on_event=_quiet, watchdog=30)


async def test_a_corrupt_blend_and_a_kill_are_told_as_for_blender(
        made: Path, tmp_path: Path, start) -> None:
    corrupt = tmp_path / "corrupt.blend"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(RunnerError) as err:
        await start(corrupt, tmp_path)
    assert err.value.reason == "bad_blend" and not err.value.retryable
    assert "corrupt.blend" in err.value.message
    runner = await start(made / "anim" / "anim.blend", made / "anim")
    pid = runner.pid
    assert pid is not None

    def on_event(event: dict[str, Any]) -> None:
        # Cycles 5.0 reports its first samples late (after ~1000): its first stats will do
        if event["ev"] == "progress":
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(RunnerError) as err:
        await runner.render("k", [1], scene=None, overrides={"samples": 1_000_000},
                            output_dir=str(tmp_path), output_name="k", on_event=on_event)
    assert err.value.reason == "crash" and "SIGKILL" in err.value.message


async def test_a_45_module_runner_opens_the_job_by_its_path_whatever_pwd_it_inherits(
        bpy45_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blender 4.5 resolves the runner's "./shot.blend" against $PWD, which the agent's
    own (another folder) must not be."""
    job = tmp_path / "job"
    proc = subprocess.run([bpy45_python, str(MAKE_SCENE), "--", "anim", str(job), "--frames",
                           "1", "--res", "16", "--samples", "1"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    monkeypatch.setenv("PWD", str(tmp_path))
    runner = await Runner.start(bpy45_python, str(job / "anim.blend"), cwd=str(job),
                                log_path=str(tmp_path / "bpy45.log"), kind="module")
    try:
        assert runner.hello["version"].startswith("4.5.")
        [(_, path)] = await runner.render("t", [1], scene=None, overrides={},
                                          output_dir=str(tmp_path / "out"), output_name="a",
                                          on_event=_quiet)
        assert check_image(path) == "PNG"
    finally:
        await runner.stop()


AGENT = textwrap.dedent("""
    import asyncio, sys
    from blenderfarm.node.runner_proc import Runner
    async def main():
        r = await Runner.start(sys.argv[1], None, cwd=sys.argv[2], log_path=sys.argv[3],
                               kind="module")
        print(r.pid, flush=True)
        await asyncio.sleep(600)
    asyncio.run(main())
""")


def test_the_bpy_python_dies_with_an_agent_killed_by_sigkill(bpy50_python: str,
                                                             tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    agent = subprocess.Popen([sys.executable, "-c", AGENT, bpy50_python, str(tmp_path),
                              str(tmp_path / "agent.log")], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert agent.stdout is not None
        child = int(agent.stdout.readline())
        agent.kill()
        agent.wait(10)
        wait_for(lambda: not is_running(child), 10, "the bpy Python to die with its agent",
                 interval=0.05)
    finally:
        agent.kill()
        agent.wait(10)
        if child and is_running(child):  # the feature failed: still leave no orphan
            os.killpg(child, signal.SIGKILL)


# --- a real farm: a 3.4 executable node and a 5.0 module node ------------------------------


@needs_blender[1]
def test_a_50_file_waits_for_the_50_node_and_renders_there_like_a_direct_render(
        farm_procs, made: Path, tmp_path: Path, bpy50_python: str) -> None:
    server = farm_procs.server()
    farm_procs.node("old")  # Debian's Blender 3.4
    farm_procs.wait_nodes(1)
    job_id, _doc = submit(server.url, made / "anim" / "anim.blend", "--frames", "1-3",
                          "--chunk", "1", "--name", "anim")
    job = wait_for(lambda: (j := get_json(f"{server.url}/api/jobs/{job_id}")["job"])["waiting"]
                   and j, 30, "the job to say why it waits")
    assert job["blender_saved"] == "5.0"
    assert job["waiting"].startswith("needs Blender >= 5.0; online nodes have 3.4."), job
    farm_procs.node("new", ["--blender", bpy50_python])
    farm_procs.wait_nodes(2)
    # a 3.4-made scene with a texture and a linked library, pinned to 5.0
    old_scene = make_scene("textured", tmp_path / "tex", res=32, samples=4)
    tex_id, _doc = submit(server.url, old_scene, "--frames", "1", "--blender", ">=5.0",
                          "--name", "tex")
    for jid in (job_id, tex_id):
        assert wait_job(server.url, jid)["status"] == "completed"
    nodes = {n["name"]: n for n in get_json(f"{server.url}/api/nodes")["nodes"]}
    assert nodes["old"]["frames_rendered"] == 0, nodes["old"]
    assert nodes["new"]["frames_rendered"] == 4
    for jid in (job_id, tex_id):
        tasks = get_json(f"{server.url}/api/jobs/{jid}/tasks")["tasks"]
        assert {t["node"] for t in tasks} == {nodes["new"]["id"]}, tasks
    # the 3.4-made scene: bpy 5.0's own render of the same file is the reference
    _run_bpy(bpy50_python, DIRECT, json.dumps([[str(old_scene), None, 1,
                                                str(tmp_path / "direct" / "tex_####"), None]]))
    pairs: list[tuple[str | Path, str | Path]] = []
    for jid, reference in ((job_id, [made / "direct" / f"anim_{f:04d}.png" for f in (1, 2, 3)]),
                           (tex_id, [tmp_path / "direct" / "tex_0001.png"])):
        got = tmp_path / "got" / jid
        assert bf(server.url, "download", jid, str(got), "--flat").returncode == 0
        frames = sorted(got.iterdir())  # make_scene's output pattern: frame_####
        assert [p.name for p in frames] == [f"frame_{f:04d}.png" for f in
                                            range(1, len(reference) + 1)]
        pairs += list(zip(frames, reference, strict=True))
    _assert_same_pixels(bpy50_python, pairs)
