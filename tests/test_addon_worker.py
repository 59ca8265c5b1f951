"""The add-on's bpy-free half, imported from the built zip: what users install.

The submit worker packs, uploads and queues in a thread while a stand-in for the modal
timer drains its queue within the time budget; cancelling stops an upload midway;
missing files wait for the user's answer; the connection test names the exact
problem; the job watcher follows and cancels jobs. Against a real bf-server process,
with projects made by real Blender.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import queue
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.protocol import messages as m
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.events import EVENTS, hang_up
from fakenode import FakeNode
from procs import free_port, get_json
from scenes import REPO, make_scene, needs_blender

sys.path.insert(0, str(REPO))
import build_addon  # noqa: E402
from test_server import submit  # noqa: E402

BIG = 96 << 20  # bytes of the "texture" the upload tests send


@pytest.fixture(scope="module")
def addon(tmp_path_factory) -> SimpleNamespace:
    """The add-on's bpy-free modules, imported from the built legacy zip."""
    out = tmp_path_factory.mktemp("addon-build")
    legacy, _ = build_addon.build(out / "dist", build_addon.ROOT / ".cache" / "addon-wheels")
    root = out / "installed"
    with zipfile.ZipFile(legacy) as zf:
        zf.extractall(root)
    sys.path.insert(0, str(root))
    try:
        mods = {name: importlib.import_module(f"blenderfarm_addon.{name}")
                for name in ("worker", "submit", "watcher", "wording")}
        assert Path(mods["worker"].__file__).is_relative_to(root)
        assert "bpy" not in sys.modules, "the bpy-free modules imported bpy"
        yield SimpleNamespace(**mods)
    finally:
        sys.path.remove(str(root))


def with_blender(func):
    for mark in needs_blender:
        func = mark(func)
    return func


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> Path:
    """A textured project (external texture, linked library), made once by Blender."""
    return make_scene("textured", tmp_path_factory.mktemp("textured"))


def project_copy(textured: Path, dest: Path, big: int = 0) -> Path:
    """A fresh copy of the project; ``big`` > 0 swaps the texture for that many random
    bytes (BAT packs a texture without reading it), to make an upload that takes a while."""
    root = textured.parents[1]
    shutil.copytree(root, dest)
    if big:
        with open(dest / "textures" / "checker.png", "wb") as f:
            for _ in range(big >> 20):
                f.write(os.urandom(1 << 20))
    return dest / "shots" / "shot.blend"


def request(addon: SimpleNamespace, blend: Path, plan=None, **kw):
    fields = {"name": "shot", "frames": "1", "chunk": 1, "priority": 50, "overrides": {},
              "scene": None, "on_missing": addon.submit.MISSING_ASK, **kw}
    addon.submit.check_settings(**fields)
    plan = plan or addon.submit.as_saved(str(blend))
    return addon.submit.SubmitRequest(plan, **fields)


def run_ui_loop(addon, task, on_message=None, timeout: float = 120.0):
    """What the modal operator does: every timer tick, drain within the budget."""
    w = addon.worker
    seen: list = []
    ticks: list[float] = []

    def handle(message) -> None:
        seen.append(message)
        if on_message is not None:
            on_message(message)

    deadline = time.monotonic() + timeout
    while not any(isinstance(m, (w.Done, w.Failed, w.Canceled)) for m in seen):
        assert time.monotonic() < deadline, f"the task never finished: {seen[-3:]}"
        start = time.perf_counter()
        w.drain(task.queue, handle)
        ticks.append(time.perf_counter() - start)
        time.sleep(0.02)
    task.join(10)
    assert not task.is_alive()
    return seen, ticks


# --- pure parts ------------------------------------------------------------------------------


def test_drain_stops_at_its_time_budget(addon) -> None:
    q: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(200):
        q.put(i)
    handled: list[int] = []

    def slow(message: int) -> None:
        handled.append(message)
        time.sleep(0.001)

    start = time.perf_counter()
    n = addon.worker.drain(q, slow, budget=0.005)
    took = time.perf_counter() - start
    assert 1 <= n < 20 and took < 0.005 + 0.01, (n, took)
    assert addon.worker.drain(q, slow, budget=0.0) == 1, "at least one message per tick"
    assert addon.worker.drain(q, handled.append, budget=10.0) == 200 - n - 1
    assert handled == list(range(200)), "in order, none lost"
    assert addon.worker.drain(q, handled.append) == 0


def test_upload_threads_count_every_file_once_and_only_forward(addon, tmp_path) -> None:
    """upload_missing sends three files at once, each from its own thread: every file
    done must count once, and the progress posted must never go back."""
    w, s = addon.worker, addon.submit
    pack = s.load_pack()
    count = 60
    manifest, sizes = {}, {}
    for i in range(count):
        data = os.urandom(1000 + i)
        (tmp_path / f"f{i:02d}").write_bytes(data)
        manifest[f"f{i:02d}"] = hashlib.sha256(data).hexdigest()
        sizes[f"f{i:02d}"] = len(data)
    packed = pack.PackResult(root=tmp_path, blend="f00", manifest=manifest, missing=[],
                             sizes=sizes)

    threads = pack.UPLOAD_CONNECTIONS
    assert count % threads == 0
    # Every thread finishes a file at the same moment, round after round.
    together = threading.Barrier(threads, timeout=10)

    class NoNetwork(s.Client):
        """Stands in for the HTTP transport only; the counting is the add-on's own."""

        def missing_blobs(self, hashes: list[str]) -> list[str]:
            return list(hashes)

        def put_blob(self, sha: str, path, on_bytes=None) -> dict:
            size = os.path.getsize(path)
            for part in (size // 2, size - size // 2):
                time.sleep(0)  # another upload thread runs meanwhile, as on a socket write
                if on_bytes is not None:
                    on_bytes(part)
            together.wait()
            return {"sha256": sha, "size": size}

    class Counting(s._CountingClient, NoNetwork):
        # The count read and written in two steps, as on a Python without the GIL: a
        # thread switch between them loses a file unless a lock holds them together.
        @property
        def files_done(self) -> int:
            value = self._files
            time.sleep(0.001)  # the other threads read the same count meanwhile
            return value

        @files_done.setter
        def files_done(self, value: int) -> None:
            self._files = value

    client = Counting("http://127.0.0.1:9")
    client.task = w.Task(w.Server(client.server_url))
    stats = pack.upload_missing(client, packed, on_progress=client.on_bytes,
                                connections=threads)
    assert stats.files_sent == count and client.files_done == count
    posted = [m for m in _drained(addon, client.task.queue) if isinstance(m, w.Progress)]
    files = [m.files_done for m in posted]
    sent = [m.bytes_done for m in posted]
    assert files == sorted(files) and files[-1] == count, "each file once, only forward"
    assert sent == sorted(sent) and sent[-1] == packed.total_bytes


def test_plan_copy_never_touches_the_users_file(addon, tmp_path) -> None:
    s = addon.submit
    blend = tmp_path / "shots" / "shot.blend"
    blend.parent.mkdir()
    blend.write_bytes(b"BLENDER-original")

    clean = s.as_saved(str(blend))
    assert clean.save_to is None and clean.blend == str(blend) and clean.main_name == "shot.blend"
    s.discard_copy(clean)
    assert blend.read_bytes() == b"BLENDER-original"

    # Always a copy of the state in memory: is_dirty misses edits made from Python.
    dirty = s.plan_copy(str(blend), tag="t1")
    # beside the original, so that every // path in the copy means the same file
    assert Path(dirty.save_to).parent == blend.parent
    assert Path(dirty.save_to).name.startswith(".") and dirty.main_name == "shot.blend"
    Path(dirty.save_to).write_bytes(b"copy")
    Path(dirty.save_to + "1").write_bytes(b"backup")
    s.discard_copy(dirty)
    assert sorted(p.name for p in blend.parent.iterdir()) == ["shot.blend"]

    readonly = s.plan_copy(str(blend), folder_writable=False)
    assert readonly.temp_dir and Path(readonly.save_to).parent == Path(readonly.temp_dir)
    s.discard_copy(readonly)
    assert not Path(readonly.temp_dir).exists()

    unsaved = s.plan_copy("")
    assert unsaved.main_name == "untitled.blend" and unsaved.temp_dir
    s.discard_copy(unsaved)
    assert not Path(unsaved.temp_dir).exists() and blend.read_bytes() == b"BLENDER-original"


def test_frame_range_and_settings_are_checked_before_packing(addon) -> None:
    s, w = addon.submit, addon.worker
    assert s.frame_range(1, 250) == "1-250"
    assert s.frame_range(1, 250, 2) == "1-250x2"
    assert s.frame_range(7, 7) == "7"
    with pytest.raises(w.Problem, match="empty"):
        s.frame_range(10, 1)
    fields = dict(name="x", frames="1-10", chunk=1, priority=50, overrides={}, scene=None,
                  on_missing="ask")
    s.check_settings(**fields)
    for bad in ({"chunk": 0}, {"priority": 101}, {"frames": "1-"},
                {"overrides": {"samples": 0}}, {"overrides": {"format": "GIF"}}):
        with pytest.raises(ValueError) as info:
            s.check_settings(**{**fields, **bad})
        sentence = w.describe_error(info.value)
        assert sentence.startswith("Invalid job settings") and "\n" not in sentence


def test_server_checks_name_the_exact_problem(addon) -> None:
    w = addon.worker
    w.check_server({"protocol": w.PROTOCOL_VERSION, "server_version": "0.1.0"})
    with pytest.raises(w.Problem) as info:
        w.check_server({"protocol": 99, "server_version": "9.0.0"})
    assert "protocol 99" in str(info.value) and "9.0.0" in str(info.value)
    unreachable = addon.worker.ServerUnreachable("http://farm:1", "connection refused")
    assert "connection refused" in w.describe_error(unreachable)


def _runner_constant(name: str) -> str:
    """A message constant of the runner (which imports bpy), read from its source."""
    import ast

    tree = ast.parse((REPO / "blenderfarm" / "node" / "runner" / "runner.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name
                                                for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError(f"runner.py has no {name}")


def test_farm_errors_are_worded_for_the_panel_not_for_bf(addon) -> None:
    from blenderfarm.server.results import NO_OIDN

    wording = addon.wording
    camera = ("The scene 'Scene' has no active camera; set one in the file or submit with "
              "a camera override.")
    for message in (NO_OIDN, _runner_constant("DENOISE_MESSAGE")):
        assert "--no-denoise" in message  # the farm speaks bf's language
        said = wording.farm_error(message)
        assert "set Denoise to Off" in said and "--" not in said, said
    assert "pick a Camera in the panel" in wording.farm_error(camera)
    assert "set Denoise to Off" in wording.farm_error("whatever", "needs_denoise")
    assert "pick a Camera" in wording.farm_error("whatever", "bad_camera")
    assert wording.farm_error("Blender crashed (SIGSEGV).") == "Blender crashed (SIGSEGV)."


def test_job_summary_tells_two_jobs_of_one_name_apart(addon) -> None:
    summary = addon.wording.job_summary
    now = 1_800_000_000.0
    first = {"id": "3fa2b1c4d5e6", "name": "shot", "created": now - 60, "frames": "1-250",
             "overrides": {}}
    second = {"id": "9b8c7d6e5f4a", "name": "shot", "created": now - 30, "frames": "1-10",
              "overrides": {"samples": 7, "camera": "CamB", "denoise": False},
              "tags": ["gpu"]}
    a, b = summary(first, now), summary(second, now)
    assert a != b
    assert a.startswith("3fa2b1 · ") and "frames 1-250" in a
    assert b.startswith("9b8c7d · ") and "frames 1-10" in b
    assert "7 samples" in b and "camera CamB" in b and "denoise off" in b and "tags gpu" in b
    assert time.strftime("%H:%M", time.localtime(now - 30)) in b


def test_device_and_persistent_data_are_submitted_and_shown_as_set(addon) -> None:
    """The panel's Overrides (a stand-in for Scene.blenderfarm) become the spec's, the
    scene's own setting is left out, and the job's line says what was set."""
    panel = SimpleNamespace(use_samples=False, use_resolution=False, file_format="SCENE",
                            denoise="SCENE", device="SCENE", persistent_data="SCENE",
                            camera=None)
    assert addon.submit.panel_overrides(panel) == {}
    panel.device, panel.persistent_data = "GPU", "ON"
    assert addon.submit.panel_overrides(panel) == {"device": "GPU", "persistent_data": True}
    panel.device, panel.persistent_data = "CPU", "OFF"
    chosen = addon.submit.panel_overrides(panel)
    assert chosen == {"device": "CPU", "persistent_data": False}
    addon.submit.check_settings(name="x", frames="1", chunk=1, priority=50, overrides=chosen,
                                scene=None, on_missing="ask")
    line = addon.wording.job_summary({"id": "3fa2b1c4d5e6", "frames": "1-9",
                                      "overrides": {"samples": 7, **chosen}})
    assert line.endswith("frames 1-9 · 7 samples, CPU, persistent data off"), line
    assert "GPU, persistent data on" in addon.wording.describe_overrides(
        {"device": "GPU", "persistent_data": True})


def test_long_sentences_wrap_without_cutting_a_url(addon) -> None:
    url = "http://render-farm-server.studio.example.com:8765"
    text = (f"Cannot reach the farm server at {url} (connection refused): is bf-server "
            "running, and is the server URL in the add-on preferences right?")
    lines = addon.wording.wrap_lines(text, 300)
    assert len(lines) > 2 and " ".join(lines) == text
    assert any(url in line for line in lines), lines  # whole, on one line


def test_online_access_off_means_offline(addon) -> None:
    # A stand-in for bpy.app: Blender 4.2+ has online_access, older ones do not.
    online = addon.wording.online_access
    assert online(SimpleNamespace(online_access=True))
    assert not online(SimpleNamespace(online_access=False))
    assert online(SimpleNamespace())  # Blender 3.x/4.1: no such setting
    assert "Allow Online Access" in addon.wording.OFFLINE


def test_the_blender_field_pins_or_is_refused_in_one_sentence(addon) -> None:
    s, w = addon.submit, addon.worker
    fields = dict(name="x", frames="1", chunk=1, priority=50, overrides={}, scene=None,
                  on_missing="ask")
    for pin in (None, "4.5", ">=4.5", ">= 3.4"):
        s.check_settings(**fields, blender=pin)
    with pytest.raises(ValueError) as info:
        s.check_settings(**fields, blender="4.5+")
    sentence = w.describe_error(info.value)
    assert sentence.startswith("Invalid job settings") and "blender" in sentence, sentence
    assert ">=4.5" in sentence and "\n" not in sentence


def test_tags_field_becomes_the_specs_list(addon) -> None:
    s = addon.submit
    assert s.parse_tags("") == ()
    assert s.parse_tags(" gpu, big-ram  gpu,,") == ("gpu", "big-ram")


# --- against a real server -------------------------------------------------------------------


def test_connection_test_answers_version_and_nodes_or_the_problem(addon, farm_procs,
                                                                   tmp_path) -> None:
    from blenderfarm.server import tokens

    w = addon.worker

    def outcome(url: str, token: str | None = None):
        task = w.ConnectionTest(w.Server(url, token, timeout=5))
        task.run()  # inline, as in background mode
        messages = []
        w.drain(task.queue, messages.append, budget=10)
        return messages[-1]

    refused = outcome(f"http://127.0.0.1:{free_port()}")
    assert isinstance(refused, w.Failed) and "connection refused" in refused.message

    data = tmp_path / "secured"
    data.mkdir()
    _, secret = tokens.create(data / "farm.db", "user", "alice")
    server = farm_procs.server(data_dir=data)
    no_token = outcome(server.url)
    assert isinstance(no_token, w.Failed) and "needs a token" in no_token.message
    wrong = outcome(server.url, "bfu_wrong")
    assert isinstance(wrong, w.Failed) and "refused the token" in wrong.message
    ok = outcome(server.url, secret)
    assert isinstance(ok, w.Done), ok
    assert "Blenderfarm 0.1.0" in ok.summary and "0 of 0 node(s) online" in ok.summary
    bad_url = outcome("ftp://farm")
    assert isinstance(bad_url, w.Failed) and "not an http(s) URL" in bad_url.message


@with_blender
def test_upload_runs_in_a_thread_while_the_ui_drains(addon, farm_procs, textured,
                                                     tmp_path) -> None:
    w, s = addon.worker, addon.submit
    server = farm_procs.server()
    blend = project_copy(textured, tmp_path / "project", big=BIG)
    plan = s.plan_copy(str(blend), tag="t")  # as with unsaved changes:
    shutil.copy(blend, plan.save_to)  # the operator saved the copy beside the file
    task = s.SubmitTask(w.Server(server.url), request(addon, blend, plan=plan), s.load_pack())
    task.start()
    seen, ticks = run_ui_loop(addon, task)

    done = seen[-1]
    assert isinstance(done, w.Done), seen[-1]
    job = get_json(f"{server.url}/api/jobs/{done.result['id']}")["job"]
    assert job["status"] == "queued" and job["name"] == "shot"
    assert job["blend"] == "shots/shot.blend", "the copy's hidden name must not show"
    assert sorted(p.name for p in blend.parent.iterdir()) == ["shot.blend"], "copy left behind"

    uploads = [m for m in seen if isinstance(m, w.Progress) and m.stage == "Uploading"]
    assert uploads and uploads[-1].bytes_done == uploads[-1].bytes_total >= BIG
    assert uploads[-1].files_done == uploads[-1].files_total == 3
    sent = [m.bytes_done for m in uploads]
    assert sent == sorted(sent), "progress only goes forward"
    stages = [m.stage for m in seen if isinstance(m, w.Progress)]
    assert stages.index("Packing") < stages.index("Uploading") < stages.index("Queuing")
    # The UI kept its rhythm: many ticks during the upload, none longer than the budget
    # allows (one tick handles at most a message past the budget, and these are cheap).
    assert len(uploads) >= 5 and len(ticks) >= 10
    assert max(ticks) < w.DRAIN_BUDGET + 0.02, max(ticks)


@with_blender
def test_cancel_stops_an_upload_midway(addon, farm_procs, textured, tmp_path) -> None:
    w, s = addon.worker, addon.submit
    server = farm_procs.server()
    blend = project_copy(textured, tmp_path / "project", big=BIG)
    task = s.SubmitTask(w.Server(server.url), request(addon, blend), s.load_pack())
    canceled_at: list[float] = []

    def on_message(message) -> None:
        if isinstance(message, w.Progress) and message.stage == "Uploading" \
                and message.bytes_done > 0 and not canceled_at:
            canceled_at.append(time.monotonic())
            task.cancel()  # what ESC or the panel's Cancel button does

    task.start()
    seen, _ = run_ui_loop(addon, task, on_message)
    assert isinstance(seen[-1], w.Canceled), seen[-1]
    assert time.monotonic() - canceled_at[0] < 2.0
    last = [m for m in seen if isinstance(m, w.Progress)][-1]
    assert last.bytes_done < last.bytes_total, "the upload should have stopped midway"
    assert get_json(f"{server.url}/api/jobs")["jobs"] == [], "no job after a cancel"


@with_blender
def test_a_cancel_while_the_job_is_created_leaves_no_job(addon, farm_procs, textured,
                                                         tmp_path, monkeypatch) -> None:
    """ESC just as the job is being queued: "Canceled." must mean no job on the farm."""
    w, s = addon.worker, addon.submit
    server = farm_procs.server()
    blend = project_copy(textured, tmp_path / "project")
    task = s.SubmitTask(w.Server(server.url), request(addon, blend), s.load_pack())
    real_create = s._CountingClient.create_job

    def create_then_cancel(self, spec):
        job = real_create(self, spec)  # the server has queued it...
        task.cancel()  # ...and the user pressed ESC meanwhile
        return job

    monkeypatch.setattr(s._CountingClient, "create_job", create_then_cancel)
    task.start()
    seen, _ = run_ui_loop(addon, task)
    assert isinstance(seen[-1], w.Canceled), seen[-1]
    assert get_json(f"{server.url}/api/jobs")["jobs"] == [], "a canceled submit left a job"


@with_blender
def test_missing_files_wait_for_the_users_answer(addon, farm_procs, textured,
                                                 tmp_path) -> None:
    w, s = addon.worker, addon.submit
    server = farm_procs.server()
    blend = project_copy(textured, tmp_path / "project")
    (blend.parents[1] / "textures" / "checker.png").unlink()

    def submit(answer: bool | None, policy: str):
        task = s.SubmitTask(w.Server(server.url), request(addon, blend, on_missing=policy),
                            s.load_pack())

        def on_message(message) -> None:
            if isinstance(message, w.MissingFiles):
                assert message.ask == (policy == s.MISSING_ASK)
                assert [Path(p).name for p in message.paths] == ["checker.png"]
                if message.ask:
                    time.sleep(0.3)  # the dialog is open; the task must wait for it
                    task.decide_missing(answer)

        task.start()
        return run_ui_loop(addon, task, on_message)[0]

    declined = submit(False, s.MISSING_ASK)
    assert isinstance(declined[-1], w.Canceled) and "missing" in declined[-1].message
    refused = submit(None, s.MISSING_CANCEL)
    assert isinstance(refused[-1], w.Failed) and "checker.png" in refused[-1].message
    assert get_json(f"{server.url}/api/jobs")["jobs"] == []
    accepted = submit(True, s.MISSING_ASK)
    assert isinstance(accepted[-1], w.Done)
    scripted = submit(None, s.MISSING_CONTINUE)
    assert any(isinstance(m, w.MissingFiles) and not m.ask for m in scripted)
    assert isinstance(scripted[-1], w.Done)
    assert len(get_json(f"{server.url}/api/jobs")["jobs"]) == 2


@with_blender
def test_watcher_follows_and_cancels_jobs(addon, farm_procs, textured, tmp_path) -> None:
    w, s, watch = addon.worker, addon.submit, addon.watcher
    server = farm_procs.server()
    blend = project_copy(textured, tmp_path / "project")
    task = s.SubmitTask(w.Server(server.url), request(addon, blend), s.load_pack())
    task.run()
    (done,) = [m for m in _drained(addon, task.queue) if isinstance(m, w.Done)]
    job_id = done.result["id"]

    watcher = watch.JobWatcher(interval=0.1)
    watcher.configure(w.Server(server.url))
    watcher.watch([job_id, "nosuchjob"])
    watcher.poll_once()
    got = _drained(addon, watcher.queue)
    assert [m.job["status"] for m in got if isinstance(m, watch.JobUpdate)] == ["queued"]
    assert [m.job_id for m in got if isinstance(m, watch.JobGone)] == ["nosuchjob"]

    watcher.cancel_job(job_id)
    watcher.start()  # in its own thread now, as in the UI
    try:
        deadline = time.monotonic() + 10
        updates: list = []
        while not any(m.job["status"] == "canceled" for m in updates):
            assert time.monotonic() < deadline, updates
            updates += [m for m in _drained(addon, watcher.queue)
                        if isinstance(m, watch.JobUpdate)]
            time.sleep(0.05)
        time.sleep(0.5)
        assert _drained(addon, watcher.queue) == [], "an ended job is not polled again"
    finally:
        watcher.stop()

    server.stop()  # the server goes away: one sentence, said once
    watcher.refresh()
    watcher.poll_once()
    watcher.poll_once()
    errors = _drained(addon, watcher.queue)
    assert len(errors) == 1 and "Cannot reach the farm server" in errors[0].message

    outputs = w.DownloadTask(w.Server(server.url), job_id, str(tmp_path / "dl"))
    outputs.run()
    assert isinstance(_drained(addon, outputs.queue)[-1], w.Failed)


async def test_watcher_follows_the_event_stream_not_a_poll(addon, tmp_path) -> None:
    """Polling once a minute, the watcher still hears of progress inside a frame (with
    the farm's ETA) and of the job's end at once: they come over /ws/events. After the
    server drops the stream it reconnects and hears the rest."""
    server = TestServer(make_app(ServerConfig(data_dir=tmp_path / "data")), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    node = FakeNode(url, name="render-01")
    watch = addon.watcher
    watcher = watch.JobWatcher(interval=60.0)
    hub = server.app[EVENTS]

    async def update(pred, what: str) -> dict:
        deadline = time.monotonic() + 5
        while True:
            for msg in _drained(addon, watcher.queue):
                if isinstance(msg, watch.JobUpdate) and pred(msg.job):
                    return msg.job
            assert time.monotonic() < deadline, f"no update with {what}"
            await asyncio.sleep(0.02)

    try:
        http = TestClient(server)
        await http.start_server()
        job = await submit(http, frames="1-2")
        watcher.configure(addon.worker.Server(url))
        watcher.watch([job["id"]])
        watcher.start()
        await update(lambda j: j["status"] == "queued", "the first read")
        for _ in range(500):
            if hub.clients:
                break
            await asyncio.sleep(0.01)
        await node.connect()
        a1 = await node.expect(m.Assign)
        await node.send(m.Progress(task_id=a1.task_id, frame=a1.frames[0], fraction=0.5))
        live = await update(lambda j: j.get("progress") == 0.25, "in-frame progress")
        assert live["eta"] is not None
        (first,) = hub.clients
        hub.clients.discard(first)
        await hang_up(first, 1011, b"dropped by the test")
        await node.finish(a1)
        a2 = await node.expect(m.Assign)
        await node.finish(a2)
        t0 = time.monotonic()
        done = await update(lambda j: j["status"] == "completed", "the job's end")
        assert done["frames_done"] == 2 and time.monotonic() - t0 < 3
    finally:
        watcher.stop()
        await node.close()
        await http.close()


def _drained(addon, q) -> list:
    out: list = []
    addon.worker.drain(q, out.append, budget=10.0)
    return out


def test_the_panels_tiles_and_video_become_the_specs(addon) -> None:
    s = addon.submit
    panel = SimpleNamespace(tiles_mode="OFF", tiles=8)
    assert s.panel_tiles(panel) is None
    panel.tiles_mode = "AUTO"
    assert s.panel_tiles(panel) == "auto"
    panel.tiles_mode = "COUNT"
    assert s.panel_tiles(panel) == 8
    s.check_settings(name="x", frames="1", chunk=1, priority=50, overrides={}, scene=None,
                     on_missing="ask", tiles=8, video=True)
    with pytest.raises(ValueError, match="tiles"):  # the schema's SpecError
        s.check_settings(name="x", frames="1", chunk=1, priority=50, overrides={},
                         scene=None, on_missing="ask", tiles=0)


@with_blender
def test_a_submit_with_tiles_and_a_video_makes_a_tiled_job_with_its_encode(
        addon, farm_procs, textured, tmp_path) -> None:
    w, s = addon.worker, addon.submit
    server = farm_procs.server()
    blend = project_copy(textured, tmp_path / "project")
    fields = {"name": "shot", "frames": "1-2", "chunk": 1, "priority": 50, "overrides": {},
              "scene": None, "on_missing": s.MISSING_ASK, "tiles": "auto", "video": True}
    s.check_settings(**fields)
    request_ = s.SubmitRequest(s.as_saved(str(blend)), **fields, resolution=(640, 360))
    task = s.SubmitTask(w.Server(server.url), request_, s.load_pack())
    task.start()
    seen, _ticks = run_ui_loop(addon, task)
    assert isinstance(seen[-1], w.Done), seen[-1]
    job = get_json(f"{server.url}/api/jobs/{seen[-1].result['id']}")["job"]
    # no node online: "auto" is whole frames; the video waits for them
    assert (job["tiles"], job["video"], job["encode"], job["tasks_total"]) == \
        (None, True, "queued", 3)
