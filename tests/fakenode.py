"""A scripted node that speaks the real protocol over a real websocket.

For server tests that are about scheduling and protocol, not about Blender: it
"renders" by uploading a small PNG-like blob per frame. End-to-end claims use
real bf-node processes and real Blender instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import aiohttp

from blenderfarm.protocol import PROTOCOL_VERSION
from blenderfarm.protocol import messages as m
from blenderfarm.protocol.naming import frame_name, pattern_of
from blenderfarm.protocol.tiles import tile_name


class FakeNode:
    def __init__(self, base_url: str, name: str = "fake", oidn: bool = False,
                 uid: str | None = None, token: str | None = None, opengl: bool = False,
                 tags: list[str] | None = None, blender: str = "3.4.1",
                 blenders: list[m.BlenderCaps] | None = None,
                 slots: list[m.SlotCaps] | None = None, ffmpeg: str = "") -> None:
        self.token = token
        self.ffmpeg = ffmpeg  # its hello's FFmpeg version ("" none: no encodes)
        self.base = base_url.rstrip("/")
        self.name = name
        self.uid = uid or uuid.uuid4().hex[:12]
        self.oidn = oidn
        self.opengl = opengl
        self.tags = tags or []
        self.blender = blender  # its Blender's version, as a node's probe says it
        #: every Blender and slot its hello lists; None: a hello from before (one
        #: Blender, ``blender``; one CPU slot)
        self.blenders = blenders
        self.slots = slots
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.inbox: asyncio.Queue[m.Message] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._stash: list[m.Message] = []

    async def connect(self, running: list[str] | None = None, protocol: int = PROTOCOL_VERSION,
                      holding: dict[str, str] | None = None) -> m.Message:
        self.http = self.http or aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.base.replace("http", "ws", 1) + "/ws/node")
        first = self.blenders[0] if self.blenders else m.BlenderCaps(
            version=self.blender, oidn=self.oidn, opengl=self.opengl)
        await self.send(m.Hello(protocol=protocol, name=self.name, uid=self.uid,
                                blender=first, blenders=self.blenders or [],
                                slots=self.slots or [], token=self.token, tags=self.tags,
                                running=running or [], holding=holding or {},
                                ffmpeg=self.ffmpeg))
        first = await self.ws.receive(timeout=5)
        msg = m.decode(first.data)
        self._reader = asyncio.create_task(self._read())
        return msg

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.BINARY:
                await self.inbox.put(m.decode(frame.data))

    async def send(self, msg: m.Message) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(m.encode(msg))

    async def send_raw(self, data: bytes | str) -> None:
        assert self.ws is not None
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def expect(self, cls: type[m.Message], timeout: float = 5) -> Any:
        """The next message of type ``cls``; others wait their turn, none is dropped."""
        for i, msg in enumerate(self._stash):
            if isinstance(msg, cls):
                return self._stash.pop(i)
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), timeout)
            if isinstance(msg, cls):
                return msg
            self._stash.append(msg)

    async def upload(self, data: bytes) -> str:
        assert self.http is not None
        sha = hashlib.sha256(data).hexdigest()
        async with self.http.put(f"{self.base}/api/blobs/{sha}", data=data) as resp:
            assert resp.status in (200, 201), await resp.text()
        return sha

    async def finish(self, a: m.Assign, info: dict[str, Any] | None = None) -> m.Ack:
        """Report ``a`` done with a small blob per file its kind makes: a frame per
        frame, a tile's part, a merged frame, or the video (named as its settings say)."""
        outputs = []
        if a.kind == m.ENCODE:
            data = b"video of " + b",".join(i.sha256.encode() for i in a.inputs)
            sha = await self.upload(data)
            outputs.append(m.OutputRef(frame=a.inputs[0].frame, sha256=sha, size=len(data),
                                       name=str(a.video["output"])))
        for f in a.frames if a.kind != m.ENCODE else ():
            data = b"frame %d of %s" % (f, a.task_id.encode())
            name = frame_name(pattern_of(a.output_pattern, a.output_name), f, "PNG")
            if a.tile is not None:
                name = tile_name(a.output_name, f, a.tile.index)
            sha = await self.upload(data)
            outputs.append(m.OutputRef(frame=f, sha256=sha, size=len(data), name=name))
        await self.send(m.TaskDone(task_id=a.task_id, outputs=outputs, info=info or {}))
        ack: m.Ack = await self.expect(m.Ack)
        return ack

    async def report(self, a: m.Assign, files: list[tuple[str, bytes]],
                     info: dict[str, Any] | None = None) -> None:
        """Report ``a``'s files as the real node does: each alone as soon as it is
        uploaded (a frame_done), then all of them with the task's end."""
        refs = []
        for name, data in files:
            sha = await self.upload(data)
            refs.append(m.OutputRef(frame=a.frames[0], sha256=sha, size=len(data), name=name))
            await self.send(m.FrameDone(task_id=a.task_id, frame=a.frames[0], sha256=sha,
                                        size=len(data), name=name))
        await self.send(m.TaskDone(task_id=a.task_id, outputs=refs, info=info or {}))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.http is not None:
            await self.http.close()
