"""Persistent data benchmark: a heavy scene through the farm with and without it.

The scene is one where building the scene's data dominates a frame: a displaced
terrain of about two million triangles (a grid, simple subdivision at render time and
a Displace modifier), seen by a camera that moves, rendered at 32x32 px with 1 Cycles
sample. A real bf-server and one bf-node (processes) render it twice in one run,
through ``bf submit`` and ``bf wait``: once with ``--no-persistent-data`` (Blender
evaluates the modifiers and Cycles builds the BVH for every frame) and once with
``--persistent-data`` (the runner's Blender keeps them between the frames it renders).
It prints frames per minute of each, counted over the job's render (from its first
task starting to its end), and the ratio; and it checks that both jobs' frames are
pixel for pixel the same and differ from each other frame to frame.

Usage: ``python bench/persistent_bench.py [--frames 10] [--chunk N] [--write docs/benchmarks.md]``
(``--chunk``: frames per task, default 1 as on the farm: the runner's Blender keeps the
data from one task of the job to the next).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from e2e_bench import local_farm, render_job, write_section  # noqa: E402
from render_bench import blender  # noqa: E402

HEADING = "## Persistent data: a heavy scene with and without it"

# Runs in Blender: out, grid (quads a side), render subdivision levels, frames, res.
MAKE_HEAVY = """
import bpy, math, sys
out, grid, levels, frames, res = sys.argv[sys.argv.index("--") + 1:]
grid, levels, frames, res = int(grid), int(levels), int(frames), int(res)
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
cycles = scene.cycles
cycles.device, cycles.samples, cycles.use_denoising = "CPU", 1, False
cycles.seed, cycles.use_animated_seed, cycles.use_adaptive_sampling = 0, False, False
scene.render.resolution_x = scene.render.resolution_y = res
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.render.filepath = "//render/frame_"
scene.frame_start, scene.frame_end = 1, frames
bpy.ops.mesh.primitive_grid_add(x_subdivisions=grid, y_subdivisions=grid, size=10)
terrain = bpy.context.object
sub = terrain.modifiers.new("Subdivision", "SUBSURF")
sub.subdivision_type, sub.levels, sub.render_levels = "SIMPLE", 0, levels
bumps = bpy.data.textures.new("Bumps", "CLOUDS")
bumps.noise_scale = 0.6
displace = terrain.modifiers.new("Displace", "DISPLACE")
displace.texture, displace.strength = bumps, 0.8
bpy.ops.object.camera_add(location=(0, -9, 5), rotation=(math.radians(60), 0, 0))
camera = scene.camera = bpy.context.object
for frame in range(1, frames + 1):
    camera.location.x = -3 + 6 * (frame - 1) / max(frames - 1, 1)
    camera.keyframe_insert("location", frame=frame)
bpy.ops.object.light_add(type="SUN", rotation=(0.6, 0.2, 0))
bpy.ops.wm.save_as_mainfile(filepath=out)
"""


def make_heavy(work: Path, grid: int, levels: int, frames: int, res: int) -> Path:
    blend = work / "scene" / "heavy.blend"
    blend.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([blender(), "-b", "--factory-startup", "--python-exit-code", "1",
                    "--python-expr", MAKE_HEAVY, "--", str(blend), str(grid), str(levels),
                    str(frames), str(res)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return blend


def check_frames(off: Path, on: Path, frames: int) -> None:
    """Both jobs' frames are the same pixels, and each differs from the next."""
    from PIL import Image

    def pixels(path: Path) -> bytes:
        with Image.open(path) as im:
            return im.convert("RGBA").tobytes()

    names = [f"frame_{f:04d}.png" for f in range(1, frames + 1)]
    ons = [pixels(on / n) for n in names]
    if [pixels(off / n) for n in names] != ons:
        sys.exit("bench: frames with persistent data differ from those without")
    if any(a == b for a, b in zip(ons, ons[1:], strict=False)):
        sys.exit("bench: two consecutive frames are the same: the camera did not move")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--chunk", type=int, default=1,
                   help="frames per task (default 1, the farm's own default)")
    p.add_argument("--grid", type=int, default=250, help="the grid's quads a side")
    p.add_argument("--levels", type=int, default=2, help="subdivision levels at render time")
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--write", type=Path, help="put the figures in this markdown file")
    args = p.parse_args()
    triangles = 2 * (args.grid * 4 ** args.levels) * args.grid
    with tempfile.TemporaryDirectory(prefix="bf-persistent-") as tmp:
        work = Path(tmp)
        blend = make_heavy(work, args.grid, args.levels, args.frames, args.res)
        with local_farm(work) as url:
            jobs = {name: render_job(url, blend, args.frames, work / name,
                                     ["--chunk", str(args.chunk), flag, "--name", name])
                    for name, flag in (("off", "--no-persistent-data"),
                                       ("on", "--persistent-data"))}
        check_frames(work / "off", work / "on", args.frames)
    fpm = {name: args.frames * 60 / t["render"] for name, t in jobs.items()}
    lines = [
        f"scene: {args.frames} frames, about {triangles / 1e6:.1f} M triangles (subdivided, "
        f"displaced), a moving camera, {args.res}x{args.res} px, 1 sample, Cycles CPU, "
        f"{os.cpu_count()} cores, one node, {args.chunk} frame(s) per task",
        f"{'':<30}{'frames/min':>12}{'render':>10}{'submit to done':>16}",
        *(f"{label:<30}{fpm[k]:12.1f}{t['render']:9.2f}s{t['wall']:15.2f}s"
          for label, k, t in (("--no-persistent-data", "off", jobs["off"]),
                              ("--persistent-data", "on", jobs["on"]))),
        f"persistent / not = {fpm['on'] / fpm['off']:.2f}x the frames per minute "
        "(frames pixel-equal)",
    ]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines, HEADING,
                      "`bench/persistent_bench.py`, the same heavy scene twice through the "
                      "farm on this machine:")
    return 0


if __name__ == "__main__":
    sys.exit(main())
