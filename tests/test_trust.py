"""Every party can do only what its role allows: results bound to the assignment.

A node's report counts only from a node the task was given to (the documented
late-completion case is such a node), only for frames of that task, and only under
the names the job's naming gives those frames. Each test failed on the code before.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.protocol import messages as m
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from fakenode import FakeNode

BLEND = b"BLENDER-v300 pretend .blend for trust tests"
SHA = hashlib.sha256(BLEND).hexdigest()


@pytest.fixture
async def farm(tmp_path: Path):
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=tmp_path / "d")),
                                   host="127.0.0.1"))
    await client.start_server()
    nodes: list[FakeNode] = []

    def node(**kw) -> FakeNode:
        n = FakeNode(str(client.make_url("")), **kw)
        nodes.append(n)
        return n

    client.node = node  # type: ignore[attr-defined]
    yield client
    for n in nodes:
        await n.close()
    await client.close()


async def submit(client, frames: str = "1-2", **kw) -> dict:
    await client.put(f"/api/blobs/{SHA}", data=BLEND)
    resp = await client.post("/api/jobs", json={"blend": "s.blend", "manifest": {"s.blend": SHA},
                                               "frames": frames, **kw})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["job"]


async def job(client, job_id: str) -> dict:
    return (await (await client.get(f"/api/jobs/{job_id}")).json())["job"]


async def outputs(client, job_id: str) -> dict[str, str]:
    got = (await (await client.get(f"/api/jobs/{job_id}/outputs")).json())["outputs"]
    return {o["name"]: o["sha256"] for o in got}


async def test_a_node_cannot_report_a_task_it_was_never_given(farm) -> None:
    j = await submit(farm, frames="1")
    owner, stranger = farm.node(name="owner"), farm.node(name="stranger")
    await owner.connect()
    a = await owner.expect(m.Assign)
    await stranger.connect()
    sha = await stranger.upload(b"not the real frame")
    await stranger.send(m.FrameDone(task_id=a.task_id, frame=1, sha256=sha, size=18,
                                    name=f"{a.output_name}_0001.png"))
    assert (await stranger.expect(m.Error)).code == "not_yours"
    await stranger.send(m.TaskDone(task_id=a.task_id, outputs=[m.OutputRef(
        frame=1, sha256=sha, size=18, name=f"{a.output_name}_0001.png")]))
    assert (await stranger.expect(m.Error)).code == "not_yours"
    assert (await job(farm, j["id"]))["tasks_done"] == 0
    assert await outputs(farm, j["id"]) == {}
    await owner.finish(a)  # the real one counts, and nobody was blamed for the stranger
    info = await job(farm, j["id"])
    assert info["status"] == "completed" and info["blocklisted_nodes"] == []


async def test_a_task_of_a_paused_job_cannot_be_reported_by_a_stranger(farm) -> None:
    j = await submit(farm, frames="1-3", paused=True)
    stranger = farm.node()
    await stranger.connect()
    sha = await stranger.upload(b"x")
    await stranger.send(m.TaskDone(task_id=f"{j['id']}-00000", outputs=[m.OutputRef(
        frame=1, sha256=sha, size=1, name=f"{j['output_name']}_0001.png")]))
    assert (await stranger.expect(m.Error)).code == "not_yours"
    assert (await job(farm, j["id"]))["tasks_done"] == 0


@pytest.mark.parametrize("name", ["autorun.inf", "Desktop.ini", "shot_0002.png",
                                  "other_0001.png", "shot_0001", ".shot_0001.png"])
async def test_outputs_have_the_names_the_job_gives_their_frames(farm, name: str) -> None:
    j = await submit(farm, frames="1-2", name="shot")
    node = farm.node()
    await node.connect()
    a = await node.expect(m.Assign)
    assert a.frames == [1]
    sha = await node.upload(b"frame one")
    await node.send(m.FrameDone(task_id=a.task_id, frame=1, sha256=sha, size=9, name=name))
    err = await node.expect(m.Error)
    assert err.code == "bad_request", err
    assert await outputs(farm, j["id"]) == {}


async def test_a_done_frame_is_not_replaced_by_a_later_report(farm) -> None:
    j = await submit(farm, frames="1")
    node = farm.node()
    await node.connect()
    a = await node.expect(m.Assign)
    await node.finish(a)
    before = await outputs(farm, j["id"])
    sha = await node.upload(b"a different picture")
    await node.send(m.FrameDone(task_id=a.task_id, frame=1, sha256=sha, size=19,
                                name=f"{a.output_name}_0001.png"))
    await asyncio.sleep(0.2)
    assert await outputs(farm, j["id"]) == before


async def test_a_hello_cannot_claim_queued_tasks_it_was_never_given(farm) -> None:
    j = await submit(farm, frames="1-4", paused=True)
    claimer = farm.node(name="claimer")
    await claimer.connect(running=[f"{j['id']}-00000", f"{j['id']}-00001"])
    cancels = {(await claimer.expect(m.Cancel)).task_id for _ in range(2)}
    assert cancels == {f"{j['id']}-00000", f"{j['id']}-00001"}
    assert (await (await farm.post(f"/api/jobs/{j['id']}/resume")).json())["job"]
    honest = farm.node(name="honest")
    await honest.connect()
    given: list[str] = []
    for node in (claimer, honest):  # every task is given once, to one node
        for _ in range(2):
            given.append((await node.expect(m.Assign)).task_id)
    assert sorted(given) == [f"{j['id']}-{i:05d}" for i in range(4)]
    tasks = (await (await farm.get(f"/api/jobs/{j['id']}/tasks")).json())["tasks"]
    assert all(len(t["assignees"]) == 1 for t in tasks)


async def test_a_failed_task_keeps_who_failed_it_and_why(farm) -> None:
    j = await submit(farm, frames="1")
    node = farm.node(name="render07")
    await node.connect()
    a = await node.expect(m.Assign)
    await node.send(m.TaskFailed(task_id=a.task_id, error="Blender crashed", retryable=False))
    await node.expect(m.Ack)
    (task,) = (await (await farm.get(f"/api/jobs/{j['id']}/tasks")).json())["tasks"]
    assert task["status"] == "failed" and task["node"] == node.uid
    assert task["failed_nodes"] == {node.uid: "Blender crashed"}


async def test_a_denoise_refusal_keeps_who_refused_it(farm) -> None:
    j = await submit(farm, frames="1")
    node = farm.node(name="no-oidn", oidn=False)
    await node.connect()
    a = await node.expect(m.Assign)
    await node.send(m.TaskFailed(task_id=a.task_id, error="this Blender cannot denoise",
                                 reason="needs_denoise"))
    await node.expect(m.Ack)
    info = await job(farm, j["id"])
    assert info["status"] == "failed" and info["needs_oidn"]
    (task,) = (await (await farm.get(f"/api/jobs/{j['id']}/tasks")).json())["tasks"]
    assert task["node"] == node.uid
    assert task["failed_nodes"] == {node.uid: "this Blender cannot denoise"}
