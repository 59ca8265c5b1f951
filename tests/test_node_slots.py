"""A node's slots, Blenders and devices: one task per slot at once, each in its own Blender.

The pure layout (``node/devices.py``) is tested directly; the rest with real bf-node
processes rendering with real Blender 3.4 against a scripted server speaking the real
protocol (``fakeserver.py``: the server on this branch sends every task to slot "0"),
and, where the server schedules slots, against a real bf-server too. Frames are
compared with Blender's own render of the same file, pixel for pixel. These machines
have no GPU: fake ones come through the probe's seam (``BLENDERFARM_FAKE_DEVICES``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType

from blenderfarm.node.devices import (
    SlotError,
    devices_of,
    gpu_key,
    slot_devices,
    slot_layout,
)
from blenderfarm.protocol import messages as m
from fakeserver import Conn, FakeServer, frame, until, welcome
from procs import NodeProc, blender_pids
from scenes import BLENDER, make_scene, needs_blender, read_rgba, render_frames, run_blender

RUNNER_DIR = Path(__file__).resolve().parents[1] / "blenderfarm" / "node" / "runner"
#: two fake cards: the first driven by CUDA and OptiX, the second by CUDA only
FAKE_DEVICES = [
    {"type": "CUDA", "id": "CUDA_Fake RTX_0000:01:00", "name": "Fake RTX"},
    {"type": "OPTIX", "id": "CUDA_Fake RTX_0000:01:00_OptiX", "name": "Fake RTX"},
    {"type": "CUDA", "id": "CUDA_Fake GTX_0000:02:00", "name": "Fake GTX"},
]


# --- the pure layout ----------------------------------------------------------------------

def test_one_cards_cuda_and_optix_entries_share_its_key() -> None:
    keys = [d.gpu for d in devices_of(FAKE_DEVICES)]
    assert keys == ["pci:0000:01:00", "pci:0000:01:00", "pci:0000:02:00"]
    assert gpu_key("HIP", "HIP_AMD Radeon PRO W7900_0000:03:00") == "pci:0000:03:00"
    assert gpu_key("METAL", "METAL_Apple M2 Max") == "Apple M2 Max"
    assert gpu_key("OPTIX", "CUDA_Card_OptiX") == gpu_key("CUDA", "CUDA_Card") == "Card"


def test_slot_layouts_per_gpu_all_gpus_and_cpu() -> None:
    cards = ["pci:0000:01:00", "pci:0000:02:00"]
    layout = [(s.id, s.device, s.gpus) for s in slot_layout(None, cards)]
    assert layout == [("gpu0", "GPU", cards[:1]), ("gpu1", "GPU", cards[1:])]
    assert [(s.id, s.gpus) for s in slot_layout("all-gpus", cards, cpu_slot=True)] == [
        ("gpus", cards), ("cpu", [])]
    assert [(s.id, s.device) for s in slot_layout(None, [], cpu_slots=3)] == [
        ("cpu", "CPU"), ("cpu1", "CPU"), ("cpu2", "CPU")]
    assert [s.id for s in slot_layout("cpu", cards)] == ["cpu"]  # GPUs left alone
    assert [s.id for s in slot_layout("per-gpu", cards, cpu_slot=True, cpu_slots=2)] == [
        "gpu0", "gpu1", "cpu", "cpu1"]


@pytest.mark.parametrize(("mode", "cpu_slots", "message"), [
    ("per-gpu", 1, "slots = per-gpu needs a GPU"),
    ("all-gpus", 1, "slots = all-gpus needs a GPU"),
    ("one-each", 1, "slots must be one of per-gpu, all-gpus, cpu, not 'one-each'"),
    ("cpu", 0, "cpu_slots must be a whole number from 1 to 64, not 0"),
    ("cpu", True, "cpu_slots must be a whole number"),
    ("cpu", 65, "cpu_slots must be a whole number from 1 to 64, not 65"),
])
def test_slot_settings_no_node_can_have_are_refused_clearly(mode: str, cpu_slots: Any,
                                                            message: str) -> None:
    with pytest.raises(SlotError, match=message):
        slot_layout(mode, [], cpu_slots=cpu_slots)


def test_a_gpu_slot_enables_its_cards_by_the_fastest_backend_that_drives_them_all() -> None:
    devices = devices_of(FAKE_DEVICES)
    gpu0, gpu1 = slot_layout("per-gpu", ["pci:0000:01:00", "pci:0000:02:00"])
    both = slot_layout("all-gpus", ["pci:0000:01:00", "pci:0000:02:00"])[0]
    assert slot_devices(gpu0, devices) == ("OPTIX", ["CUDA_Fake RTX_0000:01:00_OptiX"])
    assert slot_devices(gpu1, devices) == ("CUDA", ["CUDA_Fake GTX_0000:02:00"])
    assert slot_devices(both, devices) == (
        "CUDA", ["CUDA_Fake RTX_0000:01:00", "CUDA_Fake GTX_0000:02:00"])
    assert slot_devices(m.SlotCaps(id="cpu"), devices) == ("NONE", [])


# --- the runner's device setup, inside real Blender -----------------------------------------

_SETUP = """
import json, sys
import bpy
sys.path.insert(0, @RUNNER@)
import runner
prefs = bpy.context.preferences.addons["cycles"].preferences
scene = bpy.context.scene
def state():
    return {"type": prefs.compute_device_type, "device": scene.cycles.device,
            "use": sorted(d.id for d in prefs.devices if d.use)}
out = {"before": state()}
runner.set_devices(scene, {"type": "NONE", "ids": []}, "GPU")
out["cpu_slot"] = state()
runner.SETTINGS.restore()
out["restored"] = state()
for devices in ({"type": "CUDA", "ids": ["CUDA_Fake_0000:01:00"]},
                {"type": "BOGUS", "ids": ["X"]}):
    try:
        runner.set_devices(scene, devices, None)
        out.setdefault("errors", []).append(None)
    except runner.TaskError as exc:
        out.setdefault("errors", []).append([exc.reason, exc.message])
    runner.SETTINGS.restore()
out["after"] = state()
print("BFJSON:" + json.dumps(out), flush=True)
""".replace("@RUNNER@", repr(str(RUNNER_DIR)))


def _check_setup(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BFJSON:")), None)
    assert line is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[len("BFJSON:"):])
    assert out["cpu_slot"] == {"type": "NONE", "device": "GPU", "use": []}
    assert out["restored"] == out["before"] == out["after"]
    no_card, no_backend = out["errors"]
    assert no_card == ["no_device", "This node's Blender has no device CUDA_Fake_0000:01:00 "
                       "(its CUDA devices: none)."]
    assert no_backend[0] == "no_device" and "has no BOGUS devices" in no_backend[1]


@pytest.mark.blender
@pytest.mark.skipif(BLENDER is None, reason="blender is not on PATH")
def test_the_runner_enables_exactly_its_slots_devices_in_blender_34() -> None:
    assert BLENDER is not None
    _check_setup([BLENDER, "-b", "--factory-startup", "-noaudio", "--python-expr", _SETUP])


def test_the_runner_enables_exactly_its_slots_devices_in_bpy_45(bpy45_python: str) -> None:
    _check_setup([bpy45_python, "-c", _SETUP])


# --- real nodes --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def anim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A 12-frame scene and Blender's own render of it."""
    if BLENDER is None:
        pytest.skip("blender is not on PATH")
    root = tmp_path_factory.mktemp("anim")
    blend = make_scene("anim", root / "scene", frames=12, res=48, samples=2)
    return blend, render_frames(blend, list(range(1, 13)), root / "direct")


#: a Python driver that holds frames 2 and 8 (the second frame of the tasks 1-6 and 7-12)
#: until a file exists, at most 60 s: two tasks then overlap for certain, however busy
#: the machine, once the test has seen both start. It drives a custom property, so the
#: frames stay those of the plain scene.
GATE = """
import bpy, sys
scene = bpy.context.scene
scene["gate"] = 1.0
driver = scene.driver_add('["gate"]').driver
driver.type = "SCRIPTED"
driver.expression = (
    "next((1.0 for _ in range(1200) if __import__('os').path.exists(%r) "
    "or __import__('time').sleep(0.05)), 1.0) if frame in (2, 8) else 1.0" % sys.argv[-2])
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])
"""


@pytest.fixture(scope="module")
def gated(anim: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, Path]:
    """The scene with the gate above (it renders only with scripts allowed), and the
    file that opens it."""
    root = tmp_path_factory.mktemp("gate")
    blend, go = root / "gate.blend", root / "go"
    script = root / "gate.py"
    script.write_text(GATE)
    run_blender([str(anim[0]), "--python", str(script), "--", str(go), str(blend)])
    assert blend.is_file()
    return blend, go


def _assign(server: FakeServer, blend: Path, task_id: str, frames: list[int],
            **fields: Any) -> bytes:
    sha = server.blob(blend.read_bytes())
    return frame("assign", task_id=task_id, job_id=fields.pop("job_id", "job1"), frames=frames,
                 blend=blend.name, manifest={blend.name: sha}, output_name="shot", **fields)


def _start(server: FakeServer, tmp_path: Path, *extra: str,
           env: dict[str, str] | None = None) -> NodeProc:
    node = NodeProc(server.url, tmp_path / "work", "slots", list(extra),
                    log_path=tmp_path / "node.log")
    node.env = env
    node.start()
    return node


def _by_task(server: FakeServer, kind: type) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for msg in server.received:
        if isinstance(msg, kind):
            found.setdefault(msg.task_id, []).append(msg)
    return found


def _assert_frames(server: FakeServer, task_id: str, direct: list[Path], out: Path) -> None:
    """The task's frames, as the node uploaded them, equal Blender's own render."""
    done = _by_task(server, m.FrameDone)[task_id]
    out.mkdir(parents=True, exist_ok=True)
    for msg in done:
        path = out / msg.name
        path.write_bytes(server.blobs[msg.sha256])
        assert np.array_equal(read_rgba(path), read_rgba(direct[msg.frame - 1])), msg.name


class Script:
    """The fake server's side: welcome, then the test's frames; collect the node's."""

    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.started: dict[str, float] = {}  # task -> when its first frame started
        self.ended: dict[str, float] = {}  # task -> when it reported done or failed

    async def __call__(self, conn: Conn) -> None:
        self.conn = conn
        await conn.send(welcome())
        async for raw in conn.ws:
            if raw.type != WSMsgType.BINARY:
                continue
            msg = m.decode(raw.data, m.NODE_MESSAGES)
            conn.server.received.append(msg)
            now = time.monotonic()
            if isinstance(msg, m.Progress):
                self.started.setdefault(msg.task_id, now)
            elif isinstance(msg, m.TaskDone | m.TaskFailed):
                self.ended.setdefault(msg.task_id, now)
                await conn.send(frame("ack", task_id=msg.task_id))

    async def send(self, data: bytes) -> None:
        assert self.conn is not None
        await self.conn.send(data)


@needs_blender[0]
async def test_two_cpu_slots_render_two_tasks_at_once_and_each_frame_equals_blenders(
        tmp_path: Path, anim: tuple[Path, list[Path]], gated: tuple[Path, Path]) -> None:
    direct = anim[1]
    blend, go = gated
    go.unlink(missing_ok=True)
    script = Script()
    async with FakeServer(script) as server:
        node = _start(server, tmp_path, "--cpu-slots", "2", "--allow-scripts")
        try:
            await until(lambda: script.conn, 60, "the node's hello")
            hello = server.hellos[0]
            assert [(s.id, s.device) for s in hello.slots] == [("cpu", "CPU"), ("cpu1", "CPU")]
            # each slot warms a spare of its own: both tasks start without a Blender start
            await until(lambda: len(blender_pids(tmp_path / "work", spares=True)) == 2, 60,
                        "a warm spare in each slot")
            await script.send(_assign(server, blend, "t1", list(range(1, 7)), slot="cpu",
                                      allow_scripts=True))
            await script.send(_assign(server, blend, "t2", list(range(7, 13)), slot="cpu1",
                                      allow_scripts=True))
            # each holds its second frame until both have started
            await until(lambda: {"t1", "t2"} <= set(script.started) or script.ended, 90,
                        "both tasks to start")
            go.touch()
            await until(lambda: len(script.ended) == 2, 120, "both tasks to end")
        finally:
            node.stop()
    assert set(_by_task(server, m.TaskDone)) == {"t1", "t2"}, node.text()[-3000:]
    # both rendering at once: each started before the other ended (one slot would have
    # held t2 until t1, waiting at its gate, gave up after 60 s)
    assert script.started["t2"] < script.ended["t1"] and \
        script.started["t1"] < script.ended["t2"], (script.started, script.ended)
    for task in ("t1", "t2"):
        _assert_frames(server, task, direct, tmp_path / task)
    # each slot logs whole lines to its own file
    assert (tmp_path / "work/logs/job1.log").is_file()
    assert (tmp_path / "work/logs/job1.cpu1.log").is_file()


@needs_blender[0]
async def test_without_persistent_runners_each_slots_task_gets_a_blender_of_its_own(
        tmp_path: Path, anim: tuple[Path, list[Path]]) -> None:
    blend, direct = anim
    script = Script()
    async with FakeServer(script) as server:
        node = _start(server, tmp_path, "--cpu-slots", "2", "--no-persistent")
        try:
            await until(lambda: script.conn, 60, "the node's hello")
            await script.send(_assign(server, blend, "t1", [1, 2], slot="cpu"))
            await script.send(_assign(server, blend, "t2", [3, 4], slot="cpu1"))
            await until(lambda: len(script.ended) == 2, 120, "both tasks to end")
            # no spare, and each task's Blender gone with its task
            await until(lambda: not blender_pids(tmp_path / "work", spares=True), 10,
                        "the tasks' Blenders to go")
        finally:
            node.stop()
    assert set(_by_task(server, m.TaskDone)) == {"t1", "t2"}, node.text()[-3000:]
    for task in ("t1", "t2"):
        _assert_frames(server, task, direct, tmp_path / task)


@needs_blender[0]
async def test_cancel_in_one_slot_leaves_the_other_slots_render_alone(
        tmp_path: Path, anim: tuple[Path, list[Path]]) -> None:
    blend, direct = anim
    script = Script()
    async with FakeServer(script) as server:
        node = _start(server, tmp_path, "--cpu-slots", "2")
        try:
            await until(lambda: script.conn, 60, "the node's hello")
            await script.send(_assign(server, blend, "long", list(range(1, 25)),
                                      slot="cpu", job_id="jobA"))
            await script.send(_assign(server, blend, "short", [1, 2, 3], slot="cpu1"))
            await until(lambda: {"long", "short"} <= set(script.started), 60,
                        "both tasks to start")
            await script.send(frame("cancel", task_id="long", reason="test"))
            await until(lambda: "short" in script.ended, 120, "the other task to end")
            # the canceled slot takes work again
            await script.send(_assign(server, blend, "again", [6], slot="cpu"))
            await until(lambda: "again" in script.ended, 60, "the next task in that slot")
        finally:
            node.stop()
    done = _by_task(server, m.TaskDone)
    assert set(done) == {"short", "again"}, node.text()[-3000:]
    assert "long" not in script.ended  # a canceled task is not reported
    _assert_frames(server, "short", direct, tmp_path / "short")
    _assert_frames(server, "again", direct, tmp_path / "again")


@needs_blender[0]
async def test_a_node_that_reconnects_says_which_slot_holds_each_task(
        tmp_path: Path, gated: tuple[Path, Path]) -> None:
    blend, go = gated
    go.unlink(missing_ok=True)  # the task holds its frame 2 until the test lets it go
    script = Script()
    async with FakeServer(script) as server:
        node = _start(server, tmp_path, "--cpu-slots", "2", "--allow-scripts")
        try:
            await until(lambda: script.conn, 60, "the node's hello")
            assert server.hellos[0].holding == {}
            await script.send(_assign(server, blend, "t1", list(range(1, 13)), slot="cpu1",
                                      allow_scripts=True))
            await until(lambda: "t1" in script.started, 60, "the task to start")
            assert script.conn is not None
            await script.conn.ws.close()
            await until(lambda: len(server.hellos) >= 2, 30, "the node to come back")
            go.touch()
            await until(lambda: "t1" in script.ended, 120, "the task to end")
        finally:
            node.stop()
    again = server.hellos[1]
    assert (again.running, again.holding) == (["t1"], {"t1": "cpu1"}), node.text()[-3000:]
    assert len(_by_task(server, m.TaskDone)["t1"][0].outputs) == 12


def _runner_blenders(work: Path) -> list[str]:
    """The executable (argv[0]) of each Blender of the node with a job open (Linux /proc)."""
    found = []
    for pid in blender_pids(work):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            found.append(f.read().split(b"\0")[0].decode())
    return found


@needs_blender[0]
async def test_a_node_with_two_blenders_lists_both_and_renders_with_the_one_named(
        tmp_path: Path, anim: tuple[Path, list[Path]]) -> None:
    blend, direct = anim
    assert BLENDER is not None
    second = tmp_path / "bin" / "blender-b"
    second.parent.mkdir()
    second.symlink_to(os.path.realpath(BLENDER))
    script = Script()
    async with FakeServer(script) as server:
        node = _start(server, tmp_path, "--blender", BLENDER, "--blender", str(second))
        try:
            await until(lambda: script.conn, 60, "the node's hello")
            hello = server.hellos[0]
            assert [b.path for b in hello.blenders] == [os.path.abspath(BLENDER), str(second)]
            assert hello.blender == hello.blenders[0]
            await script.send(_assign(server, blend, "b1", [1], blender=1, slot="cpu"))
            await until(lambda: "b1" in script.ended, 60, "the task in Blender 1")
            # the task's runner stays, and it is the second Blender
            assert _runner_blenders(tmp_path / "work") == [str(second)], node.text()[-3000:]
            await script.send(_assign(server, blend, "b0", [2], blender=0, slot="cpu"))
            await until(lambda: "b0" in script.ended, 60, "the task in Blender 0")
            # a runner of another Blender is replaced
            assert _runner_blenders(tmp_path / "work") == [os.path.abspath(BLENDER)]
            await script.send(_assign(server, blend, "bad", [3], blender=2))
            await script.send(_assign(server, blend, "nowhere", [3], slot="gpu7"))
            await until(lambda: {"bad", "nowhere"} <= set(script.ended), 30, "two refusals")
        finally:
            node.stop()
    assert set(_by_task(server, m.TaskDone)) == {"b1", "b0"}, node.text()[-3000:]
    _assert_frames(server, "b1", direct, tmp_path / "b1")
    _assert_frames(server, "b0", direct, tmp_path / "b0")
    failed = server.failures()
    assert failed["bad"].reason == failed["nowhere"].reason == "bad_assign"
    assert "Blender 2, and this node has 2 (0 to 1)" in failed["bad"].error
    assert "slot 'gpu7', which this node does not have (its slots: cpu)" in \
        failed["nowhere"].error


@needs_blender[0]
async def test_fake_gpus_make_gpu_slots_and_a_task_on_one_fails_saying_which_device(
        tmp_path: Path, anim: tuple[Path, list[Path]]) -> None:
    blend, direct = anim
    script = Script()
    async with FakeServer(script) as server:
        node = _start(server, tmp_path, "--cpu-slot",
                      env={"BLENDERFARM_FAKE_DEVICES": json.dumps(FAKE_DEVICES)})
        try:
            await until(lambda: script.conn, 60, "the node's hello")
            hello = server.hellos[0]
            await script.send(_assign(server, blend, "on-gtx", [1], slot="gpu1"))
            await script.send(_assign(server, blend, "on-rtx", [1], slot="gpu0"))
            await script.send(_assign(server, blend, "on-cpu", [2], slot="cpu"))
            await until(lambda: len(script.ended) == 3, 90, "the three tasks to end")
        finally:
            node.stop()
    assert [(s.id, s.device, s.gpus) for s in hello.slots] == [
        ("gpu0", "GPU", ["pci:0000:01:00"]), ("gpu1", "GPU", ["pci:0000:02:00"]),
        ("cpu", "CPU", [])]
    assert [(d.type, d.gpu) for d in hello.blender.devices] == [
        ("CUDA", "pci:0000:01:00"), ("OPTIX", "pci:0000:01:00"), ("CUDA", "pci:0000:02:00")]
    assert hello.blender.cycles_devices == ["CPU", "CUDA", "OPTIX"]
    assert hello.gpus == ["Fake RTX", "Fake GTX"]
    failed = server.failures()
    assert failed["on-gtx"].reason == "no_device" and failed["on-gtx"].error.startswith(
        "This node's Blender has no device CUDA_Fake GTX_0000:02:00"), failed["on-gtx"]
    # Blender 3.4 here has no OptiX at all
    assert failed["on-rtx"].reason == "no_device" and \
        "has no OPTIX devices" in failed["on-rtx"].error
    assert set(_by_task(server, m.TaskDone)) == {"on-cpu"}, node.text()[-3000:]
    _assert_frames(server, "on-cpu", direct, tmp_path / "on-cpu")


@pytest.mark.parametrize(("flags", "says"), [
    (["--slots", "per-gpu"], "slots = per-gpu needs a GPU"),
    (["--slots", "some"], "invalid choice: 'some'"),
    (["--cpu-slots", "0"], "cpu_slots must be a whole number from 1 to 64, not 0"),
])
def test_bad_slot_settings_are_refused_at_start(tmp_path: Path, flags: list[str],
                                                says: str) -> None:
    from fakeserver import fake_blender
    node = NodeProc("http://127.0.0.1:9", tmp_path / "work", "bad",
                    ["--blender", str(fake_blender(tmp_path / "bin")), *flags],
                    log_path=tmp_path / "node.log")
    node.start()
    try:
        assert node.popen is not None
        assert node.popen.wait(30) == 2
    finally:
        node.stop()
    assert says in node.text(), node.text()



def _server_schedules_slots() -> bool:
    """Whether this branch's bf-server gives a node's slots a task each (helper B's
    per-slot dispatch: a task remembers its slot); before it, one task per node."""
    from blenderfarm.server.models import Task
    return "slot" in Task.__slots__


@needs_blender[0]
@pytest.mark.skipif(not _server_schedules_slots(),
                    reason="needs a bf-server that dispatches per slot (Task.slot)")
def test_a_real_server_keeps_both_cpu_slots_busy_and_the_frames_equal_blenders(
        farm_procs, tmp_path: Path, anim: tuple[Path, list[Path]],
        gated: tuple[Path, Path]) -> None:
    from procs import get_json, wait_for
    from test_e2e import bf, submit, wait_job
    direct = anim[1]
    blend, go = gated
    go.unlink(missing_ok=True)
    server = farm_procs.server()
    farm_procs.node("two", ["--cpu-slots", "2", "--allow-scripts"])
    farm_procs.wait_nodes(1)
    # two tasks, 1-6 and 7-12: each holds its second frame until the test lets it go
    job_id, _ = submit(server.url, blend, "--frames", "1-12", "--chunk", "6",
                       "--allow-scripts")

    def both_running() -> bool:
        tasks = get_json(f"{server.url}/api/jobs/{job_id}/tasks")["tasks"]
        return sum(t["status"] == "running" for t in tasks) == 2
    wait_for(both_running, 90, "both tasks of the job running at once")
    go.touch()
    assert wait_job(server.url, job_id)["status"] == "completed"
    out = tmp_path / "frames"
    assert bf(server.url, "download", job_id, str(out), "--flat").returncode == 0
    got = sorted(out.glob("*.png"))
    assert len(got) == 12
    for path, ref in zip(got, direct, strict=True):
        assert np.array_equal(read_rgba(path), read_rgba(ref)), path.name


def test_a_node_refuses_to_start_naming_the_blender_that_fails_its_probe(
        tmp_path: Path) -> None:
    from fakeserver import fake_blender
    good = fake_blender(tmp_path / "bin")
    mute = tmp_path / "bin" / "mute"
    mute.write_text("#!/bin/sh\necho hello\n")
    mute.chmod(0o755)
    for bad, says in ((tmp_path / "nope", f"Blender was not found at '{tmp_path}/nope'"),
                      (mute, f"{mute} is neither a Blender nor a Python with the bpy module")):
        # the bad one first: a node that took only its last --blender would start
        node = NodeProc("http://127.0.0.1:9", tmp_path / "work", "bad",
                        ["--blender", str(bad), "--blender", str(good)],
                        log_path=tmp_path / f"{bad.name}.log")
        node.start()
        try:
            assert node.popen is not None
            assert node.popen.wait(30) == 2
        finally:
            node.stop()
        assert says in node.text(), node.text()
