"""Job and node control through the HTTP API, with scripted nodes on real sockets."""

from __future__ import annotations

import asyncio

import pytest

from blenderfarm.protocol import messages as m
from test_server import SHA, drain, farm, job, submit  # noqa: F401 - fixtures and helpers


async def post(client, path: str, body: dict | None = None) -> dict:
    resp = await client.post(path, json=body or {})
    data = await resp.json()
    assert resp.status == 200, data
    return data


async def test_pause_lets_running_tasks_finish_and_resume_goes_on(farm) -> None:  # noqa: F811
    a = farm.node()
    await a.connect()
    j = await submit(farm, frames="1-4")
    running = await drain(a)
    assert len(running) == 2  # one rendering, one prefetched
    assert (await post(farm, f"/api/jobs/{j['id']}/pause"))["job"]["status"] == "paused"
    for assign in running:
        await a.finish(assign)
    assert await drain(a) == [], "a paused job must not start new tasks"
    assert (await job(farm, j["id"]))["frames_done"] == 2
    await post(farm, f"/api/jobs/{j['id']}/resume")
    for assign in await drain(a):
        await a.finish(assign)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_pause_with_stop_cancels_and_requeues(farm) -> None:  # noqa: F811
    a = farm.node()
    await a.connect()
    j = await submit(farm, frames="1-2")
    held = {x.task_id for x in await drain(a)}
    await post(farm, f"/api/jobs/{j['id']}/pause", {"stop": True})
    cancels = {c.task_id for c in await drain(a, m.Cancel)}
    assert cancels == held
    info = await job(farm, j["id"])
    assert info["status"] == "paused" and info["tasks_queued"] == 2


async def test_requeue_failed_renders_them_again(farm) -> None:  # noqa: F811
    a = farm.node()
    await a.connect()
    j = await submit(farm, frames="1")
    assign = await a.expect(m.Assign)
    await a.send(m.TaskFailed(task_id=assign.task_id, error="bad", retryable=False))
    await a.expect(m.Ack)
    assert (await job(farm, j["id"]))["status"] == "failed"
    info = (await post(farm, f"/api/jobs/{j['id']}/requeue", {"which": "failed"}))["job"]
    assert info["status"] in ("queued", "active") and info["error"] is None
    again = await a.expect(m.Assign)
    await a.finish(again)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_priority_change_reorders_waiting_work(farm) -> None:  # noqa: F811
    low = await submit(farm, frames="1", name="low")
    high = await submit(farm, frames="1", name="high")
    await post(farm, f"/api/jobs/{low['id']}/priority", {"priority": 90})
    a = farm.node()
    await a.connect()
    first = await a.expect(m.Assign)
    assert first.job_id == low["id"]
    resp = await farm.post(f"/api/jobs/{high['id']}/priority", json={"priority": 101})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "priority"


async def test_delete_removes_outputs_and_reclaims_unshared_blobs(farm, tmp_path) -> None:  # noqa: F811
    a = farm.node()
    await a.connect()
    keep = await submit(farm, frames="1", name="keep")
    gone = await submit(farm, frames="2", name="gone")
    for assign in await drain(a):
        await a.finish(assign)
    outs = (await (await farm.get(f"/api/jobs/{gone['id']}/outputs")).json())["outputs"]
    frame_sha = outs[0]["sha256"]
    resp = await farm.delete(f"/api/jobs/{gone['id']}")
    assert resp.status == 200
    assert (await farm.get(f"/api/jobs/{gone['id']}")).status == 404
    blobs = tmp_path / "data" / "blobs"
    assert not (blobs / frame_sha[:2] / frame_sha).exists(), "its frame blob is reclaimed"
    assert (blobs / SHA[:2] / SHA).exists(), "the .blend is still used by the other job"
    assert not (tmp_path / "data" / "jobs" / gone["id"]).exists()
    assert (await job(farm, keep["id"]))["frames_done"] == 1


async def test_drain_hands_back_prefetched_work_and_enable_restores(farm) -> None:  # noqa: F811
    a = farm.node(name="a")
    await a.connect()
    await submit(farm, frames="1-3")
    held = await drain(a)
    assert len(held) == 2
    node = (await post(farm, f"/api/nodes/{a.uid}/drain"))["node"]
    assert node["state"] == "drained"
    cancel = await a.expect(m.Cancel)
    assert cancel.task_id == held[1].task_id
    await a.finish(held[0])
    assert await drain(a) == []
    await post(farm, "/api/nodes/a/enable")  # by name works too
    assert len(await drain(a)) == 2


async def test_disable_stops_everything_at_once(farm) -> None:  # noqa: F811
    a = farm.node(name="a")
    await a.connect()
    j = await submit(farm, frames="1-2")
    held = {x.task_id for x in await drain(a)}
    node = (await post(farm, f"/api/nodes/{a.uid}/disable"))["node"]
    assert node["state"] == "disabled"
    assert {c.task_id for c in await drain(a, m.Cancel)} == held
    assert (await job(farm, j["id"]))["tasks_queued"] == 2


async def test_a_node_failing_a_job_three_times_is_blocklisted(farm) -> None:  # noqa: F811
    bad, good = farm.node(name="bad"), farm.node(name="good")
    await bad.connect()
    await good.connect()
    j = await submit(farm, frames="1-12")
    blocklisted = False
    for _ in range(40):  # bounded: each round answers whatever the nodes were sent
        for assign in await drain(bad, timeout=0.1):
            assert not blocklisted, "a blocklisted node was given more of the job"
            await bad.send(m.TaskFailed(task_id=assign.task_id, error="GPU driver crash"))
        for assign in await drain(good, timeout=0.1):
            await good.finish(assign)
        info = await job(farm, j["id"])
        if not blocklisted and info["blocklisted_nodes"]:
            blocklisted = True
            await drain(bad, timeout=0.3)  # what was sent before it, then canceled
        if info["status"] == "completed":
            break
    assert info["status"] == "completed" and info["frames_done"] == 12
    assert info["blocklisted_nodes"] == [bad.uid]


async def test_no_capable_node_left_fails_the_job_with_the_reason(farm) -> None:  # noqa: F811
    bad = farm.node(name="bad")
    await bad.connect()
    j = await submit(farm, frames="1-9", chunk=1)
    for _ in range(3):
        assign = await bad.expect(m.Assign)
        await bad.send(m.TaskFailed(task_id=assign.task_id, error="out of memory"))
    await asyncio.sleep(0.2)
    info = await job(farm, j["id"])
    assert info["status"] == "failed"
    assert "no connected node can render this job" in info["error"]
    assert "out of memory" in info["error"] and "requeue" in info["error"]


async def test_live_log_of_a_task(farm) -> None:  # noqa: F811
    a = farm.node()
    await a.connect()
    await submit(farm, frames="1")
    assign = await a.expect(m.Assign)
    await a.send(m.Log(task_id=assign.task_id, text="Fra:1 | Sample 1/4"))
    await a.send(m.Log(task_id=assign.task_id, text="Fra:1 | Sample 4/4"))
    await asyncio.sleep(0.2)
    body = await (await farm.get(f"/api/tasks/{assign.task_id}/log")).json()
    assert body["text"].splitlines() == ["Fra:1 | Sample 1/4", "Fra:1 | Sample 4/4"]


@pytest.mark.parametrize("path, body, status", [
    ("/api/jobs/nope/pause", {}, 404), ("/api/jobs/nope/requeue", {"which": "x"}, 400),
    ("/api/nodes/nope/drain", {}, 404),
])
async def test_control_errors(farm, path, body, status) -> None:  # noqa: F811
    resp = await farm.post(path, json=body)
    assert resp.status == status
    assert "error" in await resp.json()


async def test_a_returning_node_is_told_to_drop_the_tasks_of_a_job_paused_meanwhile(
        farm) -> None:  # noqa: F811 - the fixture
    """What the scheduler's old ``is_queued`` check was for: a task the node claims on
    its return, queued but not in the scheduler because its job is paused."""
    a = farm.node()
    await a.connect()
    j = await submit(farm, frames="1-2")
    held = [x.task_id for x in await drain(a)]
    await a.ws.close()
    await asyncio.sleep(0.2)
    await post(farm, f"/api/jobs/{j['id']}/pause", {"stop": True})
    await a.connect(running=held)
    cancels = list(await drain(a, m.Cancel))
    assert {c.task_id for c in cancels} == set(held)
    assert all(c.reason == "job paused" for c in cancels)
    info = await job(farm, j["id"])
    assert info["status"] == "paused" and info["tasks_queued"] == 2
