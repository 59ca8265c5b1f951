"""One bad message, one slow client or one full disk never stops the farm.

A test per defect found by a hostile-input and fault campaign against a real
bf-server (in-process, on a real loopback socket, with real SQLite files); each
failed on the code before its fix. Their names say the behaviour that must hold.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.protocol import PROTOCOL_VERSION
from blenderfarm.protocol import messages as m
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.keys import FARM
from blenderfarm.server.scheduler import Scheduler
from blenderfarm.server.store import StoreError
from fakenode import FakeNode
from procs import fill_disk, tmpfs

BLEND = b"BLENDER-v300 pretend .blend for robustness tests"
SHA = hashlib.sha256(BLEND).hexdigest()


class Farm:
    """A server on a data dir that survives restarts, and the fake nodes of a test."""

    def __init__(self, data: Path, **settings) -> None:
        self.cfg = ServerConfig(data_dir=data, grace_period=0.3, **settings)
        self.client: TestClient | None = None
        self.nodes: list[FakeNode] = []

    async def start(self) -> TestClient:
        self.client = TestClient(TestServer(make_app(self.cfg), host="127.0.0.1"))
        await self.client.start_server()
        return self.client

    async def stop(self) -> None:
        for n in self.nodes:
            await n.close()
        self.nodes = []
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def restart(self) -> TestClient:
        await self.stop()
        return await self.start()

    def node(self, **kw) -> FakeNode:
        assert self.client is not None
        n = FakeNode(str(self.client.make_url("")), **kw)
        self.nodes.append(n)
        return n

    @property
    def farm(self):
        assert self.client is not None
        return self.client.server.app[FARM]

    async def submit(self, frames: str = "1-3", status: int = 201, **kw) -> dict:
        assert self.client is not None
        assert (await self.client.put(f"/api/blobs/{SHA}", data=BLEND)).status in (200, 201)
        spec = {"blend": "shot.blend", "manifest": {"shot.blend": SHA}, "frames": frames, **kw}
        resp = await self.client.post("/api/jobs", json=spec)
        body = await resp.json()
        assert resp.status == status, body
        return body.get("job") or body

    async def get(self, path: str) -> dict:
        assert self.client is not None
        resp = await self.client.get(path)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def job(self, job_id: str) -> dict:
        return (await self.get(f"/api/jobs/{job_id}"))["job"]


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    f = Farm(tmp_path / "data")
    await f.start()
    yield f
    await f.stop()


def raw_hello(**change) -> bytes:
    hello = {"t": "hello", "protocol": PROTOCOL_VERSION, "name": "evil", "uid": "evil-uid",
             "blender": {"version": "3.4.1", "oidn": False}, **change}
    return msgpack.packb(hello, use_bin_type=True)


async def send_hello(farm: Farm, data: bytes) -> m.Message:
    assert farm.client is not None
    ws = await farm.client.session.ws_connect(farm.client.make_url("/ws/node"))
    await ws.send_bytes(data)
    reply = m.decode((await ws.receive(timeout=5)).data)
    await ws.close()
    return reply


# --- 1. a hello with bytes in its blender map ------------------------------------------------


async def test_a_hello_with_bytes_in_blender_is_refused_and_saving_goes_on(farm: Farm) -> None:
    for bad in ({"version": b"\x00\x01"}, {"oidn": "no"}, {"version": {"deep": [1]}}):
        reply = await send_hello(farm, raw_hello(blender=bad))
        assert isinstance(reply, m.Error) and reply.code == "bad_hello", reply
        assert "blender." in reply.message, reply.message  # it names the field
    assert (await farm.client.get("/api/nodes")).status == 200
    job = await farm.submit(paused=True)
    await farm.restart()
    assert (await farm.job(job["id"]))["status"] == "paused"


# --- 2. an integer too big for SQLite ---------------------------------------------------------


async def test_a_huge_size_is_refused_and_the_database_writer_lives(farm: Farm) -> None:
    job = await farm.submit(frames="1")
    node = farm.node()
    await node.connect()
    a = await node.expect(m.Assign)
    name = f"{a.output_name}_0001.png"
    await node.send_raw(msgpack.packb({"t": "frame_done", "task_id": a.task_id, "frame": 1,
                                       "sha256": SHA, "size": 2**64 - 1, "name": name}))
    err = await node.expect(m.Error)
    assert err.code == "bad_message" and "'size'" in err.message
    await node.send_raw(msgpack.packb({"t": "task_done", "task_id": a.task_id, "outputs": [
        {"frame": 1, "sha256": SHA, "size": 2**63, "name": name}]}))
    assert "outputs[0].size" in (await node.expect(m.Error)).message
    await node.finish(a)  # the honest report is stored, and so is everything after it
    assert (await farm.job(job["id"]))["status"] == "completed"
    paused = await farm.submit(paused=True)
    await farm.restart()
    assert (await farm.job(job["id"]))["status"] == "completed"
    assert (await farm.job(paused["id"]))["status"] == "paused"


async def test_the_store_writer_survives_any_error_in_a_batch(farm: Farm) -> None:
    store = farm.farm.store
    # a statement with bad data is left out; the rest of its batch is written
    await store.put([("INSERT INTO meta VALUES (?, ?)", ("big", 2**64)),
                     ("INSERT INTO meta VALUES (?, ?)", ("obj", object())),
                     ("INSERT INTO meta VALUES (?, ?)", ("after", "1"))])

    class Bomb:  # parameters that raise something no database code expects
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> str:
            raise RuntimeError("boom")

    with pytest.raises(StoreError):
        await store.put([("INSERT INTO meta VALUES (?, ?)", Bomb())])
    await store.put([("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("after", "2"))])
    db = sqlite3.connect(farm.cfg.data_dir / "farm.db")
    rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('big', 'obj', 'after')"))
    db.close()
    assert rows == {"after": "2"}
    job = await farm.submit(paused=True)  # and the farm saves as before
    await farm.restart()
    assert (await farm.job(job["id"]))["status"] == "paused"


# --- 3. a lone surrogate in a job spec --------------------------------------------------------


@pytest.mark.parametrize("where", ["scene", "camera", "blend", "manifest", "name", "user"])
async def test_a_lone_surrogate_in_a_spec_is_refused_and_dispatch_goes_on(farm: Farm,
                                                                          where: str) -> None:
    await farm.client.put(f"/api/blobs/{SHA}", data=BLEND)
    spec = {"blend": "shot.blend", "manifest": {"shot.blend": SHA}, "frames": "1"}
    if where == "camera":
        spec["overrides"] = {"camera": "Cam\ud800"}
    elif where == "blend":
        spec["blend"] = "shot\ud800.blend"
        spec["manifest"] = {"shot\ud800.blend": SHA}
    elif where == "manifest":
        spec["manifest"] = {"shot.blend": SHA, "tex/\udfff.png": SHA}
    else:
        spec[where] = "x\ud800"
    # json.dumps writes the surrogate as the valid JSON escape "\ud800"
    resp = await farm.client.post("/api/jobs", json=spec)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] in ("bad_json", "invalid_spec"), body
    assert "surrogate" in body["error"]["message"]
    good = await farm.submit(frames="1")
    node = farm.node()
    await node.connect()
    await node.finish(await node.expect(m.Assign))
    assert (await farm.job(good["id"]))["status"] == "completed"


async def test_a_message_that_cannot_be_encoded_fails_its_task_not_the_node(farm: Farm) -> None:
    """Past the boundary nothing can make such a spec; if something did, the task
    fails with a reason instead of dropping the node's socket on every dispatch."""
    job = await farm.submit(frames="1-2", paused=True)
    farm.farm.jobs[job["id"]].spec.scene = "x\ud800"  # a value the validation refuses
    node = farm.node()
    await node.connect()
    assert (await farm.client.post(f"/api/jobs/{job['id']}/resume")).status == 200
    for _ in range(50):
        if (await farm.job(job["id"]))["status"] == "failed":
            break
        await asyncio.sleep(0.05)
    info = await farm.job(job["id"])
    assert info["status"] == "failed" and "encode" in info["error"]
    other = await farm.submit(frames="1")
    await node.finish(await node.expect(m.Assign))
    assert (await farm.job(other["id"]))["status"] == "completed"


# --- 4. cancel and pause after a node came back late -----------------------------------------


def test_removing_a_job_whose_queue_holds_a_task_twice() -> None:
    s = Scheduler()
    s.add_job("j", 50, 1)
    s.push("j", "t1")
    s.push("j", "t2")
    assert s.discard("t1")
    s.push("j", "t1", front=True)  # a stale entry and a new one for t1
    assert sorted(s.remove_job("j")) == ["t1", "t2"]
    assert s.queued == 0


async def test_cancel_and_pause_work_after_a_node_returns_past_its_grace(farm: Farm) -> None:
    job = await farm.submit(frames="1-3")
    node = farm.node(uid="returning")
    await node.connect()
    a = await node.expect(m.Assign)
    for _ in range(2):
        await node.close()
        await asyncio.sleep(0.6)  # past the grace period: its tasks went back to the queue
        node = farm.node(uid="returning")
        await node.connect(running=[a.task_id])  # it comes back, still holding that one
    await node.close()
    await asyncio.sleep(0.6)  # and is lost once more: the queue holds a stale entry too
    resp = await farm.client.post(f"/api/jobs/{job['id']}/pause", json={"stop": True})
    assert resp.status == 200, await resp.text()
    resp = await farm.client.post(f"/api/jobs/{job['id']}/cancel")
    assert resp.status == 200, await resp.text()
    info = await farm.job(job["id"])
    assert info["status"] == "canceled" and info["tasks_queued"] == 0
    metrics = await (await farm.client.get("/metrics")).text()
    assert 'blenderfarm_tasks{state="queued"} 0.0' in metrics
    await farm.restart()
    assert (await farm.job(job["id"]))["status"] == "canceled"


# --- 5. a failed task's row -------------------------------------------------------------------


async def test_a_failed_task_is_failed_after_a_restart(farm: Farm) -> None:
    job = await farm.submit(frames="1-2")
    node = farm.node()
    await node.connect()
    a = await node.expect(m.Assign)
    await node.send(m.TaskFailed(task_id=a.task_id, error="Blender says no", retryable=False))
    await node.expect(m.Ack)
    before = await farm.job(job["id"])
    assert before["status"] == "failed" and before["tasks_failed"] == 1
    await farm.restart()
    after = await farm.job(job["id"])
    assert after["tasks_failed"] == 1 and after["tasks_running"] == 0, after
    tasks = (await farm.get(f"/api/jobs/{job['id']}/tasks"))["tasks"]
    failed = next(t for t in tasks if t["id"] == a.task_id)
    assert failed["status"] == "failed" and failed["error"] == "Blender says no"
    metrics = await (await farm.client.get("/metrics")).text()
    assert 'blenderfarm_tasks{state="assigned"} 0.0' in metrics


async def test_a_paused_jobs_render_in_flight_is_not_held_forever_after_a_restart(
        farm: Farm) -> None:
    """Found by the protocol fuzzer: a restart forgot which node held the tasks of a
    paused job, so a node that never came back held them for good."""
    job = await farm.submit(frames="1")
    node = farm.node()
    await node.connect()
    await node.expect(m.Assign)
    assert (await farm.client.post(f"/api/jobs/{job['id']}/pause")).status == 200
    await node.close()
    await farm.restart()
    assert (await farm.get("/api/nodes"))["nodes"][0]["tasks"] != []
    await asyncio.sleep(0.6)  # the grace period: the node never came back
    assert (await farm.job(job["id"]))["tasks_running"] == 0
    await farm.client.post(f"/api/jobs/{job['id']}/resume")
    other = farm.node()
    await other.connect()
    await other.finish(await other.expect(m.Assign))
    assert (await farm.job(job["id"]))["status"] == "completed"


# --- 6. a full disk -----------------------------------------------------------------------------


async def test_a_full_disk_is_answered_as_such_and_nothing_is_forgotten(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "data", "4m") as data:
        farm = Farm(data)
        try:
            await farm.start()
            job = await farm.submit(frames="1-3000", paused=True)
            filler = data / "filler"
            fill_disk(filler)
            # a job whose spec needs room the disk has not: refused, and never scheduled
            big = {f"tex/{i:05d}_{'x' * 60}.png": SHA for i in range(6000)}
            resp = await farm.client.post("/api/jobs", json={
                "blend": "shot.blend", "manifest": {"shot.blend": SHA, **big}, "frames": "1"})
            body = await resp.json()
            assert resp.status == 507 and body["error"]["code"] == "disk_full", body
            assert [j["id"] for j in (await farm.get("/api/jobs"))["jobs"]] == [job["id"]]
            # canceling 3,000 tasks needs room too: the answer says the change is kept
            resp = await farm.client.post(f"/api/jobs/{job['id']}/cancel")
            body = await resp.json()
            assert resp.status == 507 and "will be saved" in body["error"]["message"], body
            # while the journal cannot write, further actions change nothing
            resp = await farm.client.post(f"/api/jobs/{job['id']}/priority", json={"priority": 90})
            body = await resp.json()
            assert resp.status == 507 and "nothing was changed" in body["error"]["message"]
            assert (await farm.job(job["id"]))["priority"] == 50
            assert (await farm.get("/api/info"))["store"] != "ok"
            filler.unlink()
            for _ in range(100):  # the journal tries again by itself
                if (await farm.get("/api/info"))["store"] == "ok":
                    break
                await asyncio.sleep(0.1)
            assert (await farm.get("/api/info"))["store"] == "ok"
            before = await farm.job(job["id"])
            await farm.restart()
            after = await farm.job(job["id"])
            assert after["status"] == before["status"] == "canceled"
            assert after["tasks_queued"] == 0
        finally:
            await farm.stop()


# --- 7. slow clients ------------------------------------------------------------------------


async def _raw(farm: Farm, data: bytes) -> socket.socket:
    assert farm.client is not None
    sock = socket.create_connection((farm.client.host, farm.client.port))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_sendall(sock, data)
    return sock


async def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, 65536):
            got += chunk
    return got


async def test_a_stalled_upload_is_answered_408_and_leaves_nothing(tmp_path: Path) -> None:
    farm = Farm(tmp_path / "data", body_timeout=0.5, header_timeout=0.5)
    await farm.start()
    try:
        sha = "ab" * 32
        started = time.monotonic()
        sock = await _raw(farm, (f"PUT /api/blobs/{sha} HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Length: 100\r\n\r\n").encode() + b"0123456789")
        answer = await _read_until_closed(sock, 5)
        sock.close()
        assert b" 408 " in answer.split(b"\r\n")[0], answer[:200]
        assert time.monotonic() - started < 4
        assert list(farm.farm.blobs.tmp.iterdir()) == [], "a partial upload was kept"
        # headers that never end: the connection is closed
        sock = await _raw(farm, b"GET /api/info HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert await _read_until_closed(sock, 5) == b""
        sock.close()
        assert (await farm.get("/api/info"))["server_version"]
    finally:
        await farm.stop()


async def test_slow_uploads_wait_for_a_slot_and_others_are_served(tmp_path: Path) -> None:
    farm = Farm(tmp_path / "data", body_timeout=1.0, max_uploads=2)
    await farm.start()
    try:
        socks = [await _raw(farm, (f"PUT /api/blobs/{i:064x} HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Length: 100\r\n\r\n").encode() + b"x")
                 for i in range(1, 6)]
        await asyncio.sleep(0.3)
        assert len(list(farm.farm.blobs.tmp.iterdir())) <= 2, "more temp files than slots"
        started = time.monotonic()
        assert (await farm.get("/api/info"))["server_version"]
        assert time.monotonic() - started < 0.5
        answers = [await _read_until_closed(s, 5) for s in socks]
        for s in socks:
            s.close()
        codes = sorted(a.split(b" ")[1] for a in answers)
        assert set(codes) <= {b"408", b"503"} and b"408" in codes, codes
    finally:
        await farm.stop()


async def test_connections_past_the_limit_are_closed_at_once(tmp_path: Path) -> None:
    from blenderfarm.server.app import make_runner

    cfg = ServerConfig(data_dir=tmp_path / "data", max_connections=4)

    class Capped(TestServer):
        async def _make_runner(self, **kwargs):
            return make_runner(self.app, cfg, **kwargs)

    client = TestClient(Capped(make_app(cfg), host="127.0.0.1"))
    await client.start_server()
    loop = asyncio.get_running_loop()
    try:
        socks = []
        for _ in range(4):
            s = socket.create_connection((client.host, client.port))
            s.setblocking(False)
            socks.append(s)
        await asyncio.sleep(0.1)
        extra = socket.create_connection((client.host, client.port))
        extra.setblocking(False)
        async with asyncio.timeout(2):
            assert await loop.sock_recv(extra, 10) == b""  # closed at once
        extra.close()
        for s in socks:
            s.close()
        await asyncio.sleep(0.1)
        assert (await client.get("/api/info")).status == 200
    finally:
        await client.close()


# --- 8. unbounded growth --------------------------------------------------------------------


async def test_a_task_log_keeps_its_head_and_tail_within_bounds(tmp_path: Path) -> None:
    farm = Farm(tmp_path / "data", max_log_bytes=64 * 1024)
    await farm.start()
    try:
        await farm.submit(frames="1")
        node = farm.node()
        await node.connect()
        a = await node.expect(m.Assign)
        await node.send(m.Log(task_id=a.task_id, text="FIRST LINE\n" + "x" * 1000))
        for i in range(100):
            await node.send(m.Log(task_id=a.task_id, text=f"line {i} " + "y" * 10_000))
        await node.send(m.Log(task_id=a.task_id, text="LAST LINE"))
        await node.finish(a)
        task = farm.farm.tasks[a.task_id]
        logs = farm.farm.logs
        on_disk = logs.path(task).stat().st_size + logs.tail_path(task).stat().st_size
        assert on_disk <= 1.75 * 64 * 1024 + 20_000, on_disk
        text = (await farm.get(f"/api/tasks/{a.task_id}/log"))["text"]
        assert text.startswith("FIRST LINE") and text.rstrip().endswith("LAST LINE")
        assert "was cut" in text
    finally:
        await farm.stop()


async def test_tasks_come_in_pages(farm: Farm) -> None:
    job = await farm.submit(frames="1-2500")
    first = await farm.get(f"/api/jobs/{job['id']}/tasks")
    assert len(first["tasks"]) == 1000 and first["total"] == 2500 and first["next"] == 1000
    last = await farm.get(f"/api/jobs/{job['id']}/tasks?offset=2000&limit=5000")
    assert len(last["tasks"]) == 500 and last["next"] is None
    assert last["tasks"][0]["frames"] == [2001]
    bad = await farm.client.get(f"/api/jobs/{job['id']}/tasks?limit=lots")
    assert bad.status == 400


async def test_a_million_single_frame_tasks_are_refused_with_advice(farm: Farm) -> None:
    body = await farm.submit(frames="0-999999", status=400)
    assert body["error"]["field"] == "chunk" and "chunk of at least 10" in body["error"]["message"]
    job = await farm.submit(frames="0-999999", chunk=10, paused=True)
    assert job["tasks_total"] == 100_000


async def test_stale_node_records_are_forgotten(tmp_path: Path) -> None:
    farm = Farm(tmp_path / "data", node_retention_days=1, max_nodes=3)
    await farm.start()
    try:
        for i in range(5):  # five nodes come and go: only max_nodes records stay
            n = farm.node(uid=f"n{i}", name=f"n{i}")
            await n.connect()
            await n.close()
            await asyncio.sleep(0.05)
        for _ in range(40):
            if not any(r.online for r in farm.farm.nodes.values()):
                break
            await asyncio.sleep(0.05)
        farm.farm.prune_nodes()
        kept = {n["id"] for n in (await farm.get("/api/nodes"))["nodes"]}
        assert kept == {"n2", "n3", "n4"}, kept
        farm.farm.nodes["n2"].last_seen = time.time() - 2 * 86400
        assert farm.farm.prune_nodes() == ["n2"]
        await farm.restart()
        kept = {n["id"] for n in (await farm.get("/api/nodes"))["nodes"]}
        assert kept == {"n3", "n4"}, kept
    finally:
        await farm.stop()


# --- 9. malformed JSON ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                                  b'{"priority": ' + b"9" * 5000 + b"}",
                                  b'{"priority": NaN}', b'{"priority": 18446744073709551616}'])
@pytest.mark.parametrize("route", ["/api/jobs", "/api/blobs/missing", "/api/jobs/JOB/priority"])
async def test_malformed_json_is_a_400(farm: Farm, route: str, body: bytes) -> None:
    job = await farm.submit(paused=True)
    resp = await farm.client.post(route.replace("JOB", job["id"]), data=body)
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["code"] == "bad_json", answer


# --- 10. pause --stop gives the nodes other work ------------------------------------------


async def test_pause_with_stop_hands_the_nodes_the_next_job(farm: Farm) -> None:
    first = await farm.submit(frames="1-4")
    node = farm.node()
    await node.connect()
    held = [await node.expect(m.Assign), await node.expect(m.Assign)]  # one + prefetch
    assert {a.job_id for a in held} == {first["id"]}
    second = await farm.submit(frames="1-2")
    resp = await farm.client.post(f"/api/jobs/{first['id']}/pause", json={"stop": True})
    assert resp.status == 200
    nxt = await node.expect(m.Assign, timeout=2)  # no other event needed to get it going
    assert nxt.job_id == second["id"]


# --- 12. one uid, two live connections ----------------------------------------------------


async def test_a_second_live_connection_does_not_take_over_a_uid(farm: Farm) -> None:
    job = await farm.submit(frames="1-2")
    first = farm.node(uid="same")
    assert isinstance(await first.connect(), m.Welcome)
    a = await first.expect(m.Assign)
    second = farm.node(uid="same")
    refused = await second.connect()
    assert isinstance(refused, m.Error) and refused.code == "uid_in_use", refused
    assert not refused.fatal  # the node retries: a real reconnect gets in once the old
    # socket is gone
    await first.finish(a)
    await first.finish(await first.expect(m.Assign))
    info = await farm.job(job["id"])
    assert info["status"] == "completed"
    tasks = (await farm.get(f"/api/jobs/{job['id']}/tasks"))["tasks"]
    assert [t["attempts"] for t in tasks] == [1, 1]
    await first.close()
    await asyncio.sleep(0.1)
    third = farm.node(uid="same")
    assert isinstance(await third.connect(), m.Welcome)
