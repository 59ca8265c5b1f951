"""Tiles, merges and the video on a real farm: bf-server, bf-nodes, Blender 3.4, FFmpeg.

The merged frames are compared with Blender's own full-frame renders pixel for pixel,
and the video is read back with ffprobe. The runner's side of tiles is tested in
depth in tests/test_tiles.py, the encode in tests/test_video.py, the graph's
decisions in tests/test_task_graph.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from procs import get_json
from scenes import make_scene, needs_blender, read_rgba, render_frames
from test_e2e import bf, submit, wait_job

pytestmark = [*needs_blender,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs FFmpeg")]


def test_two_nodes_render_frames_in_tiles_equal_to_blender_and_make_the_video(
        farm_procs, tmp_path: Path) -> None:
    anim = make_scene("anim", tmp_path / "scene", frames=24, res=64, samples=4)
    direct = render_frames(anim, [1, 2], tmp_path / "direct")
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.node("b")
    farm_procs.wait_nodes(2)
    nodes = get_json(f"{server.url}/api/nodes")["nodes"]
    assert all(n["ffmpeg"] for n in nodes), "each node reports its FFmpeg"
    job_id, _ = submit(server.url, anim, "--frames", "1-2", "--tiles", "3", "--video",
                       "--name", "tiled")
    job = wait_job(server.url, job_id)
    assert job["status"] == "completed", job.get("error")
    assert (job["frames_done"], job["tiles_total"], job["tiles_done"]) == (2, 6, 6)
    tasks = get_json(f"{server.url}/api/jobs/{job_id}/tasks")["tasks"]
    assert [t["kind"] for t in tasks] == ["render"] * 3 + ["merge"] + ["render"] * 3 + \
        ["merge", "encode"]

    out = tmp_path / "out"
    assert bf(server.url, "download", job_id, str(out), "--flat").returncode == 0
    frames = sorted(out.glob("*.png"))
    assert [f.name for f in frames] == ["frame_0001.png", "frame_0002.png"]
    for got, want in zip(frames, direct, strict=True):
        assert np.array_equal(read_rgba(got), read_rgba(want)), f"{got.name} differs"
    assert not list(out.glob("*.exr")), "tiles are no outputs of the job"

    video = out / job["video_output"]
    assert video.name == "tiled.0001-0002.mp4" and video.is_file()
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0",
                            "-count_frames", "-show_entries",
                            "stream=codec_name,width,height,pix_fmt,nb_read_frames,"
                            "r_frame_rate", "-of", "json", str(video)],
                           capture_output=True, text=True, check=True)
    stream = json.loads(probe.stdout)["streams"][0]
    assert (stream["codec_name"], stream["pix_fmt"], stream["width"], stream["height"],
            stream["nb_read_frames"], stream["r_frame_rate"]) == \
        ("h264", "yuv420p", 64, 64, "2", "24/1")


#: the anim scene made a movie scene: Matroska, H.264 at Blender's "high quality", 25 fps
MOVIE = ("import bpy, sys\n"
         "scene = bpy.context.scene\n"
         "scene.render.image_settings.file_format = 'FFMPEG'\n"
         "scene.render.ffmpeg.format = 'MKV'\n"
         "scene.render.ffmpeg.codec = 'H264'\n"
         "scene.render.ffmpeg.constant_rate_factor = 'HIGH'\n"
         "scene.render.fps, scene.render.fps_base = 25, 1.0\n"
         "bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])\n")


def test_a_movie_scene_comes_back_as_the_movie_its_settings_describe(
        farm_procs, tmp_path: Path) -> None:
    from scenes import run_blender

    anim = make_scene("anim", tmp_path / "scene", frames=24, res=64, samples=2)
    movie = tmp_path / "scene" / "movie.blend"
    assert run_blender([str(anim), "--python-expr", MOVIE, "--", str(movie)]).returncode == 0
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    job_id, _ = submit(server.url, movie, "--frames", "1-3", "--video", "--name", "movie")
    job = wait_job(server.url, job_id)
    assert job["status"] == "completed", job.get("error")
    assert any("encodes the movie" in n for n in job["notes"]), job["notes"]
    out = tmp_path / "out"
    assert bf(server.url, "download", job_id, str(out), "--flat").returncode == 0
    video = out / job["video_output"]
    assert video.name == "movie.0001-0003.mkv" and video.is_file()
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                            "format=format_name:stream=codec_name,pix_fmt,r_frame_rate",
                            "-of", "json", str(video)], capture_output=True, text=True,
                           check=True)
    info = json.loads(probe.stdout)
    assert "matroska" in info["format"]["format_name"]
    stream = info["streams"][0]
    assert (stream["codec_name"], stream["r_frame_rate"]) == ("h264", "25/1")
