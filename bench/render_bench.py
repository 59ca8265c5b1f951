"""Render benchmark: the farm against Blender alone, and against the naive design.

Renders the same light scene (30 frames, 128x128 px, 8 Cycles samples) three ways
on this machine, one node, side by side in one run:

1. direct:  ``blender -b scene.blend -a`` (the floor: no farm at all)
2. farm:    bf-server + one bf-node with its persistent runner (Blender stays open
            between frames), one task per frame, from submit to the last frame stored
3. naive:   the same farm with ``bf-node --no-persistent``: a new Blender per frame

and prints wall times and the ratios farm/direct (target <= 1.25) and naive/farm
(target >= 5). Usage: ``python bench/render_bench.py [--frames 30] [--repeat 1]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blenderfarm.client.api import Client  # noqa: E402
from blenderfarm.client.pack import build_spec, pack_project, upload_missing  # noqa: E402

BIN = Path(sys.executable).parent


def blender() -> str:
    path = os.environ.get("BLENDER") or shutil.which("blender")
    if not path:
        sys.exit("bench: Blender is not installed")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def direct(blend: Path, work: Path) -> float:
    out = work / "direct"
    t0 = time.perf_counter()
    subprocess.run([blender(), "-b", str(blend), "-o", str(out / "f_####"), "-F", "PNG", "-a"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def farm(blend: Path, frames: int, work: Path, persistent: bool, url: str) -> float:
    node_dir = work / ("node-persistent" if persistent else "node-naive")
    args = [str(BIN / "bf-node"), "--server", url, "--work-dir", str(node_dir), "--name",
            node_dir.name] + ([] if persistent else ["--no-persistent"])
    node = start(args, node_dir / "node.log")
    client = Client(url)
    try:
        deadline = time.monotonic() + 60
        while not any(n["online"] and n["name"] == node_dir.name for n in client.list_nodes()):
            if time.monotonic() > deadline or node.poll() is not None:
                sys.exit(f"bench: the node did not come up; see {node_dir / 'node.log'}")
            time.sleep(0.1)
        t0 = time.perf_counter()  # the user's wait: pack, upload, render, every frame stored
        with tempfile.TemporaryDirectory() as tmp:
            packed = pack_project(blend, workdir=Path(tmp) / "pack", copy=False)
            upload_missing(client, packed)
            spec = build_spec(packed, name=node_dir.name, frames=f"1-{frames}", chunk=1,
                              priority=50, overrides={})
            job = client.create_job(spec)
        while job["status"] not in ("completed", "failed", "canceled"):
            time.sleep(0.05)
            job = client.get_job(job["id"])
        elapsed = time.perf_counter() - t0
        if job["status"] != "completed" or job["frames_done"] != frames:
            sys.exit(f"bench: the farm job ended {job['status']}: {job.get('error')}")
        return elapsed
    finally:
        stop(node)


def make_anim(work: Path, frames: int, res: int, samples: int) -> Path:
    """The benchmarks' light scene (examples/make_scene.py "anim") in ``work/scene``."""
    subprocess.run([blender(), "-b", "--factory-startup", "--python",
                    str(ROOT / "examples" / "make_scene.py"), "--", "anim", str(work / "scene"),
                    "--frames", str(frames), "--res", str(res), "--samples", str(samples)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return work / "scene" / "anim.blend"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1, help="runs of each; the best is kept")
    p.add_argument("--write", type=Path, help="put the figures in this markdown file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bf-bench-") as tmp:
        work = Path(tmp)
        blend = make_anim(work, args.frames, args.res, args.samples)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start([str(BIN / "bf-server"), "--data-dir", str(work / "server"),
                        "--port", str(port), "--log-level", "WARNING"], work / "server.log")
        try:
            for _ in range(200):
                if "listening on" in (work / "server.log").read_text():
                    break
                time.sleep(0.05)
            times: dict[str, list[float]] = {"direct": [], "farm": [], "naive": []}
            for _ in range(args.repeat):
                times["direct"].append(direct(blend, work))
                times["farm"].append(farm(blend, args.frames, work, True, url))
                times["naive"].append(farm(blend, args.frames, work, False, url))
        finally:
            stop(server)
    best = {k: min(v) for k, v in times.items()}
    lines = [
        f"scene: {args.frames} frames, {args.res}x{args.res} px, {args.samples} samples, "
        f"Cycles CPU, {os.cpu_count()} cores, one node, one task per frame",
        f"{'direct blender -b -a':<34}{best['direct']:8.2f} s",
        f"{'farm (persistent Blender)':<34}{best['farm']:8.2f} s",
        f"{'farm (one Blender per frame)':<34}{best['naive']:8.2f} s",
        f"farm / direct = {best['farm'] / best['direct']:.2f}   (target <= 1.25)",
        f"naive / farm  = {best['naive'] / best['farm']:.2f}   (target >= 5)",
    ]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines)
    return 0


def write_section(path: Path, lines: list[str]) -> None:
    """Put these figures in ``path`` as its render section, before any history."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    marker = "<!-- history -->"
    head, sep, history = text.partition(marker)
    head = head.split(RENDER_HEADING)[0].rstrip("\n")
    section = (f"\n\n{RENDER_HEADING}\n\n`bench/render_bench.py`, the same scene three ways "
               "on this machine:\n\n```\n" + "\n".join(lines) + "\n```\n\n")
    path.write_text(head + section + sep + history)


RENDER_HEADING = "## Rendering: the farm against Blender alone"


if __name__ == "__main__":
    sys.exit(main())
