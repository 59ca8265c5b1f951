"""Tokens: who gets in, who does not, and that the server says why."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.protocol import messages as m
from blenderfarm.server import tokens
from blenderfarm.server.app import make_app
from blenderfarm.server.auth import AUTH
from blenderfarm.server.config import ServerConfig
from fakenode import FakeNode
from procs import ServerProc, bin_path, free_port


@pytest.fixture
async def secured(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "farm.db"
    # in a thread: the guard against blocking the loop watches these server functions too
    _, user = await asyncio.to_thread(tokens.create, db, "user", "alice")
    node_info, node = await asyncio.to_thread(tokens.create, db, "node", "n1")
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=data)), host="127.0.0.1"))
    await client.start_server()
    client.tokens = {"user": user, "node": node, "node_id": node_info.id, "db": db}  # type: ignore[attr-defined]
    yield client
    await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_user_token_is_needed_and_enough(secured) -> None:
    t = secured.tokens
    for headers in ({}, bearer("bfu_wrong"), {"Authorization": "Basic abc"}):
        resp = await secured.get("/api/jobs", headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] == "unauthorized" and "token create --user" in body["error"]["message"]
    resp = await secured.get("/api/jobs", headers=bearer(t["user"]))
    assert resp.status == 200
    info = await (await secured.get("/api/info", headers=bearer(t["user"]))).json()
    assert info["auth_required"] is True


async def test_jobs_belong_to_the_token_not_to_what_the_spec_claims(secured) -> None:
    import hashlib

    t = secured.tokens
    blend = b"BLENDER-v300 owner test"
    sha = hashlib.sha256(blend).hexdigest()
    resp = await secured.put(f"/api/blobs/{sha}", data=blend, headers=bearer(t["user"]))
    assert resp.status == 201
    spec = {"blend": "a.blend", "manifest": {"a.blend": sha}, "frames": "1", "user": "bob"}
    resp = await secured.post("/api/jobs", json=spec, headers=bearer(t["user"]))
    assert resp.status == 201
    assert (await resp.json())["job"]["owner"] == "alice"  # fair share can't be gamed


async def test_node_token_cannot_use_the_user_api(secured) -> None:
    node = secured.tokens["node"]
    for method, path in (("GET", "/api/jobs"), ("POST", "/api/jobs"), ("GET", "/api/nodes"),
                         ("POST", "/api/blobs/missing")):
        resp = await secured.request(method, path, headers=bearer(node), json={})
        assert resp.status == 403, path
    # but it may fetch and upload files, which a render needs
    resp = await secured.get("/api/blobs/" + "0" * 64, headers=bearer(node))
    assert resp.status == 404


async def test_nodes_need_a_node_token(secured) -> None:
    url = str(secured.make_url(""))
    for token in (None, "bfn_wrong", secured.tokens["user"]):
        n = FakeNode(url, token=token)
        msg = await n.connect()
        await n.close()
        assert isinstance(msg, m.Error) and msg.fatal and msg.code == "unauthorized", msg
        assert "token create --node" in msg.message
    good = FakeNode(url, token=secured.tokens["node"])
    assert isinstance(await good.connect(), m.Welcome)
    await good.close()


async def test_revoked_tokens_stop_working(secured) -> None:
    t = secured.tokens
    db: Path = t["db"]
    info, user2 = await asyncio.to_thread(tokens.create, db, "user", "bob")
    await asyncio.sleep(2.5)  # the server re-reads tokens every 2 s
    assert (await secured.get("/api/jobs", headers=bearer(user2))).status == 200
    assert await asyncio.to_thread(tokens.revoke, db, info.id)
    await asyncio.sleep(2.5)
    assert (await secured.get("/api/jobs", headers=bearer(user2))).status == 401


async def test_failed_attempts_are_rate_limited(secured) -> None:
    statuses = [(await secured.get("/api/jobs", headers=bearer("bfu_guess"))).status
                for _ in range(25)]
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}


async def test_a_valid_token_gets_in_from_an_address_that_is_rate_limited(secured) -> None:
    for _ in range(25):  # someone else at this address (behind the same proxy) guesses
        await secured.get("/api/jobs", headers=bearer("bfu_guess"))
    resp = await secured.get("/api/jobs", headers=bearer(secured.tokens["user"]))
    assert resp.status == 200, await resp.text()
    node = FakeNode(str(secured.make_url("")), token=secured.tokens["node"])
    assert isinstance(await node.connect(), m.Welcome)
    await node.close()
    wrong = FakeNode(str(secured.make_url("")), token="bfn_guess")
    refused = await wrong.connect()
    await wrong.close()
    # a rate limit is no reason for a node to give up: it is not fatal
    assert isinstance(refused, m.Error) and refused.code == "rate_limited" and not refused.fatal


async def test_clients_behind_a_trusted_proxy_are_counted_apart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    await asyncio.to_thread(tokens.create, data / "farm.db", "user", "alice")

    async def statuses(trusted: tuple[str, ...]) -> tuple[int, int]:
        cfg = ServerConfig(data_dir=data, trusted_proxies=trusted)
        client = TestClient(TestServer(make_app(cfg), host="127.0.0.1"))
        await client.start_server()
        try:
            for _ in range(25):
                await client.get("/api/jobs", headers={**bearer("bfu_guess"),
                                                       "X-Forwarded-For": "203.0.113.7"})
            same = await client.get("/api/jobs", headers={**bearer("bfu_guess"),
                                                          "X-Forwarded-For": "203.0.113.7"})
            other = await client.get("/api/jobs", headers={**bearer("bfu_guess"),
                                                           "X-Forwarded-For": "203.0.113.8"})
            return same.status, other.status
        finally:
            await client.close()

    # behind the proxy every client has its own count ...
    assert await statuses(("127.0.0.1",)) == (429, 401)
    # ... and a header from an untrusted peer is not believed (anyone can send it)
    assert await statuses(()) == (429, 429)


def test_token_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    run = [bin_path("bf-server"), "token"]
    made = subprocess.run(run + ["create", "--user", "--name", "ci", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, check=True)
    secret = made.stdout.strip()
    assert secret.startswith("bfu_") and "shown only now" in made.stderr
    listed = subprocess.run(run + ["list", "--data-dir", str(tmp_path)], capture_output=True,
                            text=True, check=True).stdout
    assert "ci" in listed and "active" in listed and secret not in listed
    assert secret not in (tmp_path / "farm.db").read_bytes().decode("latin-1")
    token_id = listed.split()[0]
    subprocess.run(run + ["revoke", token_id, "--data-dir", str(tmp_path)], check=True,
                   capture_output=True)
    assert "revoked" in subprocess.run(run + ["list", "--data-dir", str(tmp_path)],
                                       capture_output=True, text=True).stdout


def test_refuses_to_listen_beyond_loopback_without_tokens(tmp_path: Path) -> None:
    proc = subprocess.run([bin_path("bf-server"), "--host", "0.0.0.0", "--port",
                           str(free_port()), "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without tokens" in proc.stderr
    assert "--insecure" in proc.stderr


def test_tls_end_to_end_with_a_token(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    (tmp_path / "srv").mkdir()
    _, user = tokens.create(tmp_path / "srv" / "farm.db", "user", "t")
    server = ServerProc(tmp_path / "srv", free_port(),
                        ["--tls-cert", str(cert), "--tls-key", str(key)])
    server.url = server.url.replace("http://", "https://")
    try:
        server.start()
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        ok = subprocess.run([bin_path("bf"), "info", "--json", "--server", server.url,
                             "--token", user], capture_output=True, text=True, env=env)
        assert ok.returncode == 0, ok.stderr
        assert '"auth_required": true' in ok.stdout
        bad = subprocess.run([bin_path("bf"), "info", "--server", server.url, "--token", "x"],
                             capture_output=True, text=True, env=env)
        assert bad.returncode != 0 and "token" in bad.stderr
    finally:
        server.stop()


@pytest.mark.blender
def test_a_secured_farm_renders(farm_procs, tmp_path: Path) -> None:
    from scenes import BLENDER, make_scene
    from test_e2e import bf

    if BLENDER is None:
        pytest.skip("Blender is not installed")
    blend = make_scene("anim", tmp_path / "scene", frames=2, res=32, samples=2)
    db = tmp_path / "server" / "farm.db"
    db.parent.mkdir()
    _, user = tokens.create(db, "user", "artist")
    _, node = tokens.create(db, "node", "render01")
    server = farm_procs.server()
    farm_procs.node("n", extra=["--token", node])
    env_token = ["--token", user]
    assert bf(server.url, "nodes", *env_token).returncode == 0
    sub = bf(server.url, "submit", str(blend), "--frames", "1-2", *env_token)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().splitlines()[-1]
    done = bf(server.url, "wait", job_id, *env_token)
    assert done.returncode == 0, done.stderr
    refused = bf(server.url, "jobs")
    assert refused.returncode == 1 and "token" in refused.stderr
    logs = (tmp_path / "server" / "server.log").read_text() + \
        (tmp_path / "node-n" / "node.log").read_text()
    assert user not in logs and node not in logs, "a token was written to a log"


async def test_pages_of_other_sites_cannot_drive_an_open_farm(tmp_path: Path) -> None:
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=tmp_path / "d")),
                                   host="127.0.0.1"))
    await client.start_server()
    try:
        blend = b"BLENDER pretend"
        sha = hashlib.sha256(blend).hexdigest()
        await client.put(f"/api/blobs/{sha}", data=blend)
        spec = {"blend": "s.blend", "manifest": {"s.blend": sha}, "frames": "1", "paused": True}
        job = (await (await client.post("/api/jobs", json=spec)).json())["job"]
        evil = {"Origin": "http://evil.example"}
        # what a foreign page can send without asking the browser's permission first
        for path, kwargs in ((f"/api/jobs/{job['id']}/cancel", {}),
                             ("/api/jobs", {"data": json.dumps(spec),
                                            "headers": {"Content-Type": "text/plain"}})):
            resp = await client.post(path, headers={**evil, **kwargs.pop("headers", {})},
                                     **kwargs)
            assert resp.status == 403 and (await resp.json())["error"]["code"] == "cross_site"
        resp = await client.post("/api/jobs", data=json.dumps(spec),
                                 headers={"Content-Type": "text/plain"})
        assert resp.status == 415, await resp.text()  # a form post from a page, Origin lost
        info = (await (await client.get(f"/api/jobs/{job['id']}")).json())["job"]
        assert info["status"] == "paused" and len((await (await client.get(
            "/api/jobs")).json())["jobs"]) == 1
        # the farm's own dashboard (same origin) and bf (no Origin) go on working
        own = {"Origin": str(client.make_url("")).rstrip("/")}
        resp = await client.post(f"/api/jobs/{job['id']}/resume", headers=own)
        assert resp.status == 200, await resp.text()
        assert (await client.post(f"/api/jobs/{job['id']}/cancel")).status == 200
    finally:
        await client.close()


def test_ipv6_loopback_is_loopback(tmp_path: Path) -> None:
    """Bound to ::1 an open farm is as private as on 127.0.0.1: it starts."""
    port = free_port()
    proc = subprocess.Popen([bin_path("bf-server"), "--host", "::1", "--port", str(port),
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening on" in first, first + (proc.stdout.read() if proc.poll() else "")
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_node_token_cannot_take_over_another_nodes_uid(secured) -> None:
    url = str(secured.make_url(""))
    first = FakeNode(url, uid="render01-uid", token=secured.tokens["node"])
    assert isinstance(await first.connect(), m.Welcome)
    await first.close()
    await asyncio.sleep(0.1)
    db: Path = secured.tokens["db"]
    _, other = await asyncio.to_thread(tokens.create, db, "node", "render02")
    await secured.server.app[AUTH].refresh(force=True)
    thief = FakeNode(url, uid="render01-uid", token=other)
    refused = await thief.connect()
    await thief.close()
    assert isinstance(refused, m.Error) and refused.code == "uid_taken", refused
    second = FakeNode(url, uid="render02-uid", token=other)
    assert isinstance(await second.connect(), m.Welcome)
    await second.close()
    # once the first token is revoked, the uid may be enrolled again
    await asyncio.to_thread(tokens.revoke, db, secured.tokens["node_id"])
    await secured.server.app[AUTH].refresh(force=True)
    again = FakeNode(url, uid="render01-uid", token=other)
    assert isinstance(await again.connect(), m.Welcome)
    await again.close()
