"""End-to-end benchmark: what a person waits for through the real command line.

Renders one light scene (30 frames, 128x128 px, 8 Cycles samples) twice on this
machine:

1. direct: ``blender -b scene.blend -a``
2. farm:   a real bf-server and one bf-node (processes), then ``bf submit`` and
           ``bf wait`` as a person runs them, timed from before the submit to the
           moment ``bf wait`` has exited

and prints the ratio farm/direct (target <= 1.25) and how long ``bf wait`` took to
exit after the job ended (the server's ``finished`` timestamp; target <= 100 ms).
The children run the code of the checkout this script lies in (PYTHONPATH), so
the same script measures another worktree when copied there.

Usage: ``python bench/e2e_bench.py [--frames 30] [--repeat 3] [--write docs/benchmarks.md]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from render_bench import blender, free_port, make_anim, start, stop  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
HEADING = "## End to end: bf submit + bf wait against Blender alone"


def direct(blend: Path, work: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([blender(), "-b", str(blend), "-o", str(work / "direct" / "f_####"),
                    "-F", "PNG", "-a"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def bf(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "bf"), "--server", url, *args], capture_output=True,
                          text=True, env=ENV, timeout=600, check=False)


def through_cli(blend: Path, frames: int, url: str, run: int) -> dict[str, float]:
    """Seconds: ``farm`` (from submit to `bf wait` gone), ``exit`` (from the job's end to
    that), and where they went: ``submit`` (the bf submit process), ``start`` (queued
    to its first task on the node), ``render`` (first task to the job's end)."""
    t0 = time.perf_counter()
    sub = bf(url, "submit", str(blend), "--frames", f"1-{frames}", "--name", f"e2e-{run}")
    if sub.returncode != 0:
        sys.exit(f"bench: bf submit failed: {sub.stderr}")
    submitted = time.perf_counter() - t0
    job_id = sub.stdout.strip().splitlines()[-1]
    waited = bf(url, "wait", job_id)
    exited = time.time()
    elapsed = time.perf_counter() - t0
    if waited.returncode != 0:
        sys.exit(f"bench: bf wait failed: {waited.stderr}")
    shown = bf(url, "--json", "show", job_id)
    job = json.loads(shown.stdout)["job"]
    if job["status"] != "completed" or job["frames_done"] != frames:
        sys.exit(f"bench: the job ended {job['status']}: {job.get('error')}")
    finished = float(job["finished"])
    tasks = sorted(json.loads(shown.stdout)["tasks"], key=lambda t: t["started"] or 0)
    # From one frame's task done to Blender's first line about the next: the farm's own
    # time between frames (reporting, uploading, assigning), with Blender idle.
    gaps = sum(max(0.0, b["started"] - a["finished"]) for a, b in zip(tasks, tasks[1:], strict=False)
               if a["finished"] and b["started"])
    spans = [t["finished"] - t["started"] for t in tasks if t["finished"] and t["started"]]
    return {"between": gaps, "per_frame": statistics.median(spans),
            "cold": float(tasks[0]["started"]) - float(job["started"]), "farm": elapsed, "exit": exited - finished, "submit": submitted,
            "start": float(job["started"]) - float(job["created"]),
            "render": finished - float(job["started"])}


def render_job(url: str, blend: Path, frames: int, out: Path,
               options: Sequence[str] = ()) -> dict[str, float]:
    """``bf submit`` frames 1 to ``frames`` of ``blend`` (with ``options``), ``bf wait``,
    then ``bf download`` them into ``out``; seconds ``wall`` (from before the submit to
    `bf wait` gone) and ``render`` (the job's first task starting to its end)."""
    t0 = time.perf_counter()
    sub = bf(url, "submit", str(blend), "--frames", f"1-{frames}", *options)
    if sub.returncode != 0:
        sys.exit(f"bench: bf submit failed: {sub.stderr}")
    job_id = sub.stdout.strip().splitlines()[-1]
    waited = bf(url, "wait", job_id)
    wall = time.perf_counter() - t0
    job = json.loads(bf(url, "--json", "show", job_id).stdout)["job"]
    if waited.returncode != 0 or job["status"] != "completed" or job["frames_done"] != frames:
        sys.exit(f"bench: the job ended {job['status']}: {job.get('error')}")
    if bf(url, "download", job_id, str(out), "--flat").returncode != 0:
        sys.exit(f"bench: bf download of {job_id} failed")
    return {"wall": wall, "render": float(job["finished"]) - float(job["started"])}


class NodeDown(SystemExit):
    """The bench's node did not come online (exits like sys.exit, naming its log)."""


def wait_online(url: str, node: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        nodes = bf(url, "--json", "nodes")
        if nodes.returncode == 0 and any(n["online"] for n in json.loads(nodes.stdout)["nodes"]):
            return
        if time.monotonic() > deadline or node.poll() is not None:
            raise NodeDown(f"bench: the node did not come up; see {log}")
        time.sleep(0.2)


@contextlib.contextmanager
def local_farm(work: Path, node_args: Sequence[str] = ()) -> Iterator[str]:
    """A real bf-server and one bf-node (``node_args`` added to its command line) under
    ``work``, both stopped on leaving; yields the server's URL once the node is online."""
    url = f"http://127.0.0.1:{free_port()}"
    server = start([str(BIN / "bf-server"), "--data-dir", str(work / "server"), "--port",
                    url.rsplit(":", 1)[1], "--log-level", "WARNING"], work / "server.log")
    node = None
    try:
        for _ in range(200):
            if "listening on" in (work / "server.log").read_text():
                break
            time.sleep(0.05)
        node = start([str(BIN / "bf-node"), "--server", url, "--work-dir", str(work / "node"),
                      "--name", "e2e", *node_args], work / "node" / "node.log")
        wait_online(url, node, work / "node" / "node.log")
        yield url
    finally:
        if node is not None:
            stop(node)
        stop(server)


def measure(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    blend = make_anim(work, args.frames, args.res, args.samples)
    times: dict[str, list[float]] = {"direct": []}
    with local_farm(work) as url:
        for run in range(args.repeat):
            times["direct"].append(direct(blend, work))
            for key, value in through_cli(blend, args.frames, url, run).items():
                times.setdefault(key, []).append(value)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each; the best is kept (as render_bench does: other load "
                        "on the machine only ever adds time)")
    p.add_argument("--write", type=Path, help="put the figures in this markdown file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bf-e2e-") as tmp:
        times = measure(args, Path(tmp))
    best = min(range(args.repeat), key=lambda i: times["farm"][i])
    med = {k: v[best] for k, v in times.items()}
    med["direct"] = min(times["direct"])
    ratio = med["farm"] / med["direct"]
    lines = [
        f"scene: {args.frames} frames, {args.res}x{args.res} px, {args.samples} samples, "
        f"Cycles CPU, {os.cpu_count()} cores, one node, one task per frame; "
        f"best of {args.repeat}",
        f"{'direct blender -b -a':<48}{med['direct']:8.2f} s",
        f"{'farm: bf submit + bf wait':<48}{med['farm']:8.2f} s",
        f"{'  of which bf submit':<48}{med['submit']:8.2f} s",
        f"{'  queued until the first task starts':<48}{med['start']:8.2f} s",
        f"{'  first task started to the job ended':<48}{med['render']:8.2f} s",
        f"{'    of which the node starting (files, Blender)':<48}{med['cold']:8.2f} s",
        f"{'    of which between frames (Blender idle)':<48}{med['between']:8.2f} s",
        f"{'    one frame on the node (median)':<48}{med['per_frame'] * 1000:8.0f} ms"
        f"   (direct: {med['direct'] * 1000 / args.frames:.0f} ms a frame, with its start-up)",
        f"{'bf wait exits after the job ends':<48}{med['exit'] * 1000:8.0f} ms"
        f"   (median {statistics.median(times['exit']) * 1000:.0f} ms; target <= 100 ms)",
        f"farm / direct = {ratio:.2f}   (target <= 1.25)",
    ]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines)
    return 0 if ratio <= 1.25 and statistics.median(times["exit"]) <= 0.1 else 1


def write_section(path: Path, lines: list[str], heading: str = HEADING,
                  intro: str = "`bench/e2e_bench.py`, through the real `bf` command line:"
                  ) -> None:
    """Put these figures in ``path`` as their own section (``heading``, then ``intro``),
    in place of that section's old figures, before any history."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head, sep, history = text.partition("<!-- history -->")
    before, _, after = head.partition(heading)
    rest = after.split("\n## ", 1)
    tail = ("\n## " + rest[1]) if len(rest) == 2 else ""
    section = (f"{heading}\n\n{intro}\n\n"
               "```\n" + "\n".join(lines) + "\n```\n")
    body = before.rstrip("\n") + "\n\n" + section.rstrip("\n")
    if tail:
        body += "\n" + tail.rstrip("\n")
    path.write_text(body + "\n\n" + sep + history)


if __name__ == "__main__":
    sys.exit(main())
