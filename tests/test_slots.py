"""Nodes with several slots and several Blenders: the server schedules slots, picks each
task's Blender (the oldest that fits), honours a job's device, keeps each task in its
slot across a reconnect and a restart, and shows it all (node view, bf nodes, bf show).
Simulated nodes (tests/fakenode.py) speak the real protocol to a real server."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from blenderfarm.protocol import messages as m
from blenderfarm.protocol.jobspec import JobSpec, Overrides
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.constraints import can_run, lacks, match, waiting_reason
from blenderfarm.server.models import Job, NodeRecord
from fakenode import FakeNode
from test_server import drain, farm, submit  # noqa: F401 (farm: a fixture)
from test_server import job as job_json

GPU0 = m.Device(type="CUDA", id="CUDA_0", name="RTX", gpu="pci-0")
OPTIX0 = m.Device(type="OPTIX", id="OPTIX_0", name="RTX", gpu="pci-0")


def blender(version: str, **kw) -> m.BlenderCaps:
    return m.BlenderCaps(version=version, **kw)


def cpu(slot_id: str) -> m.SlotCaps:
    return m.SlotCaps(id=slot_id, device="CPU")


def gpu(slot_id: str, *gpus: str) -> m.SlotCaps:
    return m.SlotCaps(id=slot_id, device="GPU", gpus=list(gpus))


async def node_view(client, name: str) -> dict:
    nodes = (await (await client.get("/api/nodes")).json())["nodes"]
    return next(n for n in nodes if n["name"] == name)


async def until(check, what: str, timeout: float = 3.0):
    """Poll ``check`` (an async function) until it returns something true."""
    for _ in range(int(timeout / 0.02)):
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --- dispatch per slot -------------------------------------------------------------------------


async def test_a_node_with_two_slots_renders_two_tasks_at_once_and_prefetches_for_each(
        farm) -> None:  # noqa: F811
    node = farm.node(name="two", slots=[cpu("a"), cpu("b")])
    await node.connect()
    await submit(farm, frames="1-6", name="shot")
    got = await drain(node)
    # one rendering and one prefetched per slot; the first two went one to each slot
    assert [a.slot for a in got[:2]] == ["a", "b"] and len(got) == 4
    assert sorted(a.slot for a in got) == ["a", "a", "b", "b"]
    first = {a.slot: a for a in reversed(got)}
    for a in first.values():
        await node.send(m.Progress(task_id=a.task_id, frame=a.frames[0], fraction=0.5))

    async def both_busy():
        view = await node_view(farm, "two")
        return view if all((s["busy"] or {}).get("status") == "running"
                           for s in view["slots"]) else None

    view = await until(both_busy, "both slots rendering")
    assert view["state"] == "rendering"
    assert {s["id"]: s["busy"]["task_id"] for s in view["slots"]} == \
        {k: a.task_id for k, a in first.items()}
    assert view["current"]["task_id"] == first["a"].task_id  # the first busy slot's
    assert {s["busy"]["frame"] for s in view["slots"]} == {1, 2}
    await node.finish(first["b"])
    after = await node.expect(m.Assign)
    assert after.slot == "b"  # the slot that freed takes the next task


async def test_an_old_style_hello_is_one_cpu_slot_named_0(farm) -> None:  # noqa: F811
    node = farm.node(name="old")
    await node.connect()
    await submit(farm, frames="1-3")
    got = await drain(node)
    assert [(a.slot, a.blender) for a in got] == [("0", 0), ("0", 0)]
    view = await node_view(farm, "old")
    assert [(s["id"], s["device"], s["gpus"]) for s in view["slots"]] == [("0", "CPU", [])]
    assert [b["version"] for b in view["blenders"]] == ["3.4.1"] and view["blender"] == "3.4.1"


async def test_each_job_gets_the_oldest_blender_of_the_node_that_can_open_it(
        farm) -> None:  # noqa: F811
    node = farm.node(name="both", blenders=[blender("3.4.1"), blender("5.0.1", kind="module")])
    await node.connect()
    j50 = await submit(farm, frames="1", blender_saved="5.0")
    j34 = await submit(farm, frames="1", blender_saved="3.4")
    rendering, prefetched = await drain(node)
    assert {a.job_id: a.blender for a in (rendering, prefetched)} == {j50["id"]: 1, j34["id"]: 0}
    # a pin replaces the rule: "4.5" is 4.5.x only, which neither Blender is
    pinned = await submit(farm, frames="1", blender="4.5")
    assert await drain(node) == []
    assert (await job_json(farm, pinned["id"]))["waiting"] == \
        "needs Blender 4.5; online nodes have 3.4.1, 5.0.1"
    newer = await submit(farm, frames="1", blender=">=4.5", priority=90)
    cancel = await node.expect(m.Cancel)  # it takes the prefetched place
    assert cancel.task_id == prefetched.task_id
    assert [(a.job_id, a.blender) for a in await drain(node)] == [(newer["id"], 1)]


# --- devices ----------------------------------------------------------------------------------


async def test_a_gpu_job_waits_on_a_cpu_farm_then_goes_only_to_a_gpu_slot(farm) -> None:  # noqa: F811
    cpu_node = farm.node(name="cpu-only")
    await cpu_node.connect()
    j = await submit(farm, frames="1-3", overrides={"device": "GPU"})
    assert await drain(cpu_node) == []
    info = await job_json(farm, j["id"])
    assert info["waiting"] == "needs a GPU: no online node has a GPU slot"
    assert info["nodes"] == [{"id": cpu_node.uid, "name": "cpu-only", "can": False,
                              "why": "has no GPU slot"}]
    mixed = farm.node(name="mixed", blenders=[blender("4.5.3", devices=[GPU0, OPTIX0])],
                      slots=[cpu("cpu"), gpu("gpu0", "pci-0")])
    await mixed.connect()
    got = await drain(mixed)
    assert [a.slot for a in got] == ["gpu0", "gpu0"]  # one rendering, one prefetched
    assert all(a.overrides["device"] == "GPU" for a in got)
    assert await drain(cpu_node) == []
    info = await job_json(farm, j["id"])
    assert info["waiting"] is None
    assert {n["name"]: n["can"] for n in info["nodes"]} == {"cpu-only": False, "mixed": True}


async def test_a_cpu_job_goes_only_to_cpu_slots_and_a_scene_device_job_to_any(farm) -> None:  # noqa: F811
    node = farm.node(name="mixed", blenders=[blender("4.5.3", devices=[GPU0])],
                     slots=[gpu("gpu0", "pci-0"), cpu("cpu")])
    await node.connect()
    j = await submit(farm, frames="1-3", overrides={"device": "CPU"})
    assert [a.slot for a in await drain(node)] == ["cpu", "cpu"]
    anything = await submit(farm, frames="1", name="scene's own device")
    assert [(a.job_id, a.slot) for a in await drain(node)] == [(anything["id"], "gpu0")]
    only_gpu = farm.node(name="gpu-only", blenders=[blender("4.5.3", devices=[GPU0])],
                         slots=[gpu("g", "pci-0")])
    await only_gpu.connect()
    assert await drain(only_gpu) == []  # the CPU job's last task waits for a CPU slot
    nodes = {n["name"]: n for n in (await job_json(farm, j["id"]))["nodes"]}
    assert nodes["gpu-only"] == {"id": only_gpu.uid, "name": "gpu-only", "can": False,
                                 "why": "has no CPU slot"}


def _job(device: str | None = None, saved: str | None = None, **kw) -> Job:
    spec = JobSpec(name="j", blend="j.blend", manifest={"j.blend": "a" * 64}, frames="1",
                   blender_saved=saved, overrides=Overrides(device=device))
    job = Job(id="j", seq=1, spec=spec, output_name="j", **kw)
    job.counts["queued"] = 1
    return job


def _node(uid: str, blenders: list[dict], slots: list[dict] | None = None) -> NodeRecord:
    return NodeRecord(uid=uid, name=uid, online=True,
                      info={"blenders": blenders, "slots": slots or []})


def test_the_match_is_the_oldest_blender_that_has_what_the_job_needs() -> None:
    dev = {"type": "CUDA", "id": "CUDA_0", "gpu": "pci-0"}
    # listed newest first: the index says which, the choice is by age
    rec = _node("n", [{"version": "5.0.1", "opengl": True, "oidn": True, "devices": [dev]},
                      {"version": "4.5.3", "opengl": True},
                      {"version": "3.4.1"}],
                [{"id": "c", "device": "CPU"}, {"id": "g", "device": "GPU", "gpus": ["pci-0"]}])
    c, g = rec.slots
    assert match(_job(), rec, c) == 2
    assert match(_job(saved="4.0"), rec, c) == 1
    assert match(_job(needs_opengl=True), rec, c) == 1
    assert match(_job(needs_oidn=True), rec, c) == 0
    assert match(_job("GPU"), rec, g) == 0 and match(_job("GPU"), rec, c) is None
    assert match(_job("CPU"), rec, g) is None and match(_job("CPU"), rec, c) == 2
    assert match(_job(), rec, c) == 2  # the scene's own device: any slot...
    assert match(_job(), rec, g) == 0  # ...but a GPU slot only with a Blender that sees it
    assert lacks(_job("GPU", needs_oidn=True), rec) is None
    cpu_only = _node("c", [{"version": "5.0.1", "oidn": True}])
    assert lacks(_job("GPU"), cpu_only) == "device"
    blind = _node("b", [{"version": "3.4.1"}, {"version": "5.0.1", "devices": [dev]}],
                  [{"id": "g", "device": "GPU", "gpus": ["pci-0"]}])
    assert match(_job("GPU"), blind, blind.slots[0]) == 1  # 3.4 sees no GPU
    assert lacks(_job("GPU", saved="3.4", needs_oidn=True), blind) == "oidn"


def test_why_a_job_waits_lists_every_blender_and_the_device_it_lacks() -> None:
    a = _node("a", [{"version": "3.4.1"}, {"version": "4.5.3"}])
    b = _node("b", [{"version": "4.5.3", "kind": "module"}])
    assert waiting_reason(_job(saved="5.0"), [a, b]) == \
        "needs Blender >= 5.0; online nodes have 3.4.1, 4.5.3"
    assert waiting_reason(_job("GPU"), [a]) == "needs a GPU: no online node has a GPU slot"
    gpus_only = _node("g", [{"version": "4.5.3", "devices": [{"type": "CUDA", "id": "0",
                                                              "gpu": "x"}]}],
                      [{"id": "g", "device": "GPU", "gpus": ["x"]}])
    assert waiting_reason(_job("CPU"), [gpus_only]).startswith(
        "needs the CPU: no online node has a CPU slot")
    assert waiting_reason(_job("GPU"), [a, gpus_only]) is None
    shown = can_run(_job(saved="4.5"), [b, a])
    assert shown == [{"id": "a", "name": "a", "can": True, "why": None},
                     {"id": "b", "name": "b", "can": True, "why": None}]
    assert can_run(_job(saved="5.0"), [a])[0]["why"] == \
        "has Blender 3.4.1, 4.5.3; needs Blender >= 5.0"


_blenders = st.lists(st.fixed_dictionaries({
    "version": st.sampled_from(["3.4.1", "4.5.3", "5.0.1", ""]), "oidn": st.booleans(),
    "opengl": st.booleans(),
    "devices": st.lists(st.fixed_dictionaries({"type": st.just("CUDA"), "id": st.just("c"),
                                               "gpu": st.sampled_from(["g0", "g1"])}),
                        max_size=2)}), min_size=1, max_size=3)
_slots = st.lists(st.one_of(st.fixed_dictionaries({"device": st.just("CPU")}),
                            st.fixed_dictionaries({"device": st.just("GPU"), "gpus": st.lists(
                                st.sampled_from(["g0", "g1"]), min_size=1, max_size=2)})),
                  min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(_blenders, _slots, st.sampled_from([None, "CPU", "GPU"]),
       st.sampled_from([None, "3.4", "4.5", "5.0"]), st.booleans(), st.booleans())
def test_a_node_lacks_nothing_exactly_when_one_of_its_slots_matches(
        blenders, slot_list, device, saved, oidn, opengl) -> None:
    """The node-level filter, the per-slot choice and the job's view cannot drift apart."""
    rec = _node("n", blenders, [{"id": f"s{i}", **s} for i, s in enumerate(slot_list)])
    job = _job(device, saved, needs_oidn=oidn, needs_opengl=opengl)
    picks = [match(job, rec, slot) for slot in rec.slots]
    assert (lacks(job, rec) is None) == any(p is not None for p in picks)
    assert can_run(job, [rec])[0]["can"] == (lacks(job, rec) is None)
    for slot, pick in zip(rec.slots, picks, strict=True):
        if pick is None:
            continue
        chosen = rec.blenders[pick]
        assert device is None or slot.device == device
        assert (chosen.oidn or not oidn) and (chosen.opengl or not opengl)
        # the oldest that fits: no older Blender of the node would have done
        alone = [{"id": slot.id, "device": slot.device, "gpus": list(slot.gpus)}]
        assert all(match(job, _node("n", [blenders[i]], alone), slot) is None
                   for i in rec.blender_order[:rec.blender_order.index(pick)])


# --- a malformed hello ------------------------------------------------------------------------


@pytest.mark.parametrize("slots, blenders, says", [
    ([cpu("a"), cpu("a")], None, "slot 'a' is listed twice"),
    ([m.SlotCaps(id="t", device="TPU")], None, "device 'TPU'"),
    ([gpu("g")], None, "GPU slot 'g' names no GPU"),
    ([gpu("g", "pci-9")], [blender("4.5.3", devices=[GPU0])],
     "names GPU 'pci-9', which none of the node's Blenders lists"),
    ([m.SlotCaps(id="c", device="CPU", gpus=["pci-0"])], [blender("4.5.3", devices=[GPU0])],
     "CPU slot 'c' names GPUs"),
    ([cpu(f"s{i}") for i in range(65)], None, "slots"),
])
async def test_a_hello_with_malformed_slots_is_refused_saying_why(
        farm, slots, blenders, says) -> None:  # noqa: F811
    node = farm.node(name="bad", slots=slots, blenders=blenders)
    err = await node.connect()
    assert isinstance(err, m.Error) and err.code == "bad_hello" and err.fatal
    assert says in err.message, err.message
    nodes = (await (await farm.get("/api/nodes")).json())["nodes"]
    assert nodes == []  # nothing of it was kept


# --- reconnect and restart --------------------------------------------------------------------


async def test_a_reconnect_keeps_each_task_in_the_slot_its_hello_names(farm) -> None:  # noqa: F811
    node = farm.node(name="two", slots=[cpu("a"), cpu("b")])
    await node.connect()
    await submit(farm, frames="1-2")
    x, y = await drain(node)
    assert (x.slot, y.slot) == ("a", "b")
    await node.close()
    again = farm.node(name="two", uid=node.uid, slots=[cpu("a"), cpu("b")])
    # it says the tasks swapped slots (its own word wins)
    await again.connect(running=[x.task_id, y.task_id],
                        holding={x.task_id: "b", y.task_id: "a"})
    await submit(farm, frames="3-4", name="more")
    got = await drain(again)
    assert sorted(a.slot for a in got) == ["a", "b"]  # prefetch, one behind each
    assert await drain(again, m.Cancel) == []
    view = await node_view(farm, "two")
    assert {s["id"]: s["busy"]["task_id"] for s in view["slots"]} == \
        {"b": x.task_id, "a": y.task_id}


async def test_a_claim_on_a_slot_the_node_no_longer_has_goes_back_to_the_queue(
        farm) -> None:  # noqa: F811
    node = farm.node(name="shrunk", slots=[cpu("a"), cpu("b")])
    await node.connect()
    await submit(farm, frames="1-2")
    x, y = await drain(node)
    await node.close()
    again = farm.node(name="shrunk", uid=node.uid, slots=[cpu("a")])
    await again.connect(running=[x.task_id, y.task_id],
                        holding={x.task_id: "a", y.task_id: "b"})
    cancel = await again.expect(m.Cancel)
    assert cancel.task_id == y.task_id and "slot" in cancel.reason
    # requeued, it comes back as the prefetch of the one slot left
    assert [(a.task_id, a.slot) for a in await drain(again)] == [(y.task_id, "a")]


async def test_a_server_restart_keeps_each_task_in_its_slot(tmp_path) -> None:
    cfg = ServerConfig(data_dir=tmp_path / "d", grace_period=30)
    two = [cpu("a"), cpu("b")]
    async with TestClient(TestServer(make_app(cfg))) as client:
        node = FakeNode(str(client.make_url("")), name="two", slots=two)
        await node.connect()
        j = await submit(client, frames="1-2")
        x, y = await drain(node)
        await node.close()
    async with TestClient(TestServer(make_app(cfg))) as client:
        again = FakeNode(str(client.make_url("")), name="two", uid=node.uid, slots=two)
        try:
            await again.connect(running=[x.task_id, y.task_id],
                                holding={x.task_id: x.slot, y.task_id: y.slot})
            assert await drain(again, m.Cancel) == [] and await drain(again) == []
            view = await node_view(client, "two")
            assert {s["id"]: s["busy"]["task_id"] for s in view["slots"]} == \
                {x.slot: x.task_id, y.slot: y.task_id}
            await again.finish(y)
            await again.finish(x)
            assert (await job_json(client, j["id"]))["status"] == "completed"
        finally:
            await again.close()


# --- what people see ----------------------------------------------------------------------------


async def test_bf_nodes_and_bf_show_say_slots_blenders_devices_and_where_a_job_can_run(
        farm, capsys) -> None:  # noqa: F811
    from blenderfarm.client.cli import main

    box = farm.node(name="box", tags=["fast"],
                    blenders=[blender("3.4.1"), blender("5.0.1", kind="module",
                                                        devices=[GPU0, OPTIX0])],
                    slots=[cpu("cpu"), gpu("gpu0", "pci-0")])
    await box.connect()
    plain = farm.node(name="plain")
    await plain.connect()
    j = await submit(farm, frames="1-3", overrides={"device": "GPU"}, name="shot")
    assert len(await drain(box)) == 2
    url = str(farm.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["nodes", "--server", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["NAME", "STATE", "SLOTS", "BLENDERS", "DEVICES", "TAGS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert " 1/2 " in rows["box"] and "3.4.1, 5.0.1 (module)" in rows["box"]
    assert "CUDA, OPTIX" in rows["box"] and "fast" in rows["box"]
    assert " 0/1 " in rows["plain"] and "3.4.1" in rows["plain"]
    assert await asyncio.to_thread(main, ["show", j["id"], "--server", url]) == 0
    shown = capsys.readouterr().out
    can = next(line for line in shown.splitlines() if line.startswith("can run on:"))
    assert can.split(None, 3)[3] == "box; not plain (has no GPU slot)"
    assert await asyncio.to_thread(main, ["nodes", "--server", url, "--json"]) == 0
    listed = {n["name"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert [b["kind"] for b in listed["box"]["blenders"]] == ["executable", "module"]
    assert [s["id"] for s in listed["box"]["slots"] if s["busy"]] == ["gpu0"]


async def test_drain_and_an_urgent_job_take_back_what_each_slot_prefetched(farm) -> None:  # noqa: F811
    node = farm.node(name="two", slots=[cpu("a"), cpu("b")])
    await node.connect()
    await submit(farm, frames="1-4", priority=20)
    got = await drain(node)
    rendering = {a.task_id for a in got[:2]}  # the first of each slot
    urgent = await submit(farm, frames="1-2", priority=90, name="urgent")
    cancels = await drain(node, m.Cancel)
    assert {c.task_id for c in cancels} == {a.task_id for a in got[2:]}
    assert sorted((a.job_id, a.slot) for a in await drain(node)) == \
        [(urgent["id"], "a"), (urgent["id"], "b")]
    resp = await farm.post(f"/api/nodes/{node.uid}/drain", json={})
    assert resp.status == 200
    taken = {c.task_id for c in await drain(node, m.Cancel)}
    assert len(taken) == 2 and not taken & rendering  # each slot finishes its render
    view = await node_view(farm, "two")
    assert {s["busy"]["task_id"] for s in view["slots"]} == rendering


async def test_metrics_count_the_busy_and_idle_slots_of_online_nodes(farm) -> None:  # noqa: F811
    two = farm.node(name="two", slots=[cpu("a"), cpu("b")])
    await two.connect()
    await (farm.node(name="one")).connect()
    await submit(farm, frames="1")  # dispatched before the answer: one slot of three busy
    text = await (await farm.get("/metrics")).text()
    assert 'blenderfarm_slots{state="busy"} 1.0' in text
    assert 'blenderfarm_slots{state="idle"} 2.0' in text
