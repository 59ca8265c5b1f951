"""Tiles and video benchmark: one still on one node against the same still in tiles on
two, and how long a video takes once the last frame is in.

Still: a 1920x1080 frame at 64 Cycles samples of a scene made here (a few shaded
objects, an area light, no denoising). A real bf-server and bf-node processes, each
node with ``--threads 1``: first one node renders the frame whole (the farm before
tiles), then two nodes render it with ``--tiles N`` and one merges it. It prints both
times (the job's first task starting to its end), the speed-up, and the tile overhead:
the sum of the tile renders' times over Blender's own render of the whole frame with
one thread (measured in the same run). The merged frame is checked pixel for pixel
against the whole one.

Video: an animation (``--video-frames`` frames, small) through the same two nodes
with ``--video``; it prints the seconds from its last frame being done to the video
being done, and the video's size.

Usage: ``python bench/tiles_bench.py [--tiles 6] [--samples 64] [--write docs/benchmarks.md]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from e2e_bench import BIN, bf, start, stop, write_section  # noqa: E402
from farmserver import free_port  # noqa: E402
from render_bench import blender  # noqa: E402

HEADING = "## Tiles: one still on two nodes, and the video at the end"

# Runs in Blender: out, width, height, samples, frames.
MAKE_SCENE = """
import bpy, math, sys
out, width, height, samples, frames = sys.argv[sys.argv.index("--") + 1:]
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
cycles = scene.cycles
cycles.device, cycles.samples, cycles.use_denoising = "CPU", int(samples), False
cycles.use_adaptive_sampling = False
scene.render.resolution_x, scene.render.resolution_y = int(width), int(height)
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.render.filepath = "//render/frame_"
scene.frame_start, scene.frame_end = 1, int(frames)
bpy.ops.mesh.primitive_plane_add(size=20)
for i, (x, kind) in enumerate(((-3, "uv_sphere"), (0, "monkey"), (3, "cylinder"))):
    getattr(bpy.ops.mesh, "primitive_" + kind + "_add")(location=(x, 0, 1))
    obj = bpy.context.object
    bpy.ops.object.shade_smooth()
    mat = bpy.data.materials.new(f"m{i}")
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (0.2 + 0.3 * i, 0.5, 0.8 - 0.3 * i, 1)
    bsdf.inputs["Roughness"].default_value = 0.2 + 0.3 * i
    obj.data.materials.append(mat)
    obj.rotation_euler.z = 0
    obj.keyframe_insert("rotation_euler", frame=1)
    obj.rotation_euler.z = math.pi
    obj.keyframe_insert("rotation_euler", frame=max(int(frames), 2))
bpy.ops.object.camera_add(location=(0, -10, 4), rotation=(math.radians(72), 0, 0))
scene.camera = bpy.context.object
bpy.ops.object.light_add(type="AREA", location=(2, -3, 6))
bpy.context.object.data.energy = 800
bpy.context.object.data.size = 3
bpy.ops.wm.save_as_mainfile(filepath=out)
"""


def make_scene(path: Path, width: int, height: int, samples: int, frames: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([blender(), "-b", "--factory-startup", "--python-exit-code", "1",
                    "--python-expr", MAKE_SCENE, "--", str(path), str(width), str(height),
                    str(samples), str(frames)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return path


def direct_seconds(blend: Path, out: Path, at_once: int = 1) -> float:
    """Blender's own render of frame 1 with one thread: the render's time as Blender
    prints it (``Time: 01:02.34``), not its start or the file's load. With ``at_once``
    > 1, that many such Blenders render at the same time (as two one-thread nodes on
    this machine do) and the mean of their times is returned."""
    procs = [subprocess.Popen([blender(), "-b", str(blend), "-t", "1", "-o",
                               str(out / f"direct{i}_####"), "-f", "1"], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(at_once)]
    times = []
    for proc in procs:
        text, _ = proc.communicate()
        found = re.search(r"\bTime: (?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text)
        if proc.returncode != 0 or found is None:
            sys.exit("bench: Blender printed no render time")
        hours, minutes, seconds = found.groups()
        times.append(int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds))
    return sum(times) / len(times)


@contextlib.contextmanager
def farm(work: Path, nodes: int) -> Iterator[str]:
    """A bf-server and ``nodes`` bf-nodes of one thread each, all stopped on leaving."""
    url = f"http://127.0.0.1:{free_port()}"
    server = start([str(BIN / "bf-server"), "--data-dir", str(work / "server"), "--port",
                    url.rsplit(":", 1)[1], "--log-level", "WARNING"], work / "server.log")
    procs = []
    try:
        for _ in range(200):
            if "listening on" in (work / "server.log").read_text():
                break
            time.sleep(0.05)
        for n in range(nodes):
            procs.append(start([str(BIN / "bf-node"), "--server", url, "--work-dir",
                                str(work / f"node{n}"), "--name", f"n{n}", "--threads", "1"],
                               work / f"node{n}" / "node.log"))
        deadline = time.monotonic() + 90
        while True:
            out = bf(url, "--json", "nodes")
            online = [n for n in json.loads(out.stdout)["nodes"] if n["online"]] \
                if out.returncode == 0 else []
            if len(online) == nodes:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                sys.exit(f"bench: the nodes did not come up; see {work}/node*/node.log")
            time.sleep(0.2)
        yield url
    finally:
        for p in procs:
            stop(p)
        stop(server)


def run_job(url: str, blend: Path, frames: str, out: Path, *options: str
            ) -> tuple[dict, list[dict]]:
    """Submit, wait, download; the job's view and its tasks."""
    sub = bf(url, "submit", str(blend), "--frames", frames, *options)
    if sub.returncode != 0:
        sys.exit(f"bench: bf submit failed: {sub.stderr}")
    job_id = sub.stdout.strip().splitlines()[-1]
    bf(url, "wait", job_id)
    job = json.loads(bf(url, "--json", "show", job_id).stdout)["job"]
    if job["status"] != "completed":
        sys.exit(f"bench: the job ended {job['status']}: {job.get('error')}")
    if bf(url, "download", job_id, str(out), "--flat").returncode != 0:
        sys.exit(f"bench: bf download of {job_id} failed")
    import urllib.request
    with urllib.request.urlopen(f"{url}/api/jobs/{job_id}/tasks?limit=10000") as resp:
        tasks = json.loads(resp.read())["tasks"]
    return job, tasks


def pixels(path: Path) -> bytes:
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGBA").tobytes()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--tiles", default="auto", help="tiles of the still (a count, or auto: "
                   "what the farm makes for its two slots)")
    p.add_argument("--video-frames", type=int, default=24)
    p.add_argument("--write", type=Path, help="put the figures in this markdown file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bf-tiles-") as tmp:
        work = Path(tmp)
        still = make_scene(work / "scene" / "still.blend", args.width, args.height,
                           args.samples, 1)
        anim = make_scene(work / "anim" / "anim.blend", 320, 180, 8, args.video_frames)
        full = direct_seconds(still, work)
        # what two one-thread renders at once cost on this machine: the ceiling of what
        # two nodes here can gain (two real machines do not share their cores' caches,
        # memory bandwidth and clocks)
        paired = direct_seconds(still, work, at_once=2)
        with farm(work / "one", 1) as url:
            one, _ = run_job(url, still, "1", work / "whole")
        with farm(work / "two", 2) as url:
            two, tasks = run_job(url, still, "1", work / "tiled", "--tiles", args.tiles)
            video, vtasks = run_job(url, anim, f"1-{args.video_frames}", work / "video",
                                    "--video")
        if pixels(work / "whole" / "frame_0001.png") != pixels(work / "tiled" / "frame_0001.png"):
            sys.exit("bench: the merged frame differs from the whole one")
        videos = [f for f in (work / "video").iterdir() if f.suffix in (".mp4", ".mkv", ".mov")]
        if not videos:
            sys.exit("bench: the job's video was not downloaded")
        size = videos[0].stat().st_size
    t_one = one["finished"] - one["started"]
    t_two = two["finished"] - two["started"]
    tiles = [t for t in tasks if t.get("tile") is not None]
    merge = next(t for t in tasks if t["kind"] == "merge")
    tile_sum = sum(t["finished"] - t["started"] for t in tiles)
    renders = [t for t in vtasks if t["kind"] == "render"]
    encode = next(t for t in vtasks if t["kind"] == "encode")
    last = max(t["finished"] for t in renders)
    lines = [
        f"still: {args.width}x{args.height}, {args.samples} samples, Cycles CPU, nodes of "
        f"one thread each, {os.cpu_count()} cores",
        f"{'':<34}{'render':>10}",
        f"{'1 node, the whole frame':<34}{t_one:9.2f}s",
        f"{f'2 nodes, {len(tiles)} tiles + merge':<34}{t_two:9.2f}s",
        f"speed-up: {t_one / t_two:.2f}x (target >= 1.8x); merged frame pixel-equal to "
        "the whole one",
        f"this machine: one 1-thread render alone {full:.2f}s, two at once {paired:.2f}s "
        f"each: two nodes here gain at most {2 * full / paired:.2f}x; the farm reached "
        f"{t_one / t_two / (2 * full / paired):.0%} of that",
        f"tile overhead: sum of tile renders {tile_sum:.2f}s / Blender's own whole render "
        f"alone {full:.2f}s = {tile_sum / full:.2f}, / two at once {paired:.2f}s = "
        f"{tile_sum / paired:.2f}; the merge took {merge['finished'] - merge['started']:.2f}s",
        f"video: {args.video_frames} frames at 320x180; last frame done -> video done "
        f"{encode['finished'] - last:.2f}s (the encode itself "
        f"{encode['finished'] - (encode['started'] or last):.2f}s), {size / 1024:.0f} KiB",
    ]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines, HEADING,
                      "`bench/tiles_bench.py`, real bf-server and bf-node processes on this "
                      "machine:")
    return 0


if __name__ == "__main__":
    sys.exit(main())
