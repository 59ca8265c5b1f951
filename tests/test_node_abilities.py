"""What nodes can do, end to end: tags route jobs, ``bf submit --camera``, a bounded
blob cache, and Eevee only on nodes with OpenGL. Real bf-server, real bf-nodes, real
Blender, the real ``bf`` command; frames are checked against Blender's own render.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from procs import NodeProc, bin_path, get_json, nodes_online, wait_for
from scenes import make_scene, needs_blender, read_rgba, run_blender

pytestmark = needs_blender
XVFB_RUN = shutil.which("xvfb-run")
#: no display, and an EGL that finds no driver: Blender as a bare render server has it
NO_OPENGL = ["env", "-u", "DISPLAY", "-u", "WAYLAND_DISPLAY",
             "__EGL_VENDOR_LIBRARY_FILENAMES=/nonexistent/egl_vendor.json"]


def bf(server: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("bf"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "BLENDERFARM_SERVER": server},
                          stdin=subprocess.DEVNULL, check=False)


def submit(server: str, blend: Path, *args: str) -> str:
    proc = bf(server, "submit", str(blend), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["job"]["id"])


def job(server: str, job_id: str) -> dict:
    return dict(get_json(f"{server}/api/jobs/{job_id}")["job"])


def edit_scene(blend: Path, out: Path, code: str) -> Path:
    """Save ``blend`` as ``out`` after running ``code`` (bpy, ``scene``) on it."""
    script = f"import bpy\nscene = bpy.context.scene\n{code}\n" \
             f"bpy.ops.wm.save_as_mainfile(filepath={str(out)!r})\n"
    proc = run_blender([str(blend), "--python-exit-code", "1", "--python-expr", script])
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:]
    return out


def direct_render(blend: Path, out: Path, code: str = "", prefix: list[str] | None = None
                  ) -> Path:
    """Frame 1 as Blender itself renders it (after ``code``), the reference."""
    args = [*(prefix or []), shutil.which("blender") or "blender", "-b", "--factory-startup",
            str(blend), "--python-exit-code", "1",
            "--python-expr", f"import bpy\nscene = bpy.context.scene\n{code or 'pass'}\n",
            "-o", str(out / "ref_####"), "-F", "PNG", "-f", "1"]
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=180, check=False)
    path = out / "ref_0001.png"
    assert path.is_file(), proc.stdout[-3000:] + proc.stderr[-2000:]
    return path


def assert_identical(a: Path, b: Path) -> None:
    pa, pb = read_rgba(a), read_rgba(b)
    assert pa.shape == pb.shape and np.array_equal(pa, pb), \
        f"{a.name} differs from {b.name}: max {np.abs(pa.astype(int) - pb).max()}"


@pytest.fixture
def node_procs(tmp_path: Path) -> Iterator:
    """Factory: a bf-node behind a command prefix (env, xvfb-run); all stop in teardown."""
    started: list[NodeProc] = []

    def start(server: str, name: str, prefix: list[str], extra: list[str] | None = None
              ) -> NodeProc:
        proc = NodeProc(server, tmp_path / f"node-{name}", name, extra)
        proc.args = [*prefix, *proc.args]
        proc.start()
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            proc.stop()


def _node(server: str, name: str) -> dict:
    return next(n for n in get_json(f"{server}/api/nodes")["nodes"] if n["name"] == name)


def test_tags_route_jobs_camera_overrides_and_the_cache_stays_bounded(farm_procs, tmp_path
                                                                       ) -> None:
    anim = make_scene("anim", tmp_path / "src", frames=2, res=32, samples=2)
    # a second camera, and none active: without --camera the file cannot render
    cams = edit_scene(anim, tmp_path / "src" / "cams.blend", (
        "cam = bpy.data.objects.new('Side', bpy.data.cameras.new('Side'))\n"
        "scene.collection.objects.link(cam)\n"
        "cam.location = (7.0, -5.0, 3.0)\n"
        "cam.rotation_euler = (1.2, 0.0, 0.95)\n"
        "scene.camera = None"))
    reference = direct_render(cams, tmp_path / "direct",
                              "scene.camera = bpy.data.objects['Side']")
    server = farm_procs.server()
    farm_procs.node("plain")
    farm_procs.node("gpu", ["--tag", "gpu", "--tag", "big", "--cache-size", "1"])
    farm_procs.wait_nodes(2)
    gpu = _node(server.url, "gpu")
    assert gpu["tags"] == ["gpu", "big"]

    job_id = submit(server.url, cams, "--frames", "1-2", "--tag", "gpu", "--camera", "Side")
    proc = bf(server.url, "wait", job_id)
    assert proc.returncode == 0, proc.stderr + json.dumps(job(server.url, job_id))
    tasks = get_json(f"{server.url}/api/jobs/{job_id}/tasks")["tasks"]
    assert {t["node"] for t in tasks} == {gpu["id"]}, "only the node with the tag renders it"
    out = tmp_path / "got"
    assert bf(server.url, "download", job_id, str(out), "--flat").returncode == 0
    assert_identical(out / "frame_0001.png", reference)

    # a job for a tag no node has waits, and says why
    waiting = submit(server.url, anim, "--frames", "1", "--tag", "nobody")
    shown = bf(server.url, "show", waiting).stdout
    assert re.search(r"^waiting: +no online node has the tag nobody$", shown, re.M), shown
    assert bf(server.url, "cancel", waiting).returncode == 0

    # a cache of one byte keeps only what the node's tasks need: the next job's file
    # pushes out the last one's, and that job's folder
    blobs = tmp_path / "node-gpu" / "blobs"
    first = {p.name for p in blobs.glob("??/*")}
    assert len(first) == 1
    second = submit(server.url, anim, "--frames", "1", "--tag", "big")
    assert bf(server.url, "wait", second).returncode == 0
    now = {p.name for p in blobs.glob("??/*")}
    assert len(now) == 1 and not now & first
    assert [p.name for p in (tmp_path / "node-gpu" / "jobs").iterdir()] == [second]


def test_eevee_goes_to_a_node_with_opengl_and_waits_clearly_without_one(
        farm_procs, node_procs, tmp_path) -> None:
    anim = make_scene("anim", tmp_path / "src", frames=2, res=32, samples=2)
    eevee = edit_scene(anim, tmp_path / "src" / "eevee.blend", (
        "scene.render.engine = 'BLENDER_EEVEE'\n"
        "scene.eevee.taa_render_samples = 1"))
    server = farm_procs.server()
    node_procs(server.url, "headless", NO_OPENGL)
    wait_for(lambda: nodes_online(server.url) >= 1, 60, "the node online")
    assert _node(server.url, "headless")["opengl"] is False

    job_id = submit(server.url, eevee, "--frames", "1")
    info = wait_for(lambda: (j := job(server.url, job_id))["waiting"] and j, 120,
                    "the job to say why it waits")
    assert info["status"] != "failed" and info["needs_opengl"]
    assert info["waiting"].startswith("no online node can render Eevee or Workbench")
    shown = bf(server.url, "show", job_id).stdout
    assert "xvfb-run" in shown and "SIGABRT" not in shown, shown
    tasks = get_json(f"{server.url}/api/jobs/{job_id}/tasks")["tasks"]
    assert "needs OpenGL" in json.dumps(tasks)  # the refusal, with who refused it

    if XVFB_RUN is None:
        pytest.skip("xvfb-run is not installed: the half with a display cannot run")
    node_procs(server.url, "xvfb", [XVFB_RUN, "-a", "env", NO_OPENGL[-1]])
    wait_for(lambda: nodes_online(server.url) >= 2, 60, "the node under xvfb online")
    assert _node(server.url, "xvfb")["opengl"] is True
    proc = bf(server.url, "wait", job_id)
    assert proc.returncode == 0, proc.stderr + json.dumps(job(server.url, job_id))
    out = tmp_path / "got"
    assert bf(server.url, "download", job_id, str(out), "--flat").returncode == 0
    reference = direct_render(eevee, tmp_path / "direct", prefix=[XVFB_RUN, "-a"])
    assert_identical(out / "frame_0001.png", reference)
