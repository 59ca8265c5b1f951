"""``/ws/node``: the websocket each render node keeps open (msgpack frames).

The handler decodes, hands each message to the farm and answers malformed frames
with an ``error`` frame; it never lets a bad frame end the connection or the
server. Outgoing frames go through the session's queue and one sender task, so
they leave in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSMsgType, web

from ..protocol import PROTOCOL_VERSION
from ..protocol import messages as m
from ..protocol.version import __version__
from .auth import AUTH
from .farm import Farm, FarmError, NodeSession
from .keys import FARM
from .models import NodeRecord

log = logging.getLogger(__name__)
HELLO_TIMEOUT = 15.0


async def node_socket(request: web.Request) -> web.WebSocketResponse:
    farm = request.app[FARM]
    ws = web.WebSocketResponse(heartbeat=farm.config.heartbeat, max_msg_size=m.MAX_MESSAGE)
    await ws.prepare(request)
    hello = await _read_hello(ws)
    if hello is None or not await _admit(request, ws, hello):
        await ws.close()
        return ws
    rec = farm.nodes.get(hello.uid) or NodeRecord(uid=hello.uid, name=hello.name)
    farm.nodes[rec.uid] = rec
    rec.name = hello.name
    rec.info = {"blender": hello.blender, "threads": hello.threads, "ram": hello.ram,
                "gpus": hello.gpus, "tags": hello.tags, "agent_version": hello.agent_version,
                "peer": request.remote}
    session = NodeSession(rec)
    sender = asyncio.create_task(_sender(ws, session))
    try:
        session.send(m.Welcome(node_id=rec.uid, server_version=__version__,
                               settings={"heartbeat": farm.config.heartbeat}))
        farm.node_connected(hello, session)
        async for frame in ws:
            if frame.type == WSMsgType.BINARY:
                await _handle(farm, session, frame.data)
            elif frame.type == WSMsgType.TEXT:
                session.send(m.Error(code="bad_message", message="frames must be binary msgpack"))
            elif frame.type == WSMsgType.ERROR:
                log.warning("node %s socket error: %s", rec.name, ws.exception())
    finally:
        farm.node_disconnected(session)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await ws.close()
    return ws


async def _admit(request: web.Request, ws: web.WebSocketResponse, hello: m.Hello) -> bool:
    """Check the node token (when the farm requires tokens), counting failures."""
    auth = request.app[AUTH]
    peer = request.remote or "?"
    if not auth.required:
        return True
    if auth.limited(peer):
        message = "too many failed attempts from this address; wait a minute"
    else:
        info = await auth.lookup(hello.token)
        if info is not None and info.kind == "node":
            return True
        auth.failed(peer)
        message = ("a user token cannot enroll a node; create a node token with "
                   "`bf-server token create --node`" if info is not None else
                   "this node's token is missing, wrong or revoked; create one with "
                   "`bf-server token create --node` and start bf-node with --token")
    log.warning("refused node %r from %s: %s", hello.name, peer, message)
    await ws.send_bytes(m.encode(m.Error(code="unauthorized", message=message, fatal=True)))
    return False


async def _read_hello(ws: web.WebSocketResponse) -> m.Hello | None:
    try:
        frame = await ws.receive(timeout=HELLO_TIMEOUT)
    except TimeoutError:
        return None
    if frame.type != WSMsgType.BINARY:
        return None
    try:
        msg = m.decode(frame.data, (m.Hello,))
    except m.ProtocolError as exc:
        await ws.send_bytes(m.encode(m.Error(code="bad_hello", message=str(exc), fatal=True)))
        return None
    assert isinstance(msg, m.Hello)
    if msg.protocol != PROTOCOL_VERSION:
        await ws.send_bytes(m.encode(m.Error(
            code="protocol_version", fatal=True,
            message=f"node speaks protocol {msg.protocol}, server speaks {PROTOCOL_VERSION}; "
                    "install the same Blenderfarm version on both")))
        return None
    return msg


async def _sender(ws: web.WebSocketResponse, session: NodeSession) -> None:
    while True:
        data = await session.outbox.get()
        if data is None:
            await ws.close()
            return
        try:
            await ws.send_bytes(data)
        except (ConnectionError, RuntimeError):
            return


async def _handle(farm: Farm, session: NodeSession, data: bytes) -> None:
    rec = session.record
    try:
        msg = m.decode(data, m.NODE_MESSAGES)
    except m.ProtocolError as exc:
        session.send(m.Error(code="bad_message", message=str(exc)))
        return
    rec.last_seen = time.time()
    try:
        if isinstance(msg, m.Progress):
            farm.on_progress(rec, msg)
        elif isinstance(msg, m.FrameDone):
            await _frame_done(farm, rec, msg)
        elif isinstance(msg, m.TaskDone):
            await _task_done(farm, session, msg)
        elif isinstance(msg, m.TaskFailed):
            # ack first: a retry of this task may be assigned back to the same node
            session.send(m.Ack(task_id=msg.task_id))
            task = farm.held_by(rec, msg.task_id)
            if task is not None:
                farm.fail_task(rec, task, msg)
        elif isinstance(msg, m.Log):
            task = farm.held_by(rec, msg.task_id)
            if task is not None:
                await farm.logs.append(task, msg.text[:1_000_000])
        else:
            session.send(m.Error(code="unexpected", message=f"{msg.T} is not expected now"))
    except FarmError as exc:
        session.send(m.Error(code=exc.code, message=str(exc)))
    except OSError as exc:  # the server's own disk (full, say): say so and keep the node
        log.error("node %s: could not handle %s: %s", rec.name, msg.T, exc)
        session.send(m.Error(code="server_error", message=f"the server could not handle "
                             f"{msg.T}: {exc}"))


async def _frame_done(farm: Farm, rec: NodeRecord, msg: m.FrameDone) -> None:
    task = farm.tasks.get(msg.task_id)
    if task is None or task.status in ("canceled", "failed"):
        return
    outputs = await farm.record_outputs(task, [{"frame": msg.frame, "sha256": msg.sha256,
                                                "size": msg.size, "name": msg.name}])
    ops = farm.add_outputs(task, outputs)
    if ops:
        farm._persist(extra=ops)


async def _task_done(farm: Farm, session: NodeSession, msg: m.TaskDone) -> None:
    rec = session.record
    task = farm.tasks.get(msg.task_id)
    job = farm.jobs.get(task.job_id) if task else None
    if task is None or job is None or task.status in ("done", "canceled", "failed"):
        session.send(m.Ack(task_id=msg.task_id))
        return
    if task.node == rec.uid:
        farm.slot_freed(session, task)  # its next task leaves before the file checks start
    try:
        outputs = await farm.record_outputs(task, msg.outputs)
    except FarmError as exc:
        session.send(m.Error(code="bad_output", message=str(exc)))
        session.send(m.Ack(task_id=msg.task_id))
        farm.fail_task(rec, task, m.TaskFailed(task_id=task.id, error=str(exc), reason="bad_output"))
        return
    except OSError as exc:  # the server's own disk, not the node's render
        log.error("could not store the outputs of %s: %s; it will be rendered again",
                  task.id, exc)
        session.send(m.Error(code="server_error", message=f"the server could not store the "
                             f"outputs of {task.id} ({exc}); it will be rendered again"))
        session.send(m.Ack(task_id=msg.task_id))
        farm.render_again(task)
        return
    if task.status in ("done", "canceled", "failed"):  # changed while we linked files
        session.send(m.Ack(task_id=msg.task_id))
        return
    missing = set(task.frames) - {o.frame for o in outputs}
    if missing:
        farm.fail_task(rec, task, m.TaskFailed(
            task_id=task.id, error=f"no output for frame(s) {sorted(missing)}", reason="bad_output"))
        session.send(m.Ack(task_id=msg.task_id))
        return
    await farm.complete_task(rec, task, outputs, msg.seconds)
    session.send(m.Ack(task_id=msg.task_id))
