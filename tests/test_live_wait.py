"""``bf wait`` follows ``/ws/events``: a real server on loopback, the stdlib websocket
client, and hostile servers made of raw sockets.

``bf wait`` runs in a thread of the test (it is blocking code), the server on the
test's loop; the job's end is the server's own ``finished`` timestamp.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from blenderfarm.client import cli
from blenderfarm.client.events import (
    GUID,
    EventStream,
    StreamClosed,
    StreamProtocolError,
    StreamUnavailable,
    WebSocket,
)
from blenderfarm.protocol import messages as m
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.events import EVENTS, hang_up
from fakenode import FakeNode
from procs import get_json
from scenes import make_scene, needs_blender, run_blender
from test_server import submit

#: bf wait's poll interval in these tests: a poller would answer this late, so a
#: prompt answer can only come from the events
SLOW_POLL = "3"
PROMPT = 0.5  # seconds from the job's end to bf wait's return; generous (noisy machine)


@pytest.fixture
async def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user config file
    server = TestServer(make_app(ServerConfig(data_dir=tmp_path / "data")), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    node = FakeNode(str(server.make_url("")), name="render-01")
    client.node = node  # type: ignore[attr-defined]
    yield client
    await node.close()
    await client.close()


class BfWait:
    """``bf wait JOB`` in a thread; ``code`` and ``returned`` (time.time()) once it ends."""

    def __init__(self, url: str, *args: str) -> None:
        self.code: int | None = None
        self.returned = 0.0
        self.thread = threading.Thread(target=self._run, args=(url, args), daemon=True)
        self.thread.start()

    def _run(self, url: str, args: tuple[str, ...]) -> None:
        self.code = cli.main(["--server", url, "wait", *args])
        self.returned = time.time()

    async def done(self, timeout: float = 15) -> int:
        await asyncio.to_thread(self.thread.join, timeout)
        assert not self.thread.is_alive(), "bf wait did not return"
        assert self.code is not None
        return self.code


def url_of(farm: TestClient) -> str:
    return str(farm.make_url("")).rstrip("/")


async def following(farm: TestClient, count: int = 1, timeout: float = 10) -> None:
    """Until ``count`` event sockets are open (bf wait has subscribed)."""
    hub = farm.server.app[EVENTS]
    deadline = time.monotonic() + timeout
    while len(hub.clients) < count:
        assert time.monotonic() < deadline, "bf wait never opened the event stream"
        await asyncio.sleep(0.01)


async def render_all(node: FakeNode, tasks: int) -> None:
    for _ in range(tasks):
        await node.finish(await node.expect(m.Assign))


async def test_events_arrive_on_the_stdlib_client(farm) -> None:
    stream = await asyncio.to_thread(EventStream(url_of(farm)).open)
    try:
        assert stream.hello["type"] == "hello" and "stats" in stream.hello
        job = await submit(farm, frames="1-2", name="shot020")
        deadline = time.monotonic() + 5
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "job" and e["job"]["id"] == job["id"] for e in seen):
            assert time.monotonic() < deadline, seen
            seen += await asyncio.to_thread(stream.receive, 0.5)
    finally:
        stream.close()


async def test_bf_wait_returns_promptly_when_the_job_ends(farm, capsys) -> None:
    job = await submit(farm, frames="1-3")
    await farm.node.connect()
    wait = BfWait(url_of(farm), job["id"], "--interval", SLOW_POLL)
    await asyncio.sleep(1.0)  # bf wait has read the job once and now waits
    await render_all(farm.node, 3)
    code = await wait.done()
    finished = farm.server.app[EVENTS].farm.jobs[job["id"]].finished
    assert code == cli.EXIT_OK
    late = wait.returned - finished
    assert late < PROMPT, f"bf wait returned {late:.3f} s after the job ended"
    err = capsys.readouterr().err
    assert f"Job {job['id']} completed: 3 frame(s)" in err and "Note:" not in err


async def test_bf_wait_reconnects_after_the_server_drops_the_stream(farm, capsys) -> None:
    job = await submit(farm, frames="1-2")
    await farm.node.connect()
    wait = BfWait(url_of(farm), job["id"], "--interval", SLOW_POLL)
    await following(farm)
    hub = farm.server.app[EVENTS]
    (first,) = hub.clients
    hub.clients.discard(first)
    await hang_up(first, 1011, b"dropped by the test")  # the server hangs up on bf wait
    await following(farm)  # it subscribed again
    assert first not in hub.clients
    await asyncio.sleep(0.3)
    await render_all(farm.node, 2)
    assert await wait.done() == cli.EXIT_OK
    late = wait.returned - hub.farm.jobs[job["id"]].finished
    assert late < PROMPT, f"bf wait returned {late:.3f} s after the job ended"
    assert "Note:" not in capsys.readouterr().err


async def test_bf_wait_shows_progress_inside_a_frame_and_an_eta(farm, capsys) -> None:
    job = await submit(farm, frames="1")
    await farm.node.connect()
    assign = await farm.node.expect(m.Assign)
    await farm.node.send(m.Progress(task_id=assign.task_id, frame=1, fraction=0.01))
    await asyncio.sleep(0.5)
    await farm.node.send(m.Progress(task_id=assign.task_id, frame=1, fraction=0.25))
    for _ in range(100):  # the view counts the quarter frame and gives the time left
        view = (await (await farm.get(f"/api/jobs/{job['id']}")).json())["job"]
        if view["progress"] == 0.25:
            break
        await asyncio.sleep(0.01)
    assert view["progress"] == 0.25 and view["frames_done"] == 0
    assert view["eta"] is not None and 1.0 < view["eta"] < 30
    wait = BfWait(url_of(farm), job["id"])
    await following(farm)
    await farm.node.send(m.Progress(task_id=assign.task_id, frame=1, fraction=0.5))
    await asyncio.sleep(0.3)
    await farm.node.finish(assign)
    assert await wait.done() == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "50.0%" in err and "ETA --" not in err.split("50.0%")[1].splitlines()[0], err


# --- fallback: a server without /ws/events ---------------------------------------------------


async def test_bf_wait_polls_with_a_note_when_the_server_has_no_event_stream(
        aiohttp_server, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    reads = [0]

    async def get_job(request: web.Request) -> web.Response:
        reads[0] += 1
        status = "completed" if reads[0] >= 3 else "active"
        return web.json_response({"job": {"id": "j1", "status": status, "frames_total": 2,
                                          "frames_done": 2 if status == "completed" else 1}})

    app = web.Application()
    app.router.add_get("/api/jobs/{job_id}", get_job)  # an old server: no /ws/events
    server = await aiohttp_server(app, host="127.0.0.1")
    wait = BfWait(str(server.make_url("")).rstrip("/"), "j1", "--interval", "0.5")
    assert await wait.done() == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "offers no live events (HTTP 404 Not Found)" in err
    assert "Checking the job every few seconds instead." in err
    assert "Job j1 completed: 2 frame(s)" in err and reads[0] == 3


# --- hostile servers ---------------------------------------------------------------------------


@contextlib.contextmanager
def raw_server(then: bytes, answer_hello: bool = True) -> Iterator[str]:
    """A server that upgrades any request, sends a hello, then sends ``then``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            conn.recv(4096)  # the client's hello with its token
            if answer_hello:
                hello = json.dumps({"type": "hello", "auth": "ok"}).encode()
                conn.sendall(bytes([0x81, len(hello)]) + hello)
            conn.sendall(then)
            time.sleep(1.0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()
        thread.join(3)


def frame(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes([first, n]) + payload
    if n < 1 << 16:
        return bytes([first, 126]) + struct.pack("!H", n) + payload
    return bytes([first, 127]) + struct.pack("!Q", n) + payload


@pytest.mark.parametrize(("sent", "says"), [
    (frame(0x1, b"", length=1 << 30), "the limit is"),  # claims a GiB: refused from its header
    (bytes([0x81, 0x85]) + b"\0\0\0\0hello", "masked frame"),
    (frame(0x1, b"\xff\xfe"), "not UTF-8"),
    (frame(0x1, b"not json"), "not JSON"),
    (frame(0x9, b"x" * 200, length=200), "control frame"),
    (frame(0x1, b"[1,", fin=False) + frame(0x1, b"2]"), "inside another"),
])
def test_a_hostile_frame_gives_a_clear_error(sent: bytes, says: str) -> None:
    with raw_server(sent) as url:
        stream = EventStream(url, max_message=1 << 20).open()
        started = time.monotonic()
        with pytest.raises(StreamProtocolError, match=says):
            while True:
                stream.receive(2.0)
        assert time.monotonic() - started < 1.0  # refused at once, not after reading it


def test_fragments_are_joined_and_pings_answered() -> None:
    sent = (frame(0x1, b'[{"type": "a"},', fin=False) + frame(0x9, b"hi")
            + frame(0x0, b'{"type": "b"}]'))
    with raw_server(sent) as url:
        stream = EventStream(url).open()
        assert [e["type"] for e in stream.receive(2.0)] == ["a", "b"]
        stream.close()


def test_a_server_that_never_says_hello_is_no_event_stream() -> None:
    with raw_server(frame(0x8, struct.pack("!H", 4400)), answer_hello=False) as url, \
            pytest.raises(StreamUnavailable, match="4400"):
        EventStream(url).open()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_from_the_server_never_escape_as_another_error(data: bytes) -> None:
    ours, theirs = socket.socketpair()
    ws = WebSocket(ours, max_message=1024)
    theirs.sendall(data)
    theirs.close()
    with pytest.raises(StreamClosed):  # the peer hung up: it ends, one way or another
        for _ in range(1000):
            message = ws.recv(1.0)
            assert isinstance(message, (str, bytes)), "a closed peer ends the stream, never times out"
    ws.abort()


# --- progress inside a frame, from Blender's own lines ------------------------------------------

TILED = [  # Blender 3.4, Cycles with 16 tiles, as it prints them in background mode
    ("Fra:1 Mem:17.10M | Time:00:05.94 | Scene, ViewLayer | Rendered 11/16 Tiles, Sample 1/4000",
     11.00025 / 16),
    ("Fra:1 Mem:17.10M | Time:00:06.28 | Scene, ViewLayer | Rendered 11/16 Tiles, Sample 4000/4000",
     11 / 16),
    ("Fra:1 Mem:17.10M | Time:00:06.28 | Scene, ViewLayer | Rendered 12/16 Tiles, Sample 4000/4000",
     12 / 16),
    ("Fra:1 Mem:17.10M | Time:00:06.28 | Scene, ViewLayer | Rendered 12/16 Tiles, Sample 2000/4000",
     12.5 / 16),
]


def test_a_tiled_frame_s_progress_counts_tiles_and_never_goes_back() -> None:
    from blenderfarm.node.runner_proc import parse_fraction

    got = [parse_fraction(line) for line, _ in TILED]
    assert got == pytest.approx([want for _, want in TILED])
    # was 0.00025, 1.0, 1.0, 0.5: a bar jumping back and forth by whole frames
    assert all(b >= a - 0.001 for a, b in zip(got, got[1:], strict=False)), got
    assert parse_fraction("Fra:1 | Scene, ViewLayer | Sample 8/32") == 0.25
    assert parse_fraction("Fra:1 | Scene | Rendering 16 / 64 samples") == 0.25
    assert parse_fraction("Fra:1 | Scene, ViewLayer | Updating Shaders") is None
    assert parse_fraction("Fra:1 | Rendered 0/0 Tiles, Sample 0/0") is None


def test_the_runner_s_twin_of_parse_fraction_is_the_same_code() -> None:
    root = Path(__file__).resolve().parent.parent / "blenderfarm" / "node"

    def body(path: Path) -> list[str]:
        text = path.read_text()
        start = text.index("def parse_fraction(")
        lines = text[start:].split("\n\n\n")[0].splitlines()
        return [ln for ln in lines if ln.strip() and not ln.strip().startswith(("#", '"""'))]

    assert body(root / "runner_proc.py") == body(root / "runner" / "runner.py")


def with_blender(func):  # type: ignore[no-untyped-def]
    for mark in needs_blender:
        func = mark(func)
    return func


TILE_SCRIPT = """
import bpy
s = bpy.context.scene
s.cycles.use_auto_tile, s.cycles.tile_size = True, 16
bpy.ops.wm.save_mainfile()
"""


@with_blender
def test_a_long_frame_shows_progress_and_an_eta_before_it_ends(farm_procs, tmp_path) -> None:
    """Real Blender on a real node: a one-frame job of 16 tiles reports its tiles as they
    finish, so the job's view has a fraction and an ETA while its only frame renders."""
    blend = make_scene("anim", tmp_path / "scene", frames=1, res=64, samples=1500)
    script = tmp_path / "tiles.py"
    script.write_text(TILE_SCRIPT)
    assert run_blender([str(blend), "--python", str(script)]).returncode == 0
    server = farm_procs.server()
    farm_procs.node("render-01")
    farm_procs.wait_nodes(1)
    code = cli.main(["--server", server.url, "submit", str(blend), "--frames", "1", "--json"])
    assert code == cli.EXIT_OK
    job_id = get_json(f"{server.url}/api/jobs")["jobs"][0]["id"]
    seen: list[tuple[float, float | None]] = []
    deadline = time.monotonic() + 120
    while True:
        job = get_json(f"{server.url}/api/jobs/{job_id}")["job"]
        if job["status"] in ("completed", "failed", "canceled"):
            break
        if job["frames_done"] == 0 and 0 < job["progress"] < 1:
            seen.append((job["progress"], job["eta"]))
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "completed", job
    assert len({p for p, _ in seen}) >= 3, f"no progress inside the frame: {seen}"
    assert any(eta is not None and eta > 0 for _, eta in seen), seen


def test_the_stream_over_tls_with_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blenderfarm.client.api import ApiError
    from blenderfarm.server import tokens
    from procs import ServerProc, free_port

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    (tmp_path / "srv").mkdir()
    _, user = tokens.create(tmp_path / "srv" / "farm.db", "user", "artist")
    server = ServerProc(tmp_path / "srv", free_port(),
                        ["--tls-cert", str(cert), "--tls-key", str(key)])
    url = server.url.replace("http://", "https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    try:
        server.start()
        with EventStream(url, user).open() as stream:
            assert stream.hello["type"] == "hello"
        with pytest.raises(ApiError, match="refused the token") as refused:
            EventStream(url, "bfu_wrong").open()
        assert refused.value.status == 401
    finally:
        server.stop()
