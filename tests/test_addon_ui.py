"""The add-on in Blender's real user interface (Debian's Blender 3.4 under Xvfb).

Here the operators run as a user runs them, from the panel (``INVOKE_DEFAULT``): the
submit is a modal operator whose timer drains the worker's queue. The test presses ESC
during a 96 MB upload, then the panel's Cancel button, then submits for real (with an
unsaved change), waits for the job watcher to show the job completed, downloads it, and
disables the add-on: no timer, handler, thread or class may be left. A timer ticking
every 20 ms measures that Blender never stalls meanwhile.

``BLENDERFARM_SCREENSHOT=path`` also saves a picture of the panel at the end (what
``docs/make_addon_screenshot.sh`` runs to make ``docs/addon-panel.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netproxy import NetProxy
from procs import get_json
from scenes import REPO, make_scene, needs_blender, textured_colors

sys.path.insert(0, str(REPO))
import build_addon  # noqa: E402

pytestmark = [
    *needs_blender,
    pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed "
                       "(apt-get install xvfb)"),
]
SCREEN = "760x1180x24"
BIG = 96 << 20

# Runs inside Blender's UI: a generator of steps, each yielding how long to wait.
UI_SCRIPT = r'''
import json, os, subprocess, sys, threading, time, traceback
import bpy

args = json.loads(sys.argv[sys.argv.index("--") + 1])
out = {"beats": []}
MODULE = "blenderfarm_addon"


def props():
    win = bpy.context.window_manager.windows[0]
    area = next(a for a in win.screen.areas if a.type == "PROPERTIES")
    region = next(r for r in area.regions if r.type == "WINDOW")
    return win, area, region


def invoke(op, **kw):
    win, area, region = props()
    with bpy.context.temp_override(window=win, area=area, region=region):
        return sorted(op("INVOKE_DEFAULT", **kw))


def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        yield 0.05


def beat():
    out["beats"].append(time.perf_counter())
    return 0.02


def show_panel():
    """Properties > Output, the editor maximized, scrolled down to the panel."""
    win, area, region = props()
    area.spaces.active.context = "OUTPUT"
    with bpy.context.temp_override(window=win, screen=win.screen, area=area):
        bpy.ops.screen.screen_full_area()
    yield 0.5
    yield from scroll_down()


def scroll_down():
    # Twice: the region learns its new height only when it redraws after the first.
    for _ in range(2):
        win, area, region = props()
        with bpy.context.temp_override(window=win, area=area, region=region):
            for _ in range(6):
                bpy.ops.view2d.scroll_down(page=True)
        region.tag_redraw()
        yield 0.5


def cancel_upload(how):
    """Start a submit of the big texture; stop it once bytes are going out."""
    image = bpy.data.images["checker.png"]
    image.filepath = args["big"][how]  # a file outside the project, packed all the same
    bpy.ops.ed.undo_push(message="big texture")  # unsaved, as an edit in the UI is
    state = bpy.context.window_manager.blenderfarm
    start = len(out["beats"])
    out[how + "_invoke"] = invoke(bpy.ops.blenderfarm.submit)
    # Loopback uploads are fast: stop as soon as the first bytes are out.
    yield from until(lambda: state.stage.startswith("Uploading") and state.progress > 0,
                     60, "an upload in progress")
    out[how + "_progress"] = state.progress
    if how == "esc":
        bpy.context.window_manager.windows[0].event_simulate(type="ESC", value="PRESS")
    else:
        invoke(bpy.ops.blenderfarm.cancel_task, kind="submit")
    yield from until(lambda: not state.task, 10, "the submit to stop")
    beats = out["beats"][start:]
    out[how + "_max_gap"] = max(b - a for a, b in zip(beats, beats[1:]))
    out[how + "_message"] = state.message
    image.filepath = "//../textures/checker.png"
    bpy.ops.ed.undo_push(message="texture back")


def submit_and_download():
    wm = bpy.context.window_manager
    settings = bpy.context.scene.blenderfarm
    settings.frame_end = 1
    bpy.data.objects["PropsInstance"].location = (-0.9, -0.9, 0.0)  # unsaved
    bpy.ops.ed.undo_push(message="move the prop")
    out["dirty"] = bpy.data.is_dirty
    out["submit_invoke"] = invoke(bpy.ops.blenderfarm.submit)
    yield from until(lambda: wm.blenderfarm.last_job_id and not wm.blenderfarm.task, 60,
                     "the job to be queued")
    out["submit_message"] = wm.blenderfarm.message
    job_id = out["job_id"] = wm.blenderfarm.last_job_id
    state = lambda: next((s for s in wm.blenderfarm.jobs if s.job_id == job_id), None)
    # No refresh here: the add-on's own timer and watcher thread must get there.
    yield from until(lambda: state() and state().status == "completed", 120, "completion")
    out["frames"] = [state().frames_done, state().frames_total]
    out["download_invoke"] = invoke(bpy.ops.blenderfarm.download, job_id=job_id)
    yield from until(lambda: state().downloaded_to and not wm.blenderfarm.task, 60,
                     "the download")
    out["downloaded_to"] = state().downloaded_to
    out["download_message"] = wm.blenderfarm.message


def missing_files_dialog():
    """A texture that does not exist: the dialog asks; Return (its OK) submits anyway."""
    wm = bpy.context.window_manager
    bpy.data.images["checker.png"].filepath = "//../textures/gone.png"
    bpy.ops.ed.undo_push(message="a texture goes missing")
    out["missing_invoke"] = invoke(bpy.ops.blenderfarm.submit)
    yield from until(lambda: wm.blenderfarm.awaiting_decision, 30, "the missing-files question")
    out["missing"] = [bpy.path.basename(m.name) for m in wm.blenderfarm.missing]
    yield 0.5  # the dialog opens on the next redraw
    wm.windows[0].event_simulate(type="RET", value="PRESS")
    yield from until(lambda: not wm.blenderfarm.task, 30, "the submit to go on")
    out["missing_message"] = wm.blenderfarm.message


def unregister_cleanly():
    status = sys.modules[MODULE + ".status"]
    tick = status._tick
    out["timer_while_enabled"] = bpy.app.timers.is_registered(tick)
    bpy.ops.preferences.addon_disable(module=MODULE)
    yield 0.2
    out["timer_left"] = bpy.app.timers.is_registered(tick)
    out["threads_left"] = [t.name for t in threading.enumerate()
                           if t.name.startswith("blenderfarm")]
    out["classes_left"] = [n for n in dir(bpy.types) if n.upper().startswith("BLENDERFARM")]
    out["handlers_left"] = [f.__name__ for n in dir(bpy.app.handlers)
                            for f in (getattr(bpy.app.handlers, n)
                                      if isinstance(getattr(bpy.app.handlers, n), list) else [])
                            if "blenderfarm" in (getattr(f, "__module__", "") or "")]


def steps():
    bpy.ops.preferences.addon_install(filepath=args["zip"])
    bpy.ops.preferences.addon_enable(module=MODULE)
    bpy.context.preferences.addons[MODULE].preferences.server_url = args["server"]
    bpy.app.timers.register(beat)
    yield from show_panel()
    yield from cancel_upload("esc")
    yield from cancel_upload("button")
    yield from submit_and_download()
    if args.get("screenshot"):
        yield from scroll_down()  # the job list has grown since
        subprocess.run(["import", "-window", "root", args["screenshot"]], check=True)
    yield from missing_files_dialog()
    yield from unregister_cleanly()


def run(gen):
    def tick():
        try:
            return next(gen)
        except StopIteration:
            pass
        except Exception:
            out["error"] = traceback.format_exc()
        bpy.app.timers.unregister(beat) if bpy.app.timers.is_registered(beat) else None
        out.pop("beats")
        with open(args["result"], "w") as f:
            json.dump(out, f)
        bpy.ops.wm.quit_blender()
        return None
    bpy.app.timers.register(tick, first_interval=1.0)


run(steps())
'''


@pytest.fixture(scope="module")
def legacy_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("addon-dist")
    return build_addon.build(out, REPO / ".cache" / "addon-wheels")[0]


def test_panel_operators_in_blenders_ui(legacy_zip, farm_procs, tmp_path, request) -> None:
    blend = make_scene("textured", tmp_path / "src")
    big = {"esc": str(tmp_path / "big1.bin"), "button": str(tmp_path / "big2.bin")}
    for path in big.values():
        with open(path, "wb") as f:
            for _ in range(BIG >> 20):
                f.write(os.urandom(1 << 20))
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    result_path = tmp_path / "result.json"
    script = tmp_path / "ui.py"
    script.write_text(UI_SCRIPT)
    # The add-on reaches the server through a proxy that forwards 24 MiB a second: the
    # big upload lasts seconds, so ESC and the Cancel button land in it however slow
    # this machine's Blender is to notice that bytes are going out.
    proxy = NetProxy(server.port).start()
    request.addfinalizer(proxy.stop)
    proxy.set_rate(24 << 20)
    args = {"zip": str(legacy_zip), "server": proxy.url, "big": big,
            "result": str(result_path),
            "screenshot": os.environ.get("BLENDERFARM_SCREENSHOT", "")}
    user = tmp_path / "user"
    tmp = tmp_path / "tmp"  # Blender writes quit.blend there, the add-on its packs
    tmp.mkdir()
    env = {**os.environ, "BLENDER_USER_SCRIPTS": str(user / "scripts"),
           "BLENDER_USER_CONFIG": str(user / "config"), "TMPDIR": str(tmp), "TEMP": str(tmp)}
    blender = os.environ.get("BLENDER") or "blender"
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN}", blender, "--factory-startup",
         "--enable-event-simulate", str(blend), "--python", str(script), "--",
         json.dumps(args)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300, env=env, check=False)
    assert result_path.is_file(), proc.stdout[-4000:]
    r = json.loads(result_path.read_text())
    assert "error" not in r, r["error"] + proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-4000:]

    for how in ("esc", "button"):
        assert r[f"{how}_invoke"] == ["RUNNING_MODAL"]
        assert r[f"{how}_message"] == "Canceled.", r
        assert 0 < r[f"{how}_progress"] < 100, r
        # Blender kept ticking every 20 ms during the upload: it never froze.
        assert r[f"{how}_max_gap"] < 0.5, r
    assert r["dirty"] and r["submit_invoke"] == ["RUNNING_MODAL"]
    assert r["submit_message"].startswith("Submitted job 'shot'"), r
    assert r["frames"] == [1, 1]
    assert r["download_invoke"] == ["RUNNING_MODAL"]
    # Each job into its own folder: jobs of the same name never share files.
    sub = f"shot-{r['job_id'][:6]}"
    assert r["download_message"] == f"Downloaded 1 frame(s) to //renders/{sub}/.", r
    assert Path(r["downloaded_to"]) == blend.parent / "renders" / sub
    frame = Path(r["downloaded_to"]) / "frame_0001.png"  # the scene's own naming
    assert frame.is_file() and textured_colors(frame)["magenta"] == 0
    assert r["missing_invoke"] == ["RUNNING_MODAL"] and r["missing"] == ["gone.png"]
    assert r["missing_message"].startswith("Submitted job 'shot'"), r
    jobs = get_json(f"{server.url}/api/jobs")["jobs"]
    assert len(jobs) == 2, "the canceled submits must not have made jobs"
    assert sorted(p.name for p in blend.parent.iterdir()) == ["renders", "shot.blend"]

    assert r["timer_while_enabled"] and not r["timer_left"]
    assert r["threads_left"] == [] and r["classes_left"] == [] and r["handlers_left"] == []
