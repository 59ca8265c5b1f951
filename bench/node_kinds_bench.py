"""Node kinds benchmark: a node on a Blender executable against one on a Python with
the ``bpy`` module, each against that same Blender rendering alone.

Renders the benchmarks' light scene (render_bench.make_anim: 30 frames, 128x128 px,
8 Cycles samples) on this machine, for each kind of Blender:

1. direct: the Blender renders the frames itself, timed from its start: ``blender -b
   scene.blend -a`` for the executable; for the module, its Python running a script
   that imports bpy, opens the file and renders each frame (``render.render``)
2. farm:   a real bf-server and one ``bf-node --blender PATH`` (processes), ``bf
   submit`` + ``bf wait`` as e2e_bench does, one task per frame

and prints farm/direct for each, and checks that the farm's frames are pixel for pixel
the direct ones. The module half runs when ``--module-python`` (default: the bpy 5.0
venv ``tests/bpy_env.sh 5.0`` makes, else ``.cache/bpy45-venv``) imports bpy and a
node on it comes online; otherwise the executable half runs alone, and the output says
why.

Usage: ``python bench/node_kinds_bench.py [--module-python PATH] [--frames 30]
[--write docs/benchmarks.md]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from e2e_bench import NodeDown, local_farm, render_job, write_section  # noqa: E402
from render_bench import blender, make_anim  # noqa: E402

HEADING = "## Node kinds: a Blender executable and the bpy module"

# Run by the module's Python: open the file, render frames 1..N as PNG into a folder.
RENDER_WITH_BPY = """
import sys
import bpy
blend, out, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
bpy.ops.wm.open_mainfile(filepath=blend)
scene = bpy.context.scene
scene.render.image_settings.file_format = "PNG"
for frame in range(1, frames + 1):
    scene.frame_set(frame)
    scene.render.filepath = f"{out}/frame_{frame:04d}.png"
    bpy.ops.render.render(write_still=True)
"""


def default_module_python() -> str | None:
    """The bpy 5.0 venv's python (tests/bpy_env.sh makes it, where that script exists),
    else the bpy 4.5 venv's the add-on tests keep in .cache; None when neither is there."""
    script = ROOT / "tests" / "bpy_env.sh"
    if script.is_file():
        proc = subprocess.run(["bash", str(script), "5.0"], capture_output=True, text=True,
                              timeout=900, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip().splitlines()[-1]
    fallback = ROOT / ".cache" / "bpy45-venv" / "bin" / "python"
    return str(fallback) if fallback.is_file() else None


def module_problem(python: str | None) -> str | None:
    """Why ``python`` cannot be the module Blender, or None when it imports bpy."""
    if python is None:
        return "no module Python (pass --module-python, or make one with tests/bpy_env.sh 5.0)"
    try:
        proc = subprocess.run([python, "-c", "import bpy; print(bpy.app.version_string)"],
                              capture_output=True, text=True, timeout=120, check=False,
                              env=clean_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} does not run: {exc}"
    if proc.returncode != 0:
        return f"{python} cannot import bpy: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def clean_env() -> dict[str, str]:
    """The environment without this checkout on PYTHONPATH: a direct render is Blender's alone."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def direct_executable(path: str, blend: Path, frames: int, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([path, "-b", str(blend), "-o", str(out / "frame_####"), "-F", "PNG",
                    "-s", "1", "-e", str(frames), "-a"], check=True, env=clean_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def direct_module(python: str, blend: Path, frames: int, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([python, "-c", RENDER_WITH_BPY, str(blend), str(out), str(frames)],
                   check=True, env=clean_env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def expect_frames(out: Path, frames: int, who: str) -> None:
    missing = [f for f in range(1, frames + 1) if not (out / f"frame_{f:04d}.png").is_file()]
    if missing:
        sys.exit(f"bench: {who} rendered no frame(s) {missing} into {out}")


def same_pixels(farm: Path, direct: Path, frames: int) -> bool:
    from PIL import Image

    def pixels(path: Path) -> bytes:
        with Image.open(path) as im:
            return im.convert("RGBA").tobytes()

    names = [f"frame_{f:04d}.png" for f in range(1, frames + 1)]
    return all(pixels(farm / n) == pixels(direct / n) for n in names)


def measure(kind: str, path: str, blend: Path, frames: int, work: Path,
            times: dict[str, float]) -> None:
    """Direct, then farm seconds for one Blender into ``times``; exits if the frames
    differ, raises NodeDown (after the direct figure) if its node does not come up."""
    render = direct_module if kind == "module" else direct_executable
    times["direct"] = render(path, blend, frames, work / "direct")
    expect_frames(work / "direct", frames, f"{path} alone")
    with local_farm(work, ["--blender", path]) as url:
        times["farm"] = render_job(url, blend, frames, work / "farm", ["--name", kind])["wall"]
    if not same_pixels(work / "farm", work / "direct", frames):
        sys.exit(f"bench: the {kind} node's frames differ from its Blender's own")


def node_words(log: Path) -> str:
    """Why the node stopped, in its own words: its log's last ``bf-node:`` line (else
    the last line), read before the log's folder goes."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    said = [line for line in lines if line.startswith("bf-node:")] or lines
    return said[-1].removeprefix("bf-node: ") if said else "its log is empty"


def row(kind: str, t: dict[str, float]) -> str:
    if "farm" not in t:
        return f"{kind:<14}{t['direct']:9.2f}s{'-':>10}{'-':>16}"
    return f"{kind:<14}{t['direct']:9.2f}s{t['farm']:9.2f}s{t['farm'] / t['direct']:16.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module-python", help="a Python with the bpy module (default: the "
                   "bpy 5.0 venv of tests/bpy_env.sh 5.0, else .cache/bpy45-venv)")
    p.add_argument("--blender", help="the Blender executable (default: $BLENDER or blender)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--write", type=Path, help="put the figures in this markdown file")
    args = p.parse_args()
    module = args.module_python or default_module_python()
    skipped = module_problem(module)
    kinds = [("executable", args.blender or blender())]
    if skipped is None and module is not None:
        kinds.append(("module", module))
    else:
        print(f"bench: the module half does not run: {skipped}", file=sys.stderr)
    times: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bf-kinds-") as tmp:
        blend = make_anim(Path(tmp), args.frames, args.res, args.samples)
        for kind, path in kinds:
            times[kind] = {}
            try:
                measure(kind, path, blend, args.frames, Path(tmp) / kind, times[kind])
            except NodeDown:
                if kind != "module":
                    raise
                skipped = f"bf-node --blender {path} did not come online: " + \
                    node_words(Path(tmp) / kind / "node" / "node.log")
                print(f"bench: the module half's farm does not run: {skipped}", file=sys.stderr)
    lines = [
        f"scene: {args.frames} frames, {args.res}x{args.res} px, {args.samples} samples, "
        f"Cycles CPU, {os.cpu_count()} cores, one node, one task per frame",
        f"{'':<14}{'direct':>10}{'farm':>10}{'farm / direct':>16}",
        *(row(kind, t) for kind, t in times.items()),
    ]
    if skipped is not None:
        lines.append(f"module half: {skipped}")
    lines.append("direct: the same Blender renders the frames itself, timed from its start; "
                 "farm: bf submit + bf wait; frames pixel-equal to direct")
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines, HEADING,
                      "`bench/node_kinds_bench.py`, each kind of Blender on its own and "
                      "through the farm on this machine:")
    return 0


if __name__ == "__main__":
    sys.exit(main())
