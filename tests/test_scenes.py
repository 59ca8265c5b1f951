"""The example scene generator makes what the other tests rely on, in real Blender."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from scenes import (
    blender_eval,
    make_scene,
    needs_blender,
    read_rgba,
    render_frames,
    textured_colors,
)

pytestmark = needs_blender

SETTINGS = """{
    "engine": bpy.context.scene.render.engine,
    "device": bpy.context.scene.cycles.device,
    "samples": bpy.context.scene.cycles.samples,
    "denoise": bpy.context.scene.cycles.use_denoising,
    "seed": bpy.context.scene.cycles.seed,
    "animated_seed": bpy.context.scene.cycles.use_animated_seed,
    "res": [bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y,
            bpy.context.scene.render.resolution_percentage],
    "format": [bpy.context.scene.render.image_settings.file_format,
               bpy.context.scene.render.image_settings.color_mode],
    "frames": [bpy.context.scene.frame_start, bpy.context.scene.frame_end],
    "camera": bpy.context.scene.camera is not None,
    "lights": sorted(o.data.type for o in bpy.context.scene.objects if o.type == "LIGHT"),
    "animated": sorted(o.name for o in bpy.context.scene.objects
                       if o.animation_data and o.animation_data.action),
}"""


@pytest.fixture(scope="module")
def anim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene("anim", tmp_path_factory.mktemp("anim"), frames=4)


def test_anim_settings(anim: Path) -> None:
    s = blender_eval(anim, SETTINGS)
    assert s["engine"] == "CYCLES" and s["device"] == "CPU"
    assert s["samples"] == 4 and s["denoise"] is False
    assert s["seed"] == 0 and s["animated_seed"] is False
    assert s["res"] == [64, 64, 100]
    assert s["format"] == ["PNG", "RGBA"]
    assert s["frames"] == [1, 4]
    assert s["camera"] and s["lights"] and s["animated"]


def test_anim_options(tmp_path: Path) -> None:
    blend = make_scene("anim", tmp_path, frames=7, res=32, samples=2, denoise=True)
    s = blender_eval(blend, SETTINGS)
    assert s["res"] == [32, 32, 100] and s["samples"] == 2 and s["denoise"] is True
    assert s["frames"] == [1, 7]


def test_anim_frames_differ_and_renders_repeat(anim: Path, tmp_path: Path) -> None:
    paths = render_frames(anim, [1, 2, 3, 4], tmp_path / "a")
    images = [read_rgba(p) for p in paths]
    for im in images:
        assert im.shape == (64, 64, 4)
    for a, b in itertools.combinations(images, 2):
        assert not np.array_equal(a, b), "two frames of the animation look the same"
    (again,) = render_frames(anim, [2], tmp_path / "b")
    assert np.array_equal(read_rgba(again), images[1]), "a re-render gave other pixels"


def test_textured_project_layout(tmp_path: Path) -> None:
    shot = make_scene("textured", tmp_path)
    project = tmp_path / "project"
    assert shot == project / "shots" / "shot.blend"
    assert (project / "textures" / "checker.png").is_file()
    assert (project / "lib" / "props.blend").is_file()
    assert not list(project.rglob("*.blend1")), "Blender left backup files"
    facts = blender_eval(shot, """{
        "images": [i.filepath for i in bpy.data.images if i.source == "FILE"],
        "libraries": [lib.filepath for lib in bpy.data.libraries],
        "linked": [c.name for c in bpy.data.collections if c.library is not None],
        "frames": [bpy.context.scene.frame_start, bpy.context.scene.frame_end],
        "samples": bpy.context.scene.cycles.samples,
        "denoise": bpy.context.scene.cycles.use_denoising,
    }""")
    assert facts["images"] == ["//../textures/checker.png"]
    assert facts["libraries"] == ["//../lib/props.blend"]
    assert facts["linked"] == ["Props"]  # linked, not appended
    assert facts["frames"] == [1, 3]
    assert facts["samples"] == 4 and facts["denoise"] is False

    (frame,) = render_frames(shot, [1], tmp_path / "out")
    counts = textured_colors(frame)
    assert counts["yellow"] > 300 and counts["blue"] > 300, "the checker texture is not visible"
    assert counts["green"] > 20, "the linked prop is not visible"
