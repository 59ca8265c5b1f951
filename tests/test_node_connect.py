"""How a real bf-node connects: what makes it retry, what makes it leave, what it waits for.

From the issue "rate limiting kills nodes": a node refused for any reason but its
token (a rate limit, its uid in use, a server error) must wait and retry, even when
the server calls the refusal fatal; only a missing, wrong or revoked token (or
another protocol) ends it. And from the chaos runs: a server that accepts the
connection but never answers must not hold the node, and a node follows the
server's heartbeat from the welcome, so that a server gone silent is left as soon
as the server's own setting says. The server is ``fakeserver.py``; Blender is a
stand-in that only answers the probe.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from fakeserver import Conn, FakeServer, fake_blender, frame, until, welcome
from procs import NodeProc, free_port


def node_for(url: str, tmp_path: Path, *settings: str) -> NodeProc:
    extra = ["--blender", str(fake_blender(tmp_path / "bin"))]
    if settings:
        config = tmp_path / "node.toml"
        config.write_text("[node]\n" + "".join(f"{s}\n" for s in settings))
        extra += ["--config", str(config)]
    node = NodeProc(url, tmp_path / "work", "n", extra, log_path=tmp_path / "node.log")
    node.start()
    return node


async def test_a_node_refused_as_fatal_but_not_for_its_token_retries(tmp_path: Path) -> None:
    """A server (or its proxy) that answers the upgrade 429 and 503, then calls every
    refusal fatal, as this one's rate limit did."""

    async def script(conn: Conn) -> None:
        if conn.index <= 3:
            await conn.send(frame("error", code="rate_limited", fatal=True,
                                  message="too many failed attempts from this address"))
            await conn.ws.close()
            return
        await conn.send(welcome(heartbeat=1))
        await conn.pump()

    async with FakeServer(script, http_refusals=[429, 429, 503]) as server:
        node = node_for(server.url, tmp_path, "reconnect_max = 1.0")  # a short backoff
        try:
            await until(lambda: len(server.hellos) >= 4, 30, "the node to come back a 4th time")
            # connected, and staying so: its 1 s pings are answered, nothing drops it
            await asyncio.sleep(4)
            assert len(server.hellos) == 4, node.text()
            assert node.alive, node.text()
        finally:
            node.stop()
    log = node.text()
    assert server.upgrades == 7
    # once per kind of trouble, not once per retry: 429, 503, the refusal
    assert log.count("; retrying with backoff") == 3, log
    assert log.count("refused this node (rate_limited): too many failed attempts") == 1, log
    assert "connected to" in log


async def test_a_refused_token_stops_the_node(tmp_path: Path) -> None:
    message = "this node's token is missing, wrong or revoked"

    async def script(conn: Conn) -> None:
        await conn.send(frame("error", code="unauthorized", fatal=True, message=message))
        await conn.ws.close()

    async with FakeServer(script) as server:
        node = node_for(server.url, tmp_path)
        try:
            assert node.popen is not None
            code = await asyncio.to_thread(node.popen.wait, 30)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            node.stop()
    assert code == 1, node.text()
    assert f"bf-node: the server refused this node: {message}" in node.text()
    assert len(server.hellos) == 1


async def test_a_server_that_never_answers_the_upgrade_is_dialled_again(tmp_path: Path) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def blackhole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing, keep it open

    port = free_port()
    tcp = await asyncio.start_server(blackhole, "127.0.0.1", port)
    try:
        node = node_for(f"http://127.0.0.1:{port}", tmp_path, "handshake_timeout = 1.0")
        try:
            await until(lambda: len(accepted) >= 3, 20, "the node to dial again")
            assert node.alive, node.text()
        finally:
            node.stop()
    finally:
        for writer in accepted:
            writer.close()
        tcp.close()
        await tcp.wait_closed()
    log = node.text()
    assert log.count("no answer to the websocket upgrade within 1 s; retrying with backoff") == 1, log


async def test_a_node_follows_the_servers_heartbeat(tmp_path: Path) -> None:
    """The server says 1 s, then stops answering pings: the node leaves within ~2 s
    (it used to wait its own 10 s and 5 more for the pong) and comes back."""

    async def script(conn: Conn) -> None:
        await conn.send(welcome(heartbeat=1))
        if conn.index == 1:
            await asyncio.sleep(60)  # deaf: not even reading, so no pong goes out
        await conn.pump()

    async with FakeServer(script, autoping=False) as server:
        node = node_for(server.url, tmp_path)
        try:
            await until(lambda: len(server.hellos) >= 1, 20, "the node to connect")
            await until(lambda: len(server.hellos) >= 2, 6, "the node to leave a deaf server")
            assert node.alive, node.text()
        finally:
            node.stop()
    assert "the server sent nothing for 2 s" in node.text()
