"""``/ws/node``: the websocket each render node keeps open (msgpack frames).

The handler decodes, hands each message to the farm and answers malformed frames
with an ``error`` frame; it never lets a bad frame end the connection or the
server. Outgoing frames go through the session's queue and one sender task, so
they leave in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from aiohttp import WSMsgType, web

from ..protocol import PROTOCOL_VERSION
from ..protocol import messages as m
from ..protocol.version import __version__
from .auth import AUTH, Auth, Refusal
from .errors import FarmError
from .farm import Farm
from .keys import FARM
from .kinds import kind_of
from .models import TASK_FINAL, NodeRecord
from .sessions import NodeSession
from .slots import hello_blenders, hello_slots_error
from .store import StoreError
from .tokens import TokenInfo

log = logging.getLogger(__name__)


async def node_socket(request: web.Request) -> web.WebSocketResponse:
    farm = request.app[FARM]
    # autoping off: pings and pongs come out of the loop below, so that they count as
    # seeing the node (an idle node sends nothing else); it answers the pings itself.
    ws = web.WebSocketResponse(heartbeat=farm.config.heartbeat, max_msg_size=m.MAX_MESSAGE,
                               autoping=False)
    await ws.prepare(request)
    hello = await _read_hello(ws, farm.config.hello_timeout)
    token = await _admit(request, ws, hello) if hello is not None else _REFUSED
    if hello is None or token is _REFUSED:
        await ws.close()
        return ws
    token_id = token.id if isinstance(token, TokenInfo) else None
    conflict = _conflict(farm, request.app[AUTH], hello, token_id)
    if conflict is not None:
        log.warning("refused node %r from %s: %s", hello.name, request.remote, conflict.message)
        await ws.send_bytes(m.encode(conflict))
        await ws.close()
        return ws
    rec = farm.nodes.get(hello.uid)
    if rec is None:
        rec = farm.nodes[hello.uid] = NodeRecord(uid=hello.uid, name=hello.name)
        if len(farm.nodes) > farm.config.max_nodes:
            farm.prune_nodes()
    rec.name, rec.token_id = hello.name, token_id or rec.token_id
    blenders = [dataclasses.asdict(b) for b in hello_blenders(hello)]
    rec.set_info({"blender": blenders[0], "blenders": blenders,
                  "slots": [dataclasses.asdict(s) for s in hello.slots],
                  "threads": hello.threads, "ram": hello.ram, "gpus": hello.gpus,
                  "tags": hello.tags, "agent_version": hello.agent_version, "ffmpeg": hello.ffmpeg,
                  "peer": request.remote})
    session = NodeSession(rec)
    sender = asyncio.create_task(_sender(ws, session))
    try:
        session.send(m.Welcome(node_id=rec.uid, server_version=__version__,
                               settings={"heartbeat": farm.config.heartbeat}))
        farm.node_connected(hello, session)
        async for frame in ws:
            if frame.type in _SEEN:
                farm.node_seen(rec)
            if frame.type == WSMsgType.BINARY:
                await _handle(farm, session, frame.data)
            elif frame.type == WSMsgType.PING:
                await _pong(ws, frame.data)
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


_REFUSED = object()
#: frames that show the node is alive (the others end the loop)
_SEEN = frozenset({WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.PING, WSMsgType.PONG})


async def _admit(request: web.Request, ws: web.WebSocketResponse, hello: m.Hello
                 ) -> TokenInfo | None | object:
    """Check the node token (when the farm requires tokens), as every party is checked
    (:meth:`Auth.admit`): its record, None on an open farm, or ``_REFUSED`` (answered).
    Only a bad token is fatal to the node: a rate limit is answered ``rate_limited``,
    which the node retries after a while."""
    auth = request.app[AUTH]
    peer = auth.client_address(request)
    got = await auth.admit(peer, hello.token, ("node",))
    if not isinstance(got, Refusal):
        return got
    log.warning("refused node %r from %s: %s", hello.name, peer, got.message)
    await ws.send_bytes(m.encode(m.Error(code=got.code, message=got.message,
                                         fatal=got.code != "rate_limited")))
    return _REFUSED


def _conflict(farm: Farm, auth: Auth, hello: m.Hello, token_id: str | None
              ) -> m.Error | None:
    """Why this hello may not take its uid, or None."""
    live = farm.sessions.get(hello.uid)
    if live is not None and not live.closed:
        # Two live connections with one uid are two nodes sharing a work dir (or a
        # stranger's copy of its uid), not a reconnect: a node's old socket is closed by
        # then (or dropped by the heartbeat soon, and the node retries). Taking over
        # would make each replace the other and render every task twice.
        return m.Error(code="uid_in_use", message=(
            f"a node with uid {hello.uid} is connected already (from "
            f"{live.record.info.get('peer')}); give each node its own --work-dir"))
    rec = farm.nodes.get(hello.uid)
    bound = rec.token_id if rec is not None else None
    if bound is not None and token_id is not None and bound != token_id and \
            auth.cache.valid_id(bound):
        # A uid belongs to the node token that enrolled it while that token lives: with
        # another token, a token holder could take over a node's identity (its held
        # tasks, its results). Revoking the old token frees the uid.
        return m.Error(code="uid_taken", fatal=True, message=(
            f"node id {hello.uid} belongs to another node token; give this node its own "
            "--work-dir, or revoke the other token (bf-server token revoke)"))
    return None


async def _read_hello(ws: web.WebSocketResponse, timeout: float) -> m.Hello | None:
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:  # with autoping off, a ping may come first: answer it, read on
            left = deadline - asyncio.get_running_loop().time()
            frame = await ws.receive(timeout=max(left, 0.001))
            if frame.type == WSMsgType.PING:
                await _pong(ws, frame.data)
            elif frame.type != WSMsgType.PONG:
                break
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
    wrong = hello_slots_error(msg)
    if wrong is not None:
        await ws.send_bytes(m.encode(m.Error(code="bad_hello", fatal=True,
                                             message=f"the node's slots are wrong: {wrong}")))
        return None
    return msg


async def _pong(ws: web.WebSocketResponse, data: bytes) -> None:
    """Answer a ping (autoping is off); a socket going away meanwhile ends the loop anyway."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.pong(data)


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
    if task is None or task.status in TASK_FINAL:
        return  # a done frame is never replaced by a late copy
    if rec.uid not in task.assignees:
        raise FarmError(f"task {msg.task_id} was never given to this node", "not_yours")
    outputs = await farm.record_outputs(task, [m.OutputRef(
        frame=msg.frame, sha256=msg.sha256, size=msg.size, name=msg.name)])
    if task.status in TASK_FINAL:  # changed while we linked files
        return
    ops = farm.add_outputs(task, outputs)
    if ops:
        farm.commit(ops=ops, offer=False)


async def _task_done(farm: Farm, session: NodeSession, msg: m.TaskDone) -> None:
    rec = session.record
    task = farm.tasks.get(msg.task_id)
    job = farm.jobs.get(task.job_id) if task else None
    if task is None or job is None or task.status in TASK_FINAL:
        session.send(m.Ack(task_id=msg.task_id))
        return
    if rec.uid not in task.assignees:  # only a node it was given to may report it
        session.send(m.Error(code="not_yours",
                             message=f"task {msg.task_id} was never given to this node"))
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
    if task.status in TASK_FINAL:  # changed while we linked files
        session.send(m.Ack(task_id=msg.task_id))
        return
    lacking = kind_of(task).incomplete(task, outputs)
    if lacking:
        farm.fail_task(rec, task, m.TaskFailed(task_id=task.id, error=lacking,
                                               reason="bad_output"))
        session.send(m.Ack(task_id=msg.task_id))
        return
    await _durable(farm, farm.complete_task(rec, task, outputs, msg.seconds, msg.info))
    session.send(m.Ack(task_id=msg.task_id))


async def _durable(farm: Farm, fut: asyncio.Future[None]) -> None:
    """Wait until a node's result is committed. While the database refuses writes the
    journal keeps the result and retries: the ack waits for that, and the node keeps
    its result until then (it resends it after any reconnect)."""
    try:
        await fut
    except StoreError:
        await farm.journal.healthy()
