"""The add-on inside real Blender, installed from the built zips: what users install.

Debian's Blender 3.4 installs the legacy zip with ``bpy.ops.preferences.addon_install``;
Blender 4.5 LTS (the ``bpy`` wheel from PyPI, in its own venv made by
``tests/bpy45_env.sh``) installs the extension zip with
``bpy.ops.extensions.package_install_files``. Each then tests the connection, submits
the textured project to a live bf-server with a bf-node, follows the job to the end
through the add-on's own job list, downloads the frames, and unregisters; the frame
must match a direct Blender render.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from procs import free_port, get_json
from scenes import (
    REPO,
    assert_same_image,
    make_scene,
    needs_blender,
    render_frames,
    textured_colors,
)

sys.path.insert(0, str(REPO))
import build_addon  # noqa: E402

pytestmark = needs_blender

# Runs inside Blender: install, enable, submit, follow, download, unregister. Prints one
# RESULT line of JSON; the test asserts on it and on the files.
DRIVER = r'''
import json, os, sys, time
import bpy  # first: with the bpy module, Blender's own modules come with it
import addon_utils

args = json.loads(sys.argv[sys.argv.index("--") + 1])
out = {}
if args["mode"] == "legacy":
    bpy.ops.preferences.addon_install(filepath=args["zip"])
    bpy.ops.preferences.addon_enable(module="blenderfarm_addon")
    module = "blenderfarm_addon"
else:
    bpy.ops.extensions.package_install_files(
        filepath=args["zip"], repo="user_default", enable_on_install=True)
    module = "bl_ext.user_default.blenderfarm"
out["enabled"] = addon_utils.check(module)[1]
out["operators"] = [op for op in ("submit", "download", "cancel_job", "test_connection")
                    if hasattr(bpy.ops.blenderfarm, op)]
out["panel"] = getattr(bpy.types, "BLENDERFARM_PT_render_on_farm", None) is not None
out["panel_context"] = bpy.types.BLENDERFARM_PT_render_on_farm.bl_context

bpy.ops.wm.open_mainfile(filepath=args["blend"])
prefs = bpy.context.preferences.addons[module].preferences
prefs.server_url = args["server"]
wm = bpy.context.window_manager
if hasattr(bpy.app, "online_access"):  # 4.2+: Allow Online Access, off in a bpy module
    try:
        bpy.ops.blenderfarm.test_connection()
        out["offline_refusal"] = ""
    except RuntimeError as exc:
        out["offline_refusal"] = str(exc)
    bpy.context.preferences.system.use_online_access = True
bpy.ops.blenderfarm.test_connection()
out["connection"] = wm.blenderfarm.connection
out["default_name"] = bpy.context.scene.blenderfarm.job_name

if args.get("edit"):  # an unsaved change the render must show
    bpy.data.objects["PropsInstance"].location = (-0.9, -0.9, 0.0)
    bpy.context.scene.blenderfarm.frame_end = 1
    bpy.ops.ed.undo_push(message="move the prop")
    bpy.ops.wm.save_as_mainfile(filepath=args["reference"], copy=True)
if args.get("python_edit"):  # edits from Python, as a script makes: is_dirty stays False
    scene = bpy.context.scene
    scene.cycles.samples = 7
    scene.blenderfarm.camera = scene.camera  # the Camera override
    scene.blenderfarm.device = "CPU"  # and the Device and Persistent Data ones
    scene.blenderfarm.persistent_data = "ON"
    bpy.ops.wm.save_as_mainfile(filepath=args["reference"], copy=True)
out["dirty"] = bpy.data.is_dirty
out["filepath"] = bpy.data.filepath

out["submit"] = sorted(bpy.ops.blenderfarm.submit(frames=args.get("frames", "")))
job_id = out["job_id"] = wm.blenderfarm.last_job_id
out["submit_message"] = wm.blenderfarm.message
out["listed"] = [ref.job_id for ref in bpy.context.scene.blenderfarm.jobs]
if args.get("cancel_waiting"):  # a job no node takes: why it waits, then cancel it
    import urllib.request
    deadline = time.time() + 30
    while not out.get("waiting") and time.time() < deadline:
        with urllib.request.urlopen(f"{args['server']}/api/jobs/{job_id}") as resp:
            out["waiting"] = json.load(resp)["job"].get("waiting")
        time.sleep(0.2)
    out["cancel"] = sorted(bpy.ops.blenderfarm.cancel_job(job_id=job_id))
deadline = time.time() + 150
while True:
    bpy.ops.blenderfarm.refresh_jobs()
    state = [s for s in wm.blenderfarm.jobs if s.job_id == job_id]
    if state and state[0].status in ("completed", "failed", "canceled"):
        break
    if time.time() > deadline:
        break
    time.sleep(0.5)
state = state[0] if state else None
out["status"] = state.status if state else None
out["frames"] = [state.frames_done, state.frames_total] if state else None
out["error"] = state.error if state else None
out["download"] = [] if args.get("cancel_waiting") else \
    sorted(bpy.ops.blenderfarm.download(job_id=job_id))
out["downloaded_to"] = state.downloaded_to if state else None
out["download_message"] = wm.blenderfarm.message
out["summary"] = state.summary if state else None
if args.get("conflict"):  # one folder for every job: a different file is never replaced
    state.downloaded_to = ""  # as after reopening the file: Open Folder still finds it
    out["job_folder"] = sys.modules[module + ".job_operators"].job_folder(
        bpy.context, job_id, state.name)
    settings = bpy.context.scene.blenderfarm
    settings.download_per_job = False
    out["flat"] = sorted(bpy.ops.blenderfarm.download(job_id=job_id))
    flat = os.path.join(bpy.path.abspath("//renders"), "frame_0001.png")
    with open(flat, "wb") as f:
        f.write(b"another job's frame")
    try:
        bpy.ops.blenderfarm.download(job_id=job_id)
        out["conflict"] = ""
    except RuntimeError as exc:
        out["conflict"] = str(exc)
    with open(flat, "rb") as f:
        out["kept"] = f.read() == b"another job's frame"
    settings.download_overwrite = True
    out["overwrite"] = sorted(bpy.ops.blenderfarm.download(job_id=job_id))
    with open(flat, "rb") as f:
        out["replaced"] = f.read(8) == b"\x89PNG\r\n\x1a\n"
out["bat"] = sys.modules["blender_asset_tracer"].__file__

bpy.ops.preferences.addon_disable(module=module)
out["left_classes"] = [n for n in dir(bpy.types) if n.upper().startswith("BLENDERFARM")]
out["left_props"] = [t.__name__ for t in (bpy.types.Scene, bpy.types.WindowManager)
                     if hasattr(t, "blenderfarm")]
handler_lists = [getattr(bpy.app.handlers, n) for n in dir(bpy.app.handlers)]
out["left_handlers"] = [f"{f.__module__}.{f.__name__}" for h in handler_lists
                        if isinstance(h, list) for f in h
                        if "blenderfarm" in (getattr(f, "__module__", "") or "")]
print("RESULT:" + json.dumps(out), flush=True)
'''


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("addon-dist")
    return build_addon.build(out, REPO / ".cache" / "addon-wheels")


def blender_cmd() -> list[str]:
    return [os.environ.get("BLENDER") or "blender", "-b", "--factory-startup", "--python"]


def legacy_env(user: Path) -> dict[str, str]:
    """Keep the add-on out of the real user's Blender config."""
    return {"BLENDER_USER_SCRIPTS": str(user / "scripts"),
            "BLENDER_USER_CONFIG": str(user / "config")}


def run_driver(python: list[str], args: dict, env: dict[str, str], tmp: Path,
               timeout: float = 240, script_text: str = DRIVER) -> dict:
    script = tmp / "driver.py"
    script.write_text(script_text)
    proc = subprocess.run([*python, str(script), "--", json.dumps(args)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env={**os.environ, **env}, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT:"):
            result: dict = json.loads(line[len("RESULT:"):])
            result["log"] = proc.stdout
            result["returncode"] = proc.returncode
            return result
    raise AssertionError(f"the driver printed no result (exit {proc.returncode}):\n"
                         + "\n".join(proc.stdout.splitlines()[-40:]))


def downloaded_frame(result: dict, blend: Path) -> Path:
    """Where the add-on put frame 1: a folder of the job's own under //renders/."""
    folder = Path(result["downloaded_to"])
    assert folder == blend.parent / "renders" / f"shot-{result['job_id'][:6]}", folder
    return folder / "frame_0001.png"


def check_installed(result: dict) -> None:
    """Installed, connected, submitted, listed, and gone without a trace when disabled."""
    log = result["log"]
    assert result["returncode"] == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert result["enabled"] and result["panel"] and result["panel_context"] == "output"
    assert result["operators"] == ["submit", "download", "cancel_job", "test_connection"]
    assert "1 of 1 node(s) online" in result["connection"], result["connection"]
    assert result["submit"] == ["FINISHED"], result["submit_message"]
    assert f"Blenderfarm: submitted job {result['job_id']}" in log
    assert result["listed"] == [result["job_id"]]
    assert result["left_classes"] == [] and result["left_props"] == []
    assert result["left_handlers"] == []


def check_common(result: dict, module_frame: Path) -> None:
    check_installed(result)
    assert result["status"] == "completed" and result["frames"] == [1, 1], result
    assert result["download"] == ["FINISHED"], result["download_message"]
    assert module_frame.is_file(), result["download_message"]
    colors = textured_colors(module_frame)
    assert colors["magenta"] == 0, "the texture went missing on the node"
    assert colors["yellow"] > 50 and colors["green"] > 20, colors


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_blender34_legacy_zip_submits_unsaved_changes(zips, farm_procs, tmp_path) -> None:
    blend = make_scene("textured", tmp_path / "src")
    original = sha256(blend)
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    reference_blend = blend.parent / "reference.blend"
    result = run_driver(
        blender_cmd(),
        {"mode": "legacy", "zip": str(zips[0]), "blend": str(blend), "server": server.url,
         "edit": True, "reference": str(reference_blend)},
        legacy_env(tmp_path / "user"), tmp_path)
    frame = downloaded_frame(result, blend)
    check_common(result, frame)
    assert result["dirty"] and result["default_name"] == "shot"
    assert Path(result["bat"]).is_relative_to(tmp_path / "user" / "scripts" / "addons" /
                                              "blenderfarm_addon" / "vendor" / "bat")
    # The user's file: untouched on disk, no temporary copy left beside it.
    assert sha256(blend) == original and result["filepath"] == str(blend)
    assert sorted(p.name for p in blend.parent.iterdir()) == [
        "reference.blend", "renders", "shot.blend"]
    # The farm rendered the unsaved state, as Blender renders it directly.
    reference = render_frames(reference_blend, [1], tmp_path / "direct")[0]
    assert_same_image(frame, reference)
    before = render_frames(blend, [1], tmp_path / "saved")[0]
    with pytest.raises(AssertionError):
        assert_same_image(frame, before)  # the unsaved change did travel


@pytest.mark.timeout(900)  # the first run downloads the 370 MB bpy wheel
def test_blender34_submits_python_edits_that_leave_the_file_clean(zips, farm_procs,
                                                                  tmp_path) -> None:
    """`scene.cycles.samples = 7` from Python leaves is_dirty False: the farm must still
    render 7 samples (the state in memory), through the Camera override; the job downloads
    into its own folder, and a different file in a shared folder is never replaced."""
    blend = make_scene("textured", tmp_path / "src")
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    reference_blend = tmp_path / "src" / "project" / "shots" / "reference7.blend"
    result = run_driver(
        blender_cmd(),
        {"mode": "legacy", "zip": str(zips[0]), "blend": str(blend), "server": server.url,
         "frames": "1", "python_edit": True, "reference": str(reference_blend),
         "conflict": True},
        legacy_env(tmp_path / "user"), tmp_path)
    frame = downloaded_frame(result, blend)
    check_common(result, frame)
    assert not result["dirty"], "the edit must be one that is_dirty misses"
    job = get_json(f"{server.url}/api/jobs/{result['job_id']}")["job"]
    assert job["overrides"] == {"camera": "Camera", "device": "CPU", "persistent_data": True}
    assert job["blender_saved"] == "3.4" and job["blender"] is None  # bpy.app.version
    assert result["summary"].startswith(result["job_id"][:6] + " · ")
    assert "frames 1" in result["summary"] and "camera Camera" in result["summary"]
    assert "CPU, persistent data on" in result["summary"]
    # The farm rendered the 7 samples in memory, not the 4 saved.
    reference = render_frames(reference_blend, [1], tmp_path / "direct7")[0]
    assert_same_image(frame, reference)
    saved = render_frames(blend, [1], tmp_path / "saved4")[0]
    with pytest.raises(AssertionError):
        assert_same_image(frame, saved)
    assert result["job_folder"] == str(frame.parent)  # what Open Folder opens
    # One folder for all jobs: another job's file there is refused, named, and kept.
    assert result["flat"] == ["FINISHED"]
    flat = blend.parent / "renders" / "frame_0001.png"
    assert str(flat) in result["conflict"] and "Overwrite" in result["conflict"], result
    assert "--overwrite" not in result["conflict"] and result["kept"]
    assert result["overwrite"] == ["FINISHED"] and result["replaced"]


def test_blender45_validates_the_extension_manifest(zips, bpy45_python) -> None:
    bl_pkg = Path(bpy45_python).parents[1].glob(
        "lib/python3.11/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py")
    validator = next(bl_pkg, None)
    assert validator is not None, "bpy 4.5 without its extension tool"
    proc = subprocess.run([bpy45_python, str(validator), "validate", str(zips[1])],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "Success" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.timeout(900)
def test_blender45_extension_submits_and_unregisters(zips, bpy45_python, farm_procs,
                                                     tmp_path) -> None:
    blend = make_scene("textured", tmp_path / "src")
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    user = tmp_path / "user45"
    result = run_driver(
        [bpy45_python],
        {"mode": "extension", "zip": str(zips[1]), "blend": str(blend), "server": server.url,
         "frames": "1", "cancel_waiting": True},
        {"BLENDER_USER_RESOURCES": str(user)}, tmp_path)
    check_installed(result)
    # Allow Online Access off: the add-on said how to turn it on and did not connect
    assert "Allow Online Access" in result["offline_refusal"], result["offline_refusal"]
    assert list(user.rglob("blender_manifest.toml")), "not installed as an extension"
    # BAT came from the wheel the manifest lists, which Blender installed for it.
    assert Path(result["bat"]).is_relative_to(user) and "site-packages" in result["bat"]
    # The add-on packs the state in memory, so 4.5 saved the file: the 3.4 node, which
    # may crash opening it, never gets it; the job waits saying why (docs/addon.md, Limits)
    assert re.fullmatch(r"needs Blender >= 4\.5; online nodes have 3\.4\.\d+",
                        str(result["waiting"])), result["waiting"]
    assert result["cancel"] == ["FINISHED"] and result["status"] == "canceled", result
    job = get_json(f"{server.url}/api/jobs/{result['job_id']}")["job"]
    assert job["blender_saved"] == "4.5" and job["status"] == "canceled"
    tasks = get_json(f"{server.url}/api/jobs/{result['job_id']}/tasks")["tasks"]
    assert tasks and all(t["attempts"] == 0 and t["node"] is None for t in tasks), tasks
    node = get_json(f"{server.url}/api/nodes")["nodes"][0]
    assert node["frames_rendered"] == 0, node


DEAD_SERVER = r'''
import json, sys
import bpy

args = json.loads(sys.argv[sys.argv.index("--") + 1])
bpy.ops.preferences.addon_install(filepath=args["zip"])
bpy.ops.preferences.addon_enable(module="blenderfarm_addon")
bpy.ops.wm.open_mainfile(filepath=args["blend"])
bpy.context.preferences.addons["blenderfarm_addon"].preferences.server_url = args["server"]
bpy.ops.ed.undo_push(message="an unsaved change")  # a copy is saved, then discarded
try:  # a script gets the operator's error report as an exception
    result, raised = sorted(bpy.ops.blenderfarm.submit()), ""
except RuntimeError as exc:
    result, raised = [], str(exc)
state = bpy.context.window_manager.blenderfarm
print("RESULT:" + json.dumps({"submit": result, "raised": raised, "message": state.message,
                              "kind": state.message_kind}), flush=True)
'''


def test_blender34_says_the_server_is_down_in_one_sentence(zips, tmp_path) -> None:
    blend = make_scene("textured", tmp_path / "src")
    result = run_driver(blender_cmd(), {"zip": str(zips[0]), "blend": str(blend),
                                        "server": f"http://127.0.0.1:{free_port()}"},
                        legacy_env(tmp_path / "user"), tmp_path, script_text=DEAD_SERVER)
    assert result["kind"] == "ERROR"
    assert result["message"].startswith("Cannot reach the farm server"), result["message"]
    assert "connection refused" in result["message"] and "\n" not in result["message"]
    assert result["raised"] == f"Error: {result['message']}\n", result["raised"]
    assert "Traceback" not in result["log"] and result["returncode"] == 0
    assert sorted(p.name for p in blend.parent.iterdir()) == ["shot.blend"], "copy left behind"


PANEL = r'''
import json, sys, time
from types import SimpleNamespace
import bpy

args = json.loads(sys.argv[sys.argv.index("--") + 1])
bpy.ops.preferences.addon_install(filepath=args["zip"])
bpy.ops.preferences.addon_enable(module="blenderfarm_addon")
bpy.ops.wm.open_mainfile(filepath=args["blend"])
prefs = bpy.context.preferences.addons["blenderfarm_addon"].preferences
prefs.server_url = args["server"]
status = sys.modules["blenderfarm_addon.status"]
panels = sys.modules["blenderfarm_addon.panels"]
state = bpy.context.window_manager.blenderfarm
scene = bpy.context.scene
out = {}


class Layout:
    """Records the labels a panel draws (Blender's real draw code, a recording layout)."""

    def __init__(self, log):
        self.__dict__["log"] = log

    def __getattr__(self, name):
        if name in ("row", "column", "box", "split"):
            return lambda *a, **k: Layout(self.log)
        if name == "label":
            return lambda text="", icon="NONE", **k: self.log.append(text)
        if name == "operator":
            return lambda *a, **k: SimpleNamespace()
        return lambda *a, **k: None

    def __setattr__(self, name, value):
        self.__dict__[name] = value


def drawn(*classes):
    log = []
    for cls in classes:
        ns = SimpleNamespace(layout=Layout(log))
        for name in ("draw_job", "draw_missing"):
            if hasattr(cls, name):
                setattr(ns, name, getattr(cls, name).__get__(ns))
        cls.draw(ns, bpy.context)
    return log


def farm_panels():
    return drawn(panels.BLENDERFARM_PT_render_on_farm, panels.BLENDERFARM_PT_render_on_farm_submit,
                 panels.BLENDERFARM_PT_render_on_farm_jobs)


def said(text):
    try:
        return sorted(text())
    except RuntimeError as exc:
        return str(exc)


camera, scene.camera = scene.camera, None
out["no_camera"] = said(bpy.ops.blenderfarm.submit)
scene.camera = camera

# No job at all: the farm being down still shows, at the top, once.
status.check_farm(bpy.context)
deadline = time.time() + 10
while status._ping is not None and time.time() < deadline:
    time.sleep(0.1)
    status.check_farm(bpy.context)
out["farm_error"] = state.farm_error
out["idle_lines"] = farm_panels()
# A failed submit and a job the watcher cannot reach: still said once.
out["submit"] = said(bpy.ops.blenderfarm.submit)
ref = scene.blenderfarm.jobs.add()
ref.job_id, ref.name = "3fa2b1c4d5e6", "shot"
status.poll_now(bpy.context)
out["watch_error"] = state.watch_error
out["busy_lines"] = farm_panels()

# Blender 3.x draws progress as a slider: it must not be draggable.
status.apply_job(bpy.context.window_manager, {"id": "3fa2b1c4d5e6", "name": "shot",
                                              "status": "completed", "frames_done": 1,
                                              "frames_total": 1})
job = status.job_state(bpy.context.window_manager, "3fa2b1c4d5e6")
out["readonly"] = [type(o).bl_rna.properties["progress"].is_readonly for o in (state, job)]
try:
    job.progress = 3.0
    out["set_to"] = job.progress
except (AttributeError, TypeError) as exc:
    out["set_to"] = str(exc)
out["progress"] = job.progress

out["connection"] = said(bpy.ops.blenderfarm.test_connection)
out["prefs_lines"] = drawn(type(prefs))
prefs.server_url = args["server2"]  # the user fixes the URL
out["after_fix"] = [state.connection, state.farm_error, state.watch_error, state.message]
print("RESULT:" + json.dumps(out), flush=True)
'''


def test_blender34_panel_says_the_farm_is_down_once_readably_and_forgets_old_urls(
        zips, tmp_path) -> None:
    blend = make_scene("textured", tmp_path / "src")
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_driver(blender_cmd(), {"zip": str(zips[0]), "blend": str(blend),
                                        "server": dead,
                                        "server2": f"http://127.0.0.1:{free_port()}"},
                        legacy_env(tmp_path / "user"), tmp_path, script_text=PANEL)
    assert "Traceback" not in result["log"], result["log"][-3000:]
    # In Blender's words: the panel's Camera, not bf's --camera.
    assert "pick a Camera in the panel" in result["no_camera"], result["no_camera"]
    assert "--camera" not in result["no_camera"]
    down = f"Cannot reach the farm server at {dead}"
    assert result["farm_error"].startswith(down), result
    for key in ("idle_lines", "busy_lines"):
        lines = result[key]
        assert sum(line.startswith("Cannot reach") for line in lines) == 1, (key, lines)
    assert result["watch_error"].startswith(down) and down in result["submit"]
    assert result["readonly"] == [True, True]
    assert result["progress"] == 100.0 and result["set_to"] != 3.0, result
    # The preferences wrap the sentence: nothing is cut, the URL stays whole.
    lines = [line for line in result["prefs_lines"] if line]
    assert len(lines) > 1 and " ".join(lines) == result["connection"].removeprefix(
        "Error: ").strip(), lines
    assert any(dead in line for line in lines), lines
    assert result["after_fix"] == ["", "", "", ""], result["after_fix"]
