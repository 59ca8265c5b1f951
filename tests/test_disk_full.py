"""A full disk, on the server or on a node: a clear error, the work goes elsewhere,
nothing half-written is kept. Uses small tmpfs mounts (needs root; skipped otherwise)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from procs import get_json, tmpfs
from scenes import make_scene, needs_blender


async def test_server_disk_full_refuses_the_upload_and_keeps_working(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "data", "2m") as data:
        client = TestClient(TestServer(make_app(ServerConfig(data_dir=data)), host="127.0.0.1"))
        await client.start_server()
        try:
            big = os.urandom(3 * 1024 * 1024)
            sha = hashlib.sha256(big).hexdigest()
            resp = await client.put(f"/api/blobs/{sha}", data=big)
            body = await resp.json()
            assert resp.status == 507 and body["error"]["code"] == "disk_error"
            assert "disk" in body["error"]["message"]
            assert not (data / "blobs" / sha[:2] / sha).exists()
            assert list((data / "blobs" / "tmp").iterdir()) == [], "a partial blob was kept"
            small = b"still works"
            ok = await client.put(f"/api/blobs/{hashlib.sha256(small).hexdigest()}", data=small)
            assert ok.status == 201
            assert (await client.get("/api/info")).status == 200
        finally:
            await client.close()


@pytest.mark.blender
@needs_blender[1]
def test_node_disk_full_sends_the_task_elsewhere(farm_procs, tmp_path: Path) -> None:
    from test_e2e import submit, wait_job

    blend = make_scene("anim", tmp_path / "scene", frames=2, res=32, samples=2)
    server = farm_procs.server()
    with tmpfs(tmp_path / "node-tiny", "200k"):
        farm_procs.node("tiny")
        farm_procs.wait_nodes(1)  # connected first, so it is offered the task first
        farm_procs.node("roomy")
        farm_procs.wait_nodes(2)
        job_id, _ = submit(server.url, blend, "--frames", "1")
        job = wait_job(server.url, job_id)
        assert job["status"] == "completed"
        (task,) = get_json(f"{server.url}/api/jobs/{job_id}/tasks")["tasks"]
        errors = list(task["failed_nodes"].values())
        assert errors and "disk is full" in errors[0], task
        leftovers = [p for p in (tmp_path / "node-tiny" / "blobs" / "tmp").iterdir()]
        assert leftovers == [], "the full node kept a partial download"
