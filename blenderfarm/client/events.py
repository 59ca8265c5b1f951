"""The farm's live event stream (``/ws/events``) for ``bf wait`` and the add-on.

:class:`EventStream` opens the websocket, says hello with the token and hands out the
server's events (JSON objects; a frame holding an array of events is flattened).
Underneath, :class:`WebSocket` is a small RFC 6455 client: masked frames out,
ping answered with pong, close answered, fragments joined, every message bounded
in size, TLS for https servers.

Stdlib only (socket, ssl, json): the add-on vendors this module into Blender, so it
must never import aiohttp or bpy. Every failure leaves as one of three exceptions:
:class:`StreamUnavailable` (the server answered, but with no event stream: an old
server, a proxy; poll instead), :class:`StreamClosed` (the stream ended or broke:
reconnect) and its kind :class:`StreamProtocolError` (the server broke the
protocol, e.g. an oversized or malformed frame); plus api's
:class:`ServerUnreachable` and, for a refused token, :class:`ApiError`.
A stream belongs to one thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import ssl
import struct
import time
import urllib.parse
from typing import Any

from .api import USER_AGENT, ApiError, ClientError, ServerUnreachable, _reason

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 4 * 1024 * 1024  # bytes; a job snapshot is a few KiB, a batch a few hundred
MAX_HEAD = 16 * 1024  # bytes of the handshake's answer
PING_AFTER = 15.0  # seconds of silence before we ping (the server pings every 10 s)
DEAD_AFTER = 35.0  # seconds of silence that mean the connection is gone
CLOSE_UNAUTHORIZED, CLOSE_BAD_HELLO = 4401, 4400
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class StreamUnavailable(ClientError):
    """The server answered, but gave no event stream (``reason`` says what it gave)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"The farm server at {url} offers no live events ({reason}).")
        self.url = url
        self.reason = reason


class StreamClosed(ClientError):
    """The stream ended (``code`` from the server's close frame, 1006 if none)."""

    def __init__(self, message: str, code: int = 1006) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class StreamProtocolError(StreamClosed):
    """The server sent what the websocket protocol forbids (too big, malformed)."""


class WebSocket:
    """One client websocket over a socket; :meth:`connect` does the handshake."""

    def __init__(self, sock: socket.socket, max_message: int = MAX_MESSAGE) -> None:
        self.sock = sock
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: list[bytes] = []  # the fragments of a message not finished yet
        self._opcode = 0
        self.closed = False
        self.last_heard = time.monotonic()

    @classmethod
    def connect(cls, url: str, headers: dict[str, str] | None = None, timeout: float = 10,
                max_message: int = MAX_MESSAGE, where: str | None = None) -> WebSocket:
        """Open ``url`` (ws, wss, http or https). Raises ServerUnreachable when no
        connection is made, StreamUnavailable when the answer is not an upgrade; their
        messages name ``where`` (the server's URL), else ``url``."""
        where = where or url
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme in ("https", "wss")
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:
            raise ServerUnreachable(where, _reason(exc)) from exc
        ws = cls(sock, max_message)
        try:
            ws._handshake(parts, host, port, secure, headers or {}, where)
        except BaseException:
            sock.close()
            raise
        return ws

    def _handshake(self, parts: urllib.parse.SplitResult, host: str, port: int, secure: bool,
                   headers: dict[str, str], url: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        default = 443 if secure else 80
        lines = [f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                 f"Host: {host}" + ("" if port == default else f":{port}"),
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", f"User-Agent: {USER_AGENT}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        try:
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            while b"\r\n\r\n" not in self._buf:
                if len(self._buf) > MAX_HEAD:
                    raise StreamUnavailable(url, "the answer's headers are too long")
                if not self._fill():
                    raise ServerUnreachable(url, "the connection closed during the handshake")
        except TimeoutError as exc:
            raise ServerUnreachable(url, "no answer in time") from exc
        except OSError as exc:
            raise ServerUnreachable(url, _reason(exc)) from exc
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        self._buf = bytearray(rest)
        status_line, *fields = head.decode("latin-1").split("\r\n")
        status = status_line.split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            got_status = " ".join(status[1:]) if len(status) >= 2 else repr(status_line[:80])
            raise StreamUnavailable(url, f"HTTP {got_status}")
        got = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        if got.get("sec-websocket-accept") != accept:
            raise StreamUnavailable(url, "a wrong Sec-WebSocket-Accept")
        self.last_heard = time.monotonic()

    # --- receiving ----------------------------------------------------------------------------

    def recv(self, timeout: float | None) -> str | bytes | None:
        """The next whole message, or None when ``timeout`` seconds pass without one.
        Pings are answered on the way; a close from the server raises StreamClosed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._next_message()
            if message is not None:
                return message
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                self.sock.settimeout(left)
                if not self._fill():
                    self._lost("the server closed the connection")
            except TimeoutError:
                return None
            except OSError as exc:
                self._lost(f"the connection broke: {_reason(exc)}")

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self._buf += data
        self.last_heard = time.monotonic()
        return True

    def _lost(self, why: str) -> None:
        self.abort()
        raise StreamClosed(why)

    def _frame(self) -> tuple[bool, int, bytes] | None:
        """The next whole frame in the buffer, checked; None until it has arrived."""
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, opcode, length, at = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x7F, 2
        if b0 & 0x70:
            self._fail(1002, "the server sent a frame with reserved bits set")
        if b1 & 0x80:
            self._fail(1002, "the server sent a masked frame")
        if opcode >= 0x8 and (length > 125 or not fin):
            self._fail(1002, "the server sent an oversized or fragmented control frame")
        if length == 126:
            if len(buf) < 4:
                return None
            length, at = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, at = struct.unpack_from("!Q", buf, 2)[0], 10
        pending = sum(len(p) for p in self._parts)
        if opcode < 0x8 and pending + length > self.max_message:
            # Refused from the header alone: the bytes are never read or held.
            self._fail(1009, f"the server sent a message of over {pending + length} bytes; "
                             f"the limit is {self.max_message}")
        if len(buf) < at + length:
            return None
        payload = bytes(buf[at:at + length])
        del buf[:at + length]
        return fin, opcode, payload

    def _next_message(self) -> str | bytes | None:
        while True:
            frame = self._frame()
            if frame is None:
                return None
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self._closed_by_server(payload)
            if opcode == OP_CONT:
                if not self._parts:
                    self._fail(1002, "the server sent a continuation with nothing to continue")
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._parts:
                    self._fail(1002, "the server began a message inside another")
                self._opcode = opcode
            else:
                self._fail(1002, f"the server sent a frame of unknown opcode {opcode}")
            self._parts.append(payload)
            if not fin:
                continue
            data, self._parts = b"".join(self._parts), []
            if self._opcode == OP_BINARY:
                return data
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(1007, "the server sent a text message that is not UTF-8")

    def _closed_by_server(self, payload: bytes) -> None:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        reason = payload[2:].decode("utf-8", "replace")
        if not self.closed:
            self.closed = True
            with contextlib.suppress(StreamClosed):
                self._send(OP_CLOSE, payload[:2])
        self.abort()
        raise StreamClosed(f"the server closed the stream ({code}{': ' + reason if reason else ''})",
                           code)

    def _fail(self, code: int, why: str) -> None:
        """The server broke the protocol: say so with a close frame, drop, raise."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(StreamClosed):
                self._send(OP_CLOSE, struct.pack("!H", code))
        self.abort()
        raise StreamProtocolError(why, code)

    # --- sending ------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self._send(OP_TEXT, text.encode("utf-8"))

    def ping(self, payload: bytes = b"") -> None:
        self._send(OP_PING, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)
        try:
            self.sock.settimeout(10)
            self.sock.sendall(head + key + mask(payload, key))
        except OSError as exc:
            self.abort()
            raise StreamClosed(f"the connection broke: {_reason(exc)}") from exc

    def close(self, code: int = 1000) -> None:
        """Say goodbye (briefly waiting for the server's reply), then drop the socket."""
        if not self.closed:
            self.closed = True
            try:
                self._send(OP_CLOSE, struct.pack("!H", code))
                self.sock.settimeout(1.0)
                self.sock.recv(4096)
            except (OSError, StreamClosed):
                pass
        self.abort()

    def abort(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (RFC 6455 5.3), as one big integer."""
    n = len(data)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def events_url(server_url: str) -> str:
    """``http://host:8765/prefix`` -> ``http://host:8765/prefix/ws/events``."""
    return server_url.rstrip("/") + "/ws/events"


class EventStream:
    """The farm's events for one reader: :meth:`receive` returns those that arrived."""

    def __init__(self, server_url: str, token: str | None = None, timeout: float = 10,
                 max_message: int = MAX_MESSAGE) -> None:
        self.server_url = server_url
        self.token = token
        self.timeout = timeout
        self.max_message = max_message
        self.ws: WebSocket | None = None
        self.hello: dict[str, Any] = {}
        self._pinged = 0.0

    def open(self) -> EventStream:
        """Connect and say hello; the events flow from the server's hello on."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        ws = WebSocket.connect(events_url(self.server_url), headers, self.timeout,
                               self.max_message, self.server_url)
        try:
            ws.send_text(json.dumps({"token": self.token}))
            first = ws.recv(self.timeout)
            hello = _decode(first) if first is not None else None
        except StreamClosed as exc:
            ws.abort()
            if exc.code == CLOSE_UNAUTHORIZED:
                raise ApiError("the server refused the token for live events", 401,
                               "unauthorized") from exc
            raise StreamUnavailable(self.server_url, exc.message) from exc
        if not (isinstance(hello, dict) and hello.get("type") == "hello"):
            ws.abort()
            raise StreamUnavailable(self.server_url, "no hello from the server")
        self.ws, self.hello = ws, hello
        return self

    def receive(self, timeout: float) -> list[dict[str, Any]]:
        """The events that arrive within ``timeout`` seconds (maybe none). Raises
        StreamClosed when the stream ends, or when the server has been silent (not even
        answering a ping) for DEAD_AFTER seconds."""
        ws = self.ws
        if ws is None:
            raise StreamClosed("the stream is not open")
        message = ws.recv(timeout)
        if message is None:
            silent = time.monotonic() - ws.last_heard
            if silent > DEAD_AFTER:
                ws.abort()
                raise StreamClosed(f"the server said nothing for {int(silent)} s")
            if silent > PING_AFTER and time.monotonic() - self._pinged > PING_AFTER:
                self._pinged = time.monotonic()
                ws.ping()
            return []
        try:
            data = _decode(message)
        except StreamProtocolError:
            ws.abort()
            raise
        items = data if isinstance(data, list) else [data]
        return [e for e in items if isinstance(e, dict)]

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(message: str | bytes) -> Any:
    try:
        return json.loads(message)
    except ValueError as exc:
        raise StreamProtocolError("the server sent an event that is not JSON") from exc
