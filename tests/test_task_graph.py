"""The task graph on a real server: tiles before their merge, the video after every
frame, and what requeue, cancel, failures and a restart do to the graph.

Nodes are scripted (tests/fakenode.py) over the real protocol: these tests are about
the server's decisions. The renders themselves are tested against Blender's own in
tests/test_tiles.py, tests/test_video.py and tests/test_tiles_farm.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.protocol import messages as m
from blenderfarm.protocol.tiles import tile_name, tile_preview_name
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from fakenode import FakeNode

BLEND = b"BLENDER-v300 pretend .blend for graph tests"
SHA = hashlib.sha256(BLEND).hexdigest()
VIDEO_INFO = {"video": {"fps": 25, "fps_base": 1.0, "width": 64, "height": 48}}


def slots(n: int) -> list[m.SlotCaps]:
    """``n`` CPU slots: a node that renders ``n`` tiles at once (a tile is never held
    in advance, so a node of one slot has one tile at a time)."""
    return [m.SlotCaps(id=str(i)) for i in range(n)]


@pytest.fixture
async def farm(tmp_path: Path):
    cfg = ServerConfig(data_dir=tmp_path / "data", grace_period=0.3, prefetch=3)
    server = TestServer(make_app(cfg), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    nodes: list[FakeNode] = []

    def node(**kw) -> FakeNode:
        n = FakeNode(str(server.make_url("")), **kw)
        nodes.append(n)
        return n

    client.node = node  # type: ignore[attr-defined]
    yield client
    for n in nodes:
        await n.close()
    await client.close()


async def submit(client, frames="1", **kw) -> dict:
    resp = await client.put(f"/api/blobs/{SHA}", data=BLEND)
    assert resp.status in (200, 201)
    spec = {"blend": "shot.blend", "manifest": {"shot.blend": SHA}, "frames": frames, **kw}
    resp = await client.post("/api/jobs", json=spec)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["job"]


async def job(client, job_id: str) -> dict:
    return (await (await client.get(f"/api/jobs/{job_id}")).json())["job"]


async def outputs(client, job_id: str) -> list[str]:
    body = await (await client.get(f"/api/jobs/{job_id}/outputs")).json()
    return sorted(o["name"] for o in body["outputs"])


async def nothing_more(node: FakeNode, cls: type[m.Message] = m.Assign) -> None:
    with pytest.raises(TimeoutError):
        await node.expect(cls, timeout=0.3)


async def test_a_frame_in_tiles_is_merged_once_every_tile_is_done(farm) -> None:
    node = farm.node(slots=slots(4))
    await node.connect()
    j = await submit(farm, tiles=4)
    assert j["tasks_total"] == 5 and j["frames_total"] == 1 and j["tiles_total"] == 4
    tiles = [await node.expect(m.Assign) for _ in range(4)]
    assert [(a.kind, a.tile.index, a.tile.cols, a.tile.rows) for a in tiles] == \
        [(m.RENDER, i, 2, 2) for i in range(4)]
    for a in tiles[:3]:
        await node.finish(a)
    await nothing_more(node)  # the merge waits for the last tile
    assert (await job(farm, j["id"]))["tiles_done"] == 3
    await node.finish(tiles[3])
    merge = await node.expect(m.Assign)
    assert merge.kind == m.MERGE and merge.frames == [1]
    assert [(i.name, i.tile.index if i.tile else None) for i in merge.inputs] == \
        [(tile_name("shot", 1, k), k) for k in range(4)]
    await node.finish(merge)
    done = await job(farm, j["id"])
    assert done["status"] == "completed" and done["frames_done"] == 1
    # the tiles are parts of the merge, not outputs of the job
    assert await outputs(farm, j["id"]) == ["shot_0001.png"]


async def test_a_tile_is_never_held_ahead_so_a_node_that_comes_or_frees_takes_the_next(
        farm) -> None:
    first = farm.node(name="first")
    await first.connect()
    await submit(farm, tiles=3)
    a = await first.expect(m.Assign)
    await nothing_more(first)  # one at a time: a prefetched tile would wait on a busy node
    second = farm.node(name="second")
    await second.connect()
    b = await second.expect(m.Assign)
    await second.finish(b)  # the faster node takes the last tile
    c = await second.expect(m.Assign)
    assert {a.tile.index, b.tile.index, c.tile.index} == {0, 1, 2}
    await nothing_more(first)


async def test_the_video_is_encoded_after_every_frame_with_what_the_renders_reported(
        farm) -> None:
    node = farm.node(ffmpeg="5.1.6")
    await node.connect()
    j = await submit(farm, frames="1-3", video=True)
    renders = [await node.expect(m.Assign) for _ in range(3)]
    for a in renders[:2]:
        await node.finish(a, info=VIDEO_INFO)
    await nothing_more(node)
    await node.finish(renders[2], info=VIDEO_INFO)
    encode = await node.expect(m.Assign)
    assert encode.kind == m.ENCODE and [i.frame for i in encode.inputs] == [1, 2, 3]
    assert [i.name for i in encode.inputs] == [f"shot_{f:04d}.png" for f in (1, 2, 3)]
    assert encode.video["output"] == "shot.0001-0003.mp4"
    await node.finish(encode)
    done = await job(farm, j["id"])
    assert done["status"] == "completed" and done["frames_done"] == 3
    assert done["video_output"] == "shot.0001-0003.mp4" and done["encode"] == "done"
    assert "shot.0001-0003.mp4" in await outputs(farm, j["id"])


async def test_a_node_without_ffmpeg_gets_no_encode(farm) -> None:
    plain = farm.node(name="plain")
    await plain.connect()
    await submit(farm, frames="1", video=True)
    render = await plain.expect(m.Assign)
    # a node with FFmpeg online: the encode is its to take, not the plain one's
    video = farm.node(name="video", ffmpeg="5.1.6")
    await video.connect()
    await plain.finish(render, info=VIDEO_INFO)
    encode = await video.expect(m.Assign)
    assert encode.kind == m.ENCODE
    await nothing_more(plain)


async def test_requeue_all_runs_the_tiles_again_then_the_merge_after_them(farm) -> None:
    node = farm.node(slots=slots(2))
    await node.connect()
    j = await submit(farm, tiles=2)
    for _ in range(2):
        await node.finish(await node.expect(m.Assign))
    await node.finish(await node.expect(m.Assign))  # the merge
    assert (await job(farm, j["id"]))["status"] == "completed"
    resp = await farm.post(f"/api/jobs/{j['id']}/requeue", json={"which": "all"})
    assert resp.status == 200, await resp.text()
    again = [await node.expect(m.Assign) for _ in range(2)]
    assert [a.kind for a in again] == [m.RENDER, m.RENDER]  # tiles first, not the merge
    for a in again:
        await node.finish(a)
    merge = await node.expect(m.Assign)
    assert merge.kind == m.MERGE
    await node.finish(merge)
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_a_failed_tile_fails_the_job_and_requeue_failed_runs_it_and_its_merge(
        tmp_path: Path) -> None:
    cfg = ServerConfig(data_dir=tmp_path / "d", prefetch=3, max_attempts=1)
    async with TestClient(TestServer(make_app(cfg))) as client:
        node = FakeNode(str(client.make_url("")), slots=slots(2))
        await node.connect()
        try:
            j = await submit(client, tiles=2)
            first, second = await node.expect(m.Assign), await node.expect(m.Assign)
            await node.finish(first)
            await node.send(m.TaskFailed(task_id=second.task_id, error="out of memory",
                                         retryable=False))
            await node.expect(m.Ack)
            failed = await job(client, j["id"])
            assert failed["status"] == "failed" and "tile 1 of frame 1" in failed["error"]
            await client.post(f"/api/jobs/{j['id']}/requeue", json={"which": "failed"})
            again = await node.expect(m.Assign)
            assert again.task_id == second.task_id  # the done tile stays done
            await node.finish(again)
            merge = await node.expect(m.Assign)
            assert merge.kind == m.MERGE and len(merge.inputs) == 2
            await node.finish(merge)
            assert (await job(client, j["id"]))["status"] == "completed"
        finally:
            await node.close()


async def test_a_restart_keeps_the_graph_the_merge_comes_after_the_tiles_done_before(
        tmp_path: Path) -> None:
    cfg = ServerConfig(data_dir=tmp_path / "d", grace_period=0.3, prefetch=3)
    async with TestClient(TestServer(make_app(cfg))) as client:
        node = FakeNode(str(client.make_url("")))
        await node.connect()
        j = await submit(client, frames="1-2", tiles=2, video=True)
        for _ in range(2):  # both tiles of frame 1
            await node.finish(await node.expect(m.Assign))
        await node.close()
        await asyncio.sleep(0.1)
    async with TestClient(TestServer(make_app(cfg))) as client:
        node = FakeNode(str(client.make_url("")), ffmpeg="5.1.6")
        await node.connect()
        try:
            seen = []
            for _ in range(4):  # frame 1's merge, frame 2's tiles, frame 2's merge
                a = await node.expect(m.Assign)
                seen.append((a.kind, a.frames, a.tile.index if a.tile else None))
                await node.finish(a, info=VIDEO_INFO)
            assert seen[0][:2] == (m.MERGE, [1]) or (m.MERGE, [1], None) in seen
            assert seen.index((m.RENDER, [2], 0)) < seen.index((m.MERGE, [2], None))
            encode = await node.expect(m.Assign)
            assert encode.kind == m.ENCODE and len(encode.inputs) == 2
            await node.finish(encode)
            done = await job(client, j["id"])
            assert done["status"] == "completed" and done["tiles_done"] == 4
        finally:
            await node.close()


async def test_the_tiles_of_a_frame_go_to_one_blender_while_it_is_online(farm) -> None:
    old = farm.node(name="old", slots=slots(2))
    new = farm.node(name="new", blender="4.5.0", slots=slots(2))
    await old.connect()
    await new.connect()
    await submit(farm, frames="1-2", tiles=2)
    # each frame stays with the Blender its first tile went to
    got = {n.name: sorted((a.frames[0], a.tile.index) for a in
                          [await n.expect(m.Assign), await n.expect(m.Assign)])
           for n in (old, new)}
    assert got == {"old": [(1, 0), (1, 1)], "new": [(2, 0), (2, 1)]}


async def test_a_frame_whose_tiles_came_from_two_blenders_renders_them_again_as_one(
        farm) -> None:
    old = farm.node(name="old", slots=slots(2))
    await old.connect()
    j = await submit(farm, tiles=2)
    first, _ = await old.expect(m.Assign), await old.expect(m.Assign)
    await old.finish(first)
    await old.close()  # gone for good: its other tile goes back to the queue
    new = farm.node(name="new", blender="4.5.0")
    await new.connect()
    second = await new.expect(m.Assign)  # no node of the frame's Blender is left
    assert second.tile.index == 1
    await new.finish(second)
    # the tile from the other Blender renders again here, then the merge
    again = await new.expect(m.Assign)
    assert again.task_id == first.task_id
    await new.finish(again)
    merge = await new.expect(m.Assign)
    assert merge.kind == m.MERGE
    await new.finish(merge)
    tasks = (await (await farm.get(f"/api/jobs/{j['id']}/tasks")).json())["tasks"]
    assert [t["rendered_with"] for t in tasks[:2]] == ["4.5.0 CPU", "4.5.0 CPU"]
    assert (await job(farm, j["id"]))["status"] == "completed"


async def test_cancel_stops_a_graph_half_done_and_nothing_more_is_assigned(farm) -> None:
    node = farm.node(slots=slots(4))
    await node.connect()
    j = await submit(farm, frames="1-2", tiles=2)
    held = [await node.expect(m.Assign) for _ in range(4)]  # its four tiles, a slot each
    assert all(a.kind == m.RENDER and a.tile is not None for a in held)
    await farm.post(f"/api/jobs/{j['id']}/cancel")
    for _ in held:
        await node.expect(m.Cancel)
    await node.finish(held[0])  # a late result changes nothing
    await nothing_more(node)
    canceled = await job(farm, j["id"])
    assert canceled["status"] == "canceled" and canceled["tasks_queued"] == 0


async def test_a_tile_report_must_be_its_tile(farm) -> None:
    node = farm.node()
    await node.connect()
    await submit(farm, tiles=2)
    a = await node.expect(m.Assign)
    sha = await node.upload(b"not the tile")
    await node.send(m.TaskDone(task_id=a.task_id, outputs=[
        m.OutputRef(frame=1, sha256=sha, size=12, name="shot_0001.png")]))
    err = await node.expect(m.Error)
    assert err.code == "bad_output" and tile_name("shot", 1, a.tile.index) in err.message


async def _tile_with_preview(node: FakeNode, a: m.Assign, preview: bytes,
                             info: dict, exr: bool = True) -> None:
    files = [(tile_name("shot", 1, a.tile.index), b"exr of " + a.task_id.encode())] \
        if exr else []
    await node.report(a, [*files, (tile_preview_name("shot", 1, a.tile.index), preview)], info)


async def test_a_tiles_preview_is_served_where_it_lies_and_never_merged(farm) -> None:
    node = farm.node(slots=slots(2))
    await node.connect()
    j = await submit(farm, tiles=2, resolution=[64, 48])
    first, second = await node.expect(m.Assign), await node.expect(m.Assign)
    picture = _png((200, 10, 10))
    await _tile_with_preview(node, first, picture,
                             {"tile": {"rect": [0, 0, 32, 48], "frame": [64, 48]}})
    await node.expect(m.Ack)
    # a tile that sends only its preview has not made its tile
    await _tile_with_preview(node, second, picture, {}, exr=False)
    await node.expect(m.Ack)
    again = await node.expect(m.Assign)
    assert again.task_id == second.task_id
    tasks = (await (await farm.get(f"/api/jobs/{j['id']}/tasks")).json())["tasks"]
    assert "no file for tile 1 of frame 1" in tasks[1]["error"]
    # a place that does not fit the frame is not kept: that tile shows no preview
    await _tile_with_preview(node, again, _png((0, 0, 200)),
                             {"tile": {"rect": [32, 0, 99, 48], "frame": [64, 48]}})
    await node.expect(m.Ack)
    merge = await node.expect(m.Assign)
    assert [i.name for i in merge.inputs] == [tile_name("shot", 1, 0), tile_name("shot", 1, 1)]
    tasks = (await (await farm.get(f"/api/jobs/{j['id']}/tasks")).json())["tasks"]
    by_id = {t["id"]: t for t in tasks}
    assert by_id[first.task_id]["preview"] == {
        "v": hashlib.sha256(picture).hexdigest()[:12], "rect": [0, 0, 32, 48],
        "frame_size": [64, 48]}
    assert by_id[second.task_id]["preview"] is None
    resp = await farm.get(f"/api/tasks/{first.task_id}/preview")
    assert resp.status == 200 and resp.content_type == "image/png"
    assert await resp.read() == picture
    assert (await farm.get(f"/api/tasks/{merge.task_id}/preview")).status == 404
    await node.finish(merge)
    assert await outputs(farm, j["id"]) == ["shot_0001.png"]  # no preview among them
    nodes = (await (await farm.get("/api/nodes")).json())["nodes"]
    assert [(n["frames_rendered"], n["tiles_rendered"]) for n in nodes] == [(0, 2)]


def _png(color: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (63, 47), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs FFmpeg on the server")
async def test_with_no_node_that_has_ffmpeg_the_server_encodes_the_video_itself(
        farm, tmp_path: Path) -> None:
    node = farm.node()  # no FFmpeg
    await node.connect()
    j = await submit(farm, frames="1-3", video=True)
    for n in range(3):
        a = await node.expect(m.Assign)
        data = _png((80 * n, 40, 200 - 60 * n))
        sha = await node.upload(data)
        name = f"shot_{a.frames[0]:04d}.png"
        await node.send(m.TaskDone(task_id=a.task_id, info=VIDEO_INFO, outputs=[
            m.OutputRef(frame=a.frames[0], sha256=sha, size=len(data), name=name)]))
        await node.expect(m.Ack)
    for _ in range(300):
        done = await job(farm, j["id"])
        if done["status"] != "active":
            break
        await asyncio.sleep(0.05)
    assert done["status"] == "completed", done.get("error")
    assert done["video_output"] == "shot.0001-0003.mp4"
    await nothing_more(node)  # the node was never asked to encode
    resp = await farm.get(f"/api/jobs/{j['id']}/outputs/shot.0001-0003.mp4")
    assert resp.status == 200
    video = tmp_path / "v.mp4"
    video.write_bytes(await resp.read())
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
                            "-show_entries", "stream=codec_name,width,height,pix_fmt,"
                            "nb_read_frames,r_frame_rate", "-of", "json", str(video)],
                           capture_output=True, text=True, check=True)
    stream = json.loads(probe.stdout)["streams"][0]
    assert (stream["codec_name"], stream["width"], stream["height"], stream["pix_fmt"],
            stream["nb_read_frames"], stream["r_frame_rate"]) == \
        ("h264", 64, 48, "yuv420p", "3", "25/1")


async def _frames_done(node: FakeNode, count: int) -> None:
    """Render ``count`` frames as real (tiny) PNGs, which an FFmpeg can encode."""
    for n in range(count):
        a = await node.expect(m.Assign)
        assert a.kind == m.RENDER
        data = _png((80 * n, 40, 200 - 60 * n))
        sha = await node.upload(data)
        await node.send(m.TaskDone(task_id=a.task_id, info=VIDEO_INFO, outputs=[
            m.OutputRef(frame=a.frames[0], sha256=sha, size=len(data),
                        name=f"shot_{a.frames[0]:04d}.png")]))
        await node.expect(m.Ack)


async def _ended(client, job_id: str) -> dict:
    for _ in range(300):
        done = await job(client, job_id)
        if done["status"] not in ("active", "queued"):
            return done
        await asyncio.sleep(0.05)
    return done


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs FFmpeg on the server")
async def test_an_encode_whose_node_is_gone_for_good_is_encoded_by_the_server(
        tmp_path: Path) -> None:
    cfg = ServerConfig(data_dir=tmp_path / "d", grace_period=0.3)
    async with TestClient(TestServer(make_app(cfg))) as client:
        node = FakeNode(str(client.make_url("")), ffmpeg="5.1.6")
        await node.connect()
        j = await submit(client, frames="1-2", video=True)
        await _frames_done(node, 2)
        assert (await node.expect(m.Assign)).kind == m.ENCODE
        await node.close()  # and never comes back: no node is left that has FFmpeg
        done = await _ended(client, j["id"])
        assert done["status"] == "completed", done.get("error")
        assert done["video_output"] == "shot.0001-0002.mp4"


async def test_after_a_restart_a_ready_encode_waits_for_its_ffmpeg_node_to_come_back(
        tmp_path: Path) -> None:
    cfg = ServerConfig(data_dir=tmp_path / "d", grace_period=2.0)
    async with TestClient(TestServer(make_app(cfg))) as client:
        encoder = FakeNode(str(client.make_url("")), name="encoder", ffmpeg="5.1.6")
        await encoder.connect()
        await encoder.close()  # known to the farm, away for now
        plain = FakeNode(str(client.make_url("")), name="plain")
        await plain.connect()
        j = await submit(client, frames="1-2", video=True)
        await _frames_done(plain, 2)
        await plain.close()
        await asyncio.sleep(0.1)
        # the encode is ready, and the server has not taken it: its node may come back
        assert (await job(client, j["id"]))["encode"] == "queued"
    async with TestClient(TestServer(make_app(cfg))) as client:
        encoder = FakeNode(str(client.make_url("")), name="encoder", ffmpeg="5.1.6",
                           uid=encoder.uid)
        await encoder.connect()
        try:
            encode = await encoder.expect(m.Assign)
            assert encode.kind == m.ENCODE and len(encode.inputs) == 2
            await encoder.finish(encode)
            assert (await job(client, j["id"]))["status"] == "completed"
        finally:
            await encoder.close()


async def test_a_video_of_exr_frames_is_refused_at_submit_with_what_to_do(farm) -> None:
    resp = await farm.put(f"/api/blobs/{SHA}", data=BLEND)
    assert resp.status in (200, 201)
    resp = await farm.post("/api/jobs", json={
        "blend": "shot.blend", "manifest": {"shot.blend": SHA}, "frames": "1-2",
        "video": True, "overrides": {"format": "OPEN_EXR"}})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["field"] == "video"
    assert "--format PNG" in body["error"]["message"]
    assert (await (await farm.get("/api/jobs")).json())["jobs"] == []  # nothing half-made


async def test_scene_facts_a_node_makes_up_are_refused_and_the_video_keeps_24_fps(
        farm) -> None:
    node = farm.node(ffmpeg="5.1.6")
    await node.connect()
    j = await submit(farm, frames="1", video=True)
    render = await node.expect(m.Assign)
    await node.finish(render, info={"video": {"fps": -3, "fps_base": "nan", "width": 1e300}})
    encode = await node.expect(m.Assign)
    assert encode.kind == m.ENCODE
    assert (encode.video["fps_num"], encode.video["fps_den"]) == (24, 1)
    assert (await job(farm, j["id"]))["status"] == "active"
