"""Hostile and malformed input: each gets its documented error, the server stays up,
and the job that was there before is untouched."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blenderfarm.protocol import messages as m
from blenderfarm.protocol.jobspec import SpecError, validate_spec
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.keys import FARM
from fakenode import FakeNode

BLEND = b"BLENDER pretend file for hostile-input tests"
SHA = hashlib.sha256(BLEND).hexdigest()
GOOD = {"blend": "s.blend", "manifest": {"s.blend": SHA}, "frames": "1-3"}


def spec(**change) -> dict:
    return {**GOOD, **change}


# (body, HTTP status, error code, field) for POST /api/jobs
JOB_SPECS = [
    ("{not json", 400, "bad_json", None),
    ([1, 2, 3], 400, "invalid_spec", ""),
    ({}, 400, "invalid_spec", "manifest"),
    (spec(blend=None), 400, "invalid_spec", "blend"),
    (spec(blend="s.txt", manifest={"s.txt": SHA}), 400, "invalid_spec", "blend"),
    (spec(blend="other.blend"), 400, "invalid_spec", "blend"),
    (spec(manifest={"../../etc/passwd": SHA, "s.blend": SHA}), 400, "invalid_spec", "manifest['../../etc/passwd']"),
    (spec(manifest={"/etc/passwd": SHA, "s.blend": SHA}), 400, "invalid_spec", "manifest['/etc/passwd']"),
    (spec(manifest={"C:/win.ini": SHA, "s.blend": SHA}), 400, "invalid_spec", "manifest['C:/win.ini']"),
    (spec(manifest={"a\x00b": SHA, "s.blend": SHA}), 400, "invalid_spec", "manifest['a\\x00b']"),
    (spec(manifest={"CON.png": SHA, "s.blend": SHA}), 400, "invalid_spec", "manifest['CON.png']"),
    (spec(manifest={"x" * 2000: SHA, "s.blend": SHA}), 400, "invalid_spec", None),
    (spec(manifest={"s.blend": SHA.upper()}), 400, "invalid_spec", "manifest['s.blend']"),
    (spec(manifest={"s.blend": "abc"}), 400, "invalid_spec", "manifest['s.blend']"),
    (spec(manifest={"s.blend": 5}), 400, "invalid_spec", "manifest['s.blend']"),
    (spec(manifest=[SHA]), 400, "invalid_spec", "manifest"),
    (spec(manifest={"s.blend": "f" * 64}), 400, "missing_blobs", "manifest"),
    (spec(frames="banana"), 400, "invalid_spec", "frames"),
    (spec(frames="10-1"), 400, "invalid_spec", "frames"),
    (spec(frames="0-99999999"), 400, "invalid_spec", "frames"),
    (spec(frames="1-10x0"), 400, "invalid_spec", "frames"),
    (spec(frames=5), 400, "invalid_spec", "frames"),
    (spec(frames=""), 400, "invalid_spec", "frames"),
    (spec(chunk=0), 400, "invalid_spec", "chunk"),
    (spec(chunk="5"), 400, "invalid_spec", "chunk"),
    (spec(chunk=10**9), 400, "invalid_spec", "chunk"),
    (spec(priority=-1), 400, "invalid_spec", "priority"),
    (spec(priority=True), 400, "invalid_spec", "priority"),
    (spec(overrides="fast"), 400, "invalid_spec", "overrides"),
    (spec(overrides={"samples": 0}), 400, "invalid_spec", "overrides.samples"),
    (spec(overrides={"samples": 1.5}), 400, "invalid_spec", "overrides.samples"),
    (spec(overrides={"format": "GIF"}), 400, "invalid_spec", "overrides.format"),
    (spec(overrides={"engine": "POVRAY"}), 400, "invalid_spec", "overrides.engine"),
    (spec(overrides={"resolution_percent": 0}), 400, "invalid_spec", "overrides.resolution_percent"),
    (spec(overrides={"python": "import os"}), 400, "invalid_spec", "overrides.python"),
    (spec(name="x" * 500), 400, "invalid_spec", "name"),
    (spec(name="a\nb"), 400, "invalid_spec", "name"),
    (spec(scripts="yes"), 400, "invalid_spec", "scripts"),
    (spec(paused=1), 400, "invalid_spec", "paused"),
    (spec(evil=True), 400, "invalid_spec", "evil"),
]

# (method, path, body, status, code) for blobs and paths
REQUESTS = [
    ("PUT", "/api/blobs/nothex", b"x", 400, "bad_hash"),
    ("PUT", "/api/blobs/" + "A" * 64, b"x", 400, "bad_hash"),
    ("PUT", "/api/blobs/" + "a" * 63, b"x", 400, "bad_hash"),
    ("PUT", "/api/blobs/" + "a" * 64, b"not what the name says", 400, "hash_mismatch"),
    ("PUT", "/api/blobs/" + hashlib.sha256(b"y" * 5000).hexdigest(), b"y" * 5000, 413, "too_large"),
    ("GET", "/api/blobs/" + "b" * 64, None, 404, "not_found"),
    ("GET", "/api/blobs/..%2F..%2Ffarm.db", None, 400, "bad_hash"),
    ("POST", "/api/blobs/missing", b"[]", 400, "bad_request"),
    ("POST", "/api/blobs/missing", b'{"hashes": "abc"}', 400, "bad_request"),
    ("POST", "/api/blobs/missing", b'{"hashes": ["../x"]}', 400, "bad_hash"),
    ("POST", "/api/blobs/missing", json.dumps({"hashes": ["a" * 64] * 100_001}).encode(), 400, "bad_request"),
    ("POST", "/api/blobs/missing", b"\xff\xfe", 400, "bad_json"),
    ("GET", "/api/jobs/doesnotexist", None, 404, "not_found"),
    ("GET", "/api/jobs/JOB/outputs/..%2F..%2Ffarm.db", None, 404, "not_found"),
    ("GET", "/api/jobs/JOB/outputs/nothere.png", None, 404, "not_found"),
    ("POST", "/api/jobs/JOB/priority", b'{"priority": "high"}', 400, "bad_request"),
    ("POST", "/api/jobs/JOB/requeue", b'{"which": "everything"}', 400, "bad_request"),
    ("GET", "/api/tasks/nope/log", None, 404, "not_found"),
]


@pytest.fixture
async def server(tmp_path: Path):
    cfg = ServerConfig(data_dir=tmp_path / "d", max_blob_size=4096)
    client = TestClient(TestServer(make_app(cfg), host="127.0.0.1"))
    await client.start_server()
    assert (await client.put(f"/api/blobs/{SHA}", data=BLEND)).status == 201
    resp = await client.post("/api/jobs", json=spec(name="survivor", frames="1-7"))
    client.job = (await resp.json())["job"]  # type: ignore[attr-defined]
    yield client
    after = await (await client.get(f"/api/jobs/{client.job['id']}")).json()  # type: ignore[attr-defined]
    assert after["job"]["frames_total"] == 7 and after["job"]["name"] == "survivor"
    assert (await client.get("/api/info")).status == 200
    await client.close()


@pytest.mark.parametrize("body, status, code, field", JOB_SPECS)
async def test_hostile_job_specs(server, body, status, code, field) -> None:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    resp = await server.post("/api/jobs", data=data)
    err = (await resp.json())["error"]
    assert (resp.status, err["code"]) == (status, code), err
    if field is not None:
        assert err["field"] == field


@pytest.mark.parametrize("method, path, body, status, code", REQUESTS)
async def test_hostile_requests(server, method, path, body, status, code) -> None:
    resp = await server.request(method, path.replace("JOB", server.job["id"]), data=body)
    err = (await resp.json())["error"]
    assert (resp.status, err["code"]) == (status, code), err
    tmp = server.server.app[FARM].blobs.tmp
    assert not list(tmp.iterdir()), "a partial upload was left behind"


def _frames(job_id: str) -> list:
    task = f"{job_id}-00000"
    out = {"frame": 1, "sha256": SHA, "size": 1, "name": "ok.png"}
    return [
        b"\x00\x01garbage", b"", msgpack.packb([1, 2, 3]), msgpack.packb({"no": "type"}),
        msgpack.packb({"t": "launch_missiles"}), msgpack.packb({"t": "progress"}),
        msgpack.packb({"t": "progress", "task_id": ["x"]}),
        msgpack.packb({"t": "task_done", "task_id": task, "outputs": "all"}),
        m.encode(m.Welcome(node_id="me")),  # a server message sent by a node
        m.encode(m.TaskDone(task_id=task, outputs=[{**out, "name": "../../farm.db"}])),
        m.encode(m.TaskDone(task_id=task, outputs=[{**out, "frame": 99}])),
        m.encode(m.TaskDone(task_id=task, outputs=[{**out, "sha256": "c" * 64}])),
        m.encode(m.FrameDone(task_id=task, frame=1, sha256=SHA, size=1, name="a/b.png")),
        m.encode(m.TaskFailed(task_id="not-a-task", error="x")),
        m.encode(m.Progress(task_id="not-a-task", fraction=5.0)),
        msgpack.packb({"t": "log", "task_id": task, "text": b"\xff bytes"}),
    ]


async def test_hostile_node_frames(server) -> None:
    node = FakeNode(str(server.make_url("")))
    await node.connect()
    await node.expect(m.Assign)
    sent = _frames(server.job["id"])
    errors = 0
    for frame in sent:
        await node.send_raw(frame)
    for _ in sent:
        try:
            await node.expect(m.Error, timeout=1)
            errors += 1
        except TimeoutError:
            break
    assert errors >= 13, f"only {errors} of {len(sent)} hostile frames were answered with error"
    await node.send_raw("a text frame")
    assert (await node.expect(m.Error)).code == "bad_message"
    # three bogus reports about its task made the node fail it: the farm stopped trusting
    # it with that job, but the node is still served, and its real work is accepted
    node._stash.clear()
    job2 = (await (await server.post("/api/jobs", json=spec(frames="8"))).json())["job"]
    assign2 = await node.expect(m.Assign)
    assert assign2.job_id == job2["id"]
    await node.finish(assign2)
    info = await (await server.get(f"/api/jobs/{job2['id']}")).json()
    assert info["job"]["status"] == "completed" and info["job"]["frames_done"] == 1
    await node.close()


async def test_oversized_frame_closes_only_that_socket(server) -> None:
    node = FakeNode(str(server.make_url("")))
    await node.connect()
    with contextlib.suppress(ConnectionError):  # the server drops the sender
        await node.send_raw(b"\x00" * (m.MAX_MESSAGE + 10))
    other = FakeNode(str(server.make_url("")))
    assert isinstance(await other.connect(), m.Welcome)
    await node.close()
    await other.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.sampled_from(sorted(GOOD) + ["chunk", "priority", "overrides", "name",
                                                       "scripts", "paused", "x"]),
                       json_values, max_size=8))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_specs_raise_only_spec_error(data: dict) -> None:
    with contextlib.suppress(SpecError):
        validate_spec({**GOOD, **data})
