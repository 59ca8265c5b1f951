"""Users control their own jobs, admins control everything; everyone sees the list.

Real tokens in a real farm.db, a real server on loopback. Each test failed on the
code before roles (any user token could control any job and every node).
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.server import tokens
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from fakenode import FakeNode
from procs import bin_path

BLEND = b"BLENDER pretend file for role tests"
SHA = hashlib.sha256(BLEND).hexdigest()


async def start(tmp_path: Path, **settings) -> tuple[TestClient, dict[str, str]]:
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    db = data / "farm.db"
    secrets = {}
    for name, kind, role in (("alice", "user", "user"), ("bob", "user", "user"),
                             ("boss", "user", "admin"), ("n1", "node", "user")):
        secrets[name] = (await asyncio.to_thread(tokens.create, db, kind, name, role))[1]
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=data, **settings)),
                                   host="127.0.0.1"))
    await client.start_server()
    return client, secrets


def as_(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def submit(client: TestClient, secret: str) -> dict:
    await client.put(f"/api/blobs/{SHA}", data=BLEND, headers=as_(secret))
    resp = await client.post("/api/jobs", headers=as_(secret), json={
        "blend": "s.blend", "manifest": {"s.blend": SHA}, "frames": "1-2", "paused": True})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["job"]


ACTIONS = [("POST", "/cancel", None), ("POST", "/pause", None), ("POST", "/resume", None),
           ("POST", "/requeue", {"which": "all"}), ("POST", "/priority", {"priority": 70}),
           ("DELETE", "", None)]


@pytest.mark.parametrize("method, action, body", ACTIONS)
async def test_a_user_controls_only_their_own_jobs(tmp_path: Path, method: str, action: str,
                                                   body: dict | None) -> None:
    client, t = await start(tmp_path)
    try:
        job = await submit(client, t["alice"])
        path = f"/api/jobs/{job['id']}{action}"
        resp = await client.request(method, path, headers=as_(t["bob"]), json=body)
        err = (await resp.json())["error"]
        assert resp.status == 403 and err["code"] == "forbidden", err
        assert "alice" in err["message"]
        info = (await (await client.get(f"/api/jobs/{job['id']}", headers=as_(t["bob"])))
                .json())["job"]  # bob sees it (a shared farm), unchanged
        assert info["status"] == "paused" and info["priority"] == 50
        for who in ("alice", "boss"):  # its owner and an admin may
            if action == "/resume":
                await client.post(f"/api/jobs/{job['id']}/pause", headers=as_(t[who]))
            resp = await client.request(method, path, headers=as_(t[who]), json=body)
            assert resp.status in (200, 409), await resp.text()
            if method == "DELETE":
                break
    finally:
        await client.close()


async def test_everyone_sees_the_list_and_only_admins_control_nodes(tmp_path: Path) -> None:
    client, t = await start(tmp_path)
    try:
        mine = await submit(client, t["alice"])
        listed = (await (await client.get("/api/jobs", headers=as_(t["bob"]))).json())["jobs"]
        assert [j["id"] for j in listed] == [mine["id"]] and listed[0]["owner"] == "alice"
        node = FakeNode(str(client.make_url("")), token=t["n1"])
        await node.connect()
        for who, status in (("alice", 403), ("boss", 200)):
            resp = await client.post(f"/api/nodes/{node.uid}/drain", headers=as_(t[who]))
            assert resp.status == status, await resp.text()
        await node.close()
        you = (await (await client.get("/api/info", headers=as_(t["bob"]))).json())["you"]
        assert you == {"name": "bob", "role": "user", "may": {
            "control_own_jobs": True, "control_all_jobs": False, "control_nodes": False,
            "read_all_outputs": True}}
        boss = (await (await client.get("/api/info", headers=as_(t["boss"]))).json())["you"]
        assert boss["role"] == "admin" and boss["may"]["control_nodes"]
    finally:
        await client.close()


async def test_outputs_and_logs_of_others_follow_the_share_setting(tmp_path: Path) -> None:
    client, t = await start(tmp_path, share_outputs=False)
    try:
        job = await submit(client, t["alice"])
        for path in (f"/api/jobs/{job['id']}/outputs", f"/api/jobs/{job['id']}/outputs.zip",
                     f"/api/tasks/{job['id']}-00000/log"):
            assert (await client.get(path, headers=as_(t["bob"]))).status == 403, path
            for who in ("alice", "boss"):
                assert (await client.get(path, headers=as_(t[who]))).status == 200, path
    finally:
        await client.close()
    shared, t2 = await start(tmp_path / "shared")
    try:
        job = await submit(shared, t2["alice"])
        assert (await shared.get(f"/api/jobs/{job['id']}/outputs",
                                 headers=as_(t2["bob"]))).status == 200
    finally:
        await shared.close()


def test_token_cli_makes_admins(tmp_path: Path) -> None:
    run = [bin_path("bf-server"), "token"]
    made = subprocess.run(run + ["create", "--admin", "--name", "boss", "--data-dir",
                                 str(tmp_path)], capture_output=True, text=True, check=True)
    assert made.stdout.startswith("bfu_") and "admin token" in made.stderr
    listed = subprocess.run(run + ["list", "--data-dir", str(tmp_path)], capture_output=True,
                            text=True, check=True).stdout
    assert "admin" in listed and "boss" in listed
    (info,) = tokens.list_tokens(tmp_path / "farm.db")
    assert info.admin and info.kind == "user"


def test_a_tokens_table_from_before_roles_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "farm.db")
    db.executescript("""CREATE TABLE tokens (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
        name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created REAL NOT NULL, revoked REAL);
        INSERT INTO tokens VALUES ('ab12', 'user', 'old', 'h', 1.0, NULL);""")
    db.commit()
    db.close()
    (info,) = tokens.list_tokens(tmp_path / "farm.db")
    assert (info.name, info.role, info.admin) == ("old", "user", False)


async def test_bf_says_what_the_token_may_do(tmp_path: Path) -> None:
    client, t = await start(tmp_path)
    try:
        job = await submit(client, t["alice"])
        url = str(client.make_url("")).rstrip("/")

        async def bf(token: str, *args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                bin_path("bf"), "--server", url, "--token", token, *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await proc.communicate()
            return out.decode()

        assert "bob (user): may change your own jobs; may read every job's" in \
            await bf(t["bob"], "info")
        assert "boss (admin): may change every job, the nodes" in await bf(t["boss"], "info")
        assert "may only look: it is alice's" in await bf(t["bob"], "show", job["id"])
        assert "may change it" in await bf(t["alice"], "show", job["id"])
        refused = await bf(t["bob"], "cancel", job["id"])
        assert "only its owner or an admin may change it" in refused, refused
    finally:
        await client.close()


async def test_admins_manage_tokens_and_users_cannot(tmp_path: Path) -> None:
    client, t = await start(tmp_path)
    try:
        assert (await client.get("/api/tokens", headers=as_(t["alice"]))).status == 403
        resp = await client.post("/api/tokens", headers=as_(t["alice"]),
                                 json={"kind": "admin", "name": "me-too"})
        assert resp.status == 403
        resp = await client.post("/api/tokens", headers=as_(t["boss"]),
                                 json={"kind": "user", "name": "carol"})
        made = await resp.json()
        assert resp.status == 201 and made["secret"].startswith("bfu_"), made
        assert (await client.get("/api/jobs", headers=as_(made["secret"]))).status == 200
        listed = (await (await client.get("/api/tokens", headers=as_(t["boss"]))).json())
        assert {x["name"] for x in listed["tokens"]} == {"alice", "bob", "boss", "n1", "carol"}
        assert all("secret" not in x and "hash" not in x for x in listed["tokens"])
        resp = await client.post(f"/api/tokens/{made['token']['id']}/revoke",
                                 headers=as_(t["boss"]))
        assert resp.status == 200
        assert (await client.get("/api/jobs", headers=as_(made["secret"]))).status == 401
    finally:
        await client.close()
