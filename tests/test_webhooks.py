"""Webhooks: a job's end is POSTed to its own URL and the server-wide one, retried."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.protocol import messages as m
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.webhooks import WEBHOOKS, WebhookPolicy, _PolicyResolver
from fakenode import FakeNode
from test_server import submit


async def test_job_end_is_posted_and_retried(tmp_path: Path) -> None:
    got: list[tuple[str, dict]] = []
    flaky = {"left": 2}

    async def receive(request: web.Request) -> web.Response:
        if request.path == "/farm" and flaky["left"] > 0:
            flaky["left"] -= 1
            return web.Response(status=503)  # a receiver that is briefly down
        got.append((request.path, await request.json()))
        return web.Response(text="ok")

    hook_app = web.Application()
    hook_app.router.add_post("/{name}", receive)
    hooks = TestServer(hook_app, host="127.0.0.1")
    await hooks.start_server()
    # a job's own webhook may reach this machine only because the setting says so
    cfg = ServerConfig(data_dir=tmp_path / "d", webhook_url=str(hooks.make_url("/farm")),
                       webhook_allow=("127.0.0.1",))
    async with TestClient(TestServer(make_app(cfg), host="127.0.0.1")) as client:
        client.server.app[WEBHOOKS].base_delay = 0.05
        node = FakeNode(str(client.make_url("")))
        await node.connect()
        j = await submit(client, frames="1", webhook=str(hooks.make_url("/job")))
        await node.finish(await node.expect(m.Assign))
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.05)
        await node.close()
    await hooks.close()
    assert sorted(path for path, _ in got) == ["/farm", "/job"]
    for _, body in got:
        assert body["event"] == "job.completed" and body["job"]["id"] == j["id"]
    assert flaky["left"] == 0, "the server-wide hook was retried after its 503s"


def test_server_settings_from_the_environment(tmp_path: Path) -> None:
    cfg = ServerConfig.load(None, {"port": 9000}, environ={
        "BLENDERFARM_SERVER_PORT": "8000", "BLENDERFARM_SERVER_GRACE_PERIOD": "5",
        "BLENDERFARM_SERVER_WEBHOOK_URL": "http://hooks/x"})
    assert (cfg.port, cfg.grace_period, cfg.webhook_url) == (9000, 5.0, "http://hooks/x")


async def test_a_jobs_webhook_reaches_only_what_the_server_allows(tmp_path: Path) -> None:
    got: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(request.path)
        return web.Response(text="ok")

    hook_app = web.Application()
    hook_app.router.add_post("/{name}", receive)
    hooks = TestServer(hook_app, host="127.0.0.1")
    await hooks.start_server()
    cfg = ServerConfig(data_dir=tmp_path / "d")
    async with TestClient(TestServer(make_app(cfg), host="127.0.0.1")) as client:
        for url in (str(hooks.make_url("/job")), f"http://localhost:{hooks.port}/job",
                    "http://10.1.2.3/hook", "http://[::1]/hook", "http://169.254.169.254/"):
            resp = await client.post("/api/jobs", json={
                "blend": "s.blend", "manifest": {"s.blend": "a" * 64}, "frames": "1",
                "webhook": url})
            body = await resp.json()
            assert resp.status == 400, body
            assert body["error"]["code"] == "webhook_not_allowed", body
            assert body["error"]["field"] == "webhook"
        # a name is checked on what it resolves to, when the server connects
        policy = client.server.app[WEBHOOKS].policy
        resolver = _PolicyResolver(policy)
        with pytest.raises(OSError, match="webhook_allow"):
            await resolver.resolve("localhost", 80)
        await resolver.close()
    await hooks.close()
    assert got == []
    allowed = _PolicyResolver(WebhookPolicy(("127.0.0.0/8",)))
    assert [r["host"] for r in await allowed.resolve("localhost", 80)] == ["127.0.0.1"]
    await allowed.close()
