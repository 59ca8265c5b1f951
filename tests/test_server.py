"""bf-server in-process on a real loopback socket: API, blobs, dispatch, protocol errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.protocol import messages as m
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.store import SCHEMA_VERSION
from fakenode import FakeNode

BLEND = b"BLENDER-v300 pretend .blend for server tests"
SHA = hashlib.sha256(BLEND).hexdigest()




@pytest.fixture
async def farm(tmp_path: Path):
    """A started server and a client for it; grace period short for loss tests."""
    cfg = ServerConfig(data_dir=tmp_path / "data", grace_period=0.3)
    server = TestServer(make_app(cfg), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    nodes: list[FakeNode] = []

    def node(**kw) -> FakeNode:
        n = FakeNode(str(server.make_url("")), **kw)
        nodes.append(n)
        return n

    client.node = node  # type: ignore[attr-defined]
    yield client
    for n in nodes:
        await n.close()
    await client.close()


async def submit(client, frames="1-4", chunk=1, **kw) -> dict:
    resp = await client.put(f"/api/blobs/{SHA}", data=BLEND)
    assert resp.status in (200, 201)
    spec = {"blend": "shot.blend", "manifest": {"shot.blend": SHA}, "frames": frames,
            "chunk": chunk, **kw}
    resp = await client.post("/api/jobs", json=spec)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["job"]


async def job(client, job_id: str) -> dict:
    return (await (await client.get(f"/api/jobs/{job_id}")).json())["job"]


async def test_blob_upload_is_verified_and_deduplicated(farm) -> None:
    resp = await farm.post("/api/blobs/missing", json={"hashes": [SHA]})
    assert (await resp.json())["missing"] == [SHA]
    bad = await farm.put(f"/api/blobs/{SHA}", data=b"other bytes")
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "hash_mismatch"
    assert (await farm.put(f"/api/blobs/{SHA}", data=BLEND)).status == 201
    assert (await farm.put(f"/api/blobs/{SHA}", data=BLEND)).status == 200
    resp = await farm.post("/api/blobs/missing", json={"hashes": [SHA]})
    assert (await resp.json())["missing"] == []
    assert await (await farm.get(f"/api/blobs/{SHA}")).read() == BLEND


async def test_job_with_unuploaded_files_is_refused(farm) -> None:
    spec = {"blend": "s.blend", "manifest": {"s.blend": "b" * 64}, "frames": "1"}
    resp = await farm.post("/api/jobs", json=spec)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "missing_blobs"


@pytest.mark.parametrize("body, field", [
    ({"blend": "s.blend", "manifest": {"s.blend": SHA}, "frames": "9-1"}, "frames"),
    ({"blend": "s.blend", "manifest": {"/etc/passwd": SHA}, "frames": "1"}, "manifest['/etc/passwd']"),
    ([1, 2], ""),
])
async def test_bad_specs_get_400_with_the_field(farm, body, field) -> None:
    resp = await farm.post("/api/jobs", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == field


async def drain(node: FakeNode, cls=m.Assign, timeout: float = 0.3) -> list:
    got = []
    while True:
        try:
            got.append(await node.expect(cls, timeout=timeout))
        except TimeoutError:
            return got


async def test_two_nodes_render_a_job_and_outputs_are_laid_out(farm, tmp_path) -> None:
    a, b = farm.node(name="a"), farm.node(name="b")
    assert isinstance(await a.connect(), m.Welcome)
    assert isinstance(await b.connect(), m.Welcome)
    j = await submit(farm, frames="1-6", chunk=2, name="shot")
    got_a, got_b = await drain(a), await drain(b)
    # every idle node gets a task first; the third one is a prefetch for one of them
    assert sorted(map(len, (got_a, got_b))) == [1, 2]
    assert sorted(x.frames for x in got_a + got_b) == [[1, 2], [3, 4], [5, 6]]
    for node, assigns in ((a, got_a), (b, got_b)):
        for assign in assigns:
            await node.finish(assign)
    info = await job(farm, j["id"])
    assert info["status"] == "completed" and info["frames_done"] == 6
    outs = (await (await farm.get(f"/api/jobs/{j['id']}/outputs")).json())["outputs"]
    assert [o["name"] for o in outs] == [f"shot_{f:04d}.png" for f in range(1, 7)]
    data_dir = tmp_path / "data" / "jobs" / j["id"]
    assert (data_dir / "shot_0003.png").read_bytes().startswith(b"frame 3 of")
    zipped = await (await farm.get(f"/api/jobs/{j['id']}/outputs.zip")).read()
    import io
    import zipfile
    assert len(zipfile.ZipFile(io.BytesIO(zipped)).namelist()) == 6


async def test_lost_node_tasks_go_to_another_node(farm) -> None:
    a = farm.node(name="a")
    await a.connect()
    j = await submit(farm, frames="1")
    first = await a.expect(m.Assign)
    await a.close()
    b = farm.node(name="b")
    await b.connect()
    again = await b.expect(m.Assign, timeout=3)  # after the 0.3 s grace period
    assert again.task_id == first.task_id
    await b.finish(again)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_reconnect_within_grace_keeps_the_task_and_late_results_count(farm) -> None:
    a = farm.node(name="a")
    await a.connect()
    j = await submit(farm, frames="1")
    assign = await a.expect(m.Assign)
    await a.ws.close()
    a2 = farm.node(name="a", uid=a.uid)
    await a2.connect(running=[assign.task_id])
    await a2.finish(assign)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_failures_retry_then_fail_the_job_with_the_error(farm) -> None:
    nodes = [farm.node(name=f"n{i}") for i in range(3)]
    for n in nodes:
        await n.connect()
    j = await submit(farm, frames="7")
    for _ in range(3):
        assign = None
        for n in nodes:
            try:
                assign = await n.expect(m.Assign, timeout=0.5)
                break
            except TimeoutError:
                continue
        assert assign is not None
        await n.send(m.TaskFailed(task_id=assign.task_id, error="Blender segfaulted"))
        await n.expect(m.Ack)
    info = await job(farm, j["id"])
    assert info["status"] == "failed"
    assert "frame 7 failed after 3 attempts: Blender segfaulted" in info["error"]


async def test_denoise_needed_without_oidn_node_fails_clearly(farm) -> None:
    a = farm.node(name="a", oidn=False)
    await a.connect()
    j = await submit(farm, frames="1")
    assign = await a.expect(m.Assign)
    await a.send(m.TaskFailed(task_id=assign.task_id, error="needs OIDN", retryable=False,
                              reason="needs_denoise"))
    await a.expect(m.Ack)
    info = await job(farm, j["id"])
    assert info["status"] == "failed"
    assert "--no-denoise" in info["error"] and "OpenImageDenoise" in info["error"]


async def test_denoise_needed_goes_to_the_oidn_node(farm) -> None:
    a, b = farm.node(name="plain", oidn=False), farm.node(name="oidn", oidn=True)
    await a.connect()
    j = await submit(farm, frames="1")
    assign = await a.expect(m.Assign)
    await b.connect()
    await a.send(m.TaskFailed(task_id=assign.task_id, error="needs OIDN", retryable=False,
                              reason="needs_denoise"))
    again = await b.expect(m.Assign)
    await b.finish(again)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def no_assign(node: FakeNode, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await node.expect(m.Assign, timeout=seconds)


async def test_a_job_that_needs_a_tag_goes_only_to_a_node_with_every_tag(farm) -> None:
    plain = farm.node(name="plain", tags=["ssd"])
    await plain.connect()
    j = await submit(farm, frames="1", tags=["gpu", "ssd"])
    await no_assign(plain)
    info = await job(farm, j["id"])
    assert info["tags"] == ["gpu", "ssd"] and info["status"] == "queued"
    assert info["waiting"] == "no online node has the tag gpu"
    other = await submit(farm, frames="1")  # a job without tags is not held up
    assert (await plain.expect(m.Assign)).job_id == other["id"]
    gpu = farm.node(name="gpu", tags=["ssd", "gpu", "big"])
    await gpu.connect()
    assign = await gpu.expect(m.Assign)
    assert assign.job_id == j["id"]
    await gpu.finish(assign)
    info = await job(farm, j["id"])
    assert info["status"] == "completed" and info["waiting"] is None


async def test_a_job_no_node_can_render_without_opengl_waits_and_says_how_to_fix_it(farm) -> None:
    headless = farm.node(name="headless", opengl=False)
    await headless.connect()
    j = await submit(farm, frames="1-2")
    first = await headless.expect(m.Assign)
    await headless.send(m.TaskFailed(task_id=first.task_id, retryable=False,
                                     reason="needs_opengl",
                                     error="The scene renders with Eevee, which needs OpenGL"))
    await headless.expect(m.Ack)
    # the second task, which it held in advance, is taken back; nothing more comes
    second = await headless.expect(m.Assign)
    assert (await headless.expect(m.Cancel)).task_id == second.task_id
    await no_assign(headless)
    info = await job(farm, j["id"])
    assert info["status"] == "active" and info["needs_opengl"] and info["error"] is None
    assert "no online node can render Eevee" in info["waiting"]
    assert "xvfb-run" in info["waiting"]
    able = farm.node(name="xvfb", opengl=True)
    await able.connect()
    for _ in range(2):
        await able.finish(await able.expect(m.Assign))
    info = await job(farm, j["id"])
    assert info["status"] == "completed" and info["waiting"] is None


async def test_an_eevee_override_goes_only_to_nodes_with_opengl(farm) -> None:
    headless = farm.node(name="headless", opengl=False)
    await headless.connect()
    j = await submit(farm, frames="1", overrides={"engine": "BLENDER_EEVEE"})
    await no_assign(headless)
    info = await job(farm, j["id"])
    assert info["needs_opengl"] and "no online node can render Eevee" in info["waiting"]
    able = farm.node(name="gl", opengl=True)
    await able.connect()
    await able.finish(await able.expect(m.Assign))
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_a_job_submitted_with_no_node_online_says_so(farm) -> None:
    j = await submit(farm, frames="1")
    assert j["waiting"] == "no node is online"


async def test_malformed_frames_get_errors_and_the_server_stays_up(farm) -> None:
    a = farm.node()
    await a.connect()
    for bad in [b"\xc1\xc1", msgpack.packb({"t": "nope"}), msgpack.packb([1, 2]),
                msgpack.packb({"t": "progress", "task_id": 3}), "text frame",
                m.encode(m.Assign(task_id="x", job_id="y", frames=[1], blend="a.blend",
                                  manifest={}, output_name="o"))]:
        await a.send_raw(bad)
        err = await a.expect(m.Error)
        assert err.code in ("bad_message", "unexpected")
    info = await (await farm.get("/api/info")).json()
    assert info["nodes_online"] == 1


async def test_protocol_version_mismatch_is_refused(farm) -> None:
    a = farm.node()
    msg = await a.connect(protocol=999)
    assert isinstance(msg, m.Error) and msg.fatal and "protocol" in msg.message


async def test_cancel_stops_running_tasks(farm) -> None:
    a = farm.node()
    await a.connect()
    j = await submit(farm, frames="1-2")
    assign = await a.expect(m.Assign)
    resp = await farm.post(f"/api/jobs/{j['id']}/cancel")
    assert (await resp.json())["job"]["status"] == "canceled"
    cancel = await a.expect(m.Cancel)
    assert cancel.task_id == assign.task_id


async def test_state_survives_a_restart(tmp_path) -> None:
    cfg = ServerConfig(data_dir=tmp_path / "d", grace_period=0.3)
    async with TestClient(TestServer(make_app(cfg))) as client:
        j = await submit(client, frames="1-3")
    async with TestClient(TestServer(make_app(cfg))) as client:
        info = await job(client, j["id"])
        assert info["frames_total"] == 3 and info["status"] == "queued"
        node = FakeNode(str(client.make_url("")))
        await node.connect()
        assign = await node.expect(m.Assign)
        await node.finish(assign)
        await node.close()
        await asyncio.sleep(0)


async def test_a_lone_node_gets_its_failed_task_back_after_the_ack(farm) -> None:
    a = farm.node()
    await a.connect()
    j = await submit(farm, frames="1")
    first = await a.expect(m.Assign)
    await a.send(m.TaskFailed(task_id=first.task_id, error="flaky disk"))
    ack = await a.inbox.get()
    again = await a.inbox.get()
    assert isinstance(ack, m.Ack) and isinstance(again, m.Assign)  # in that order
    assert again.task_id == first.task_id and again.attempt == 2
    await a.finish(again)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_restart_requeues_every_task_a_returning_node_no_longer_has(tmp_path) -> None:
    """Found by the chaos run: a node that held two tasks when the server died, and
    comes back with none, must see both requeued (not one of them kept forever)."""
    cfg = ServerConfig(data_dir=tmp_path / "d", grace_period=30)
    async with TestClient(TestServer(make_app(cfg))) as client:
        node = FakeNode(str(client.make_url("")))
        await node.connect()
        j = await submit(client, frames="1-3")
        held = await drain(node)
        assert len(held) == 2
        await node.close()
    async with TestClient(TestServer(make_app(cfg))) as client:
        again = FakeNode(str(client.make_url("")), uid=node.uid)
        await again.connect(running=[])
        got = await drain(again)
        assert {a.task_id for a in got} <= {a.task_id for a in held} | {f"{j['id']}-00002"}
        for assign in got:
            await again.finish(assign)
        for assign in await drain(again):
            await again.finish(assign)
        assert (await job(client, j["id"]))["status"] == "completed"
        await again.close()


async def test_users_of_equal_priority_share_the_nodes(farm) -> None:
    """Ann queued two jobs before Bob's one; the first node to come still gives Bob a slot."""
    a1 = await submit(farm, frames="1-4", user="ann")
    a2 = await submit(farm, frames="1-4", user="ann")
    b1 = await submit(farm, frames="1-4", user="bob")
    assert (a1["owner"], b1["owner"]) == ("ann", "bob")
    node = farm.node()
    await node.connect()
    got = await drain(node)  # one task to render, one prefetched
    assert sorted(a.job_id for a in got) == sorted([a1["id"], b1["id"]])
    a2_tasks = (await (await farm.get(f"/api/jobs/{a2['id']}/tasks")).json())["tasks"]
    assert all(t["status"] == "queued" and t["assigned"] is None for t in a2_tasks)
    for assign in got:
        await node.finish(assign)
    tasks = (await (await farm.get(f"/api/jobs/{b1['id']}/tasks")).json())["tasks"]
    assert tasks[0]["status"] == "done" and tasks[0]["assigned"] is not None


async def test_a_burst_of_changes_is_one_commit(tmp_path) -> None:
    """The journal writes what changed during one loop pass in one transaction, each
    row once at its latest state."""
    from blenderfarm.server.models import Task
    from blenderfarm.server.store import Journal, Store

    store = Store(tmp_path / "farm.db")
    await store.open()
    journal = Journal(store)
    tasks = [Task(id=f"j-{i}", job_id="j", index=i, frames=[i]) for i in range(500)]
    futures = [journal.add(tasks=[t]) for t in tasks]
    tasks[7].status = "done"  # changed again before the batch left: the row says done
    futures.append(journal.add(tasks=[tasks[7]]))
    assert len({id(f) for f in futures}) == 1
    await futures[0]
    assert store.commits == 1
    await store.close()
    loaded = await asyncio.to_thread(lambda: Store._load(Store(tmp_path / "farm.db")._connect()))
    assert len(loaded.tasks) == 500
    assert next(t for t in loaded.tasks if t.id == "j-7").status == "done"


async def test_outputs_the_server_cannot_store_are_rendered_again(farm, tmp_path) -> None:
    """The node's slot was freed at once; when the server then fails to lay out the
    outputs (its own disk), the task is not lost: it goes back to the queue."""
    node = farm.node()
    await node.connect()
    j = await submit(farm, frames="1")
    first = await node.expect(m.Assign)
    blocker = tmp_path / "data" / "jobs" / j["id"]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"a file where the job's folder should be")
    await node.finish(first)
    err = await node.expect(m.Error)
    assert err.code == "server_error" and "rendered again" in err.message
    blocker.unlink()
    again = await node.expect(m.Assign)
    assert again.task_id == first.task_id and again.attempt == 2
    await node.finish(again)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_a_node_gets_a_jobs_manifest_once_per_connection(farm) -> None:
    node = farm.node()
    await node.connect()
    j = await submit(farm, frames="1-3")
    first, second = await drain(node)
    assert first.manifest == {"shot.blend": SHA} and second.manifest == {}
    await node.finish(first)
    third = await node.expect(m.Assign)
    assert third.manifest == {}
    await node.close()
    again = farm.node(uid=node.uid)
    await again.connect(running=[second.task_id])  # it lost the third in a restart
    back = await again.expect(m.Assign)
    assert back.task_id == third.task_id
    assert back.manifest == {"shot.blend": SHA}  # a new connection: sent again
    for assign in (second, back):
        await again.finish(assign)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_a_schema_1_database_is_migrated(tmp_path) -> None:
    """Before schema 2 each job row held its spec; the server moves it to ``specs``."""
    import json
    import sqlite3

    data = tmp_path / "d"
    data.mkdir()

    def old_db() -> None:
        db = sqlite3.connect(data / "farm.db")
        db.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, data TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');""")
        row = {"id": "oldjob", "seq": 1, "output_name": "old", "status": "queued",
               "priority": 50, "created": 1.0, "updated": 1.0, "started": None,
               "finished": None, "error": None, "needs_oidn": False, "frames_total": 2,
               "node_failures": {}, "blocklist": [],
               "spec": {"name": "old", "blend": "shot.blend", "manifest": {"shot.blend": SHA},
                        "frames": "1-2", "overrides": {"samples": 8}}}
        db.execute("INSERT INTO jobs VALUES ('oldjob', 1, ?)", (json.dumps(row),))
        db.commit()
        db.close()

    await asyncio.to_thread(old_db)
    cfg = ServerConfig(data_dir=data)
    async with TestClient(TestServer(make_app(cfg))) as client:
        info = await job(client, "oldjob")
        assert info["frames_total"] == 2 and info["overrides"] == {"samples": 8}
        assert info["tasks_queued"] == 2 and info["owner"] == ""

    def rows() -> tuple[str, str, str]:
        db = sqlite3.connect(data / "farm.db")
        try:
            version = db.execute("SELECT value FROM meta").fetchone()[0]
            (job_data,) = db.execute("SELECT data FROM jobs").fetchone()
            (spec,) = db.execute("SELECT spec FROM specs WHERE job_id='oldjob'").fetchone()
            return version, job_data, spec
        finally:
            db.close()

    version, job_data, spec = await asyncio.to_thread(rows)
    assert version == str(SCHEMA_VERSION) and "spec" not in json.loads(job_data)
    assert json.loads(spec)["frames"] == "1-2"


async def test_an_urgent_job_takes_the_place_of_prefetched_work(farm) -> None:
    node = farm.node()
    await node.connect()
    await submit(farm, frames="1-4", priority=20)
    running, prefetched = await drain(node)
    await submit(farm, frames="1-2", priority=20, name="same priority")
    assert await drain(node, m.Cancel) == []  # equal priority waits its turn
    urgent = await submit(farm, frames="1", priority=90, name="urgent")
    cancel = await node.expect(m.Cancel)
    assert cancel.task_id == prefetched.task_id and "higher priority" in cancel.reason
    got = await node.expect(m.Assign)
    assert got.job_id == urgent["id"]
    await node.finish(running)
    after = await node.expect(m.Assign)
    assert after.task_id == prefetched.task_id  # back at the front of its queue
    tasks = (await (await farm.get(f"/api/jobs/{urgent['id']}/tasks")).json())["tasks"]
    assert tasks[0]["status"] == "assigned"


async def test_bf_nodes_names_each_node_and_says_what_it_renders(farm, capsys) -> None:
    from blenderfarm.client.cli import main

    busy = farm.node(name="render-07")
    await busy.connect()
    job = await submit(farm, frames="1-2", chunk=2, name="shot010")
    assign = await busy.expect(m.Assign)
    spare = farm.node(name="spare-01")
    await spare.connect()
    await busy.send(m.Progress(task_id=assign.task_id, frame=2, fraction=0.5))
    for _ in range(100):  # until the server has read it
        nodes = (await (await farm.get("/api/nodes")).json())["nodes"]
        if any((n["current"] or {}).get("frame") == 2 for n in nodes):
            break
        await asyncio.sleep(0.02)
    url = str(farm.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["nodes", "--server", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "STATE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"render-07", "spare-01"}
    assert "rendering shot010 frame 2" in rows["render-07"] and " idle " in rows["spare-01"]
    assert busy.uid not in "".join(lines) and spare.uid not in "".join(lines)
    assert await asyncio.to_thread(main, ["nodes", "--server", url, "--json"]) == 0
    listed = {n["name"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    old_shape = {"id", "name", "state", "online", "blender", "oidn", "threads", "tasks",
                 "last_seen", "frames_rendered"}
    assert old_shape <= set(listed["render-07"]) and listed["spare-01"]["current"] is None
    assert listed["render-07"]["current"]["job_id"] == job["id"]
