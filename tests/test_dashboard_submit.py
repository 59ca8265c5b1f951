"""The dashboard's New job page (#/new) in a real browser (Debian's Chromium, driven by
Playwright) against a real bf-server, with a real bf-node rendering with real Blender.

The page is opened at two addresses of the same server: ``http://127.0.0.1`` (a secure
context: Web Crypto hashes small files) and ``http://farm.test`` (mapped to 127.0.0.1
by Chromium's resolver, as a farm on a LAN address is: no secure context, no
``crypto.subtle``, every file hashed by dashboard/sha256.js). Both must name every file
as ``hashlib`` does, or the second upload of a project would not find its blobs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blenderfarm.server import tokens
from procs import (
    NodeProc,
    ServerProc,
    free_port,
    get_json,
    nodes_online,
    post_ok,
    wait_for,
)
from scenes import make_scene, read_rgba, render_frames, textured_colors
from test_dashboard import checked_page, chromium, pytestmark  # noqa: F401 - the same skips

with contextlib.suppress(ImportError):  # pytestmark skips the tests without it
    from playwright.sync_api import Browser, Page, expect

INSECURE_HOST = "farm.test"


class Farm:
    """One server and one node for the module, and the textured project made once."""

    project: Path  # the folder a user picks: shots/shot.blend, textures/, lib/props.blend

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = ServerProc(root / "server", free_port())
        self.server.start()
        self.url = self.server.url
        self.insecure = f"http://{INSECURE_HOST}:{self.server.port}"
        self.node = NodeProc(self.url, root / "node", "render-01")
        self.node.start()

    @property
    def blobs(self) -> Path:
        return self.root / "server" / "blobs"

    def jobs(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.url}/api/jobs")["jobs"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(get_json(f"{self.url}/api/jobs/{job_id}")["job"])

    def stop(self) -> None:
        self.node.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("submit")
    f = Farm(root)
    try:
        make_scene("textured", root / "scene", frames=3, res=64, samples=4)
        f.project = root / "scene" / "project"
        wait_for(lambda: nodes_online(f.url) >= 1, 60, "the node online")
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium(f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1") as b:
        yield b


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser, height=1000) as pg:
        yield pg


def open_new_job(page: Page, base: str) -> None:
    page.goto(f"{base}/#/new")
    expect(page.get_by_role("heading", name="New job")).to_be_visible(timeout=10_000)


# --- hashing -------------------------------------------------------------------------------

HASH_CASES = """async ([cases, sliced]) => {
  const m = await import('/static/sha256.js');
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const out = {whole: cases.map((c) => m.sha256Hex(bytes(c)))};
  const data = bytes(sliced);
  // fed in uneven pieces: 1, 2, 3, ... bytes, across every block boundary
  const h = new m.Sha256();
  for (let i = 0, k = 1; i < data.length; i += k, k = k % 97 + 1) h.update(data.subarray(i, i + k));
  out.pieces = h.hex();
  // a file read in slices (Blob.slice), the way a 4 GB file is
  const blob = new Blob([data]);
  let seen = 0;
  out.slices = await m.hashBlob(blob, {slice: 1000, native: false, onBytes: (n) => { seen += n; }});
  out.seen = seen;
  out.native = await m.hashBlob(blob);
  out.secure = window.isSecureContext;
  out.subtle = !!(window.crypto && window.crypto.subtle);
  return out;
}"""


@pytest.mark.parametrize("where", ["insecure", "secure"])
def test_the_pure_js_sha256_equals_hashlib(farm: Farm, page: Page, where: str) -> None:
    base = farm.insecure if where == "insecure" else farm.url
    open_new_job(page, base)
    cases = [b"", b"a", os.urandom(55), os.urandom(56), os.urandom(64), os.urandom(1 << 20)]
    sliced = os.urandom((1 << 20) + 77)
    got = page.evaluate(HASH_CASES, [[base64.b64encode(c).decode() for c in cases],
                                     base64.b64encode(sliced).decode()])
    assert got["whole"] == [hashlib.sha256(c).hexdigest() for c in cases]
    want = hashlib.sha256(sliced).hexdigest()
    assert got["pieces"] == want
    assert got["slices"] == want and got["seen"] == len(sliced)
    assert got["native"] == want
    # farm.test is what a farm at a LAN address is to the browser: no Web Crypto there
    assert got["secure"] is (where == "secure")
    assert got["subtle"] is (where == "secure")


# --- helpers for the flow --------------------------------------------------------------------


def copy_project(farm: Farm, dest: Path) -> Path:
    shutil.copytree(farm.project, dest)
    return dest


def files_of(folder: Path) -> dict[str, str]:
    """relpath -> sha256 of the files a user's pick should send (no hidden, no backups)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(p.startswith(".") for p in rel.split("/")) \
                and not rel.endswith(".blend1"):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def pick_folder(page: Page, folder: Path, main: str | None = "shots/shot.blend") -> None:
    page.set_input_files("#nj-folder", str(folder))
    if main is not None:
        expect(page.locator("#nj-main")).to_be_enabled(timeout=30_000)
        page.select_option("#nj-main", main)


def wait_all_up(page: Page, timeout: float = 60_000) -> None:
    expect(page.locator("[data-role=stage]")).to_have_text("Every file is on the farm.",
                                                           timeout=timeout)


def puts(page: Page) -> list[str]:
    """The blob uploads the page makes from now on (a list that fills as they go)."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if r.method == "PUT" else None)
    return seen


def job_id_from(page: Page) -> str:
    expect(page).to_have_url(re.compile(r"#/jobs/[^/]+$"), timeout=20_000)
    return page.url.rsplit("/", 1)[-1]


# --- submitting ----------------------------------------------------------------------------


def test_a_project_folder_submitted_from_the_page_renders_as_blender_does(
        farm: Farm, page: Page, tmp_path: Path) -> None:
    project = copy_project(farm, tmp_path / "project")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / ".DS_Store").write_bytes(b"\0" * 64)
    shutil.copy(project / "shots" / "shot.blend", project / "shots" / "shot.blend1")
    want = files_of(project)
    assert set(want) == {"shots/shot.blend", "textures/checker.png", "lib/props.blend"}

    # farm.test: no secure context, so every file is hashed by dashboard/sha256.js
    open_new_job(page, farm.insecure)
    page.get_by_role("link", name="New job").click()  # the header's link leads here
    expect(page.get_by_role("link", name="New job")).to_have_attribute("aria-current", "page")
    pick_folder(page, project)
    expect(page.locator("[data-role=project]")).to_have_text(
        re.compile(r"^3 files, .* \(3 hidden or backup files left out\)$"))
    expect(page.locator("#nj-frames")).to_have_value("1-3", timeout=30_000)  # the scene's
    expect(page.locator("#nj-name")).to_have_value("shot")
    read = page.locator(".nj-read")
    expect(read.locator("dt:text-is('Engine') + dd")).to_have_text("CYCLES")
    expect(read.locator("dt:text-is('Resolution') + dd")).to_contain_text("64 × 64")
    expect(read.locator("dt:text-is('Cameras') + dd")).to_have_text("Camera")
    expect(read.locator("dt:text-is('Saved by') + dd")).to_have_text("Blender 3.4")
    wait_all_up(page)
    expect(page.locator(".nj-missing")).to_have_count(0)  # the texture and library came
    page.locator("#nj-user").fill("ada")
    with page.expect_request(lambda r: r.url.endswith("/api/jobs") and r.method == "POST") as req:
        page.get_by_role("button", name="Submit job").click()
    spec = req.value.post_data_json
    assert spec["manifest"] == want  # the same names and hashes as hashlib's
    assert spec["blend"] == "shots/shot.blend" and spec["frames"] == "1-3"
    assert spec["user"] == "ada" and spec["scene"] == "Scene"
    assert spec["blender_saved"] == "3.4" and spec["resolution"] == [64, 64]
    job_id = job_id_from(page)
    assert job_id in json.loads(page.evaluate("localStorage.getItem('bf.submitted')"))
    assert page.evaluate("localStorage.getItem('blenderfarm.user')") == "ada"

    expect(page.locator(".job-head .badge")).to_have_text("completed", timeout=120_000)
    job = farm.job(job_id)
    assert job["owner"] == "ada" and job["frames_done"] == 3
    outputs = get_json(f"{farm.url}/api/jobs/{job_id}/outputs")["outputs"]
    frame2 = next(o["name"] for o in outputs if o.get("frame") == 2)
    got = tmp_path / "farm.png"
    with urllib.request.urlopen(f"{farm.url}/api/jobs/{job_id}/outputs/{frame2}",
                                timeout=10) as resp:
        got.write_bytes(resp.read())
    direct = render_frames(farm.project / "shots" / "shot.blend", [2], tmp_path / "direct")[0]
    import numpy as np

    a, b = read_rgba(got), read_rgba(direct)
    assert a.shape == b.shape == (64, 64, 4)
    assert np.array_equal(a, b), f"{int((a != b).any(axis=2).sum())} pixels differ"
    colors = textured_colors(got)
    assert colors["magenta"] == 0 and colors["yellow"] > 0 and colors["green"] > 0


def test_a_second_upload_of_the_same_files_uploads_nothing(farm: Farm, page: Page,
                                                            tmp_path: Path) -> None:
    project = copy_project(farm, tmp_path / "project")
    (project / "notes.txt").write_bytes(os.urandom(3000))  # new to the farm: it must go up
    open_new_job(page, farm.insecure)  # hashed by sha256.js
    first = puts(page)
    pick_folder(page, project)
    wait_all_up(page)
    assert any(hashlib.sha256((project / "notes.txt").read_bytes()).hexdigest() in url
               for url in first)
    page.get_by_role("button", name="Start over").click()
    expect(page.locator("[data-role=drop]")).to_be_visible()

    open_new_job(page, farm.url)  # a secure context: Web Crypto hashes these small files
    again = puts(page)
    pick_folder(page, project)
    wait_all_up(page)
    expect(page.locator("[data-role=upload-figures]")).to_have_text(
        "nothing to upload · 4 files on the farm already")
    expect(page.locator("#nj-frames")).to_have_value("1-3")
    assert again == []


def test_a_truncated_blend_is_refused_with_the_servers_sentence(farm: Farm, page: Page,
                                                                tmp_path: Path) -> None:
    whole = (farm.project / "shots" / "shot.blend").read_bytes()
    bad = tmp_path / "cut" / "shot.blend"
    bad.parent.mkdir()
    bad.write_bytes(whole[: len(whole) // 2])
    sha = hashlib.sha256(bad.read_bytes()).hexdigest()
    jobs = len(farm.jobs())
    open_new_job(page, farm.url)
    with page.expect_response(lambda r: r.url.endswith("/api/inspect")) as resp:
        page.set_input_files("#nj-files", str(bad))
    assert resp.value.status == 400
    message = resp.value.json()["error"]["message"]
    error = page.locator("[data-role=error]")
    expect(error).to_contain_text(message)
    expect(error).to_contain_text("Nothing was submitted.")
    expect(page.locator("#nj-frames")).to_have_count(0)  # no form to submit
    expect(page.locator("[data-role=drop]")).to_be_visible()  # pick again
    assert len(farm.jobs()) == jobs
    assert sha in post_ok(farm.url + "/api/blobs/missing", {"hashes": [sha]})["missing"]


def test_missing_files_are_listed_and_need_a_yes_to_submit(farm: Farm, page: Page) -> None:
    """The lone shot.blend, dropped: its texture and library lie outside what came."""
    open_new_job(page, farm.url)
    drop(page, "shot.blend", (farm.project / "shots" / "shot.blend").read_bytes())
    missing = page.locator(".nj-missing tbody tr")
    expect(missing).to_have_count(2, timeout=30_000)
    expect(page.locator("tr[data-missing='//../textures/checker.png']")).to_contain_text(
        "outside the folder")
    expect(page.locator("tr[data-missing='//../lib/props.blend'] td").nth(1)).to_have_text(
        "shot.blend")
    page.locator("#nj-paused").check()
    sent = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/api/jobs")
            and r.method == "POST" else None)
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("[data-role=form-error]")).to_have_text(
        "Some files are missing: tick “Submit anyway” to submit without them.")
    assert sent == []
    page.get_by_label("Submit anyway? The render will lack them.").check()
    page.get_by_role("button", name="Submit job").click()
    job_id = job_id_from(page)
    try:
        expect(page.locator(".job-head .badge")).to_have_text("paused", timeout=10_000)
    finally:
        req = urllib.request.Request(f"{farm.url}/api/jobs/{job_id}", method="DELETE")
        urllib.request.urlopen(req, timeout=5).close()


# Runs in Blender: a second scene with a range of its own, saved as sys.argv[-1]
SECOND_SCENE = ("import bpy, sys\n"
                "alt = bpy.data.scenes.new('Alt')\n"
                "alt.frame_start, alt.frame_end, alt.frame_step = 10, 20, 2\n"
                "bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])\n")


def test_choosing_another_scene_refills_its_frame_range(farm: Farm, page: Page,
                                                         tmp_path: Path) -> None:
    from scenes import run_blender

    blend = tmp_path / "two" / "two.blend"
    blend.parent.mkdir()
    proc = run_blender([str(farm.project / "shots" / "shot.blend"), "--python-expr",
                        SECOND_SCENE, "--", str(blend)])
    assert blend.is_file(), proc.stdout
    open_new_job(page, farm.url)
    page.set_input_files("#nj-files", str(blend))
    expect(page.locator("#nj-frames")).to_have_value("1-3", timeout=30_000)  # the active one
    expect(page.locator("#nj-scene option")).to_have_text(["Alt", "Scene"])
    page.locator("#nj-frames").fill("2")
    page.select_option("#nj-scene", "Alt")
    expect(page.locator("#nj-frames")).to_have_value("10-20x2")
    expect(page.locator(".nj-read dt:text-is('Cameras') + dd")).to_have_text("none")
    expect(page.locator("#nj-camera")).to_contain_text("Scene's camera (none)")
    page.select_option("#nj-scene", "Scene")
    expect(page.locator("#nj-frames")).to_have_value("1-3")


def test_what_is_dropped_without_a_blend_is_refused_in_one_sentence(farm: Farm, page: Page
                                                                   ) -> None:
    open_new_job(page, farm.url)
    drop(page, "notes.txt", b"not a scene")
    expect(page.locator("[data-role=error]")).to_have_text(
        "There is no .blend file in what you picked: pick a .blend file or a folder that "
        "holds one.")


DROP = """([name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name));
  const zone = document.querySelector('[data-role=drop]');
  for (const type of ['dragenter', 'dragover', 'drop']) {
    zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
  }
}"""


def drop(page: Page, name: str, data: bytes) -> None:
    """Drop one file on the page, as a file dragged from the desktop is."""
    page.evaluate(DROP, [name, base64.b64encode(data).decode()])


# --- cancel, limits, tokens ----------------------------------------------------------------

BIG = 200 * 1024 * 1024


def test_cancel_halfway_aborts_the_upload_and_the_farm_keeps_no_partial_blob(
        farm: Farm, page: Page, tmp_path: Path) -> None:
    project = copy_project(farm, tmp_path / "project")
    big = project / "cache" / "big.bin"
    big.parent.mkdir()
    with open(big, "wb") as f:
        for _ in range(BIG // (8 << 20)):
            f.write(os.urandom(8 << 20))
    sha = hashlib.sha256(big.read_bytes()).hexdigest()
    tmp = farm.blobs / "tmp"
    jobs = len(farm.jobs())
    open_new_job(page, farm.url)
    # The longest the page went without running a timer, while it hashes 200 MB (by
    # sha256.js: past Web Crypto's size) and uploads: clicks wait at most that long.
    page.evaluate("""() => {
      window.lag = 0; let last = performance.now();
      setInterval(() => { const now = performance.now();
        window.lag = Math.max(window.lag, now - last); last = now; }, 10);
    }""")
    # Loopback moves 200 MB in a second: slow the page's uploads to 40 MB/s.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": 40 * 1024 * 1024})
    pick_folder(page, project)
    bar = page.locator("[data-role=upload] [role=progressbar]")
    page.wait_for_function(
        "el => Number(el.getAttribute('aria-valuenow')) >= 30", arg=bar.element_handle(),
        timeout=60_000)
    assert list(tmp.iterdir()), "no upload under way on the server"  # the check below can fail
    assert page.evaluate("window.lag") < 1000, "the page froze while hashing"
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("[data-role=notice]")).to_have_text("Canceled: nothing was submitted.")
    expect(page.locator("[data-role=drop]")).to_be_visible()
    wait_for(lambda: not list(tmp.iterdir()), 15, "the server to drop the partial upload")
    time.sleep(1)
    assert not list(tmp.iterdir())
    assert not (farm.blobs / sha[:2] / sha).exists()
    assert sha in post_ok(farm.url + "/api/blobs/missing", {"hashes": [sha]})["missing"]
    assert len(farm.jobs()) == jobs


def test_a_file_over_the_farms_size_limit_is_refused_in_one_sentence(
        farm: Farm, page: Page, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(f"[server]\nmax_blob_size = {2 << 20}\n")
    server = ServerProc(tmp_path / "small", free_port(), ["--config", str(config)])
    server.start()
    try:
        project = copy_project(farm, tmp_path / "project")
        (project / "textures" / "huge.exr").write_bytes(os.urandom(3 << 20))
        open_new_job(page, server.url)
        pick_folder(page, project, main=None)
        # said before anything is hashed or sent: the farm says its limit in /api/info
        error = page.locator("[data-role=error]")
        expect(error).to_contain_text("textures/huge.exr is ", timeout=30_000)
        expect(error).to_contain_text("this farm takes in one file (its max_blob_size). "
                                      "Nothing was submitted.")
        expect(page.locator("#nj-frames")).to_have_count(0)
        assert get_json(f"{server.url}/api/jobs")["jobs"] == []
        blobs = tmp_path / "small" / "blobs"
        assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))
    finally:
        server.stop()


def test_with_a_token_the_job_is_the_token_users(farm: Farm, page: Page, tmp_path: Path) -> None:
    data = tmp_path / "secure"
    data.mkdir()
    _, secret = tokens.create(data / "farm.db", "user", "artist")
    server = ServerProc(data, free_port())
    server.start()
    try:
        page.goto(f"{server.url}/#/new")
        page.get_by_label("User token").fill(secret)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="New job")).to_be_visible(timeout=10_000)
        pick_folder(page, farm.project)
        wait_all_up(page)
        expect(page.locator("[data-role=who]")).to_have_text("Submitting as artist.")
        expect(page.locator("#nj-user")).to_have_count(0)
        # every setting of the form, into the spec as bf submit's options put them
        page.locator("#nj-name").fill("shot010 lighting")
        page.locator("#nj-frames").fill("1-3,5")
        page.locator("#nj-chunk").fill("2")
        page.locator("#nj-priority").fill("70")
        page.locator("#nj-tags").fill("fast, big-ram")
        page.locator("#nj-samples").fill("8")
        page.locator("#nj-percent").fill("50")
        page.select_option("#nj-format", "JPEG")
        page.select_option("#nj-camera", "Camera")
        page.select_option("#nj-device", "CPU")
        page.select_option("#nj-denoise", "off")
        page.select_option("#nj-persistent", "on")
        page.select_option("#nj-tilesMode", "count")
        page.locator("#nj-tiles").fill("4")
        page.locator("#nj-video").check()
        page.locator("#nj-paused").check()  # no node here: nothing renders it
        with page.expect_request(lambda r: r.url.endswith("/api/jobs")
                                 and r.method == "POST") as req:
            page.get_by_role("button", name="Submit job").click()
        spec = req.value.post_data_json
        assert "user" not in spec
        assert req.value.headers["authorization"] == f"Bearer {secret}"
        assert {k: v for k, v in spec.items() if k != "manifest"} == {
            "blend": "shots/shot.blend", "name": "shot010 lighting", "scene": "Scene",
            "frames": "1-3,5", "chunk": 2, "priority": 70, "tags": ["fast", "big-ram"],
            "overrides": {"samples": 8, "resolution_percent": 50, "format": "JPEG",
                          "camera": "Camera", "device": "CPU", "denoise": False,
                          "persistent_data": True},
            "tiles": 4, "video": True, "paused": True, "output_pattern": "frame_",
            "scene_format": "PNG", "blender_saved": "3.4", "resolution": [32, 32]}
        job_id = job_id_from(page)
        expect(page.locator(".job-head .badge")).to_have_text("paused", timeout=10_000)
        with urllib.request.urlopen(urllib.request.Request(
                f"{server.url}/api/jobs/{job_id}",
                headers={"Authorization": f"Bearer {secret}"}), timeout=5) as resp:
            job = json.loads(resp.read())["job"]
        assert job["owner"] == "artist" and job["frames_total"] == 4
    finally:
        server.stop()
