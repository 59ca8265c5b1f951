"""Frames are named as Blender names them, from the scene's own output path, and the
server's check of a reported name stays as strict as before: a name is the name of
exactly one frame, and a File Output file can never be another frame's.

The rule itself (protocol.naming) is checked against real Blender's ``frame_path``
for every still format, patterns with and without '#', and negative frames.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blenderfarm.node.safe import BadAssign, check_assign
from blenderfarm.protocol import messages as m
from blenderfarm.protocol.jobspec import EXTENSIONS, pattern_problem
from blenderfarm.protocol.naming import frame_name, frames_named
from blenderfarm.server.outputs import names_frame
from scenes import BLENDER, run_blender

PATTERNS = ["frame_", "shot_###", "a_##_b", "", "a#b###c", "x.png", "x_####.PNG",
            "x_####.jpg", "x.jp#", "render.v2_#", "shot_####.tiff", "s.webp", "e.exr#",
            "Ünï_#"]
FRAMES = [1, 0, -5, 12, 12345, -123456]

# Runs in Blender: frame_path's file name for each pattern, format and frame, as JSON.
FRAME_PATHS = textwrap.dedent("""
    import bpy, json, os, sys
    patterns, formats, frames = json.loads(sys.argv[-1])
    render = bpy.context.scene.render
    out = {}
    for fmt in formats:
        render.image_settings.file_format = fmt
        for pattern in patterns:
            render.filepath = "/tmp/x/" + pattern
            out[fmt + "|" + pattern] = [os.path.basename(render.frame_path(frame=f))
                                        for f in frames]
    print("BFJSON:" + json.dumps(out))
""")


@pytest.mark.blender
@pytest.mark.skipif(BLENDER is None, reason="blender is not on PATH")
def test_frame_names_are_blenders_own() -> None:
    formats = sorted(EXTENSIONS)
    proc = run_blender(["--python-expr", FRAME_PATHS, "--",
                        json.dumps([PATTERNS, formats, FRAMES])])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BFJSON:"))
    blender = json.loads(line[len("BFJSON:"):])
    ours = {f"{fmt}|{p}": [frame_name(p, f, fmt) for f in FRAMES]
            for fmt in formats for p in PATTERNS}
    assert ours == blender
    assert blender["PNG|shot_###"][:3] == ["shot_001.png", "shot_000.png", "shot_-005.png"]
    assert blender["PNG|"][:3] == ["0001.png", "0000.png", "-0005.png"]


patterns = st.text(st.sampled_from("ab_-.#1"), max_size=12).filter(
    lambda p: pattern_problem(p) is None)


@settings(max_examples=300, deadline=None)
@given(patterns, st.integers(-1_048_574, 1_048_574), st.sampled_from(sorted(EXTENSIONS)))
def test_a_frames_name_names_that_frame_only(pattern: str, frame: int, fmt: str) -> None:
    name = frame_name(pattern, frame, fmt)
    assert frames_named(pattern, name) == {frame}
    assert names_frame(name, "job", pattern, frame)
    assert not any(names_frame(name, "job", pattern, other)
                   for other in (frame - 1, frame + 1, -frame or 1, 10 * frame + 1))


@pytest.mark.parametrize(("pattern", "name", "frame"), [
    ("frame_", "frame_0001.png", 1), ("shot_###", "shot_001.tif", 1),
    ("shot_###", "shot_-005.exr", -5), ("", "0007.jpg", 7), ("", "-0002.png", -2),
    ("a_##_b", "a_12_b.dpx", 12), ("x_####.PNG", "x_0003.PNG", 3),
    ("job_####", "job.Passes.beauty_-0002.png", -2),  # a File Output file of frame -2
    ("job_####", "job.P.pass_0007_v2.0007.png", 7),
])
def test_names_of_the_frame_pass(pattern: str, name: str, frame: int) -> None:
    assert names_frame(name, "job", pattern, frame)


@pytest.mark.parametrize(("pattern", "name"), [
    ("frame_", "frame_0002.png"), ("frame_", "frame_001.png"), ("frame_", "frame_00001.png"),
    ("frame_", "frame_0001.gif"), ("frame_", "frame_0001"), ("shot_###", "shot_-001.png"),
    ("shot_###", "shot_0001.png"), ("", "00001.png"), ("", "autorun.inf"),
    # a File Output name that is another frame's file: "job.P#" makes job.P12.png frame 12's
    ("job.P#", "job.P12.png"), ("job.P#x3", "job.P5x3.png"),
    ("job_####", "job.P.x-0001.png"), ("job_####", "job.P.x0002.png"),
])
def test_other_names_fail_for_frame_1(pattern: str, name: str) -> None:
    assert not names_frame(name, "job", pattern, 1)


@pytest.mark.parametrize("bad", ["../x", "/etc/x", "a/b", ".x", "a\\b", "C:x", "a b", 7, "#" * 300])
def test_a_node_refuses_an_output_pattern_that_is_not_a_file_name(bad: object) -> None:
    assign = m.Assign(task_id="t1", job_id="j1", frames=[1], blend="s.blend", manifest={},
                      output_name="shot", output_pattern=bad)  # type: ignore[arg-type]
    with pytest.raises(BadAssign, match="output pattern"):
        check_assign(assign)
    for good in (None, "", "shot_###", "frame_"):
        assign.output_pattern = good
        check_assign(assign)
