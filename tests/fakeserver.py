"""A scripted server that speaks the node protocol, for tests of a real bf-node.

The mirror of ``fakenode.py``: an aiohttp app on 127.0.0.1 with ``/ws/node`` and
``/api/blobs/{sha}`` (GET, and PUT for a node's frames) whose behaviour per connection is the test's own coroutine, so a
test can refuse, go silent or send what no honest server would. It sends raw msgpack
(:func:`frame`), not the codec's encoder: a hostile server does not ask the codec.
The node it talks to needs no Blender: :func:`fake_blender` answers the node's probe
and exits, so any render fails to start.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import WSMsgType, web

from blenderfarm.protocol import messages as m
from procs import free_port

PROBE = ('BLENDERFARM_PROBE:{"version": "4.2.0", "oidn": false, '
         '"cycles_devices": ["CPU"], "threads": 1}')


def fake_blender(folder: Path) -> Path:
    """A 'Blender' that only answers the probe (the same stand-in test_node_lock uses)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "blender"
    path.write_text(f"#!/bin/sh\necho '{PROBE}'\n")
    path.chmod(0o755)
    return path


def frame(t: str, **fields: Any) -> bytes:
    """One message as raw msgpack, unchecked."""
    return msgpack.packb({"t": t, **fields}, use_bin_type=True)


def welcome(**settings: Any) -> bytes:
    return frame("welcome", node_id="n1", server_version="test", settings=settings)


Script = Callable[["Conn"], Awaitable[None]]


class Conn:
    """One node connection: its hello, and what the node sent since."""

    def __init__(self, server: FakeServer, ws: web.WebSocketResponse, hello: m.Hello,
                 index: int) -> None:
        self.server, self.ws, self.hello, self.index = server, ws, hello, index

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def pump(self) -> None:
        """Collect the node's messages into ``server.received`` until it goes."""
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                self.server.received.append(m.decode(msg.data, m.NODE_MESSAGES))


async def welcome_and_listen(conn: Conn) -> None:
    await conn.send(welcome())
    await conn.pump()


class FakeServer:
    def __init__(self, script: Script = welcome_and_listen, autoping: bool = True,
                 http_refusals: list[int] | None = None) -> None:
        self.script = script
        self.autoping = autoping  # False: the server's socket ignores the node's pings
        self.http_refusals = list(http_refusals or [])  # statuses for the first upgrades
        self.upgrades = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hellos: list[m.Hello] = []
        self.received: list[m.Message] = []
        self.blobs: dict[str, bytes] = {}
        self.downloads: list[str] = []
        self._runner: web.AppRunner | None = None

    def blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    async def __aenter__(self) -> FakeServer:
        app = web.Application()
        app.router.add_get("/ws/node", self._ws)
        app.router.add_get("/api/blobs/{sha}", self._blob)
        app.router.add_put("/api/blobs/{sha}", self._put_blob)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        self.upgrades += 1
        if self.http_refusals:
            return web.Response(status=self.http_refusals.pop(0), text="not now")
        ws = web.WebSocketResponse(max_msg_size=m.MAX_MESSAGE, autoping=self.autoping)
        await ws.prepare(request)
        first = await ws.receive(timeout=10)
        hello = m.decode(first.data, (m.Hello,))
        assert isinstance(hello, m.Hello)
        self.hellos.append(hello)
        await self.script(Conn(self, ws, hello, len(self.hellos)))
        return ws

    async def _blob(self, request: web.Request) -> web.Response:
        sha = request.match_info["sha"]
        self.downloads.append(sha)
        if sha not in self.blobs:
            raise web.HTTPNotFound()
        return web.Response(body=self.blobs[sha], content_type="application/octet-stream")

    async def _put_blob(self, request: web.Request) -> web.Response:
        """A node's upload (a frame it rendered), kept when its hash is its name."""
        sha, data = request.match_info["sha"], await request.read()
        if hashlib.sha256(data).hexdigest() != sha:
            raise web.HTTPBadRequest(text="the body does not hash to its name")
        self.blobs[sha] = data
        return web.Response(status=201)

    def failures(self) -> dict[str, m.TaskFailed]:
        return {msg.task_id: msg for msg in self.received if isinstance(msg, m.TaskFailed)}


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` on the running loop (the fake server must keep answering)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")
