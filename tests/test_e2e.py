"""The farm renders: real bf-server, real bf-nodes, real Blender, the real `bf` command.

Each claim is checked on the frames themselves: they exist, decode, have the
right size, differ from each other, and match a direct `blender -b -f N` render.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from procs import bin_path, blender_pids, get_json, wait_for
from scenes import (
    assert_same_image,
    make_scene,
    needs_blender,
    read_rgba,
    render_frames,
    textured_colors,
)

pytestmark = needs_blender
RES = 64


def bf(server: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("bf"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "BLENDERFARM_SERVER": server},
                          stdin=subprocess.DEVNULL, check=False)


def submit(server: str, blend: Path, *args: str) -> tuple[str, dict]:
    proc = bf(server, "submit", str(blend), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return doc["job"]["id"], doc


def wait_job(server: str, job_id: str, timeout: float = 240) -> dict:
    proc = bf(server, "wait", job_id, "--json", timeout=timeout)
    job = get_json(f"{server}/api/jobs/{job_id}")["job"]
    assert proc.returncode == 0, f"bf wait failed: {proc.stderr}\njob: {job}"
    return job


@pytest.fixture(scope="session")
def anim(tmp_path_factory) -> Path:
    return make_scene("anim", tmp_path_factory.mktemp("anim"), frames=24, res=RES, samples=4)


@pytest.fixture(scope="session")
def direct_frames(anim: Path, tmp_path_factory) -> dict[int, Path]:
    """The same frames rendered by Blender directly: the reference."""
    out = tmp_path_factory.mktemp("direct")
    return dict(zip(range(1, 13), render_frames(anim, list(range(1, 13)), out), strict=True))


def test_two_nodes_render_an_animation_like_blender_does(farm_procs, anim, direct_frames,
                                                         tmp_path) -> None:
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.node("b")
    farm_procs.wait_nodes(2)
    job_id, doc = submit(server.url, anim, "--frames", "1-12", "--name", "anim")
    assert doc["upload"]["files_sent"] >= 1
    job = wait_job(server.url, job_id)
    assert job["status"] == "completed" and job["frames_done"] == 12
    tasks = get_json(f"{server.url}/api/jobs/{job_id}/tasks")["tasks"]
    assert len({t["node"] for t in tasks}) == 2, "both nodes should have rendered"

    out = tmp_path / "frames"
    assert bf(server.url, "download", job_id, str(out), "--flat").returncode == 0
    files = sorted(out.glob("*.png"))
    # named as Blender names them from the scene's output path, "//render/frame_"
    assert [f.name for f in files] == [f"frame_{i:04d}.png" for i in range(1, 13)]
    pixels = [read_rgba(f) for f in files]
    assert all(p.shape == (RES, RES, 4) for p in pixels)
    assert all(not np.array_equal(pixels[i], pixels[i + 1]) for i in range(11)), \
        "consecutive frames must differ: the object moves"
    for i, f in enumerate(files, start=1):
        assert_same_image(f, direct_frames[i])
    # the server keeps them too, under its data dir
    kept = server.log_path.parent / "jobs" / job_id / "frame_0007.png"
    assert kept.read_bytes() == (out / "frame_0007.png").read_bytes()


def test_textures_and_linked_libraries_travel(farm_procs, tmp_path) -> None:
    blend = make_scene("textured", tmp_path / "src")
    reference = render_frames(blend, [1], tmp_path / "direct")[0]
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    job_id, doc = submit(server.url, blend, "--frames", "1")
    manifest_files = doc["upload"]["files_sent"] + doc["upload"]["files_skipped"]
    assert manifest_files >= 3  # shot.blend, the texture, the library
    wait_job(server.url, job_id)
    assert bf(server.url, "download", job_id, str(tmp_path / "out")).returncode == 0
    (frame,) = sorted((tmp_path / "out").glob("shot-*/*.png"))  # a folder per job
    colors = textured_colors(frame)
    assert colors["magenta"] == 0, "the texture went missing on the node"
    assert colors["yellow"] > 50 and colors["green"] > 20, colors
    assert_same_image(frame, reference)

    # resubmitting the same project uploads nothing
    _job2, doc2 = submit(server.url, blend, "--frames", "1")
    assert doc2["upload"]["bytes_sent"] == 0 and doc2["upload"]["files_sent"] == 0


def _frames_done(server: str, job_id: str) -> int:
    return int(get_json(f"{server}/api/jobs/{job_id}")["job"]["frames_done"])


def _blender_pids(work_dir: Path) -> list[int]:
    """Blender processes rendering from a node's work dir (not the node agent itself)."""
    return blender_pids(work_dir)


def _check_all_frames(server: str, job_id: str, count: int, tmp_path: Path, anim: Path) -> None:
    outputs = get_json(f"{server}/api/jobs/{job_id}/outputs")["outputs"]
    assert sorted(o["frame"] for o in outputs) == list(range(1, count + 1)), "each frame once"
    out = tmp_path / "got"
    assert bf(server, "download", job_id, str(out), "--flat").returncode == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == count
    # spot-check against direct renders: the first, a middle and the last frame
    picks = [1, count // 2, count]
    ref = render_frames(anim, picks, tmp_path / "ref")
    for f, r in zip(picks, ref, strict=True):
        assert_same_image(out / f"frame_{f:04d}.png", r)


def test_killed_node_its_frames_render_elsewhere(farm_procs, anim, tmp_path) -> None:
    server = farm_procs.server()
    victim = farm_procs.node("victim")
    farm_procs.node("survivor")
    farm_procs.wait_nodes(2)
    job_id, _ = submit(server.url, anim, "--frames", "1-16", "--name", "anim")
    wait_for(lambda: _frames_done(server.url, job_id) >= 2, 120, "two frames")
    victim.kill9()
    time.sleep(1)
    assert blender_pids(tmp_path / "node-victim", spares=True) == [], \
        "the dead node's Blender lived on"
    job = wait_job(server.url, job_id)
    assert job["status"] == "completed"
    _check_all_frames(server.url, job_id, 16, tmp_path, anim)


def test_killed_server_restarts_and_the_job_completes(farm_procs, anim, tmp_path) -> None:
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.node("b")
    farm_procs.wait_nodes(2)
    job_id, _ = submit(server.url, anim, "--frames", "1-16", "--name", "anim")
    wait_for(lambda: _frames_done(server.url, job_id) >= 3, 120, "three frames")
    server.kill9()
    time.sleep(1.0)
    server.start()
    job = wait_job(server.url, job_id)
    assert job["status"] == "completed" and job["frames_done"] == 16
    _check_all_frames(server.url, job_id, 16, tmp_path, anim)


def test_denoise_scene_without_oidn_says_what_to_do(farm_procs, tmp_path) -> None:
    blend = make_scene("anim", tmp_path / "dn", frames=2, res=32, samples=2, denoise=True)
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    job_id, _ = submit(server.url, blend, "--frames", "1")
    proc = bf(server.url, "wait", job_id, timeout=120)
    assert proc.returncode == 1
    assert "--no-denoise" in proc.stderr + proc.stdout
    job_id2, _ = submit(server.url, blend, "--frames", "1", "--no-denoise")
    assert wait_job(server.url, job_id2)["status"] == "completed"


def test_cancel_kills_running_renders_within_two_seconds(farm_procs, tmp_path) -> None:
    blend = make_scene("anim", tmp_path / "slow", frames=30, res=96, samples=64)
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    job_id, _ = submit(server.url, blend, "--frames", "1-30")
    wait_for(lambda: _frames_done(server.url, job_id) >= 1, 120, "a first frame")
    assert _blender_pids(tmp_path / "node-a"), "Blender should be rendering"
    t0 = time.monotonic()
    assert bf(server.url, "cancel", job_id).returncode == 0
    wait_for(lambda: not _blender_pids(tmp_path / "node-a"), 2.0, "Blender to stop", 0.05)
    assert time.monotonic() - t0 <= 2.0
    job = get_json(f"{server.url}/api/jobs/{job_id}")["job"]
    assert job["status"] == "canceled" and job["frames_done"] < 30


def test_download_never_replaces_another_jobs_frames(farm_procs, tmp_path) -> None:
    """Two jobs of the same name: each downloads into its own folder; into one folder
    (--flat) the second is refused, naming the file and --overwrite, and loses nothing."""
    blend = make_scene("anim", tmp_path / "same", frames=2, res=32, samples=2)
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    first, _ = submit(server.url, blend, "--frames", "1-2")
    second, _ = submit(server.url, blend, "--frames", "1-2", "--samples", "16")
    wait_job(server.url, first)
    wait_job(server.url, second)

    out = tmp_path / "renders"
    for job_id in (first, second):
        assert bf(server.url, "download", job_id, str(out)).returncode == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == sorted([f"anim-{first[:6]}", f"anim-{second[:6]}"])
    a, b = (sorted((out / f"anim-{j[:6]}").glob("*.png")) for j in (first, second))
    assert [f.name for f in a] == [f.name for f in b] == ["frame_0001.png", "frame_0002.png"]
    assert a[0].read_bytes() != b[0].read_bytes(), "16 samples render other pixels than 2"

    flat = tmp_path / "flat"
    assert bf(server.url, "download", first, str(flat), "--flat").returncode == 0
    kept = {f.name: f.read_bytes() for f in flat.iterdir()}
    proc = bf(server.url, "download", second, str(flat), "--flat")
    assert proc.returncode == 1
    message = proc.stderr.strip()
    assert message.count("\n") == 0 and "--overwrite" in message, message
    assert str(flat / "frame_0001.png") in message, message
    assert {f.name: f.read_bytes() for f in flat.iterdir()} == kept, "nothing replaced"

    again = bf(server.url, "download", first, str(flat), "--flat", "--json")
    assert again.returncode == 0 and len(json.loads(again.stdout)["unchanged"]) == 2
    assert bf(server.url, "download", second, str(flat), "--flat", "--overwrite"
              ).returncode == 0
    assert (flat / "frame_0001.png").read_bytes() == b[0].read_bytes()
# Runs in Blender: the scene as an artist set it up: 16-bit RGBA TIFF frames named
# "//render/shot_###", or (with "movie") an FFMPEG movie.
RESTYLE = (
    "import bpy, sys\n"
    "scene = bpy.context.scene\n"
    "scene.render.filepath = '//render/shot_###'\n"
    "settings = scene.render.image_settings\n"
    "if sys.argv[-1] == 'movie':\n"
    "    settings.file_format = 'FFMPEG'\n"
    "else:\n"
    "    settings.file_format, settings.color_mode, settings.color_depth = 'TIFF', 'RGBA', '16'\n"
    "bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-2])\n"
)
# Runs in Blender: frames -1, 0 and 1 rendered and named by Blender itself (``-f -1``
# would mean "one before the end")
RENDER_DIRECT = (
    "import bpy\n"
    "scene = bpy.context.scene\n"
    "pattern = scene.render.filepath\n"
    "for f in (-1, 0, 1):\n"
    "    scene.frame_set(f)\n"
    "    scene.render.filepath = pattern\n"
    "    scene.render.filepath = scene.render.frame_path(frame=f)\n"
    "    bpy.ops.render.render(write_still=True)\n"
)


def test_frames_keep_the_scenes_format_and_names_negative_ones_too(farm_procs,
                                                                     tmp_path) -> None:
    from scenes import run_blender

    src = make_scene("anim", tmp_path / "src", frames=3, res=32, samples=2)
    tiff, movie = src.parent / "tiff.blend", src.parent / "movie.blend"
    for blend, kind in ((tiff, "tiff"), (movie, "movie")):
        assert run_blender([str(src), "--python-expr", RESTYLE, "--", str(blend), kind]) \
            .returncode == 0
    assert run_blender([str(tiff), "--python-expr", RENDER_DIRECT]).returncode == 0
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    job_id, _ = submit(server.url, tiff, "--frames", "-1-1")
    job = wait_job(server.url, job_id)
    assert job["status"] == "completed" and job["output_pattern"] == "shot_###"
    assert job["notes"] == []
    out = tmp_path / "tiff"
    assert bf(server.url, "download", job_id, str(out)).returncode == 0
    names = ["shot_-001.tif", "shot_000.tif", "shot_001.tif"]
    assert sorted(p.name for p in out.rglob("*.tif")) == sorted(names)
    for name in names:  # TIFF holds no render times: Blender's own file, byte for byte
        (got,) = out.rglob(name)
        assert got.read_bytes() == (src.parent / "render" / name).read_bytes(), name

    movie_id, _ = submit(server.url, movie, "--frames", "1")
    movie_job = wait_job(server.url, movie_id)
    assert movie_job["notes"] and "lossless PNG" in movie_job["notes"][0]
    shown = bf(server.url, "show", movie_id)
    assert shown.returncode == 0 and "lossless PNG" in shown.stdout
    outputs = get_json(f"{server.url}/api/jobs/{movie_id}/outputs")["outputs"]
    assert [o["name"] for o in outputs] == ["shot_001.png"]
