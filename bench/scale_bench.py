"""Scale benchmark: a real bf-server against many simulated nodes in one process.

Each simulated node is a real websocket to ``/ws/node`` speaking the real node
protocol (hello, assign, task_done, ack). It "renders" an assigned task by waiting
``--delay`` seconds (0 for pure scheduler load) and reports one tiny output blob per
frame; the blob is uploaded once per node over HTTP at start-up, so scenarios (a) to
(d) measure scheduling and the node protocol, and scenario (e) measures uploads.

Scenarios, one line of figures each:

(a) 100 nodes, one 20,000-frame job of a 500-file project, zero render time, 5
    dashboards watching: completions/s the server
    sustains; then a 10,000-frame job rendered at a paced 2,000 completions/s in all:
    dispatch latency (a node's slot frees, i.e. it sends task_done -> its next assign
    arrives). Latency is not taken from the saturated run: there every node always has
    a finished task waiting in the server's queue, so latency is tasks in flight
    divided by the rate (Little's law) and says nothing about dispatch itself
(b) 1,000 idle nodes connected for 60 s: server RSS and CPU
(c) 200 jobs x 100 frames from 10 users, mixed priorities, 100 nodes: priority
    inversions (a task assigned while a higher-priority one waited) and each user's
    share of the nodes among equal-priority users
(d) a 100,000-frame job: time until the server answers, then until the first assign
(e) a 500 MB project of 200 files: first upload MB/s (hashing included), bytes sent
    by an unchanged resubmit and by one with one changed texture (bench/upload_bench.py)

The server runs pinned to core 0 (``taskset``), this process to the other cores.
Usage: ``python bench/scale_bench.py [--only a,b] [--quick] [--write docs/benchmarks.md]
[--profile DIR]`` (``--profile``: the server runs under py-spy, which writes its
collapsed stacks to DIR; install the ``bench`` extra for it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blenderfarm.protocol import PROTOCOL_VERSION  # noqa: E402
from blenderfarm.protocol import messages as m  # noqa: E402
from blenderfarm.protocol.naming import frame_name, pattern_of  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from farmserver import BIN, Server  # noqa: E402

BLEND = b"not a real .blend: simulated nodes never open it"


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- simulated nodes --------------------------------------------------------------------
@dataclass
class Stats:
    completions: int = 0
    done_times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # slot freed -> next assign
    first_assign: float | None = None
    assigns: int = 0
    errors: list[str] = field(default_factory=list)


class SimNode:
    """One node: a websocket, a queue of assigned tasks and a worker that finishes them."""

    def __init__(self, farm: SimFarm, index: int) -> None:
        self.farm = farm
        self.uid = f"sim{index:05d}{os.getpid() % 10000:04d}"
        self.name = f"sim-{index}"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.work: asyncio.Queue[m.Assign] = asyncio.Queue()
        self.freed: deque[float] = deque()  # when slots freed, waiting for their next assign
        self.sha = ""
        self.size = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.rng = random.Random(index)

    async def start(self) -> None:
        http = self.farm.http
        data = f"output of {self.uid}".encode()
        import hashlib

        self.sha, self.size = hashlib.sha256(data).hexdigest(), len(data)
        async with http.put(f"{self.farm.url}/api/blobs/{self.sha}", data=data) as resp:
            if resp.status not in (200, 201):
                raise RuntimeError(f"blob upload: {resp.status} {await resp.text()}")
        self.ws = await http.ws_connect(self.farm.url.replace("http", "ws", 1) + "/ws/node",
                                        max_msg_size=m.MAX_MESSAGE, heartbeat=None)
        await self.ws.send_bytes(m.encode(m.Hello(
            protocol=PROTOCOL_VERSION, name=self.name, uid=self.uid,
            blender=m.BlenderCaps(version="3.4.1"), threads=1)))
        first = m.decode((await self.ws.receive(timeout=30)).data)
        if not isinstance(first, m.Welcome):
            raise RuntimeError(f"node refused: {first}")
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._work())]

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.BINARY:
                continue
            stats = self.farm.stats  # looked up each time: a scenario may start afresh
            now = time.perf_counter()
            msg = m.decode(frame.data)
            if isinstance(msg, m.Assign):
                stats.assigns += 1
                if stats.first_assign is None:
                    stats.first_assign = now
                if self.freed:
                    stats.latencies.append(now - self.freed.popleft())
                self.farm.on_assign(self, msg)
                self.work.put_nowait(msg)
            elif isinstance(msg, m.Ack):
                stats.completions += 1
                stats.done_times.append(now)
                self.farm.on_done()
            elif isinstance(msg, m.Error):
                stats.errors.append(f"{msg.code}: {msg.message}")

    async def _work(self) -> None:
        assert self.ws is not None
        while True:
            a = await self.work.get()
            delay = self.farm.delay
            if delay:  # render times vary: nodes do not finish in lockstep
                await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))
            outputs = [m.OutputRef(frame=f, sha256=self.sha, size=self.size,
                                   name=frame_name(pattern_of(a.output_pattern, a.output_name), f, "PNG")) for f in a.frames]
            self.freed.append(time.perf_counter())
            await self.ws.send_bytes(m.encode(m.TaskDone(task_id=a.task_id, outputs=outputs,
                                                         seconds=delay)))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.ws is not None:
            await self.ws.close()


class SimFarm:
    """N simulated nodes sharing one HTTP session, plus helpers to submit jobs."""

    def __init__(self, url: str, delay: float = 0.0) -> None:
        self.url = url
        self.delay = delay
        self.stats = Stats()
        self.nodes: list[SimNode] = []
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                          timeout=aiohttp.ClientTimeout(total=600))
        self.expect = 0
        self.all_done = asyncio.Event()
        self.assigned_log: list[tuple[float, str]] = []  # (time, job id), when recording
        self.record = False
        self.watchers: list[aiohttp.ClientWebSocketResponse] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.events = 0
        self.event_frames = 0

    async def connect(self, n: int, parallel: int = 50) -> None:
        new = [SimNode(self, len(self.nodes) + i) for i in range(n)]
        self.nodes.extend(new)
        for i in range(0, n, parallel):
            await asyncio.gather(*(node.start() for node in new[i:i + parallel]))

    def on_assign(self, node: SimNode, a: m.Assign) -> None:
        if self.record:
            self.assigned_log.append((time.perf_counter(), a.job_id))

    def on_done(self) -> None:
        if self.expect and self.stats.completions >= self.expect:
            self.all_done.set()

    async def watch(self, n: int) -> None:
        """Open ``n`` dashboards' event sockets (/ws/events); they count what they get."""
        for _ in range(n):
            ws = await self.http.ws_connect(self.url.replace("http", "ws", 1) + "/ws/events",
                                            heartbeat=None)
            await ws.send_str(json.dumps({"token": None}))
            self.watchers.append(ws)
            self.tasks.append(asyncio.create_task(self._count_events(ws)))

    async def _count_events(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(frame.data)  # one event, or an array sent together
                self.event_frames += 1
                self.events += len(data) if isinstance(data, list) else 1

    async def upload_blend(self, files: int = 1) -> dict[str, str]:
        """Upload a project of ``files`` tiny files (the .blend and textures); its manifest."""
        import hashlib

        manifest = {}
        for i in range(files):
            data = BLEND if i == 0 else b"texture %d" % i
            rel = "scene.blend" if i == 0 else f"textures/shot_010/texture_{i:05d}.png"
            sha = hashlib.sha256(data).hexdigest()
            async with self.http.put(f"{self.url}/api/blobs/{sha}", data=data) as resp:
                assert resp.status in (200, 201), await resp.text()
            manifest[rel] = sha
        return manifest

    async def submit(self, name: str, frames: str, manifest: dict[str, str],
                     priority: int = 50, user: str | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": name, "blend": "scene.blend", "frames": frames,
                                "manifest": manifest, "priority": priority}
        if user is not None:
            spec["user"] = user
        async with self.http.post(f"{self.url}/api/jobs", json=spec) as resp:
            body = await resp.json()
            if resp.status not in (200, 201):
                raise RuntimeError(f"submit: {resp.status} {body}")
            return dict(body["job"])

    async def get(self, path: str) -> Any:
        async with self.http.get(self.url + path) as resp:
            return await resp.json()

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*(w.close() for w in self.watchers), return_exceptions=True)
        await asyncio.gather(*(n.close() for n in self.nodes), return_exceptions=True)
        await self.http.close()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def sustained_rate(times: list[float]) -> float:
    """Completions per second over the middle 80% of the run (ramp-up and tail cut)."""
    if len(times) < 10:
        return float("nan")
    times = sorted(times)
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    return (hi - lo) / max(times[hi] - times[lo], 1e-9)


# --- scenarios ----------------------------------------------------------------------------
async def scenario_a(root: Path, nodes: int, frames: int, paced_frames: int,
                     paced_rate: float = 2000.0, watchers: int = 5,
                     files: int = 500) -> dict[str, Any]:
    """Two runs on the same server and nodes. Saturated: zero render time, every node
    always has a task_done in flight, so this gives the most the server completes per
    second (and its latency is only queueing: in a closed loop, latency = tasks in
    flight / rate, whatever the server). Paced: each node renders for
    ``nodes / paced_rate`` seconds, offering ``paced_rate`` completions a second in all;
    the dispatch latency is measured there (a node's task_done leaves -> its next
    assign arrives). ``watchers`` dashboards follow /ws/events all the while, as in a
    studio, so the event fan-out is part of the load; the job's project has ``files``
    files, as a shot with its textures does (each node is sent the manifest once)."""
    server = Server(root)
    farm = SimFarm(server.url)
    try:
        await farm.watch(watchers)
        await farm.connect(nodes)
        blend = await farm.upload_blend(files)
        farm.expect = frames
        cpu0, own0, t0 = server.cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        await farm.submit("a", f"1-{frames}", blend)
        await asyncio.wait_for(farm.all_done.wait(), 600)
        wall = time.perf_counter() - t0
        cpu, own = server.cpu_seconds() - cpu0, own_cpu_seconds() - own0
        s = farm.stats
        result = {"scenario": "a", "nodes": nodes, "frames": frames, "files": files,
                  "watchers": watchers,
                  "completions_per_s": round(sustained_rate(s.done_times), 1),
                  "overall_per_s": round(frames / wall, 1), "wall_s": round(wall, 2),
                  "saturated_p50_ms": round(pct(s.latencies, 50) * 1000, 2),
                  "server_cpu_pct": round(100 * cpu / wall, 1),
                  "sim_cpu_pct": round(100 * own / wall, 1)}
        farm.stats, farm.all_done, farm.expect = Stats(), asyncio.Event(), paced_frames
        for node in farm.nodes:
            node.freed.clear()
        farm.delay = nodes / paced_rate
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        await farm.submit("a-paced", f"1-{paced_frames}", blend)
        await asyncio.wait_for(farm.all_done.wait(), 600)
        wall = time.perf_counter() - t0
        p = farm.stats
        result.update({
            "paced_per_s": round(sustained_rate(p.done_times), 1),
            "latency_p50_ms": round(pct(p.latencies, 50) * 1000, 2),
            "latency_p99_ms": round(pct(p.latencies, 99) * 1000, 2),
            "paced_server_cpu_pct": round(100 * (server.cpu_seconds() - cpu0) / wall, 1),
            "events_received": farm.events, "event_frames": farm.event_frames,
            "server_rss_mb": round(server.rss_mb(), 1), "errors": (s.errors + p.errors)[:3]})
        return result
    finally:
        await farm.close()
        server.stop()


async def scenario_b(root: Path, nodes: int, seconds: float) -> dict[str, Any]:
    server = Server(root)
    farm = SimFarm(server.url)
    try:
        rss0 = server.rss_mb()
        t_conn = time.perf_counter()
        await farm.connect(nodes, parallel=100)
        connect_s = time.perf_counter() - t_conn
        await asyncio.sleep(2)  # let the connect burst settle
        online = (await farm.get("/api/info")).get("nodes_online")
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(seconds)
        idle_cpu = server.cpu_seconds() - cpu0
        wall = time.perf_counter() - t0
        return {"scenario": "b", "nodes": nodes, "online": online, "idle_s": round(wall, 1),
                "connect_s": round(connect_s, 2), "rss_empty_mb": round(rss0, 1),
                "server_rss_mb": round(server.rss_mb(), 1),
                "idle_cpu_pct": round(100 * idle_cpu / wall, 2), "errors": farm.stats.errors[:3]}
    finally:
        await farm.close()
        server.stop()


async def scenario_c(root: Path, nodes: int, jobs: int, frames: int, users: int,
                     delay: float) -> dict[str, Any]:
    """Jobs queued first, then nodes come online; the order is checked from the server's
    own record of when each task was assigned (``assigned`` in /api/jobs/ID/tasks)."""
    server = Server(root)
    farm = SimFarm(server.url, delay=delay)
    rng = random.Random(2026)
    try:
        blend = await farm.upload_blend()
        submitted = []
        users_known = True
        for i in range(jobs):
            user = f"user{i % users}"
            prio = rng.choice((30, 50, 50, 70))
            try:
                job = await farm.submit(f"c{i}", f"1-{frames}", blend, priority=prio,
                                        user=user if users_known else None)
            except RuntimeError as exc:  # a server from before jobs had a user
                if "user" not in str(exc) or not users_known:
                    raise
                users_known = False
                job = await farm.submit(f"c{i}", f"1-{frames}", blend, priority=prio)
            submitted.append((job["id"], prio, user))
        farm.expect = jobs * frames
        t0 = time.perf_counter()
        await farm.connect(nodes)
        await asyncio.wait_for(farm.all_done.wait(), 600)
        wall = time.perf_counter() - t0
        tasks: list[tuple[float, int, str, float]] = []  # assigned, priority, user, finished
        missing_times = 0
        for job_id, prio, user in submitted:
            for t in (await farm.get(f"/api/jobs/{job_id}/tasks"))["tasks"]:
                if t.get("assigned") is None:
                    missing_times += 1
                    continue
                tasks.append((t["assigned"], prio, user, t.get("finished") or 0.0))
        inversions = count_inversions(tasks) if not missing_times else -1
        worst, shares = fairness(tasks) if users_known else (float("nan"), {})
        return {"scenario": "c", "nodes": nodes, "jobs": jobs, "frames": jobs * frames,
                "users": users, "delay_ms": delay * 1000, "wall_s": round(wall, 2),
                "completions_per_s": round(sustained_rate(farm.stats.done_times), 1),
                "priority_inversions": inversions, "no_assign_time": missing_times,
                "worst_share_dev_pct": round(worst * 100, 1) if worst == worst else None,
                "shares": shares, "errors": farm.stats.errors[:3]}
    finally:
        await farm.close()
        server.stop()


def count_inversions(tasks: list[tuple[float, int, str, float]]) -> int:
    """Tasks assigned while a task of higher priority was still waiting (all nodes can run
    every job here, and every job was queued before the first node came online)."""
    order = sorted(tasks, key=lambda t: (t[0], -t[1]))
    waiting: dict[int, int] = {}
    for _a, prio, _u, _f in order:
        waiting[prio] = waiting.get(prio, 0) + 1
    bad = 0
    for _a, prio, _u, _f in order:
        waiting[prio] -= 1
        if any(n > 0 for p, n in waiting.items() if p > prio):
            bad += 1
    return bad


def fairness(tasks: list[tuple[float, int, str, float]]) -> tuple[float, dict[str, Any]]:
    """Per priority level: while every user with work at that level still had some
    queued, sample how many nodes each user held; return the worst deviation of a
    user's mean share from an equal share, over all levels."""
    worst = 0.0
    report: dict[str, Any] = {}
    for prio in sorted({t[1] for t in tasks}, reverse=True):
        level = sorted((t for t in tasks if t[1] == prio), key=lambda t: t[0])
        users = sorted({t[2] for t in level})
        if len(users) < 2:
            continue
        last_assign = {u: max(t[0] for t in level if t[2] == u) for u in users}
        start, end = level[0][0], min(last_assign.values())  # until one user runs dry
        if end - start <= 0:
            continue
        held = {u: 0.0 for u in users}
        samples = 200
        for k in range(samples):
            at = start + (end - start) * (k + 0.5) / samples
            for a, _p, u, f in level:
                if a <= at < f:
                    held[u] += 1
        total = sum(held.values())
        if total == 0:
            continue
        devs = {u: held[u] / total * len(users) - 1 for u in users}
        worst = max(worst, max(abs(d) for d in devs.values()))
        report[str(prio)] = {u: round(d * 100, 1) for u, d in devs.items()}
    return worst, report


async def scenario_d(root: Path, nodes: int, frames: int) -> dict[str, Any]:
    server = Server(root)
    farm = SimFarm(server.url, delay=3600)  # nodes hold their tasks: only the start counts
    try:
        await farm.connect(nodes)
        blend = await farm.upload_blend()
        rss0 = server.rss_mb()
        t0 = time.perf_counter()
        job = await farm.submit("d", f"1-{frames}", blend)
        accepted = time.perf_counter()
        while farm.stats.first_assign is None and time.perf_counter() - accepted < 60:
            await asyncio.sleep(0.001)
        first = farm.stats.first_assign
        info = (await farm.get(f"/api/jobs/{job['id']}"))["job"]
        # Negative: the first assign reached a node before the submitter had its answer
        # (the server dispatches before it replies).
        return {"scenario": "d", "frames": frames, "tasks": info.get("tasks_total"),
                "accept_s": round(accepted - t0, 3),
                "first_assign_after_s": round(first - accepted, 4) if first else None,
                "server_rss_mb": round(server.rss_mb(), 1),
                "rss_growth_mb": round(server.rss_mb() - rss0, 1)}
    finally:
        await farm.close()
        server.stop()


def scenario_e(root: Path, mb: int, files: int) -> dict[str, Any]:
    from upload_bench import MB, misses, run_upload  # type: ignore[import-not-found]

    server = Server(root)
    try:
        r = run_upload(root / "upload", server.url, mb, files)
    finally:
        server.stop()
    missed = misses(r, round(r["project_mb"] * MB))
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    return {"scenario": "e", **figures, "ok": not missed, "errors": missed}


# --- targets and the report ------------------------------------------------------------------
TARGETS = {
    "a": ("completions_per_s >= 2000; at 2000/s offered, latency p50 < 5 ms, p99 < 50 ms",
          lambda r: r["completions_per_s"] >= 2000 and r["latency_p50_ms"] < 5
          and r["latency_p99_ms"] < 50 and not r["errors"]),
    "b": ("RSS < 200 MB, idle CPU < 5%",
          lambda r: r["server_rss_mb"] < 200 and r["idle_cpu_pct"] < 5
          and r["online"] == r["nodes"]),
    "c": ("0 inversions, each user's share within 20%",
          lambda r: r["priority_inversions"] == 0 and r["worst_share_dev_pct"] is not None
          and r["worst_share_dev_pct"] <= 20),
    "d": ("accepted < 2 s, first assign < 1 s after",
          lambda r: r["accept_s"] < 2 and r["first_assign_after_s"] is not None
          and r["first_assign_after_s"] < 1),
    "e": ("first upload >= 200 MB/s, resubmit 0 bytes, changed = 1 file",
          lambda r: bool(r.get("ok"))),
}


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def write_report(path: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/scale_bench.py` and `bench/render_bench.py`).",
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. The server runs",
        "pinned to one core (`taskset -c 0`); the simulated nodes run in one process on the",
        "other core and speak the real protocol over real websockets.",
        "",
        "| scenario | figures | target | met |",
        "|---|---|---|---|",
    ]
    for r in results:
        key = r["scenario"]
        figures = ", ".join(f"{k} {v}" for k, v in r.items()
                            if k not in ("scenario", "errors", "shares", "ok")
                            and v not in ([], None))
        target, check = TARGETS[key]
        lines.append(f"| ({key}) | {figures} | {target} | {'yes' if check(r) else 'NO'} |")
    lines += ["", "How each figure is measured is described at the top of "
              "`bench/scale_bench.py`.", ""]
    extra = path.read_text() if path.exists() else ""
    marker = "<!-- history -->"
    history = extra[extra.index(marker):] if marker in extra else marker + "\n"
    path.write_text("\n".join(lines) + "\n" + history)


async def run(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    q = args.quick
    results = []
    for key in args.only:
        if key == "a":
            r = await scenario_a(root, 100, 2000 if q else 20_000, 2000 if q else 10_000)
        elif key == "b":
            r = await scenario_b(root, 200 if q else 1000, 5 if q else 60)
        elif key == "c":
            r = await scenario_c(root, 100, 40 if q else 200, 100, 10, 0.01)
        elif key == "d":
            r = await scenario_d(root, 10, 10_000 if q else 100_000)
        else:
            r = await asyncio.to_thread(scenario_e, root, 50 if q else 500, 20 if q else 200)
        ok = TARGETS[key][1](r)
        print(json.dumps({**r, "target": TARGETS[key][0], "met": ok}), flush=True)
        results.append(r)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="a,b,c,d,e", help="scenarios to run, e.g. a,c")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--write", type=Path, help="write the table to this markdown file")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="run each server under py-spy and write its collapsed stacks to DIR")
    args = p.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.profile is not None:
        if not (BIN / "py-spy").exists():
            sys.exit("--profile needs py-spy: pip install -e '.[bench]' (or pip install py-spy)")
        args.profile.mkdir(parents=True, exist_ok=True)
        Server.profile_dir = args.profile.resolve()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {0})  # leave core 0 to the server
    with tempfile.TemporaryDirectory(prefix="bf-scale-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    if args.write:
        write_report(args.write, results, args)
        print(f"wrote {args.write}")
    return 0 if all(TARGETS[r["scenario"]][1](r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
