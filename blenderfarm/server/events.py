"""``/ws/events``: live farm events (JSON) for the dashboard and the add-on (the
dashboard's own files are served by :mod:`.web`).

The farm calls :meth:`EventHub.publish` synchronously for every change; the hub
only files the event into each browser's bounded buffer and wakes that browser's
sender task. It must never await, block or grow without bound: a slow or stalled
browser costs the farm nothing but a dropped progress update or, past the bound, a
``resync`` message that tells the browser to reload the whole state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Hashable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .auth import AUTH, Refusal, same_origin, user_allowed
from .keys import FARM
from .models import JOB_FINAL

if TYPE_CHECKING:
    from .farm import Farm

log = logging.getLogger(__name__)

#: events waiting for one browser; past this, progress is dropped and others force a resync
MAX_PENDING = 256
#: a browser's sender waits this long after a wake-up before it writes, so a burst of
#: snapshots of one job (a busy farm finishes thousands of tasks a second) leaves as one
SEND_WINDOW = 0.05
#: the browser's first frame (the token) must come this soon, and be this small
HELLO_TIMEOUT = 10.0
MAX_CLIENT_MSG = 16 * 1024
STATS_INTERVAL = 2.0
RATE_WINDOW = 300.0  # seconds of finished frames behind "frames per minute"
CLOSE_TIMEOUT = 2.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_BAD_HELLO = 4400


def event_key(event: dict[str, Any]) -> Hashable | None:
    """What a newer event of the same key supersedes; None for events that never do.

    Job and node events carry a whole snapshot and progress the latest fraction, so
    only the newest of each matters to a browser that has fallen behind.
    """
    kind = event.get("type")
    if kind == "job":
        return ("job", (event.get("job") or {}).get("id"))
    if kind == "node":
        return ("node", (event.get("node") or {}).get("id"))
    if kind == "progress":
        return ("progress", event.get("task_id"))
    if kind == "stats":
        return ("stats",)
    return None


def is_end(event: dict[str, Any]) -> bool:
    """A job's last snapshot: what `bf wait` waits for, so it skips the send window."""
    return (event.get("type") == "job"
            and (event.get("job") or {}).get("status") in JOB_FINAL)


class Encoded:
    """An event turned into JSON text only when some browser's sender takes it: a
    snapshot superseded in every backlog before then is never encoded at all."""

    __slots__ = ("event", "_text")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self._text: str | None = None

    def text(self) -> str:
        if self._text is None:
            self._text = json.dumps(self.event, default=str)
        return self._text


class EventClient:
    """One browser: a bounded, coalescing buffer of encoded events and a wake-up flag."""

    def __init__(self, ws: web.WebSocketResponse, token: str | None,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.ws = ws
        self.token = token
        self.transport = transport
        self.pending: OrderedDict[Hashable, str | Encoded] = OrderedDict()
        self.wake = asyncio.Event()
        #: a job's end is waiting: the sender writes at once instead of after its
        #: window, so `bf wait` and the add-on hear of it promptly
        self.urgent = False
        self.window: asyncio.Future[None] | None = None  # the sender's wait, while it waits
        self.dropped = 0
        self.resyncs = 0
        self._seq = 0

    def put(self, key: Hashable | None, text: str | Encoded, progress: bool,
            urgent: bool = False) -> None:
        if key is None:
            self._seq += 1
            key = ("seq", self._seq)
        if key in self.pending:
            del self.pending[key]  # the newer one goes to the back, keeping order
        elif len(self.pending) >= MAX_PENDING:
            if progress:  # a later progress (or the job's end) makes up for it
                self.dropped += 1
                return
            # Falling this far behind means the browser's picture is stale anyway:
            # forget the backlog and have it reload everything once it catches up.
            self.resyncs += 1
            self.pending.clear()
            self.pending[("resync",)] = json.dumps({"type": "resync", "time": time.time()})
        self.pending[key] = text
        self.wake.set()
        if urgent:
            self.urgent = True
            end_window(self.window)

    def take(self) -> list[str]:
        texts = [t if isinstance(t, str) else t.text() for t in self.pending.values()]
        self.pending.clear()
        self.wake.clear()
        self.urgent = False
        return texts


def end_window(window: asyncio.Future[None] | None) -> None:
    if window is not None and not window.done():
        window.set_result(None)


class EventHub:
    """Fans farm events out to every connected browser; keeps the frame rate."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.clients: set[EventClient] = set()
        self.closing: set[asyncio.Task[None]] = set()
        self.started = time.time()
        self._frames: deque[list[float]] = deque()  # [second, count], oldest first

    def publish(self, event: dict[str, Any]) -> None:
        """The farm's listener: never blocks, never raises into the farm."""
        if event.get("type") == "frame":
            self._count_frame(event.get("time") or time.time())
        if not self.clients:
            return
        text = Encoded(event)
        key, progress = event_key(event), event.get("type") == "progress"
        urgent = is_end(event)
        for client in self.clients:
            client.put(key, text, progress, urgent)

    def _count_frame(self, now: float) -> None:
        second = float(int(now))
        if self._frames and self._frames[-1][0] == second:
            self._frames[-1][1] += 1
        else:
            self._frames.append([second, 1])
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._frames and self._frames[0][0] < now - RATE_WINDOW:
            self._frames.popleft()

    def frames_per_minute(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        self._trim(now)
        count = sum(c for second, c in self._frames if second >= now - RATE_WINDOW)
        # Over the window, or since start-up when younger: a farm that started a
        # minute ago and made 30 frames runs at 30/min, not 6/min.
        span = min(RATE_WINDOW, max(60.0, now - self.started))
        return round(count * 60.0 / span, 1)

    def stats(self) -> dict[str, Any]:
        farm = self.farm
        # Rendering now; tasks assigned ahead (prefetch) still count as queued work.
        running = sum(1 for rec in farm.nodes.values() for tid in rec.tasks
                      if tid in farm.tasks and farm.tasks[tid].status == "running")
        info = farm.info()
        return {"nodes_online": info["nodes_online"], "nodes_known": info["nodes_known"],
                "tasks_queued": info["tasks_queued"], "tasks_running": running,
                "jobs_active": info["jobs_active"], "frames_per_minute": self.frames_per_minute()}


EVENTS = web.AppKey("events", EventHub)


async def events_socket(request: web.Request) -> web.StreamResponse:
    hub = request.app[EVENTS]
    if not request.app[AUTH].required and not same_origin(request):
        # Websockets ignore the same-origin policy: without this, any web page a user
        # visits could read the events of a farm running open. With tokens, another
        # site's page has no token to send (local storage is per origin).
        raise web.HTTPForbidden(text="cross-origin websocket refused")
    ws = web.WebSocketResponse(heartbeat=hub.farm.config.heartbeat, max_msg_size=MAX_CLIENT_MSG)
    await ws.prepare(request)
    try:
        token = await _read_token(ws)
    except BadHello:
        await ws.close(code=CLOSE_BAD_HELLO, message=b"first frame must be {\"token\": ...}")
        return ws
    if not await _admit(request, token):
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return ws
    client = EventClient(ws, token, request.transport)
    hub.clients.add(client)
    sender = asyncio.create_task(_sender(client))
    try:
        await ws.send_str(json.dumps({"type": "hello", "auth": "ok", "time": time.time(),
                                      "stats": hub.stats()}))
        async for msg in ws:  # browsers only talk at hello; this waits for the close
            if msg.type == WSMsgType.ERROR:
                log.debug("events socket error: %s", ws.exception())
    finally:
        hub.clients.discard(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await hang_up(client)
    return ws


async def hang_up(client: EventClient, code: int = 1000, message: bytes = b"") -> None:
    """Close politely, but drop a peer that stopped reading instead of waiting on it."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.ws.close(code=code, message=message), CLOSE_TIMEOUT)
    transport = client.transport
    # A transport still holding bytes would wait for the peer to read them, forever.
    if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():
        transport.abort()


class BadHello(Exception):
    """The browser's first frame was missing, late, or not ``{"token": ...}``."""


async def _read_token(ws: web.WebSocketResponse) -> str | None:
    """The token of the browser's first frame (None: it has none)."""
    try:
        msg = await ws.receive(timeout=HELLO_TIMEOUT)
    except TimeoutError as exc:
        raise BadHello("no first frame") from exc
    if msg.type != WSMsgType.TEXT:
        raise BadHello("first frame not text")
    try:
        data = json.loads(msg.data)
    except ValueError as exc:
        raise BadHello("first frame not JSON") from exc
    if not isinstance(data, dict) or "token" not in data:
        raise BadHello("first frame has no token field")
    token = data["token"]
    return token if isinstance(token, str) and token else None


async def _admit(request: web.Request, token: str | None) -> bool:
    """A user token (or an open farm), checked as every party is (:meth:`Auth.admit`)."""
    auth = request.app[AUTH]
    got = await auth.admit(auth.client_address(request), token, ("user",))
    return not isinstance(got, Refusal)


async def _sender(client: EventClient) -> None:
    """Write what piled up for one browser; only this task waits on its socket."""
    while True:
        await client.wake.wait()
        if not client.urgent:  # a job's end cuts the window short (see put)
            loop = asyncio.get_running_loop()
            client.window = loop.create_future()
            timer = loop.call_later(SEND_WINDOW, end_window, client.window)
            try:
                await client.window
            finally:
                timer.cancel()
                client.window = None
        texts = client.take()
        if not texts:
            continue
        # What piled up leaves as one frame, a JSON array, rather than one frame (and
        # one system call) an event: a busy farm's fan-out costs a write per browser
        # per window, however many tasks finish.
        text = texts[0] if len(texts) == 1 else "[" + ",".join(texts) + "]"
        try:
            await client.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            return


async def _stats_loop(app: web.Application) -> None:
    """Header numbers every few seconds, and a revoked token ends its socket."""
    hub = app[EVENTS]
    last: dict[str, Any] | None = None
    while True:
        await asyncio.sleep(STATS_INTERVAL)
        for client in list(hub.clients):
            if not user_allowed(app, client.token):
                hub.clients.discard(client)
                task = asyncio.create_task(hang_up(client, CLOSE_UNAUTHORIZED, b"token revoked"))
                hub.closing.add(task)  # keep a reference until it is done
                task.add_done_callback(hub.closing.discard)
        stats = hub.stats()
        if stats != last and hub.clients:
            hub.publish({"type": "stats", "time": time.time(), **stats})
            last = stats


async def _events_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = app[EVENTS]
    hub.farm.listeners.append(hub.publish)
    task = asyncio.create_task(_stats_loop(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(ValueError):
        hub.farm.listeners.remove(hub.publish)


async def _close_events(app: web.Application) -> None:
    """On shutdown: say goodbye to every browser, but never wait on a stalled one."""
    await asyncio.gather(*(hang_up(c, 1001, b"server shutting down")
                           for c in list(app[EVENTS].clients)), return_exceptions=True)


def setup_events(app: web.Application) -> None:
    """Add ``/ws/events`` and its hub; call after ``app[FARM]`` is set."""
    app[EVENTS] = EventHub(app[FARM])
    app.router.add_get("/ws/events", events_socket)
    app.cleanup_ctx.append(_events_ctx)
    app.on_shutdown.append(_close_events)
