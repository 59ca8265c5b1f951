"""A TCP proxy on 127.0.0.1 that the chaos test controls: network faults between a
node and the server, without touching either.

It runs on its own event loop in a thread of the test's process. Each accepted
connection gets a fresh connection to the target, and bytes are pumped both ways.
The test may at any time:

* ``drop()``: reset every current connection (both ends see an RST);
* ``set_delay(s)``: hold every forwarded chunk ``s`` seconds before writing it on
  (order kept, both directions), until ``set_delay(0)``;
* ``partition(new=...)``: stop forwarding both ways while keeping every socket open,
  the way a cut cable does: nothing is read or written, nothing is closed, so only
  timeouts and heartbeats can notice. New connections are either refused (an RST at
  once, ``new="refuse"``) or blackholed (accepted, and held without a word until
  the heal, ``new="blackhole"``);
* ``set_rate(n)``: forward at most ``n`` bytes a second each way, per connection (0: as
  fast as the sockets go), so a transfer takes long enough to be interrupted;
* ``heal()``: forwarding resumes, as TCP retransmission would: the bytes and the
  closes that waited are delivered, in order.

``stop()`` closes everything and joins the thread. Counters in ``stats`` say what
it saw. Plain use::

    with NetProxy(server_port) as proxy:      # proxy.url is http://127.0.0.1:<port>
        ...
        proxy.partition(); time.sleep(5); proxy.heal()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any

CHUNK = 1 << 16
_EOF = b""


class NetProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1",
                 listen_port: int = 0, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.listen_port = listen_port
        self.name = name
        self.port = 0
        self.stats: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._delay = 0.0
        self._rate = 0.0  # bytes a second each way per connection; 0: unlimited
        self._new = "refuse"  # what a partition does to new connections
        self._flowing: asyncio.Event | None = None  # clear while partitioned
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # --- lifecycle (any thread) ---------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NetProxy:
        self._thread = threading.Thread(target=self._run, name=f"netproxy-{self.name}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"netproxy {self.name} did not start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may be gone already
            self._call(self._shutdown(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- faults (any thread) ------------------------------------------------------------------
    def drop(self) -> int:
        """Reset every current connection; return how many there were."""
        return int(self._call(self._drop()))

    def set_rate(self, bytes_per_second: float) -> None:
        """Forward at most this many bytes a second each way (0: no limit)."""
        self._call(self._set(rate=max(0.0, bytes_per_second)))

    def set_delay(self, seconds: float) -> None:
        """Hold each chunk this long before forwarding it (0: no delay)."""
        self._call(self._set(delay=max(0.0, seconds)))

    def partition(self, new: str = "refuse") -> int:
        """Stop forwarding, keep sockets open; ``new`` is "refuse" or "blackhole".
        Returns how many connections were cut off."""
        assert new in ("refuse", "blackhole"), new
        return int(self._call(self._set(partition=True, new=new)))

    def heal(self) -> None:
        """Forward again, no delay (a partition's held bytes and closes go on)."""
        self._call(self._set(partition=False, delay=0.0))

    @property
    def partitioned(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    @property
    def connections(self) -> int:
        return len(self._conns)

    # --- the loop's side ----------------------------------------------------------------------
    def _call(self, coro: Any, timeout: float = 10) -> Any:
        assert self._loop is not None, "netproxy not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, partition: bool | None = None, new: str | None = None,
                   delay: float | None = None, rate: float | None = None) -> int:
        assert self._flowing is not None
        if delay is not None:
            self._delay = delay
        if rate is not None:
            self._rate = rate
        if new is not None:
            self._new = new
        if partition is True:
            self._flowing.clear()
            self.stats["partitions"] += 1
        elif partition is False:
            self._flowing.set()
        return len(self._conns)

    async def _drop(self) -> int:
        conns = list(self._conns)
        for c in conns:
            c.reset()
        self.stats["dropped"] += len(conns)
        return len(conns)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.reset()
        assert self._flowing is not None
        self._flowing.set()  # let held pumps see their closed sockets
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.stats["accepted"] += 1
        if not self._flowing.is_set():
            if self._new == "refuse":
                self.stats["refused"] += 1
                _reset(writer)
                return
            self.stats["blackholed"] += 1
            conn = _Conn(self, reader, writer)  # held: a drop or a stop ends it too
            self._conns.add(conn)
            try:
                await self._flowing.wait()
                if conn.closed:
                    return
            finally:
                self._conns.discard(conn)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.stats["upstream_refused"] += 1
            _reset(writer)  # as the server's own port would have answered
            return
        conn = _Conn(self, reader, writer, up_reader, up_writer)
        self._conns.add(conn)
        try:
            await conn.pump()
        finally:
            self._conns.discard(conn)


class _Conn:
    """One proxied connection: two pumps, each a reader and a delayed writer."""

    def __init__(self, proxy: NetProxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, up_reader: asyncio.StreamReader | None = None,
                 up_writer: asyncio.StreamWriter | None = None) -> None:
        self.proxy = proxy
        self.down = (reader, writer)
        self.up = (up_reader, up_writer)
        self.closed = False
        self._tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        self.closed = True
        for w in (self.down[1], self.up[1]):
            if w is not None:
                _reset(w)
        for t in self._tasks:
            t.cancel()

    async def pump(self) -> None:
        up_reader, up_writer = self.up
        assert up_reader is not None and up_writer is not None
        reader, writer = self.down
        self._tasks = [asyncio.create_task(self._one_way(reader, up_writer, "up")),
                       asyncio.create_task(self._one_way(up_reader, writer, "down"))]
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.closed = True
        for w in (writer, up_writer):
            w.close()

    async def _one_way(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       way: str) -> None:
        """Read chunks (not while partitioned), hand them to the writer with the time
        they may leave; the writer keeps their order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = asyncio.create_task(self._deliver(queue, dst, way))
        flowing = self.proxy._flowing
        assert flowing is not None
        try:
            while True:
                await flowing.wait()
                try:
                    data = await src.read(CHUNK)
                except (ConnectionError, OSError):
                    data = _EOF
                queue.put_nowait((time.monotonic() + self.proxy._delay, data))
                if not data:
                    break
                if self.proxy._rate:  # the next read waits: the sender feels it as TCP does
                    await asyncio.sleep(len(data) / self.proxy._rate)
            await writer
        finally:
            writer.cancel()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]],
                       dst: asyncio.StreamWriter, way: str) -> None:
        flowing = self.proxy._flowing
        assert flowing is not None
        while True:
            at, data = await queue.get()
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await flowing.wait()  # a chunk read just before the cut waits for the heal
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if dst.can_write_eof():
                        dst.write_eof()
                return
            try:
                dst.write(data)
                await dst.drain()
            except (ConnectionError, OSError, RuntimeError):
                self.reset()  # one end is gone: the other hears of it as an RST
                return
            self.proxy.stats[f"bytes_{way}"] += len(data)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
