"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a
real bf-server with a real bf-node rendering with real Blender.

Set ``BLENDERFARM_SCREENSHOTS=docs`` to also write the README's screenshots
(``test_docs_screenshots`` renders a bigger scene on two nodes for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blenderfarm.protocol import messages as m
from blenderfarm.server import tokens
from fakenode import FakeNode
from procs import NodeProc, ServerProc, bin_path, free_port, get_json, nodes_online, wait_for
from scenes import make_scene, needs_blender

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - make test installs it
    sync_playwright = None  # type: ignore[assignment]

#: what every browser test needs (the modules of tests with a real node add needs_blender)
BROWSER_MARKS = [
    pytest.mark.skipif(sync_playwright is None, reason="the playwright package is not installed "
                       "(make test installs it)"),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} "
                       "(apt-get install chromium; make test installs it)"),
    # Playwright's sync API keeps an event loop running in the test's own thread, so the
    # test's setup calls (tokens.create) would count as blocking; the server under test
    # runs in a subprocess here, which the guard never watches anyway.
    pytest.mark.blocking_ok("Playwright's sync API runs a loop in the test's thread"),
]
pytestmark = [*needs_blender, *BROWSER_MARKS]
SCREENSHOTS = os.environ.get("BLENDERFARM_SCREENSHOTS")


def bf(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("bf"), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BLENDERFARM_SERVER": server},
                          stdin=subprocess.DEVNULL, check=False)


def submit(server: str, blend: Path, *args: str) -> str:
    proc = bf(server, "submit", str(blend), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["job"]["id"])


class Live:
    """One server and one node for the whole module; both die in teardown."""

    scene: Path

    def __init__(self, root: Path) -> None:
        self.server = ServerProc(root / "server", free_port())
        self.server.start()
        self.url = self.server.url
        self.node = NodeProc(self.url, root / "node", "render-01")
        self.node.start()

    def wait_ready(self) -> None:
        wait_for(lambda: nodes_online(self.url) >= 1, 60, "the node online")

    def job(self, job_id: str) -> dict:
        return dict(get_json(f"{self.url}/api/jobs/{job_id}")["job"])

    def stop(self) -> None:
        self.node.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("dashboard")
    farm = Live(root)
    try:
        # The node probes Blender while Blender makes the scene: a few seconds saved.
        farm.scene = make_scene("anim", root / "scene", frames=200, res=64, samples=4)
        farm.wait_ready()
        yield farm
    finally:
        farm.stop()


@contextlib.contextmanager
def chromium(*args: str) -> Iterator[Browser]:
    """Debian's Chromium, headless, with ``args`` besides the usual ones."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *args])
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def checked_page(browser: Browser, height: int = 900) -> Iterator[Page]:
    """A fresh browser profile; any script error on the page fails the test."""
    context = browser.new_context(viewport={"width": 1440, "height": height})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("dialog", lambda dialog: dialog.accept())  # "Cancel job ...?" -> yes
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"errors on the page: {errors}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser) as pg:
        yield pg


def test_a_job_renders_live_and_its_frames_show(live: Live, page: Page) -> None:
    page.goto(f"{live.url}/#/jobs")
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)
    name = "shot010 <b>lighting</b>"  # user input: must show as text, never as markup
    job_id = submit(live.url, live.scene, "--frames", "1-8", "--name", name)
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=10_000)  # arrived over /ws/events, no reload
    expect(row.locator("td.name a")).to_have_text(name)
    assert row.locator("b").count() == 0
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100",
                                                             timeout=60_000)
    expect(row.locator(".badge")).to_have_text("completed")
    expect(row.locator(".frames-count")).to_have_text("8/8")

    row.locator("td.name a").click()
    expect(page).to_have_url(f"{live.url}/#/jobs/{job_id}")
    preview = page.locator(".preview-box img")
    expect(preview).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth === 64",
                           arg=preview.element_handle(), timeout=10_000)
    expect(page.locator(".strip img")).to_have_count(8)
    expect(page.locator(".frame-grid .cell.s-done")).to_have_count(8)
    expect(page.locator("tr[data-task-id]").first).to_contain_text("render-01")
    page.locator("tr[data-task-id]").first.get_by_role("button", name="Log").click()
    expect(page.locator("pre.log")).to_contain_text("Fra:1", timeout=10_000)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs FFmpeg")
def test_a_tiled_job_with_a_video_shows_its_tiles_its_graph_and_plays_its_video(
        live: Live, page: Page) -> None:
    # first in the queue, should an earlier test leave a job behind
    job_id = submit(live.url, live.scene, "--frames", "1-2", "--tiles", "2", "--video",
                    "--priority", "100")
    try:
        wait_for(lambda: live.job(job_id)["status"] in ("completed", "failed"), 120,
                 "the tiled job done")
        assert live.job(job_id)["status"] == "completed", live.job(job_id).get("error")
        page.goto(f"{live.url}/#/jobs/{job_id}")
        expect(page.locator(".summary-line")).to_contain_text("4 / 4 tiles", timeout=20_000)
        expect(page.locator(".summary-line")).to_contain_text("video ready")
        expect(page.locator("dt:text-is('Frames') + dd")).to_contain_text("2 frames merged")
        video = page.locator("video[data-role=video]")
        expect(video).to_be_visible()
        # the browser plays it: its length is known once its metadata is in
        page.wait_for_function(
            "() => document.querySelector('video[data-role=video]').duration > 0",
            timeout=20_000)
        rows = page.locator(".tasks tbody tr td:nth-child(2)")
        expect(rows).to_have_text(["1 · tile 1", "1 · tile 2", "merge 1", "2 · tile 1",
                                   "2 · tile 2", "merge 2", "video"])
        # the strip holds the frames, not the video
        expect(page.locator(".strip .thumb")).to_have_count(2)
    finally:
        bf(live.url, "delete", job_id)


def test_a_job_waiting_for_a_tag_no_node_has_says_so_on_its_page(live: Live, page: Page
                                                                 ) -> None:
    job_id = submit(live.url, live.scene, "--frames", "1", "--tag", "nobody-has-it")
    reason = "no online node has the tag nobody-has-it"
    try:
        assert live.job(job_id)["waiting"] == reason
        page.goto(f"{live.url}/#/jobs/{job_id}")
        expect(page.locator("dt:text-is('Waiting') + dd")).to_have_text(reason, timeout=20_000)
        expect(page.locator("dt:text-is('Tags') + dd")).to_contain_text("nobody-has-it")
    finally:
        assert bf(live.url, "cancel", job_id).returncode == 0


# Runs in Blender: the scene made a movie named "//render/shot_###"
MOVIE = ("import bpy, sys\n"
         "scene = bpy.context.scene\n"
         "scene.render.filepath = '//render/shot_###'\n"
         "scene.render.image_settings.file_format = 'FFMPEG'\n"
         "bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])\n")


def test_a_movie_scenes_job_says_how_its_frames_come_back(live: Live, page: Page,
                                                          tmp_path: Path) -> None:
    from scenes import run_blender

    movie = tmp_path / "movie.blend"
    assert run_blender([str(live.scene), "--python-expr", MOVIE, "--", str(movie)]
                       ).returncode == 0
    # a tag no node has: it waits, and its page is what is tested
    job_id = submit(live.url, movie, "--frames", "1", "--tag", "nobody-has-it")
    try:
        page.goto(f"{live.url}/#/jobs/{job_id}")
        expect(page.locator("dt:text-is('Note') + dd")).to_contain_text(
            "lossless PNG", timeout=20_000)
        expect(page.locator("dt:text-is('Output') + dd")).to_have_text("shot_###")
    finally:
        assert bf(live.url, "cancel", job_id).returncode == 0


def test_a_long_frame_shows_its_progress_and_an_eta_on_the_job_page(
        live: Live, page: Page, tmp_path: Path) -> None:
    from scenes import run_blender
    from test_live_wait import TILE_SCRIPT

    blend = make_scene("anim", tmp_path / "long", frames=1, res=64, samples=3000)
    script = tmp_path / "tiles.py"
    script.write_text(TILE_SCRIPT)
    assert run_blender([str(blend), "--python", str(script)]).returncode == 0
    job_id = submit(live.url, blend, "--frames", "1", "--name", "long frame")
    page.goto(f"{live.url}/#/jobs/{job_id}")
    line = page.locator(".job-summary .summary-line")
    # Before its only frame is done: the bar has moved and the farm's ETA shows.
    expect(line).to_contain_text("ETA", timeout=60_000)
    assert live.job(job_id)["frames_done"] == 0, "the frame ended before the ETA showed"
    bar = page.locator(".job-summary").get_by_role("progressbar")
    assert 0 < float(bar.get_attribute("aria-valuenow") or 0) < 100
    expect(page.locator(".job-head .badge")).to_have_text("completed", timeout=60_000)


def test_actions_on_the_job_page_and_cancel_stops_the_job(live: Live, page: Page) -> None:
    # Heavier frames than the scene's own: at 4 samples one node renders all 200 before
    # the steps below reach Cancel.
    job_id = submit(live.url, live.scene, "--frames", "1-200", "--name", "long",
                    "--samples", "128", "--resolution-percent", "200")
    page.goto(f"{live.url}/#/jobs/{job_id}")
    expect(page.locator(".frame-grid .cell")).to_have_count(200, timeout=10_000)
    page.locator("#priority").fill("80")
    page.get_by_role("button", name="Set", exact=True).click()
    wait_for(lambda: live.job(job_id)["priority"] == 80, 5, "priority 80")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator(".job-head .badge")).to_have_text("paused")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".job-head .badge")).to_have_text("active")
    expect(page.locator(".frame-grid .cell.s-done").first).to_be_visible(timeout=30_000)

    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".job-head .badge")).to_have_text("canceled", timeout=10_000)
    assert live.job(job_id)["status"] == "canceled"
    node = wait_for(lambda: next((n for n in get_json(f"{live.url}/api/nodes")["nodes"]
                                  if n["name"] == "render-01" and not n["tasks"]), None),
                    15, "the node to hand back its tasks")
    assert node["state"] == "idle"
    done = live.job(job_id)["frames_done"]
    time.sleep(1.0)
    assert live.job(job_id)["frames_done"] == done < 200, "frames kept coming after cancel"
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()


def test_nodes_page_drains_enables_and_shows_a_stopped_node_offline(live: Live, page: Page
                                                                     ) -> None:
    page.goto(f"{live.url}/#/nodes")
    row = page.locator("tr", has_text="render-01")
    expect(row.locator(".badge").first).to_have_text("idle", timeout=10_000)
    expect(row).to_contain_text("3.4")  # the Blender version
    row.get_by_role("button", name="Drain").click()
    expect(row.locator(".badge").first).to_have_text("drained")
    row.get_by_role("button", name="Enable").click()
    expect(row.locator(".badge").first).to_have_text("idle")
    live.node.stop()
    expect(row.locator(".badge").first).to_have_text("offline", timeout=15_000)
    expect(page.locator("#st-nodes")).to_have_text("0", timeout=10_000)


def test_sign_in_with_a_user_token_and_frames_still_show(live: Live, tmp_path: Path,
                                                         page: Page) -> None:
    """With tokens, <img> cannot send one: frames must come through fetch and blob URLs."""
    data = tmp_path / "secure"
    data.mkdir()
    _, secret = tokens.create(data / "farm.db", "user", "artist")
    _, node_token = tokens.create(data / "farm.db", "node", "render-02")
    _, other = tokens.create(data / "farm.db", "user", "producer")
    server = ServerProc(data, free_port())
    server.start()
    node = NodeProc(server.url, tmp_path / "node", "render-02", ["--token", node_token])
    node.start()
    try:
        page.goto(f"{server.url}/")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=10_000)
        page.get_by_label("User token").fill("bfu_wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator(".form-error")).to_contain_text("refused")
        page.get_by_label("User token").fill(secret)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        assert page.evaluate("localStorage.getItem('blenderfarm.token')") == secret
        assert secret not in page.url

        job_id = submit(server.url, live.scene, "--frames", "1-2", "--token", secret)
        page.goto(f"{server.url}/#/jobs/{job_id}")  # a reload: still signed in
        expect(page.locator(".strip img")).to_have_count(2, timeout=60_000)
        preview = page.locator(".preview-box img")
        page.wait_for_function("img => img.complete && img.naturalWidth === 64",
                               arg=preview.element_handle(), timeout=10_000)
        assert preview.get_attribute("src").startswith("blob:")

        expect(page.locator('[data-action="act-cancel"]')).to_be_visible()  # its owner's

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert page.evaluate("localStorage.getItem('blenderfarm.token')") is None

        # another user sees the job, but is not offered what the server would refuse
        page.get_by_label("User token").fill(other)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{server.url}/#/jobs/{job_id}")
        expect(page.locator('[data-role="read-only"]')).to_contain_text("artist's job",
                                                                        timeout=10_000)
        expect(page.locator('[data-action="act-cancel"]')).to_have_count(0)
        expect(page.locator('[data-action="act-zip"]')).to_be_visible()
        page.goto(f"{server.url}/#/nodes")
        expect(page.get_by_text("admins only").first).to_be_visible(timeout=10_000)
        expect(page.locator('[data-action="drain"]')).to_have_count(0)
    finally:
        node.stop()
        server.stop()


class ThreadNode:
    """A scripted node (``fakenode.FakeNode``) on its own event loop in a thread: the
    browser tests drive it step by step while Playwright's loop owns the test's thread."""

    def __init__(self, url: str, name: str, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node = FakeNode(url, name=name, **kw)
        self.uid = self.node.uid
        self.call(self.node.connect())

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.node.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


BLOB = b"BLENDER-v300 pretend .blend for dashboard tests"


def post_job(url: str, name: str, frames: str = "1-2", **spec: Any) -> str:
    """A job over the HTTP API (a pretend .blend: nothing renders it but a fake node)."""
    sha = hashlib.sha256(BLOB).hexdigest()
    urllib.request.urlopen(urllib.request.Request(f"{url}/api/blobs/{sha}", data=BLOB,
                                                  method="PUT"), timeout=5).close()
    body = json.dumps({"blend": "shot.blend", "manifest": {"shot.blend": sha}, "frames": frames,
                       "name": name, **spec}).encode()
    req = urllib.request.Request(f"{url}/api/jobs", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(json.loads(resp.read())["job"]["id"])


@pytest.fixture
def quick_server(tmp_path: Path) -> Iterator[ServerProc]:
    """A server of its own with a one-second heartbeat (no real node)."""
    config = tmp_path / "server.toml"
    config.write_text("[server]\nheartbeat = 1.0\n")
    server = ServerProc(tmp_path / "quick", free_port(), ["--config", str(config)])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_nodes_page_moves_with_heartbeats_and_a_render_without_reload(
        quick_server: ServerProc, page: Page) -> None:
    url = quick_server.url
    node = ThreadNode(url, "fake-01")
    try:
        page.goto(f"{url}/#/nodes")
        page.evaluate("window.sameDocument = true")
        row = page.locator("tr", has_text="fake-01")
        expect(row.locator(".badge").first).to_have_text("idle", timeout=10_000)
        seen = row.locator("td.seen").get_attribute("title")
        # An idle node sends nothing but pongs: they count, and the page hears of them.
        expect(row.locator("td.seen")).not_to_have_attribute("title", seen or "",
                                                            timeout=12_000)
        post_job(url, "shot010", frames="1-4", chunk=4)
        assign = node.call(node.node.expect(m.Assign))
        expect(row.locator(".badge").first).to_have_text("rendering")
        expect(row.locator(".task-link")).to_have_text("shot010")
        for frame, fraction in ((1, 0.25), (3, 0.75)):
            node.call(node.node.send(m.Progress(task_id=assign.task_id, frame=frame,
                                                fraction=fraction)))
            expect(row.get_by_role("progressbar")).to_have_attribute(
                "aria-valuenow", str(int(fraction * 100)))
            expect(row.locator(".frame")).to_have_text(f"frame {frame}")
        node.call(node.node.finish(assign))
        expect(row.locator(".badge").first).to_have_text("idle")
        expect(row.get_by_role("progressbar")).to_have_count(0)
        assert page.evaluate("window.sameDocument") is True, "the page was reloaded"
    finally:
        node.close()


def test_the_nodes_page_shows_blenders_devices_slots_and_a_job_page_where_it_can_run(
        quick_server: ServerProc, page: Page) -> None:
    url = quick_server.url
    card = [m.Device(type=t, id=f"{t}_0", name="RTX 4090", gpu="pci-0") for t in ("CUDA", "OPTIX")]
    box = ThreadNode(url, "box-01", tags=["fast"],
                     blenders=[m.BlenderCaps(version="3.4.1"),
                               m.BlenderCaps(version="5.0.1", kind="module", devices=card)],
                     slots=[m.SlotCaps(id="cpu"), m.SlotCaps(id="gpu0", device="GPU",
                                                           gpus=["pci-0"])])
    plain = ThreadNode(url, "plain-01")
    try:
        job_id = post_job(url, "gpu shot", frames="1-2", overrides={"device": "GPU"})
        assert box.call(box.node.expect(m.Assign)).slot == "gpu0"
        page.goto(f"{url}/#/nodes")
        row = page.locator("tr", has_text="box-01")
        expect(row.locator("td.blenders")).to_have_text("3.4.1, 5.0.1 (module)", timeout=10_000)
        expect(row.locator("td.devices")).to_have_text("CPU, RTX 4090 (CUDA, OPTIX)")
        expect(row.locator('.slot.busy[data-slot="gpu0"]')).to_contain_text("gpu0 GPU")
        expect(row.locator('.slot.idle[data-slot="cpu"]')).to_have_text("cpu CPU")
        expect(row.locator("td.name")).to_contain_text("fast")
        expect(page.locator("tr", has_text="plain-01").locator(".slot")).to_have_text("0 CPU")
        page.goto(f"{url}/#/jobs/{job_id}")
        can = page.locator("dt:text-is('Can run on') + dd")
        expect(can.locator("li.can")).to_have_text("box-01", timeout=10_000)
        expect(can.locator("li.cannot")).to_have_text("not plain-01 (has no GPU slot)")
    finally:
        box.close()
        plain.close()


def _png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_a_tiled_frame_fills_in_tile_by_tile_until_its_merge_and_tiles_count_per_node(
        quick_server: ServerProc, page: Page) -> None:
    from blenderfarm.protocol.tiles import tile_name, tile_preview_name
    url = quick_server.url
    node = ThreadNode(url, "tiler-01", slots=[m.SlotCaps(id="0"), m.SlotCaps(id="1")])
    try:
        job_id = post_job(url, "tiled still", frames="1", tiles=2, resolution=[64, 48])
        first, second = (node.call(node.node.expect(m.Assign)) for _ in range(2))
        page.goto(f"{url}/#/jobs/{job_id}")
        expect(page.locator(".preview .empty-frame")).to_be_visible(timeout=10_000)
        for a, color, rect in ((first, (220, 30, 30), [0, 0, 32, 48]),
                               (second, (30, 30, 220), [32, 0, 64, 48])):
            node.call(node.node.report(a, [
                (tile_name(a.output_name, 1, a.tile.index), b"exr " + a.task_id.encode()),
                (tile_preview_name(a.output_name, 1, a.tile.index), _png((32, 48), color))],
                {"tile": {"rect": rect, "frame": [64, 48]}}))
            node.call(node.node.expect(m.Ack))
            shown = a.tile.index + 1
            expect(page.locator("[data-role=tiles-shown]")).to_have_text(
                f"{shown} of 2 tiles", timeout=10_000)
            expect(page.locator(".mosaic-tile img")).to_have_count(shown)
        # each where its pixels lie: the second is the right half, drawn as its PNG
        right = page.locator('.mosaic-tile[data-tile="1"]')
        box, whole = right.bounding_box(), page.locator(".mosaic").bounding_box()
        assert box and whole and abs(box["x"] - (whole["x"] + whole["width"] / 2)) <= 1
        page.wait_for_function("() => [...document.querySelectorAll('.mosaic-tile img')]"
                               ".every((i) => i.complete && i.naturalWidth === 32)")
        merge = node.call(node.node.expect(m.Assign))
        assert merge.kind == m.MERGE
        node.call(node.node.finish(merge))
        # merged: the frame itself takes the tiles' place
        expect(page.locator(".preview h2")).to_have_text("Latest frame", timeout=10_000)
        expect(page.locator(".mosaic")).to_have_count(0)
        expect(page.locator("dt:text-is('Tiles by node') + dd")).to_have_text("tiler-01 2")
        page.goto(f"{url}/#/nodes")
        row = page.locator("tr", has_text="tiler-01")
        expect(row.locator("[data-role=tiles-rendered]")).to_have_text("2 tiles",
                                                                       timeout=10_000)
    finally:
        node.close()


def test_the_jobs_list_has_owners_filters_search_and_sorting(quick_server: ServerProc,
                                                             page: Page) -> None:
    url = quick_server.url
    post_job(url, "shot010_layout", user="alice")
    post_job(url, "shot020_lighting", frames="1-3", user="bob", priority=80)
    post_job(url, "shot030_comp", user="alice", paused=True)
    canceled = post_job(url, "shot040_fx", user="carol")
    urllib.request.urlopen(urllib.request.Request(
        f"{url}/api/jobs/{canceled}/cancel", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"}), timeout=5).close()
    page.goto(f"{url}/#/jobs")
    rows = page.locator("tr[data-job-id]")
    names = rows.locator("td.name a")
    expect(names).to_have_text(["shot040_fx", "shot030_comp", "shot020_lighting",
                                "shot010_layout"], timeout=10_000)  # newest first
    # What the counts count, in words
    expect(page.locator("[data-role=jobs-summary]")).to_have_text("4 jobs: 0 active, 2 queued")
    expect(page.locator(".stats div", has_text="Tasks queued").locator("dd")).to_have_text("5")
    expect(page.locator(".stats div", has_text="Jobs active").locator("dd")).to_have_text("0")
    expect(page.get_by_role("columnheader", name="Owner")).to_be_visible()
    expect(rows.filter(has_text="shot020_lighting").locator("td.owner")).to_have_text("bob")

    page.locator("#job-status").select_option("paused")
    expect(names).to_have_text(["shot030_comp"])
    expect(page.locator("[data-role=jobs-summary]")).to_contain_text("showing 1 of 4 jobs")
    page.locator("#job-status").select_option("")
    page.locator("#job-owner").select_option("alice")
    expect(names).to_have_text(["shot030_comp", "shot010_layout"])
    page.get_by_role("button", name="Clear filters").first.click()
    page.locator("#job-search").fill("LIGHT")
    expect(names).to_have_text(["shot020_lighting"])
    page.locator("#job-search").fill("")
    expect(rows).to_have_count(4)

    page.get_by_role("button", name="Name").click()
    expect(names).to_have_text(["shot010_layout", "shot020_lighting", "shot030_comp",
                                "shot040_fx"])
    expect(page.locator("th[data-sort=name]")).to_have_attribute("aria-sort", "ascending")
    page.get_by_role("button", name="Name").click()
    expect(names.first).to_have_text("shot040_fx")
    page.get_by_role("button", name="Priority").click()
    expect(names.first).to_have_text("shot020_lighting")  # highest first
    page.get_by_role("button", name="Owner").click()
    expect(rows.locator("td.owner")).to_have_text(["alice", "alice", "bob", "carol"])
    page.locator("#job-owner").select_option("alice")
    page.reload()  # the sort and the filter are remembered
    expect(page.locator("th[data-sort=owner]")).to_have_attribute("aria-sort", "ascending",
                                                                  timeout=10_000)
    expect(rows.locator("td.owner")).to_have_text(["alice", "alice"])
    expect(page.locator("#job-owner")).to_have_value("alice")


@pytest.mark.skipif(not SCREENSHOTS, reason="set BLENDERFARM_SCREENSHOTS=docs to remake them")
def test_docs_screenshots(farm_procs, page: Page, tmp_path: Path) -> None:
    """A busier farm for the README: two nodes, several jobs, one mid-render."""
    out = Path(SCREENSHOTS or ".")
    scene = make_scene("anim", tmp_path / "scene", frames=96, res=200, samples=24)
    server = farm_procs.server()
    for name in ("render-01", "render-02"):
        farm_procs.node(name)
    farm_procs.wait_nodes(2)
    done = submit(server.url, scene, "--frames", "1-12", "--name", "shot010_layout")
    wait_for(lambda: get_json(f"{server.url}/api/jobs/{done}")["job"]["status"] == "completed",
             120, "the first job")
    canceled = submit(server.url, scene, "--frames", "1-40", "--name", "shot015_fx_test")
    time.sleep(1.5)
    bf(server.url, "cancel", canceled)
    active = submit(server.url, scene, "--frames", "1-96", "--chunk", "2", "--priority", "70",
                    "--name", "shot020_lighting_v03")
    submit(server.url, scene, "--frames", "1-48", "--name", "shot030_comp", "--priority", "40")
    wait_for(lambda: get_json(f"{server.url}/api/jobs/{active}")["job"]["frames_done"] >= 26,
             240, "a third of the active job")
    page.set_viewport_size({"width": 1440, "height": 1000})
    page.goto(f"{server.url}/#/jobs")
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)
    time.sleep(2.5)  # a stats tick and some progress events
    box = page.locator("main .panel").bounding_box()
    assert box is not None
    page.screenshot(path=str(out / "dashboard-jobs.png"),
                    clip={"x": 0, "y": 0, "width": 1440, "height": box["y"] + box["height"] + 14})
    page.goto(f"{server.url}/#/jobs/{active}")
    expect(page.locator(".preview-box img")).to_be_visible(timeout=10_000)
    time.sleep(3)  # the running task's log fills in
    page.screenshot(path=str(out / "dashboard-job.png"))
    # The New job page with the scene's folder picked, read by the farm, filled in.
    page.goto(f"{server.url}/#/new")
    page.set_input_files("#nj-folder", str(tmp_path / "scene"))
    expect(page.locator("#nj-frames")).to_have_value("1-96", timeout=30_000)
    expect(page.locator("[data-role=stage]")).to_have_text("Every file is on the farm.",
                                                           timeout=30_000)
    page.locator("#nj-name").fill("shot040_anim_v01")
    page.locator("#nj-chunk").fill("4")
    page.locator("#nj-user").fill("ada")
    page.locator("#nj-user").blur()
    box = page.locator("main .new-job").bounding_box()
    assert box is not None
    page.screenshot(path=str(out / "dashboard-new-job.png"),
                    clip={"x": 0, "y": 0, "width": 1440, "height": box["y"] + box["height"] + 14})
    shutil.rmtree(tmp_path / "scene", ignore_errors=True)

