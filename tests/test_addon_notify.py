"""The add-on tells the artist when a followed job ends, in Blender's status bar.

A file lists four jobs of a real bf-server when it is opened: one that had already
completed, and three still waiting. A scripted node (``fakenode``: the add-on does not
care who renders) then completes one, fails one, and the third is canceled. In Debian's
Blender 3.4 under Xvfb, with the Render on Farm panel out of sight, exactly three
sentences reach the status bar (read back from the window manager's reports, which the
status bar and the Info editor show), none for the job that had ended before, none
again when the jobs are read once more. In the background (3.4, and the Blender 4.5
and 5.0 ``bpy`` modules with the extension zip) the same sentences go to stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blenderfarm.protocol import messages as m
from procs import ServerProc, free_port, get_json, wait_for
from scenes import REPO, needs_blender
from test_dashboard import ThreadNode, post_job

sys.path.insert(0, str(REPO))
import build_addon  # noqa: E402

SCREEN = "760x1180x24"
FINAL = ("completed", "failed", "canceled")
CRASH = "Blender crashed (SIGSEGV)."
#: what the status bar must say, job by job (the failure's sentence starts so)
SAID = {"new": "Farm: new shot completed (2 frames)",
        "broken": "Farm: broken shot failed: frame 1 failed: " + CRASH,
        "dropped": "Farm: dropped shot canceled"}

# Runs inside Blender (UI or background): install the add-on, open a file that lists
# the farm's jobs, then the steps of the mode.
PRELUDE = r'''
import json, sys, time, traceback
import bpy

args = json.loads(sys.argv[sys.argv.index("--") + 1])
if args["install"] == "legacy":
    bpy.ops.preferences.addon_install(filepath=args["zip"])
    bpy.ops.preferences.addon_enable(module="blenderfarm_addon")
    MODULE = "blenderfarm_addon"
else:
    bpy.ops.extensions.package_install_files(filepath=args["zip"], repo="user_default",
                                             enable_on_install=True)
    MODULE = "bl_ext.user_default.blenderfarm"
if hasattr(bpy.app, "online_access"):  # 4.2+: off in a bpy module
    bpy.context.preferences.system.use_online_access = True
bpy.context.preferences.addons[MODULE].preferences.server_url = args["server"]
# A file that lists its farm jobs, as one does after submits: saved, then opened.
for job_id, name in args["jobs"]:
    ref = bpy.context.scene.blenderfarm.jobs.add()
    ref.job_id, ref.name = job_id, name
bpy.ops.wm.save_as_mainfile(filepath=args["blend"])
bpy.ops.wm.open_mainfile(filepath=args["blend"])
wm = bpy.context.window_manager
out = {}


def states():
    return {s.job_id: s.status for s in wm.blenderfarm.jobs}


def read_all():
    return len(states()) == len(args["jobs"]) and all(states().values())


def watching():
    out["opened"] = states()
    open(args["watching"], "w").close()  # the test's node goes on now
'''

UI_SCRIPT = PRELUDE + r'''

def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        yield 0.1


def farm_reports():
    """The window manager's reports (what the status bar shows), as the Info editor
    copies them; the timeline becomes an Info editor for that."""
    win = wm.windows[0]
    area = next(a for a in win.screen.areas if a.type in ("DOPESHEET_EDITOR", "INFO"))
    area.type = "INFO"
    region = next(r for r in area.regions if r.type == "WINDOW")
    with bpy.context.temp_override(window=win, screen=win.screen, area=area, region=region):
        bpy.ops.info.select_all(action="SELECT")
        bpy.ops.info.report_copy()
    return [line for line in wm.clipboard.splitlines() if line.startswith("Farm:")]


def steps():
    out["panel_shown"] = any(
        s.type == "PROPERTIES" and s.context == "OUTPUT"
        for a in wm.windows[0].screen.areas for s in a.spaces)
    yield from until(read_all, 60, "the file's jobs read")
    yield 1.0  # a notice of them would be out by now
    out["at_open"] = farm_reports()
    watching()
    yield from until(lambda: all(v in ("completed", "failed", "canceled")
                                 for v in states().values()), 60, "the jobs to end")
    out["ended"] = states()
    yield 1.0  # each notice reports one timer tick after the drain
    out["reports"] = farm_reports()
    out["message"] = [wm.blenderfarm.message, wm.blenderfarm.message_kind]
    win = wm.windows[0]
    with bpy.context.temp_override(window=win, screen=win.screen):
        bpy.ops.blenderfarm.refresh_jobs()  # every job read again, the ended ones too
    yield 3.0
    out["after_refresh"] = farm_reports()


def run(gen):
    def tick():
        try:
            return next(gen)
        except StopIteration:
            pass
        except Exception:
            out["error"] = traceback.format_exc()
        print("RESULT:" + json.dumps(out), flush=True)
        bpy.ops.wm.quit_blender()
        return None
    bpy.app.timers.register(tick, first_interval=0.5, persistent=True)


run(steps())
'''

BACKGROUND_SCRIPT = PRELUDE + r'''
deadline = time.monotonic() + 60
while not read_all() and time.monotonic() < deadline:
    bpy.ops.blenderfarm.refresh_jobs()  # no timers in the background: poll here
    time.sleep(0.2)
print("MARK: opened", flush=True)
watching()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    bpy.ops.blenderfarm.refresh_jobs()  # reads the ended jobs again each time, too
    if all(v in ("completed", "failed", "canceled") for v in states().values()):
        break
    time.sleep(0.2)
out["ended"] = states()
bpy.ops.blenderfarm.refresh_jobs()
out["message"] = [wm.blenderfarm.message, wm.blenderfarm.message_kind]
print("RESULT:" + json.dumps(out), flush=True)
'''


def with_blender(func: Callable) -> Callable:
    for mark in needs_blender:
        func = mark(func)
    return func


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("addon-dist")
    return build_addon.build(out, REPO / ".cache" / "addon-wheels")


class Farm:
    """A server, a scripted node, and the four jobs of the file: ``old`` completed
    already; ``new``, ``broken`` and ``dropped`` wait until :meth:`end` ends them."""

    def __init__(self, root: Path) -> None:
        self.server = ServerProc(root / "server", free_port())
        self.server.start()
        self.url = self.server.url
        self.node = ThreadNode(self.url, "fake-01")
        self.assigns: dict[str, m.Assign] = {}
        self.ids: dict[str, str] = {}
        self.ids["old"] = post_job(self.url, "old shot", frames="1")
        self.node.call(self.node.node.finish(self.assign("old")))
        wait_for(lambda: self.status("old") == "completed", 10, "the old job done")
        self.ids["new"] = post_job(self.url, "new shot", frames="1-2", chunk=2)
        self.ids["broken"] = post_job(self.url, "broken shot", frames="1")
        # no node has the tag: it waits until it is canceled
        self.ids["dropped"] = post_job(self.url, "dropped shot", frames="1",
                                       tags=["nobody-has-it"])

    def status(self, key: str) -> str:
        return str(get_json(f"{self.url}/api/jobs/{self.ids[key]}")["job"]["status"])

    def assign(self, key: str) -> m.Assign:
        """The node's assign for this job (one of another job waits its turn)."""
        while self.ids[key] not in self.assigns:
            got = self.node.call(self.node.node.expect(m.Assign, timeout=10), 15)
            self.assigns[got.job_id] = got
        return self.assigns.pop(self.ids[key])

    def end(self) -> None:
        """Complete one job, fail one for good, cancel the one no node takes."""
        self.node.call(self.node.node.finish(self.assign("new")))
        broken = self.assign("broken")
        self.node.call(self.node.node.send(m.TaskFailed(task_id=broken.task_id, error=CRASH,
                                                        retryable=False)))
        urllib.request.urlopen(urllib.request.Request(
            f"{self.url}/api/jobs/{self.ids['dropped']}/cancel", data=b"{}", method="POST",
            headers={"Content-Type": "application/json"}), timeout=5).close()

    def file_jobs(self) -> list[list[str]]:
        names = {"old": "old shot", "new": "new shot", "broken": "broken shot",
                 "dropped": "dropped shot"}
        return [[self.ids[k], names[k]] for k in names]

    def close(self) -> None:
        self.node.close()
        self.server.stop()


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    f = Farm(tmp_path)
    try:
        yield f
    finally:
        f.close()


def run_blender(cmd: list[str], env: dict[str, str], tmp: Path, args: dict,
                when_watching: Callable[[], None], timeout: float = 240) -> dict:
    """Run Blender on a driver; once it says it follows the jobs, ``when_watching``
    ends them; return its RESULT (with its whole output as ``log``)."""
    watching = tmp / "watching"
    log_path = tmp / "blender.log"
    args = {**args, "watching": str(watching), "blend": str(tmp / "shots.blend")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*cmd, "--", json.dumps(args)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **env})
        try:
            deadline = time.monotonic() + timeout
            while not watching.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("Blender never followed the jobs:\n"
                                         + log_path.read_text()[-4000:])
                time.sleep(0.1)
            when_watching()
            proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    for line in text.splitlines():
        if line.startswith("RESULT:"):
            result: dict = json.loads(line[len("RESULT:"):])
            result["log"] = text
            return result
    raise AssertionError(f"Blender printed no result:\n{text[-4000:]}")


def check_ended(result: dict, farm: Farm) -> None:
    assert "error" not in result, result["error"] + result["log"][-3000:]
    assert "Traceback" not in result["log"], result["log"][-4000:]
    assert result["ended"] == {farm.ids["old"]: "completed", farm.ids["new"]: "completed",
                               farm.ids["broken"]: "failed", farm.ids["dropped"]: "canceled"}
    assert farm.status("broken") == "failed"
    # a failure also stays in the panel, as the one sentence
    assert result["message"] == [SAID["broken"], "ERROR"], result["message"]


@with_blender
@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed "
                    "(apt-get install xvfb)")
def test_blender34_status_bar_says_when_a_followed_job_ends(zips, farm: Farm,
                                                            tmp_path: Path) -> None:
    user, tmp = tmp_path / "user", tmp_path / "tmp"
    tmp.mkdir()
    env = {"BLENDER_USER_SCRIPTS": str(user / "scripts"),
           "BLENDER_USER_CONFIG": str(user / "config"), "TMPDIR": str(tmp), "TEMP": str(tmp)}
    script = tmp_path / "ui.py"
    script.write_text(UI_SCRIPT)
    blender = os.environ.get("BLENDER") or "blender"
    cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN}", blender, "--factory-startup",
           "--python", str(script)]
    result = run_blender(cmd, env, tmp_path, {"install": "legacy", "zip": str(zips[0]),
                                              "server": farm.url, "jobs": farm.file_jobs()},
                         farm.end)
    check_ended(result, farm)
    assert not result["panel_shown"], "the panel must be out of sight"
    opened = result["opened"]
    assert opened[farm.ids["old"]] == "completed" and opened[farm.ids["dropped"]] == "queued"
    assert result["at_open"] == [], "a job that ended before the file opened is no news"
    # The Info editor lists the newest first; each job once.
    assert sorted(result["reports"]) == sorted(SAID.values()), result["reports"]
    assert result["after_refresh"] == result["reports"], "reading ended jobs again is no news"


def background(zips: tuple[Path, Path], farm: Farm, tmp_path: Path, cmd: list[str],
               env: dict[str, str], install: str) -> None:
    """The same jobs, the add-on polled by a script: the sentences go to stdout, and
    none before the script said it had read the file's jobs."""
    script = tmp_path / "driver.py"
    script.write_text(BACKGROUND_SCRIPT)
    zip_path = zips[0] if install == "legacy" else zips[1]
    result = run_blender([*cmd, str(script)], env, tmp_path,
                         {"install": install, "zip": str(zip_path), "server": farm.url,
                          "jobs": farm.file_jobs()}, farm.end)
    check_ended(result, farm)
    lines = result["log"].splitlines()
    opened = lines.index("MARK: opened")
    said = [line for line in lines if line.startswith("Farm:")]
    assert not any(line.startswith("Farm:") for line in lines[:opened])
    assert sorted(said) == sorted(SAID.values()), said


@with_blender
def test_blender34_in_the_background_says_the_ending_on_stdout(zips, farm: Farm,
                                                               tmp_path: Path) -> None:
    cmd = [os.environ.get("BLENDER") or "blender", "-b", "--factory-startup", "--python"]
    env = {"BLENDER_USER_SCRIPTS": str(tmp_path / "user" / "scripts"),
           "BLENDER_USER_CONFIG": str(tmp_path / "user" / "config")}
    background(zips, farm, tmp_path, cmd, env, "legacy")


@with_blender
@pytest.mark.parametrize("release", ["4.5", "5.0"])
@pytest.mark.timeout(900)  # a first run may make the bpy venv
def test_bpy_module_extension_says_the_ending_on_stdout(zips, farm: Farm, tmp_path: Path,
                                                        release: str, request) -> None:
    python = request.getfixturevalue(f"bpy{release.replace('.', '')}_python")
    background(zips, farm, tmp_path, [python], {"BLENDER_USER_RESOURCES": str(tmp_path / "u")},
               "extension")


def test_the_ending_is_news_only_once_and_only_for_a_job_seen_running(zips, tmp_path) -> None:
    """``endings.ending`` in plain Python, imported from the built zip."""
    with zipfile.ZipFile(zips[0]) as zf:
        zf.extractall(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        from blenderfarm_addon import endings

        assert "bpy" not in sys.modules
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("blenderfarm_addon")]:
            del sys.modules[name]
    job = {"id": "3fa2b1c4d5e6", "name": "shot", "status": "completed", "frames_done": 1}
    assert endings.ending("active", job) == "Farm: shot completed (1 frame)"
    assert endings.ending("queued", {**job, "frames_done": 8}) == "Farm: shot completed (8 frames)"
    assert endings.ending("paused", {**job, "status": "canceled"}) == "Farm: shot canceled"
    failed = {**job, "status": "failed"}
    assert endings.ending("active", failed, "set Denoise to Off") == \
        "Farm: shot failed: set Denoise to Off"
    assert endings.ending("active", failed) == "Farm: shot failed: see its log in the dashboard."
    assert endings.ending("active", {**job, "name": ""}) == "Farm: 3fa2b1 completed (1 frame)"
    for before in ("", "completed", "failed", "canceled", "deleted"):
        assert endings.ending(before, job) == "", before  # first read, or read again
    assert endings.ending("queued", {**job, "status": "active"}) == ""
    assert endings.ending("active", {**job, "status": "deleted"}) == ""
