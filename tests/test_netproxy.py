"""The chaos test's TCP proxy (tests/netproxy.py) against a plain echo server: it
forwards, delays, drops, partitions and heals as the chaos run relies on."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from netproxy import NetProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # the proxy resets some on purpose
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: int) -> Iterator[NetProxy]:
    with NetProxy(echo) as p:
        yield p


def _connect(proxy: NetProxy, timeout: float = 2.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    s.settimeout(timeout)
    return s


def _assert_reset(proxy: NetProxy) -> None:
    """A new connection through ``proxy`` is reset (an RST, not a FIN): at the connect
    itself on a busy machine, where the RST beats it, or at the first exchange."""
    with pytest.raises((ConnectionResetError, BrokenPipeError)), _connect(proxy) as s:
        if not _roundtrip(s):
            raise AssertionError("closed with a FIN, not reset")


def _roundtrip(s: socket.socket, data: bytes = b"ping") -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _wait(predicate, timeout: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_forwards_both_ways(proxy: NetProxy) -> None:
    with _connect(proxy) as s:
        assert _roundtrip(s, b"hello") == b"hello"
        big = bytes(range(256)) * 4096  # 1 MiB, many chunks, in order
        assert _roundtrip(s, big) == big
    assert proxy.stats["bytes_up"] >= len(big) and proxy.stats["bytes_down"] >= len(big)


def test_delay_holds_each_way_then_goes_back_to_none(proxy: NetProxy) -> None:
    with _connect(proxy) as s:
        proxy.set_delay(0.3)
        t0 = time.monotonic()
        assert _roundtrip(s) == b"ping"
        assert time.monotonic() - t0 >= 0.55  # 0.3 up + 0.3 down
        proxy.set_delay(0)
        t0 = time.monotonic()
        assert _roundtrip(s) == b"ping"
        assert time.monotonic() - t0 < 0.25


def test_drop_resets_current_connections_only(proxy: NetProxy) -> None:
    s = _connect(proxy)
    assert _roundtrip(s) == b"ping"
    assert proxy.drop() == 1
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        if not _roundtrip(s):  # a FIN would read b"": only an RST counts
            raise AssertionError("closed with a FIN, not reset")
    s.close()
    with _connect(proxy) as again:
        assert _roundtrip(again) == b"ping"


def test_partition_holds_open_sockets_silent_until_the_heal(proxy: NetProxy) -> None:
    with _connect(proxy) as s:
        assert _roundtrip(s) == b"ping"
        proxy.partition()
        s.settimeout(0.5)
        s.sendall(b"held")
        with pytest.raises(TimeoutError):
            s.recv(100)  # nothing through, and nothing closed either
        proxy.heal()
        s.settimeout(2)
        assert s.recv(100) == b"held"  # delivered late, as TCP would retransmit it


def test_partition_refuses_new_connections(proxy: NetProxy) -> None:
    proxy.partition(new="refuse")
    _assert_reset(proxy)
    proxy.heal()
    with _connect(proxy) as s:
        assert _roundtrip(s) == b"ping"
    assert proxy.stats["refused"] == 1


def test_partition_blackholes_new_connections(proxy: NetProxy) -> None:
    proxy.partition(new="blackhole")
    with _connect(proxy) as s:
        s.settimeout(0.5)
        s.sendall(b"into the void")
        with pytest.raises(TimeoutError):
            s.recv(100)
        proxy.heal()
        s.settimeout(2)
        assert s.recv(100) == b"into the void"
    assert proxy.stats["blackholed"] == 1


def test_a_target_that_is_down_is_a_reset(echo: int) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        dead_port = spare.getsockname()[1]  # bound, not listening: connections refused
        with NetProxy(dead_port) as p:
            _assert_reset(p)


def test_stop_closes_everything_and_ends_the_thread(echo: int) -> None:
    p = NetProxy(echo).start()
    s = _connect(p)
    assert _roundtrip(s) == b"ping"
    p.partition(new="blackhole")
    held = _connect(p)
    thread = p._thread
    p.stop()
    assert thread is not None and not thread.is_alive()
    with pytest.raises((ConnectionResetError, BrokenPipeError, TimeoutError)):
        if not _roundtrip(s):
            raise ConnectionResetError
    held.close()
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
