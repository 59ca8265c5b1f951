"""Splitting a frame by samples against splitting it into tiles: which costs less, and
which gives Blender's own frame.

Issue 14 asked whether Cycles' sample subsets (each part renders the whole frame with
``samples / N`` samples from its own ``sample_offset``; the parts averaged in float)
beat tiles on small or slow-to-load scenes, and to offer ``--split samples`` if they
do. This measures both on the tiles benchmark's scene, in one Blender with one
thread, side by side: the whole frame, N tiles (border renders) and N sample subsets,
each part's render time as Blender measures it, plus the scene's load (which every
part pays once on its node either way: a subset needs the whole scene as a tile does).
It then compares the averaged subsets and the merged tiles with the whole frame, as
float RGBA, and prints the largest difference of each.

Usage: ``python bench/split_bench.py [--parts 4] [--samples 64] [--width 640]
[--height 360] [--write docs/benchmarks.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from e2e_bench import write_section  # noqa: E402
from render_bench import blender  # noqa: E402
from tiles_bench import make_scene  # noqa: E402

HEADING = "## Splitting a frame: by samples against tiles"

# Runs in Blender: out_dir, parts. Renders to float EXR and compares in Blender's own
# pixel buffers (no numpy in Debian's Blender: plain arrays).
MEASURE = r"""
import array, json, sys, time
import bpy
out, parts = sys.argv[sys.argv.index("--") + 1:]
parts = int(parts)
scene = bpy.context.scene
render, cycles = scene.render, scene.cycles
render.threads_mode, render.threads = "FIXED", 1
image = render.image_settings
image.file_format, image.color_mode, image.color_depth = "OPEN_EXR", "RGBA", "32"
samples = cycles.samples

def go(name):
    render.filepath = f"{out}/{name}.exr"
    start = time.monotonic()
    bpy.ops.render.render(write_still=True)
    return time.monotonic() - start, render.filepath

def pixels(path):
    img = bpy.data.images.load(path)
    buf = array.array("f", bytes(4 * len(img.pixels)))
    img.pixels.foreach_get(buf)
    size = tuple(img.size)
    bpy.data.images.remove(img)
    return size, buf

whole_s, whole = go("whole")
(w, h), full = pixels(whole)
# tiles: columns of the frame, each a cropped border render
tile_s, merged = 0.0, array.array("f", bytes(4 * len(full)))
render.use_border, render.use_crop_to_border = True, True
for i in range(parts):
    x0, x1 = i * w // parts, (i + 1) * w // parts
    render.border_min_x, render.border_max_x = x0 / w, x1 / w
    render.border_min_y, render.border_max_y = 0.0, 1.0
    seconds, path = go(f"tile{i}")
    tile_s += seconds
    (tw, th), tile = pixels(path)
    for y in range(h):
        merged[(y * w + x0) * 4:(y * w + x0 + tw) * 4] = tile[y * tw * 4:(y + 1) * tw * 4]
render.use_border = False
# sample subsets: the whole frame, samples/parts each from its own offset, averaged
split_s, summed = 0.0, array.array("d", bytes(8 * len(full)))
cycles.samples = samples // parts
for i in range(parts):
    cycles.sample_offset = i * (samples // parts)
    seconds, path = go(f"subset{i}")
    split_s += seconds
    _, part = pixels(path)
    for k, v in enumerate(part):
        summed[k] += v
average = array.array("f", (v / parts for v in summed))

def worst(a):
    return max(abs(x - y) for x, y in zip(a, full))

print("SPLIT " + json.dumps({
    "size": [w, h], "samples": samples, "parts": parts, "whole": whole_s, "tiles": tile_s,
    "subsets": split_s, "tiles_exact": merged.tobytes() == full.tobytes(),
    "tiles_worst": worst(merged), "subsets_exact": average.tobytes() == full.tobytes(),
    "subsets_worst": worst(average)}))
"""


def load_seconds(blend: Path) -> float:
    """Blender's start and the scene's load, without a render."""
    script = "import time, bpy; print('LOADED', time.monotonic())"
    import time
    start = time.monotonic()
    subprocess.run([blender(), "-b", str(blend), "--python-expr", script], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return time.monotonic() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--write", type=Path, help="put the figures in this markdown file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bf-split-") as tmp:
        work = Path(tmp)
        blend = make_scene(work / "scene" / "still.blend", args.width, args.height,
                           args.samples, 1)
        proc = subprocess.run([blender(), "-b", str(blend), "--python-exit-code", "1",
                               "--python-expr", MEASURE, "--", str(work), str(args.parts)],
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ})
        found = [line for line in proc.stdout.splitlines() if line.startswith("SPLIT ")]
        if proc.returncode != 0 or not found:
            sys.exit("bench: the measurement failed:\n" + proc.stdout[-3000:])
        r = json.loads(found[-1][6:])
        load = load_seconds(blend)
    n = r["parts"]
    lines = [
        f"{r['size'][0]}x{r['size'][1]}, {r['samples']} samples, Cycles CPU, one thread, "
        f"{n} parts; Blender's start and the scene's load: {load:.2f}s per part either way",
        f"{'':<30}{'render s':>10}{'/ whole':>9}  equal to the whole frame?",
        f"{'the whole frame':<30}{r['whole']:10.2f}{1:9.2f}",
        f"{f'{n} tiles (border renders)':<30}{r['tiles']:10.2f}{r['tiles'] / r['whole']:9.2f}  "
        + ("bit for bit" if r["tiles_exact"] else f"no: at most {r['tiles_worst']:.3g} off"),
        f"{f'{n} sample subsets, averaged':<30}{r['subsets']:10.2f}"
        f"{r['subsets'] / r['whole']:9.2f}  "
        + ("bit for bit" if r["subsets_exact"] else
           f"no: at most {r['subsets_worst']:.3g} off (float sums in another order)"),
        "subsets are " + ("cheaper" if r["subsets"] < r["tiles"] else "no cheaper") +
        " than tiles here, and every part loads the whole scene in both, so a slow-to-load "
        "scene gains nothing either way; " + (
            "--split samples is not offered: the frame it gives is not Blender's"
            if not r["subsets_exact"] else "subsets give Blender's frame"),
    ]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines, HEADING,
                      "`bench/split_bench.py`, in one Blender on this machine:")
    return 0


if __name__ == "__main__":
    sys.exit(main())
