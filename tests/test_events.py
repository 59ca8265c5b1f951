"""``/ws/events`` and the dashboard's files, in-process on a real loopback socket.

Events arrive when things happen; a browser that never reads costs the farm
nothing: its buffer stays bounded, others keep getting events at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.protocol import messages as m
from blenderfarm.server import events, tokens
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.events import EVENTS, MAX_PENDING, EventClient, event_key
from test_server import submit


@pytest.fixture
async def farm(tmp_path: Path):
    server = TestServer(make_app(ServerConfig(data_dir=tmp_path / "data")), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    yield client
    await client.close()


async def subscribe(client: TestClient, token: str | None = None
                    ) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect("/ws/events")
    await ws.send_str(json.dumps({"token": token}))
    hello = await ws.receive_json(timeout=5)
    assert hello["type"] == "hello" and hello["auth"] == "ok"
    assert {"nodes_online", "tasks_queued", "tasks_running", "frames_per_minute"} <= set(hello["stats"])
    return ws


async def next_event(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for ev in await receive_events(ws, max(0.01, deadline - time.monotonic())):
            if ev["type"] == kind:
                return ev


async def receive_events(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> list[dict]:
    """The events of the next frame: one event, or an array of those sent together."""
    data = await ws.receive_json(timeout=timeout)
    return data if isinstance(data, list) else [data]


async def test_a_submitted_job_and_a_connecting_node_arrive_as_events(farm) -> None:
    ws = await subscribe(farm)
    job = await submit(farm, frames="1-3", name="shot010")
    ev = await next_event(ws, "job")
    assert ev["job"]["id"] == job["id"] and ev["job"]["name"] == "shot010"
    assert ev["job"]["frames_total"] == 3
    from fakenode import FakeNode

    node = FakeNode(str(farm.make_url("")), name="render-01")
    try:
        await node.connect()
        ev = await next_event(ws, "node")
        assert ev["node"]["name"] == "render-01" and ev["node"]["online"]
        assign = await node.expect(m.Assign)
        await node.send(m.Progress(task_id=assign.task_id, frame=1, fraction=0.5))
        ev = await next_event(ws, "progress")
        assert ev["task_id"] == assign.task_id and ev["fraction"] == 0.5
        await node.finish(assign)
        frame = await next_event(ws, "frame")
        assert frame["job_id"] == job["id"] and frame["name"] == "shot010_0001.png"
    finally:
        await node.close()
    await ws.close()


async def raw_subscriber(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket client that says hello and then never reads: a stalled browser."""
    host, port = url.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port.rstrip("/")))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws/events HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0]
    payload, mask = b'{"token": null}', os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)  # client frames are masked
    await writer.drain()
    return reader, writer


async def test_a_stalled_browser_never_slows_the_farm(farm) -> None:
    hub = farm.server.app[EVENTS]
    reader, writer = await raw_subscriber(str(farm.make_url("")))
    for _ in range(200):
        if hub.clients:
            break
        await asyncio.sleep(0.01)
    (stalled,) = hub.clients
    healthy = await subscribe(farm)
    big = "x" * 20_000  # fills the socket buffers quickly
    started = time.perf_counter()
    for i in range(3000):
        hub.publish({"type": "job", "time": 0, "job": {"id": f"j{i}", "name": big}})
        if i % 100 == 0:
            await asyncio.sleep(0)  # let the senders run, as between real farm events
    for i in range(3000):
        hub.publish({"type": "progress", "time": 0, "task_id": f"t{i}", "fraction": 0.5})
    elapsed = time.perf_counter() - started
    hub.publish({"type": "job", "time": 0, "job": {"id": "last", "name": "last"}})
    assert elapsed < 2.0, f"publishing 6000 events took {elapsed:.2f}s"
    # The stalled browser holds a bounded backlog: progress beyond it is dropped, and
    # rather than hold more snapshots it will be told to reload everything.
    assert all(len(c.pending) <= MAX_PENDING for c in hub.clients)
    assert stalled.resyncs > 0 and stalled.dropped > 0, (stalled.resyncs, stalled.dropped)
    # The healthy one still gets everything up to the last event, promptly.
    deadline = time.monotonic() + 10
    last = False
    while not last:
        for ev in await receive_events(healthy, max(0.01, deadline - time.monotonic())):
            last = last or (ev["type"] == "job" and ev["job"]["id"] == "last")
    await healthy.close()
    writer.close()


def test_newer_snapshots_replace_older_ones_in_a_backlog() -> None:
    client = EventClient(ws=None, token=None)  # type: ignore[arg-type]
    for fraction in (0.1, 0.2, 0.3):
        ev = {"type": "progress", "task_id": "t1", "fraction": fraction}
        client.put(event_key(ev), json.dumps(ev), True)
    client.put(event_key({"type": "frame"}), '{"type": "frame", "name": "a"}', False)
    client.put(event_key({"type": "frame"}), '{"type": "frame", "name": "b"}', False)
    texts = [json.loads(t) for t in client.take()]
    assert [t.get("fraction") for t in texts if t["type"] == "progress"] == [0.3]
    assert [t["name"] for t in texts if t["type"] == "frame"] == ["a", "b"]


async def test_events_need_a_user_token_when_the_farm_has_tokens(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _, user = await asyncio.to_thread(tokens.create, data / "farm.db", "user", "artist")
    _, node = await asyncio.to_thread(tokens.create, data / "farm.db", "node", "n1")
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=data)), host="127.0.0.1"))
    await client.start_server()
    try:
        for bad in (None, "bfu_wrong", node):
            ws = await client.ws_connect("/ws/events")
            await ws.send_str(json.dumps({"token": bad}))
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == events.CLOSE_UNAUTHORIZED
            await ws.close()
        ws = await subscribe(client, user)
        await ws.close()
        ws = await client.ws_connect("/ws/events")
        await ws.send_str("not json")
        await ws.receive(timeout=5)
        assert ws.close_code == events.CLOSE_BAD_HELLO
    finally:
        await client.close()


async def test_a_websocket_from_another_site_is_refused(farm) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await farm.ws_connect("/ws/events", headers={"Origin": "http://evil.example"})
    assert exc.value.status == 403
    proxied = await farm.ws_connect("/ws/events", headers={"Origin": "https://farm.example",
                                                           "X-Forwarded-Host": "farm.example"})
    await proxied.close()
    same = f"http://{farm.host}:{farm.port}"
    ws = await farm.ws_connect("/ws/events", headers={"Origin": same})
    await ws.send_str('{"token": null}')
    assert (await ws.receive_json(timeout=5))["type"] == "hello"
    await ws.close()


async def test_shutdown_closes_every_events_socket(tmp_path: Path) -> None:
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=tmp_path / "d")),
                                   host="127.0.0.1"))
    await client.start_server()
    ws = await subscribe(client)
    # on_shutdown runs as on bf-server's SIGTERM; the browser answers the close meanwhile
    closing = asyncio.create_task(client.server.close())
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
    await asyncio.wait_for(closing, 5)
    await client.close()


async def test_the_dashboard_is_served_with_a_strict_policy(farm) -> None:
    resp = await farm.get("/")
    html = await resp.text()
    assert resp.status == 200 and '<script type="module" src="/static/app.js">' in html
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    for name in ("app.js", "api.js", "state.js", "style.css"):
        resp = await farm.get(f"/static/{name}")
        assert resp.status == 200, name
        assert resp.headers["Content-Type"].split(";")[0] in ("text/javascript", "text/css",
                                                               "application/javascript")
    for name in ("__init__.py", "..%2Fevents.py", ".hidden.js", "missing.js"):
        assert (await farm.get(f"/static/{name}")).status == 404, name


async def test_frames_per_minute_counts_recent_frames(farm) -> None:
    hub = farm.server.app[EVENTS]
    now = time.time()
    hub.started = now - 600
    for i in range(30):
        hub.publish({"type": "frame", "time": now - i, "job_id": "j", "name": f"f{i}"})
    hub.publish({"type": "frame", "time": now - 3600, "job_id": "j", "name": "old"})
    assert hub.frames_per_minute(now) == pytest.approx(30 * 60 / 300)


async def node_events(ws: aiohttp.ClientWebSocketResponse, uid: str, seconds: float
                      ) -> list[dict]:
    """The node events about ``uid`` that arrive within ``seconds``."""
    got: list[dict] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            batch = await receive_events(ws, left)
        except TimeoutError:
            break
        got += [ev["node"] for ev in batch if ev["type"] == "node" and ev["node"]["id"] == uid]
    return got


async def test_a_rendering_node_is_news_as_its_progress_moves_a_few_times_a_second(farm
                                                                                    ) -> None:
    from fakenode import FakeNode

    ws = await subscribe(farm)
    node = FakeNode(str(farm.make_url("")), name="render-01")
    try:
        await node.connect()
        job = await submit(farm, frames="1-3", chunk=3, name="shot010")
        assign = await node.expect(m.Assign)
        told = await node_events(ws, node.uid, 0.5)
        # the node's task shows as soon as it is given, before any progress
        assert told and told[-1]["tasks"] == [assign.task_id]
        assert told[-1]["state"] == "rendering"
        assert told[-1]["current"]["task_id"] == assign.task_id
        assert told[-1]["current"]["job_name"] == "shot010"
        started = time.monotonic()
        for i in range(1, 41):  # 40 samples in one second: far more than a browser needs
            await node.send(m.Progress(task_id=assign.task_id, frame=1 + i // 20,
                                       fraction=i / 40))
            await asyncio.sleep(0.025)
        told = await node_events(ws, node.uid, 1.0)
        elapsed = time.monotonic() - started
        assert 2 <= len(told) <= elapsed / 0.25 + 2, (len(told), elapsed)
        fractions = [n["current"]["progress"] for n in told]
        assert fractions == sorted(fractions) and fractions[0] < 1.0
        assert told[-1]["current"] == {"task_id": assign.task_id, "job_id": job["id"],
                                       "job_name": "shot010", "status": "running",
                                       "frame": 3, "progress": 1.0}
        nodes = (await (await farm.get("/api/nodes")).json())["nodes"]
        assert nodes[0]["current"]["frame"] == 3  # the API's view says the same
        await node.finish(assign)
        told = await node_events(ws, node.uid, 0.5)
        assert told[-1]["current"] is None and told[-1]["state"] == "idle"
    finally:
        await node.close()
    await ws.close()


@pytest.mark.parametrize("who_pings", ["server", "node"])
async def test_a_node_that_only_heartbeats_is_seen(tmp_path: Path, monkeypatch, who_pings: str
                                                   ) -> None:
    """Pings and pongs count as seeing a node: an idle node does not look dead; watchers
    hear of it now and then, and its row is not rewritten for every pong."""
    from blenderfarm.server import sessions as farm_mod
    from fakenode import FakeNode

    monkeypatch.setattr(farm_mod, "SEEN_NEWS", 0.3, raising=False)
    data = tmp_path / "data"
    heartbeat = 0.2 if who_pings == "server" else 60.0
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=data, heartbeat=heartbeat)),
                                   host="127.0.0.1"))
    await client.start_server()
    node = FakeNode(str(client.make_url("")), name="idle-01")
    try:
        await node.connect()
        connected = time.time()
        ws = await subscribe(client)
        told: list[dict] = []
        for _ in range(8):  # 1.6 s of nothing but pings and their pongs
            if who_pings == "node":
                assert node.ws is not None
                await node.ws.ping()
            told += await node_events(ws, node.uid, 0.2)
        (rec,) = (await (await client.get("/api/nodes")).json())["nodes"]
        assert rec["online"] and rec["last_seen"] > connected + 1.0, rec["last_seen"] - connected
        assert told and told[-1]["last_seen"] > connected + 0.8
        row = await asyncio.to_thread(_stored_last_seen, data / "farm.db", node.uid)
        assert row < connected + 0.5  # once a minute at most, not once a pong
        await ws.close()
    finally:
        await node.close()
        await client.close()


def _stored_last_seen(db: Path, uid: str) -> float:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as con:
        (data,) = con.execute("SELECT data FROM nodes WHERE uid=?", (uid,)).fetchone()
    return float(json.loads(data)["last_seen"])


async def test_node_news_says_a_burst_of_changes_twice_first_and_last() -> None:
    from blenderfarm.server.news import NodeNews

    said: list[tuple[str, float]] = []
    news = NodeNews(lambda uid: said.append((uid, time.monotonic())), interval=0.1)
    for _ in range(50):
        news.changed("n1")
    news.changed("n2")
    assert [u for u, _ in said] == ["n1", "n2"]  # the first change of each goes at once
    await asyncio.sleep(0.15)
    assert [u for u, _ in said] == ["n1", "n2", "n1"]  # the rest, once, at the interval's end
    assert said[2][1] - said[0][1] >= 0.09
    news.changed("n1")  # within the interval again: due later, then forgotten
    news.forget("n1")
    news.close()
    await asyncio.sleep(0.15)
    assert len(said) == 3


async def test_a_job_s_end_leaves_without_waiting_for_the_send_window(
        farm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "SEND_WINDOW", 1.0)  # long, so that skipping it shows
    hub = farm.server.app[EVENTS]
    ws = await subscribe(farm)
    hub.publish({"type": "job", "time": 0, "job": {"id": "j1", "status": "active"}})
    await asyncio.sleep(0.1)  # the sender now waits out its window
    started = time.monotonic()
    hub.publish({"type": "job", "time": 0, "job": {"id": "j1", "status": "completed"}})
    got = await receive_events(ws, 5)
    assert time.monotonic() - started < 0.5, "the job's end waited for the window"
    assert got[-1]["job"]["status"] == "completed"  # the batch holds the newest snapshot
    await ws.close()
