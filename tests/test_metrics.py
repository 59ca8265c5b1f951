"""``/metrics``: what a Prometheus scrape sees while a scripted node renders a job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from blenderfarm.protocol import messages as m
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.metrics import METRICS
from fakenode import FakeNode
from test_server import submit


@pytest.fixture
async def farm(tmp_path: Path):
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=tmp_path / "data")),
                                   host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


async def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_a_scrape_shows_jobs_tasks_nodes_and_frames(farm) -> None:
    node = FakeNode(str(farm.make_url("")), name="n1")
    events = await farm.ws_connect("/ws/events")
    try:
        await events.send_str(json.dumps({"token": None}))
        await events.receive_json(timeout=5)
        await node.connect()
        job = await submit(farm, frames="1-3", chunk=1)
        first = await node.expect(m.Assign)
        before = await scrape(farm)
        assert value(before, "blenderfarm_jobs", state="active") == 1
        assert value(before, "blenderfarm_jobs", state="completed") == 0
        assert value(before, "blenderfarm_tasks", state="assigned") == 2  # one + prefetch
        assert value(before, "blenderfarm_tasks", state="queued") == 1
        assert value(before, "blenderfarm_nodes", state="rendering") == 1
        assert value(before, "blenderfarm_open_websockets", kind="node") == 1
        assert value(before, "blenderfarm_open_websockets", kind="events") == 1
        await node.finish(first)
        for _ in range(2):
            await node.finish(await node.expect(m.Assign))
        after = await scrape(farm)
        assert value(after, "blenderfarm_jobs", state="completed") == 1
        assert value(after, "blenderfarm_tasks", state="done") == 3
        assert value(after, "blenderfarm_frames_rendered_total") == 3
        assert value(after, "blenderfarm_nodes", state="idle") == 1
        assert job["frames_total"] == 3
    finally:
        await node.close()
        await events.close()


async def test_what_the_farm_feeds_is_counted(farm) -> None:
    metrics = farm.server.app[METRICS]
    metrics.add_render_seconds(2.5)
    metrics.add_render_seconds(-1)  # a node's clock gone wrong: ignored
    metrics.add_uploaded_bytes(1000)
    for seconds in (0.0001, 0.002, 0.3):
        metrics.observe_dispatch(seconds)
    got = await scrape(farm)
    assert value(got, "blenderfarm_render_seconds_total") == 2.5
    assert value(got, "blenderfarm_uploaded_bytes_total") == 1000
    assert value(got, "blenderfarm_dispatch_latency_seconds_count") == 3
    assert value(got, "blenderfarm_dispatch_latency_seconds_bucket", le="0.001") == 1
    assert value(got, "blenderfarm_dispatch_latency_seconds_bucket", le="+Inf") == 3


async def test_every_app_has_its_own_registry(tmp_path: Path) -> None:
    """Tests (and one process running two farms) build many apps: no global state."""
    apps = [make_app(ServerConfig(data_dir=tmp_path / str(i))) for i in range(3)]
    apps[0][METRICS].add_uploaded_bytes(5)
    assert apps[1][METRICS].registry is not apps[0][METRICS].registry
    assert apps[0][METRICS].registry.get_sample_value("blenderfarm_uploaded_bytes_total") == 5
    assert apps[1][METRICS].registry.get_sample_value("blenderfarm_uploaded_bytes_total") == 0
