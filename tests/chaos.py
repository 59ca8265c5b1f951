"""The chaos run: render a job while the farm is broken on purpose, then check every frame.

At seeded random moments it kills a node, the server or a rendering Blender with -9
(and restarts what it killed), and, with ``--net``, breaks the network between the
nodes and the server: every node talks to the server through its own TCP proxy
(tests/netproxy.py) that drops the connections, delays them for some seconds, or
partitions them for a time shorter than the server's grace period (the node should
keep its tasks) or longer (they go to other nodes, and come back twice). With
``--disk-full`` the server's data dir is a small tmpfs that is filled up mid-job and
emptied again. Then it lets the job finish and checks that every frame exists
exactly once and matches a direct Blender render. It prints what it did.

    python tests/chaos.py --frames 40 --nodes 3 --faults 30 --seed 7         # kills only
    python tests/chaos.py --net --faults 30 --seed 7                         # kills + network
    python tests/chaos.py --disk-full --frames 24 --nodes 2 --seed 7         # a full disk
    (tests/test_chaos.py runs short ones in CI)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from netproxy import NetProxy  # noqa: E402
from procs import (  # noqa: E402
    NodeProc,
    ServerProc,
    bin_path,
    blender_pids,
    fill_disk,
    free_port,
    get_json,
    mount_tmpfs,
    nodes_online,
    umount,
    wait_for,
)
from scenes import make_scene, read_rgba, render_frames  # noqa: E402

KILLS = ("node", "server", "blender")
NET = ("drop", "delay", "partition_short", "partition_long")
#: how the summary names each kind of fault (an "s" is added for more than one)
LABELS = {"node": "node kill", "server": "server kill", "blender": "Blender kill",
          "drop": "drop", "delay": "delay", "partition_short": "short partition",
          "partition_long": "long partition", "disk_full": "full disk"}
#: what a full disk looks like in the farm's logs
DISK_ERRORS = r"No space left|disk is full|database or disk is full|disk_error|Errno 28"


@dataclass
class Report:
    seed: int
    frames: int
    actions: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)  # kind -> times injected
    frames_stored: int = 0
    duplicates: int = 0
    mismatches: list[int] = field(default_factory=list)
    status: str = ""
    error: str | None = None
    seconds: float = 0.0
    #: what the farm did in answer (from its logs): reconnects, requeues, disk errors...
    effects: dict[str, int] = field(default_factory=dict)
    #: the full-disk phase: what was seen while the disk was full, and after a restart
    notes: list[str] = field(default_factory=list)
    after_restart: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.status == "completed" and self.frames_stored == self.frames
                and not self.duplicates and not self.mismatches)

    def count(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def summary(self) -> str:
        total = sum(self.faults.values())
        order = [*LABELS, *sorted(set(self.faults) - set(LABELS))]
        kinds = ", ".join(f"{n} {LABELS.get(k, k)}" + ("s" if n > 1 else "")
                          for k in order if (n := self.faults.get(k, 0)))
        plural = "s" if total != 1 else ""
        return (f"chaos seed={self.seed}: {total} fault{plural} ({kinds or 'none'}) in "
                f"{self.seconds:.0f}s; job {self.status}; {self.frames_stored}/{self.frames} "
                f"frames stored, {self.duplicates} duplicates, {len(self.mismatches)} differ "
                f"from Blender: " + ("OK" if self.ok else "FAILED"))


def _job(url: str, job_id: str) -> dict:
    return get_json(f"{url}/api/jobs/{job_id}")["job"]


def _blender_pids(work_dir: Path) -> list[int]:
    """Blender processes rendering from a node's work dir (not the node agent itself)."""
    return blender_pids(work_dir)


class Chaos:
    def __init__(self, work: Path, seed: int, frames: int, nodes: int, *, net: bool = False,
                 grace: float = 3.0, heartbeat: float | None = None,
                 server_log: Path | None = None) -> None:
        self.work, self.rng, self.frames = work, random.Random(seed), frames
        self.report = Report(seed=seed, frames=frames)
        self.grace, self.heartbeat = grace, heartbeat
        config = work / "server.toml"
        config.write_text("[server]\nmax_attempts = 50\nblocklist_after = 50\n"
                          + (f"heartbeat = {heartbeat}\n" if heartbeat else ""))
        # the flag comes after ServerProc's own --grace-period: the last one counts
        self.server = ServerProc(work / "server", free_port(),
                                 ["--config", str(config), "--grace-period", str(grace)],
                                 log_path=server_log)
        self.proxies: list[NetProxy] = []
        if net:  # each node through its own proxy: one of them can be cut off alone
            self.proxies = [NetProxy(self.server.port, name=f"node{i}").start()
                            for i in range(nodes)]
        urls = [p.url for p in self.proxies] or [self.server.url] * nodes
        self.nodes = [NodeProc(url, work / f"node{i}", f"node{i}", ["--watchdog", "60"])
                      for i, url in enumerate(urls)]
        self._heals: list[tuple[float, str, Callable[[], None], list[NetProxy]]] = []
        self._ref: list[Path] | BaseException | None = None  # the direct render's frames
        self._ref_thread: threading.Thread | None = None
        self.t0 = time.monotonic()

    def log(self, what: str) -> None:
        self.report.actions.append(what)
        print(f"  [{time.monotonic() - self.t0:6.1f}s] {what}", flush=True)

    # --- kills -------------------------------------------------------------------------------
    def kill_one(self, kind: str) -> None:
        self.report.count(kind)
        if kind == "server":
            self.server.kill9()
            self.log("server killed")
            self.sleep(self.rng.uniform(0.3, 1.5))
            self.server.start()
            self.log("server restarted")
        elif kind == "node":
            node = self.rng.choice(self.nodes)
            node.kill9()
            self.log(f"node {node.name} killed")
            self.sleep(self.rng.uniform(0.3, 2.0))
            node.start()
            self.log(f"node {node.name} restarted")
        else:
            node = self.rng.choice(self.nodes)
            pids = _blender_pids(self.work / node.name)
            for pid in pids:
                subprocess.run(["kill", "-9", str(pid)], check=False)
            self.log(f"blender of {node.name} killed" + ("" if pids else " (none running)"))

    # --- network faults ----------------------------------------------------------------------
    def _busy(self) -> set[int]:
        return {id(p) for _, _, _, ps in self._heals for p in ps}

    def _targets(self, kind: str) -> list[NetProxy]:
        """One node's link, now and then every node's (the server cut off from all);
        only links with no fault under way. Waits for heals when every link has one."""
        everyone = kind.startswith("partition") and self.rng.random() < 0.25
        while True:
            free = [p for p in self.proxies if id(p) not in self._busy()]
            if everyone and len(free) == len(self.proxies):
                return free
            if free and not everyone:
                return [self.rng.choice(free)]
            self._heal_due(wait=True)

    def net_fault(self, kind: str) -> None:
        self.report.count(kind)
        targets = self._targets(kind)
        who = "every node" if len(targets) > 1 else targets[0].name
        if kind == "drop":
            n = sum(p.drop() for p in targets)
            self.log(f"drop: {n} connection(s) of {who} reset")
            return
        if kind == "delay":
            delay, hold = self.rng.uniform(0.05, 0.6), self.rng.uniform(2.0, 6.0)
            for p in targets:
                p.set_delay(delay)
            self.log(f"delay: {who}'s bytes held {delay:.2f}s each way for {hold:.1f}s")
            self._schedule(hold, f"delay of {who} over", targets)
            return
        # a partition: the server notices within a heartbeat and a half, then holds the
        # node's tasks for the grace period
        notice = 1.5 * (self.heartbeat or 10.0)
        if kind == "partition_short":
            hold = self.rng.uniform(0.2, 0.8) * self.grace
            why = f"< grace {self.grace:.0f}s"
        else:
            hold = notice + self.grace + self.rng.uniform(2.0, 5.0)
            why = f"> notice {notice:.0f}s + grace {self.grace:.0f}s"
        new = self.rng.choice(["refuse", "blackhole"])
        n = sum(p.partition(new=new) for p in targets)
        self.log(f"partition: {who} cut off for {hold:.1f}s ({why}; {n} connection(s) "
                 f"held open, new ones {'refused' if new == 'refuse' else 'blackholed'})")
        self._schedule(hold, f"partition of {who} healed", targets)

    def _schedule(self, after: float, what: str, targets: list[NetProxy]) -> None:
        def heal() -> None:
            for p in targets:
                p.heal()
        self._heals.append((time.monotonic() + after, what, heal, targets))
        self._heals.sort(key=lambda h: h[0])

    def sleep(self, seconds: float) -> None:
        """Sleep, healing each network fault on time meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            first = self._heals[0][0] - time.monotonic() if self._heals else left
            time.sleep(max(0.0, min(left, first)))
            self._heal_due()

    def _heal_due(self, wait: bool = False) -> None:
        """Heal what is due; with ``wait``, sleep until the first heal if none is."""
        if wait and self._heals:
            time.sleep(max(0.0, self._heals[0][0] - time.monotonic()))
        now = time.monotonic()
        while self._heals and self._heals[0][0] <= now:
            _, what, heal, _ = self._heals.pop(0)
            heal()
            self.log(what)

    def _heal_all(self) -> None:
        while self._heals:
            self._heal_due(wait=True)

    # --- the run -----------------------------------------------------------------------------
    def start(self) -> None:
        self.server.start()
        for n in self.nodes:
            n.start()
        wait_for(lambda: nodes_online(self.server.url) == len(self.nodes), 60, "nodes online")

    def submit(self, blend: Path) -> str:
        sub = subprocess.run([bin_path("bf"), "submit", str(blend), "--frames", f"1-{self.frames}",
                              "--name", "chaos", "--server", self.server.url],
                             capture_output=True, text=True, check=True)
        return sub.stdout.strip().splitlines()[-1]

    def reference(self, blend: Path) -> None:
        """Render the direct reference frames in the background, while the farm works."""
        def render() -> None:
            try:
                self._ref = render_frames(blend, list(range(1, self.frames + 1)),
                                          self.work / "direct", timeout=120 + 10 * self.frames)
            except BaseException as exc:  # noqa: BLE001 - raised in _check
                self._ref = exc
        self._ref_thread = threading.Thread(target=render, name="chaos-reference", daemon=True)
        self._ref_thread.start()

    def run(self, blend: Path, faults: int, timeout: float, kinds: tuple[str, ...] = KILLS,
            gap: tuple[float, float] = (0.3, 1.5)) -> Report:
        self.t0 = time.monotonic()
        self.reference(blend)
        self.start()
        job_id = self.submit(blend)
        # every kind at least once, in a seeded order, then seeded random choices
        plan = self.rng.sample(kinds, len(kinds))
        plan += [self.rng.choice(kinds) for _ in range(faults)]
        try:
            for kind in plan[:faults]:
                self.sleep(self.rng.uniform(*gap))
                if _job(self.server.url, job_id)["status"] == "completed":
                    break
                if kind in KILLS:
                    self.kill_one(kind)
                else:
                    self.net_fault(kind)
        finally:
            self._heal_all()
        self.finish(job_id, blend, timeout)
        return self.report

    def finish(self, job_id: str, blend: Path, timeout: float) -> None:
        done = wait_for(lambda: _job(self.server.url, job_id)["status"] in
                        ("completed", "failed", "canceled") and _job(self.server.url, job_id),
                        timeout, "the job to end")
        self.report.status, self.report.error = done["status"], done.get("error")
        self.report.seconds = time.monotonic() - self.t0
        self._check(job_id, blend)
        self.report.effects = self.effects()

    def _check(self, job_id: str, blend: Path) -> None:
        outputs = get_json(f"{self.server.url}/api/jobs/{job_id}/outputs")["outputs"]
        frames = [o["frame"] for o in outputs]
        self.report.duplicates = len(frames) - len(set(frames))
        stored = sorted((self.work / "server" / "jobs" / job_id).glob("*.png"))
        self.report.frames_stored = len(stored)
        if self._ref_thread is None:
            self.reference(blend)
        assert self._ref_thread is not None
        self._ref_thread.join()
        if isinstance(self._ref, BaseException) or self._ref is None:
            raise RuntimeError("the direct reference render failed") from self._ref
        for f, r in enumerate(self._ref, start=1):
            got = self.work / "server" / "jobs" / job_id / f"frame_{f:04d}.png"  # "//render/frame_"
            if not got.exists() or np.abs(read_rgba(got).astype(int) -
                                          read_rgba(r).astype(int)).mean() > 0.5:
                self.report.mismatches.append(f)

    def effects(self) -> dict[str, int]:
        """What the farm's logs say it did about the faults."""
        server = self.server.text() if self.server.log_path.exists() else ""
        nodes = "".join(n.text() for n in self.nodes if n.log_path.exists())
        seen = {
            "node disconnects seen by the server": server.count(") disconnected; holding"),
            "requeues after the grace period": len(re.findall(r"gone for \d+s: requeued", server)),
            "tasks canceled as done elsewhere": nodes.count("canceled: done elsewhere"),
            "tasks canceled as given to another node": nodes.count("given to another node"),
            "node reconnects": nodes.count("lost the connection"),
            "server errors logged": len(re.findall(r" ERROR ", server)),
            "server disk errors logged": len(re.findall(DISK_ERRORS, server)),
            "node disk errors logged": len(re.findall(DISK_ERRORS, nodes)),
        }
        return {k: v for k, v in seen.items() if v}

    def stop(self) -> None:
        for p in [*self.nodes, self.server]:
            p.stop()
        for proxy in self.proxies:
            proxy.stop()


def run_chaos(work: Path, seed: int, frames: int = 40, nodes: int = 3, kills: int = 6,
              res: int = 64, samples: int = 8, timeout: float = 300, *, net: bool = False,
              grace: float | None = None, heartbeat: float | None = None) -> Report:
    """Kill -9 chaos; with ``net``, network faults too (``kills`` counts every fault)."""
    blend = make_scene("anim", work / "scene", frames=frames, res=res, samples=samples)
    kinds = KILLS + NET if net else KILLS
    if net:  # a short heartbeat and grace, so that partitions both sides of it fit a CI run
        grace, heartbeat = grace or 4.0, heartbeat or 2.0
    print(f"chaos: {frames} frames on {nodes} nodes, {kills} faults of {', '.join(kinds)}, "
          f"seed {seed}" + (f", grace {grace:.0f}s, heartbeat {heartbeat:.0f}s" if net else ""),
          flush=True)
    chaos = Chaos(work, seed, frames, nodes, net=net, grace=grace or 3.0, heartbeat=heartbeat)
    try:  # stop() ends the processes and the proxies, whatever happened
        report = chaos.run(blend, kills, timeout, kinds,
                           gap=(1.0, 4.0) if net else (0.3, 1.5))
    finally:
        chaos.stop()
    _print(report)
    return report


def run_disk_full(work: Path, seed: int, frames: int = 24, nodes: int = 2, size: str = "24m",
                  res: int = 64, samples: int = 8, timeout: float = 300,
                  full_for: float = 8.0) -> Report:
    """The server's data dir on a small tmpfs, filled up mid-job by a filler file; once
    the farm shows it (errors, or no frame for a while) the filler goes and the job must
    finish. Then the server restarts (kill -9) and must still know every frame.
    Raises ``Skipped`` when no tmpfs can be mounted."""
    blend = make_scene("anim", work / "scene", frames=frames, res=res, samples=samples)
    data = work / "server"
    why = mount_tmpfs(data, size)
    if why is not None:
        raise Skipped(why)
    print(f"chaos: {frames} frames on {nodes} nodes, the server's data dir on a {size} tmpfs "
          f"that fills up mid-job, seed {seed}", flush=True)
    chaos = Chaos(work, seed, frames, nodes, server_log=work / "server.log")
    report = chaos.report
    filler = data / "filler"
    try:
        chaos.reference(blend)
        chaos.start()
        job_id = chaos.submit(blend)
        url = chaos.server.url
        at = max(1, frames // 4 + chaos.rng.randint(0, frames // 4))
        wait_for(lambda: _job(url, job_id)["frames_done"] >= at, timeout, f"{at} frames done")
        logs_at = _log_sizes(chaos)
        done_at_fill = _job(url, job_id)["frames_done"]
        # all of it, or nearly: then the last frames to squeeze in fill it, and what the
        # server writes after them (their rows, say) meets the full disk
        leave = chaos.rng.choice([0, 64 << 10, 256 << 10])
        written = fill_disk(filler, leave)
        report.count("disk_full")
        chaos.log(f"disk full: {written / 2**20:.1f} MiB of filler written, "
                  f"{leave >> 10} KiB left free, with {done_at_fill}/{frames} frames done")
        trouble = _wait_trouble(chaos, job_id, logs_at, limit=60)
        time.sleep(full_for)  # a while longer: retries meet the full disk again
        done_at_free = _job(url, job_id)["frames_done"]
        filler.unlink()
        chaos.log(f"disk freed with {done_at_free}/{frames} frames done; while full: {trouble}")
        report.notes.append(f"while full ({done_at_fill} -> {done_at_free} frames done): "
                            f"{trouble}")
        report.notes += _new_lines(logs_at, r" (ERROR|WARNING) ", 12)
        chaos.finish(job_id, blend, timeout)
        scraps = [p.name for p in (data / "blobs" / "tmp").iterdir()]
        if scraps:
            report.notes.append(f"partial uploads left in blobs/tmp: {scraps}")
        # What the database kept of all that: a restart must know the same job.
        chaos.server.kill9()
        chaos.server.start()
        job = _job(url, job_id)
        outs = get_json(f"{url}/api/jobs/{job_id}/outputs")["outputs"]
        tasks = get_json(f"{url}/api/jobs/{job_id}/tasks")["tasks"]
        report.after_restart = {"status": job["status"], "frames_done": job["frames_done"],
                                "outputs": len({o["frame"] for o in outs}),
                                "tasks_done": job["tasks_done"], "tasks": job["tasks_total"],
                                "not_done": [f"{t['id']} (frames {t['frames']}): {t['status']}"
                                             for t in tasks if t["status"] != "done"]}
        chaos.log(f"after a restart: job {job['status']}, {job['frames_done']} frames done, "
                  f"{report.after_restart['outputs']} outputs known")
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        chaos.stop()
        umount(data)
    _print(report)
    return report


class Skipped(Exception):
    """The run cannot happen here (no tmpfs); the message says why."""


def _log_sizes(chaos: Chaos) -> dict[str, tuple[Path, int]]:
    """Where each process's log ends now, by name."""
    procs = {"server": chaos.server, **{n.name: n for n in chaos.nodes}}
    return {name: (p.log_path, p.log_path.stat().st_size) for name, p in procs.items()
            if p.log_path.exists()}


def _new_lines(since: dict[str, tuple[Path, int]], pattern: str, limit: int) -> list[str]:
    """Distinct log lines (timestamps and hashes cut) matching ``pattern`` written since
    ``since``, each with the name of the process that wrote it."""
    seen: dict[str, None] = {}
    for name, (path, offset) in since.items():
        with open(path, "rb") as f:
            f.seek(offset)
            for line in f.read().decode(errors="replace").splitlines():
                if re.search(pattern, line):
                    text = re.sub(r"^\d{4}-\d\d-\d\d \S+ ", "", line.strip())
                    text = re.sub(r"[0-9a-f]{12,}", "…", text)[:220]
                    seen.setdefault(f"{name}: {text}", None)
    return list(seen)[:limit]


def _wait_trouble(chaos: Chaos, job_id: str, since: dict[str, tuple[Path, int]],
                  limit: float) -> str:
    """Until the farm shows the full disk: an error in a log, or no new frame for 8s."""
    t0 = time.monotonic()
    last, changed = -1, t0
    while time.monotonic() - t0 < limit:
        if _new_lines(since, DISK_ERRORS, 1):
            return f"errors logged after {time.monotonic() - t0:.1f}s"
        try:
            done = _job(chaos.server.url, job_id)
        except OSError:
            return f"the server stopped answering after {time.monotonic() - t0:.1f}s"
        if done["status"] != "active":
            return f"the job became {done['status']} after {time.monotonic() - t0:.1f}s"
        if done["frames_done"] != last:
            last, changed = done["frames_done"], time.monotonic()
        elif time.monotonic() - changed > 8:
            return f"no frame for 8s (stalled at {last}), no error logged"
        time.sleep(0.3)
    return f"nothing seen in {limit:.0f}s"


def _print(report: Report) -> None:
    print(report.summary(), flush=True)
    if report.error:
        print(f"  job error: {report.error}", flush=True)
    for what, n in report.effects.items():
        print(f"  {what}: {n}", flush=True)
    for note in report.notes:
        print(f"  note: {note}", flush=True)
    if report.after_restart:
        print(f"  after a restart: {report.after_restart}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--faults", "--kills", type=int, default=30, dest="faults")
    p.add_argument("--net", action="store_true", help="network faults too (a proxy per node)")
    p.add_argument("--disk-full", action="store_true", help="the full-disk run instead")
    p.add_argument("--res", type=int, default=64, help="square resolution of the frames")
    p.add_argument("--samples", type=int, default=8, help="Cycles samples (more: slower frames)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="bf-chaos-") as tmp:
        if args.disk_full:
            try:
                report = run_disk_full(Path(tmp), args.seed, args.frames, args.nodes,
                                       res=args.res, samples=args.samples)
            except Skipped as exc:
                print(f"chaos: skipped: {exc}")
                return 0
        else:
            report = run_chaos(Path(tmp), args.seed, args.frames, args.nodes, args.faults,
                               res=args.res, samples=args.samples,
                               timeout=max(300, args.faults * 20), net=args.net)
    if args.json:
        print(json.dumps(report.__dict__))
    if report.after_restart:
        after = report.after_restart
        ok = report.ok and after.get("outputs") == report.frames and \
            after.get("tasks_done") == after.get("tasks")
        return 0 if ok else 1
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
