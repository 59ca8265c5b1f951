"""The chaos run: render a job while nodes, the server and Blender are killed with -9.

At seeded random moments it kills a node, the server or a rendering Blender, and
restarts what it killed; then it lets the job finish and checks that every frame
exists exactly once and matches a direct Blender render. It prints what it did.

    python tests/chaos.py --frames 40 --nodes 3 --kills 30 --seed 7     # a long run
    (tests/test_chaos.py runs a short one in CI)
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from procs import NodeProc, ServerProc, bin_path, free_port, get_json, nodes_online, wait_for  # noqa: E402
from scenes import make_scene, read_rgba, render_frames  # noqa: E402


@dataclass
class Report:
    seed: int
    frames: int
    actions: list[str] = field(default_factory=list)
    frames_stored: int = 0
    duplicates: int = 0
    mismatches: list[int] = field(default_factory=list)
    status: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.status == "completed" and self.frames_stored == self.frames
                and not self.duplicates and not self.mismatches)

    def summary(self) -> str:
        kills = [a for a in self.actions if "killed" in a]
        kinds = {k: sum(a.startswith(k) for a in kills) for k in ("node", "server", "blender")}
        return (f"chaos seed={self.seed}: {len(kills)} kills ({kinds['node']} nodes, "
                f"{kinds['server']} server, {kinds['blender']} Blender) in {self.seconds:.0f}s; "
                f"job {self.status}; {self.frames_stored}/{self.frames} frames stored, "
                f"{self.duplicates} duplicates, {len(self.mismatches)} differ from Blender: "
                + ("OK" if self.ok else "FAILED"))


def _job(url: str, job_id: str) -> dict:
    return get_json(f"{url}/api/jobs/{job_id}")["job"]


def _blender_pids(work_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"{work_dir}/jobs/"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


class Chaos:
    def __init__(self, work: Path, seed: int, frames: int, nodes: int) -> None:
        self.work, self.rng, self.frames = work, random.Random(seed), frames
        self.report = Report(seed=seed, frames=frames)
        config = work / "server.toml"
        config.write_text("[server]\nmax_attempts = 50\nblocklist_after = 50\n")
        self.server = ServerProc(work / "server", free_port(), ["--config", str(config)])
        self.nodes = [NodeProc(self.server.url, work / f"node{i}", f"node{i}",
                               ["--watchdog", "60"]) for i in range(nodes)]

    def log(self, what: str) -> None:
        self.report.actions.append(what)
        print(f"  [{time.monotonic() - self.t0:6.1f}s] {what}", flush=True)

    def kill_one(self, kind: str) -> None:
        if kind == "server":
            self.server.kill9()
            self.log("server killed")
            time.sleep(self.rng.uniform(0.3, 1.5))
            self.server.start()
            self.log("server restarted")
        elif kind == "node":
            node = self.rng.choice(self.nodes)
            node.kill9()
            self.log(f"node {node.name} killed")
            time.sleep(self.rng.uniform(0.3, 2.0))
            node.start()
            self.log(f"node {node.name} restarted")
        else:
            node = self.rng.choice(self.nodes)
            pids = _blender_pids(self.work / node.name)
            for pid in pids:
                subprocess.run(["kill", "-9", str(pid)], check=False)
            self.log(f"blender of {node.name} killed" + ("" if pids else " (none running)"))

    def run(self, blend: Path, kills: int, timeout: float) -> Report:
        self.t0 = time.monotonic()
        self.server.start()
        for n in self.nodes:
            n.start()
        wait_for(lambda: nodes_online(self.server.url) == len(self.nodes), 60, "nodes online")
        sub = subprocess.run([bin_path("bf"), "submit", str(blend), "--frames", f"1-{self.frames}",
                              "--name", "chaos", "--server", self.server.url],
                             capture_output=True, text=True, check=True)
        job_id = sub.stdout.strip().splitlines()[-1]
        # every kind at least once, in a seeded order, then seeded random choices
        kinds = self.rng.sample(["node", "server", "blender"], 3)
        kinds += [self.rng.choice(["node", "server", "blender"]) for _ in range(kills)]
        for kind in kinds[:kills]:
            time.sleep(self.rng.uniform(0.3, 1.5))
            if _job(self.server.url, job_id)["status"] == "completed":
                break
            self.kill_one(kind)
        done = wait_for(lambda: _job(self.server.url, job_id)["status"] in
                        ("completed", "failed", "canceled") and _job(self.server.url, job_id),
                        timeout, "the job to end")
        self.report.status = done["status"]
        self.report.seconds = time.monotonic() - self.t0
        self._check(job_id, blend)
        return self.report

    def _check(self, job_id: str, blend: Path) -> None:
        outputs = get_json(f"{self.server.url}/api/jobs/{job_id}/outputs")["outputs"]
        frames = [o["frame"] for o in outputs]
        self.report.duplicates = len(frames) - len(set(frames))
        stored = sorted((self.work / "server" / "jobs" / job_id).glob("*.png"))
        self.report.frames_stored = len(stored)
        ref = render_frames(blend, list(range(1, self.frames + 1)), self.work / "direct")
        for f, r in enumerate(ref, start=1):
            got = self.work / "server" / "jobs" / job_id / f"chaos_{f:04d}.png"
            if not got.exists() or np.abs(read_rgba(got).astype(int) -
                                          read_rgba(r).astype(int)).mean() > 0.5:
                self.report.mismatches.append(f)

    def stop(self) -> None:
        for p in [*self.nodes, self.server]:
            p.stop()


def run_chaos(work: Path, seed: int, frames: int = 40, nodes: int = 3, kills: int = 6,
              res: int = 64, samples: int = 8, timeout: float = 300) -> Report:
    blend = make_scene("anim", work / "scene", frames=frames, res=res, samples=samples)
    chaos = Chaos(work, seed, frames, nodes)
    print(f"chaos: {frames} frames on {nodes} nodes, {kills} kills, seed {seed}", flush=True)
    try:
        report = chaos.run(blend, kills, timeout)
    finally:
        chaos.stop()
    print(report.summary(), flush=True)
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="bf-chaos-") as tmp:
        report = run_chaos(Path(tmp), args.seed, args.frames, args.nodes, args.kills,
                           timeout=max(300, args.kills * 20))
    if args.json:
        print(json.dumps(report.__dict__))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
