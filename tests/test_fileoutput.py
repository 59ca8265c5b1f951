"""Compositor File Output nodes on the farm: they write inside the task's folder on the
node, whatever their paths say, and their files come back as outputs of their frame.

A File Output node's base_path may be absolute and a slot's path may hold '..'; Blender
itself writes there. On the farm the runner points every such node (nested node groups
included) into the task's folder and the node delivers what they wrote under
``<job stem>.<node>.<Blender's file name>``, a name the server checks against its frame.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from blenderfarm.node.outputs import check_image
from blenderfarm.node.runner_proc import RUNNER_SCRIPT
from blenderfarm.server.outputs import names_frame
from procs import get_json
from scenes import BLENDER, read_rgba, render_frames, run_blender
from test_e2e import bf, submit, wait_job

# Runs in Blender: a moving cube through Render Layers -> Composite, plus a File Output
# node "Passes" (slots "beauty_" and "../../x") and one inside the node group "Grp",
# both with absolute base paths outside any work dir.
MAKE_SCENE = textwrap.dedent("""
    import sys, bpy
    blend, outside, outside_grp = sys.argv[sys.argv.index("--") + 1:]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = 64
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 2
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(-2, 0, 0))
    cube = bpy.context.object
    cube.keyframe_insert("location", frame=1)
    cube.location = (2, 0, 0)
    cube.keyframe_insert("location", frame=2)
    bpy.ops.object.camera_add(location=(0, -8, 0), rotation=(1.5708, 0, 0))
    scene.camera = bpy.context.object
    bpy.ops.object.light_add(type="POINT", location=(0, -3, 3))
    bpy.context.object.data.energy = 1000
    scene.use_nodes = True
    tree = scene.node_tree
    layers = tree.nodes["Render Layers"]
    passes = tree.nodes.new("CompositorNodeOutputFile")
    passes.name = "Passes"
    passes.base_path = outside + "/"
    passes.file_slots[0].path = "beauty_"
    passes.file_slots.new("../../x")
    tree.links.new(layers.outputs["Image"], passes.inputs[0])
    tree.links.new(layers.outputs["Alpha"], passes.inputs[1])
    group = bpy.data.node_groups.new("Grp", "CompositorNodeTree")
    group.inputs.new("NodeSocketColor", "Color")
    inner = group.nodes.new("CompositorNodeOutputFile")
    inner.base_path = outside_grp + "/"
    group.links.new(group.nodes.new("NodeGroupInput").outputs[0], inner.inputs[0])
    holder = tree.nodes.new("CompositorNodeGroup")
    holder.node_tree = group
    tree.links.new(layers.outputs["Image"], holder.inputs[0])
    bpy.ops.wm.save_as_mainfile(filepath=blend)
""")

#: what the farm delivers for frame F of a job named "fo", and where Blender itself
#: writes the same file (relative to the scene's "outside" folder)
EXTRAS = {"fo.Passes.beauty_{f:04d}.png": "beauty_{f:04d}.png",
          "fo.Passes.x{f:04d}.png": "../../x{f:04d}.png",
          "fo.Grp.File_Output.Image{f:04d}.png": "../grp/Image{f:04d}.png"}

needs_blender = pytest.mark.skipif(BLENDER is None, reason="blender is not on PATH")


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    """The .blend, and the folder its File Output node points at (absent until written)."""
    blend, outside = tmp_path / "src" / "fo.blend", tmp_path / "far" / "away" / "outside"
    blend.parent.mkdir()
    proc = run_blender(["--python-exit-code", "1", "--python-expr", MAKE_SCENE, "--",
                        str(blend), str(outside), str(outside.parent / "grp")])
    assert proc.returncode == 0 and blend.is_file(), proc.stdout[-3000:]
    return blend, outside


@pytest.mark.blender
@needs_blender
def test_file_output_nodes_write_inside_and_come_back_as_outputs(
        farm_procs, scene: tuple[Path, Path], tmp_path: Path) -> None:
    blend, outside = scene
    far = outside.parent.parent  # where "../../x" leads from there
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    # two tasks of one frame each: the second reuses the first one's Blender
    job_id, _ = submit(server.url, blend, "--frames", "1-2", "--name", "fo")
    job = wait_job(server.url, job_id)
    assert job["status"] == "completed" and job["frames_done"] == 2
    assert not far.exists(), f"a File Output node wrote outside the node: {list(far.rglob('*'))}"

    outputs = get_json(f"{server.url}/api/jobs/{job_id}/outputs")["outputs"]
    # the scene keeps Blender's default output path "/tmp/": its frames are 0001.png
    expected = {f"{f:04d}.png": f for f in (1, 2)}
    expected |= {name.format(f=f): f for name in EXTRAS for f in (1, 2)}
    assert {o["name"]: o["frame"] for o in outputs} == expected
    got = tmp_path / "got"
    assert bf(server.url, "download", job_id, str(got), "--flat").returncode == 0
    assert sorted(p.name for p in got.iterdir()) == sorted(expected)
    for name in expected:
        assert check_image(str(got / name)) == "PNG"
        assert read_rgba(got / name).shape == (64, 64, 4)

    # Blender's own render of the same file: the same frames, and the same passes in
    # the files its File Output nodes name (written outside, as Blender does)
    direct = render_frames(blend, [1, 2], tmp_path / "direct")
    for f, path in zip((1, 2), direct, strict=True):
        assert np.array_equal(read_rgba(got / f"{f:04d}.png"), read_rgba(path))
        for name, own in EXTRAS.items():
            assert np.array_equal(read_rgba(got / name.format(f=f)),
                                  read_rgba(outside / own.format(f=f))), name
    assert not np.array_equal(read_rgba(got / "fo.Passes.beauty_0001.png"),
                              read_rgba(got / "fo.Passes.beauty_0002.png"))


# Runs in Blender: the runner's names for files its File Output nodes wrote, as JSON.
NAMES_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("bf_runner", sys.argv[-2])
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    cases = json.loads(sys.argv[-1])
    names = [runner.file_output_name("shot.v2", f, rel) for f, rel in cases]
    confined = [runner._confined(p) for p in ("../../x", "/abs/../x", "C:\\\\x\\\\..\\\\y",
                                              ".. /a/./b", "{scene_name}/c:d")]
    print("BFJSON:" + json.dumps({"names": names, "confined": confined}))
""")
CASES = [(1, "Passes/beauty_0001.png"), (1, "Passes/x0001.png"), (12345, "P/Image12345.exr"),
         (0, "P/0000.png"), (7, "P/pass_0007_v2.png"), (4, "P/v2_0004_x3.jpg"),
         (1, "File_Output.001/sub/dir/alpha_0001.png"), (2, "P/.hidden0002.png"),
         (1, "Grp.File_Output/Diffuse Color0001_L.png"), (4, "P/Ünïcode0004.png")]


@pytest.mark.blender
@needs_blender
def test_the_server_accepts_exactly_the_names_the_runner_gives() -> None:
    proc = run_blender(["--python-expr", NAMES_SCRIPT, "--", RUNNER_SCRIPT, json.dumps(CASES)])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BFJSON:"))
    got = json.loads(line[len("BFJSON:"):])
    assert got["names"] == [
        "shot.v2.Passes.beauty_0001.png", "shot.v2.Passes.x0001.png",
        "shot.v2.P.Image12345.exr", "shot.v2.P.0000.png", "shot.v2.P.pass_0007_v2.0007.png",
        "shot.v2.P.v2_0004_x3.0004.jpg", "shot.v2.File_Output.001.sub.dir.alpha_0001.png",
        "shot.v2.P.hidden0002.png", "shot.v2.Grp.File_Output.Diffuse_Color0001_L.png",
        "shot.v2.P._n_code0004.png"]
    for (frame, _rel), name in zip(CASES, got["names"], strict=True):
        assert names_frame(name, "shot.v2", "shot.v2_####", frame), name
        assert not any(names_frame(name, "shot.v2", "shot.v2_####", other)
                       for other in (frame - 1, frame + 1, 10 * frame + 1)), name
    # nothing climbs out of the node's folder, nor names a root, a drive or a template
    assert got["confined"] == ["x", "abs/x", "C_/x/y", "a/b", "_scene_name_/c_d"]


@pytest.mark.parametrize(("name", "frame"), [
    ("shot_0001.png", 1), ("shot_12345.exr", 12345), ("shot.Passes.beauty_0001.png", 1),
    ("shot.P.x0002.png", 2), ("shot.P.pass_0003_v2.0003.png", 3), ("shot.0.png", 0),
])
def test_frame_names_pass(name: str, frame: int) -> None:
    assert names_frame(name, "shot", "shot_####", frame)


@pytest.mark.parametrize("name", [
    "shot_0002.png", "shot.P.x0002.png", "shot.P.x0001a2.png",  # another frame's
    "autorun.inf", "shot.png", "shot.P.png", "shot..P.x0001.png", "shot.P/x0001.png",
    "shot.P\\x0001.png", "shot.P x0001.png", "shot.P.x0001.p-g", "other.P.x0001.png",
    ".shot.P.x0001.png", "shot.P.x0001", "shot.P.Ünï0001.png", "shot_0001.P.x0001.png",
])
def test_other_names_fail_for_frame_1(name: str) -> None:
    assert not names_frame(name, "shot", "shot_####", 1)
