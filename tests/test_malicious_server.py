"""A hostile server cannot make a bf-node touch anything outside its work dir.

From the issue "every party can do only what its role allows": a node names its job
folders, output folders and logs after the server's job and task ids, lays out the
manifest's paths, loads the ``.blend`` it is told and has Blender write frames named
after the output name. Here a fake server (``fakeserver.py``) sends a real ``bf-node``
what no honest server would: ids the codec refuses (the node drops the frame; it
cannot even name the task to report it), and names that pass the codec but not the
node's own checks, each of which the node must answer with ``task_failed``, reason
``bad_assign``. Links planted inside the work dir stand for anything that could make
one there (a job's script, an earlier bug): the node resolves every path it builds, so
a link that leads out is refused too. A sentinel tree next to and above the work dir
must come out the same: names, sizes, mtimes, contents and link targets.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from blenderfarm.node.safe import BadAssign, UnsafePath, inside, safe_id, safe_output_name
from blenderfarm.protocol.jobspec import output_stem
from fakeserver import Conn, FakeServer, fake_blender, frame, until, welcome
from procs import NodeProc


def snapshot(root: Path, skip: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` but ``skip``: kind, size, mtime, content hash, target."""
    out: dict[str, tuple[Any, ...]] = {".": ("dir", root.lstat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):  # links are listed, not followed
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n != skip]
        for name in dirnames + filenames:
            path = here / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", st.st_mtime_ns, st.st_mode)
            else:
                out[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_mode,
                            hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """``root/`` with sentinels in it and beside the work dir ``root/node/work``."""
    root = tmp_path / "root"
    work = root / "node" / "work"
    work.mkdir(parents=True)
    for rel in ("secret.txt", "startup.py", "x/keep.txt", "evil/keep.txt", "victim_job/scene.blend",
                "victim_blobs/keep.txt", "victim_out/keep.txt", "victim_tex/keep.txt",
                "log-target.txt", "node/neighbour.txt", "node/startup.py", "node/x/keep.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"sentinel {rel}\n")
    return root, work


def start_node(server: FakeServer, tmp_path: Path, work: Path) -> NodeProc:
    node = NodeProc(server.url, work, "victim", ["--blender", str(fake_blender(tmp_path / "bin"))],
                    log_path=tmp_path / "node.log")
    node.start()
    return node


def assign(task_id: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"task_id": task_id, "job_id": "job1", "frames": [1],
                            "blend": "scene.blend", "manifest": {}, "output_name": "shot"}
    return {**base, **fields}


async def test_hostile_names_touch_nothing_outside_the_work_dir(
        tmp_path: Path, tree: tuple[Path, Path]) -> None:
    root, work = tree
    server = FakeServer()
    scene = server.blob(b"BLENDER-v300 not really a blend")
    tex = server.blob(b"a texture")
    files = {"scene.blend": scene}
    # refused by the codec the node decodes with: dropped, and nothing to report
    codec_refused = [
        frame("assign", **assign("t-a", job_id="../../x", manifest=files)),
        frame("assign", **assign("t-b", job_id="/abs/x", manifest=files)),
        frame("assign", **assign("t-c", job_id="a/b", manifest=files)),
        frame("assign", **assign("../t", manifest=files)),
        frame("assign", **assign("", manifest=files)),
        frame("assign", **assign("t-d", manifest=files, output_name="e" * 300)),
        frame("cancel", task_id="../../x", reason="hostile"),
        frame("ack", task_id="../x"),
        frame("assign", **assign("job-colon", job_id="job:1", manifest=files)),
        frame("assign", **assign(":task-colon", manifest=files)),
        frame("cancel", task_id="job:1", reason="no such task"),
    ]
    # passed by the codec, refused by the node: each must come back as bad_assign
    node_refused = {
        "out-up": assign("out-up", manifest=files, output_name="../../evil"),
        "out-abs": assign("out-abs", manifest=files, output_name=str(root / "evil" / "x")),
        "out-dot": assign("out-dot", manifest=files, output_name=".hidden"),
        "out-sep": assign("out-sep", manifest=files, output_name="a/b"),
        "out-bsl": assign("out-bsl", manifest=files, output_name="..\\..\\evil"),
        "out-none": assign("out-none", manifest=files, output_name=""),
        "man-up": assign("man-up", manifest={"scene.blend": scene, "../x": tex}),
        "man-abs": assign("man-abs", manifest={"scene.blend": scene, str(root / "secret.txt"): tex}),
        "man-deep": assign("man-deep", manifest={"scene.blend": scene, "tex/../../../x": tex}),
        "man-sha": assign("man-sha", manifest={"scene.blend": "../../api/jobs"}),
        "blend-up": assign("blend-up", manifest=files, blend="../../startup.py"),
        "blend-up3": assign("blend-up3", manifest=files, blend="../../../startup.py"),
        "blend-abs": assign("blend-abs", manifest=files, blend=str(root / "startup.py")),
    }
    honest = assign("ok-1", job_id="okjob", output_name="Café_shot",
                    manifest={"scene.blend": scene, "tex/wood.png": tex})

    async def hostile(conn: Conn) -> None:
        await conn.send(welcome())
        for data in codec_refused:
            await conn.send(data)
        for fields in node_refused.values():
            await conn.send(frame("assign", **fields))
        await conn.send(frame("assign", **honest))
        await conn.pump()

    server.script = hostile
    before = snapshot(root, work)
    async with server:
        node = start_node(server, tmp_path, work)
        try:
            await until(lambda: "ok-1" in server.failures(), 60, "the node to answer every assign")
            await until(lambda: len(server.failures()) >= len(node_refused) + 1, 10,
                        "a report of every refused assign")
            assert node.alive, node.text()
        finally:
            node.stop()
    log = node.text()
    failed = server.failures()
    for task_id in node_refused:
        report = failed.get(task_id)
        assert report is not None, f"no report of {task_id}:\n{log}"
        assert (report.reason, report.retryable) == ("bad_assign", False), report
        assert report.error.startswith("this node refused the task: the server sent "), report
    assert set(failed) == set(node_refused) | {"ok-1"}, "the codec-refused ones cannot be reported"
    assert log.count("bad frame from the server") == len(codec_refused), log
    # the honest task went on as far as a Blender that only answers the probe lets it
    assert failed["ok-1"].reason == "startup_failed", failed["ok-1"]
    assert set(server.downloads) == {scene, tex}
    assert (work / "jobs" / "okjob" / "tex" / "wood.png").read_bytes() == b"a texture"
    assert snapshot(root, work) == before
    assert not Path("/abs").exists()


async def test_links_out_of_the_work_dir_are_not_followed(
        tmp_path: Path, tree: tuple[Path, Path]) -> None:
    root, work = tree
    server = FakeServer()
    scene = server.blob(b"BLENDER-v300 not really a blend")
    tex = server.blob(b"a texture")
    n = 0
    while True:  # a blob of its own cache folder, which is linked out
        cached = server.blob(b"cached %d" % n)
        if cached[:2] not in (scene[:2], tex[:2]):
            break
        n += 1
    links = {
        "jobs/linked": root / "victim_job",
        "jobs/deepjob/tex": root / "victim_tex",
        "out/t-out": root / "victim_out",
        "logs/logjob.log": root / "log-target.txt",
        f"blobs/{cached[:2]}": root / "victim_blobs",
    }
    for rel, target in links.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).symlink_to(target)
    tasks = {
        "t-job": assign("t-job", job_id="linked", manifest={"scene.blend": scene}),
        "t-tex": assign("t-tex", job_id="deepjob",
                        manifest={"scene.blend": scene, "tex/wood.png": tex}),
        "t-out": assign("t-out", job_id="outjob", manifest={"scene.blend": scene}),
        "t-log": assign("t-log", job_id="logjob", manifest={"scene.blend": scene}),
        "t-blob": assign("t-blob", job_id="blobjob", manifest={"scene.blend": cached}),
    }

    async def script(conn: Conn) -> None:
        await conn.send(welcome())
        for fields in tasks.values():
            await conn.send(frame("assign", **fields))
        await conn.pump()

    server.script = script
    before = snapshot(root, work)
    async with server:
        node = start_node(server, tmp_path, work)
        try:
            await until(lambda: set(server.failures()) >= set(tasks), 60,
                        "the node to answer every assign")
            assert node.alive, node.text()
        finally:
            node.stop()
    failed = server.failures()
    for task_id in tasks:
        assert (failed[task_id].reason, failed[task_id].retryable) == ("bad_assign", False), \
            (failed[task_id], node.text())
        assert "leads outside the node's folder" in failed[task_id].error, failed[task_id]
    assert snapshot(root, work) == before
    for rel, target in links.items():
        assert os.readlink(work / rel) == str(target)


# --- the checks themselves -------------------------------------------------------------------


def test_ids_come_from_a_strict_alphabet() -> None:
    for good in ("3f2a9c1b0d4e", "3f2a9c1b0d4e-00012", "job_1.v2", "A" * 128):
        assert safe_id(good) == good
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-x", "a:b", ":a", "a b",
                "a\x00b", "é", "A" * 129, None, 7):
        with pytest.raises(BadAssign, match=r"^the server sent an id that is not a safe name: "):
            safe_id(bad)


def test_output_names_are_plain_file_stems() -> None:
    for name in ("shot010", "My Shot/01", "Café", "渲染 場景", "..x..", "a" * 200, "release-v1.2"):
        stem = output_stem(name)  # every stem an honest server makes passes
        assert safe_output_name(stem) == stem
    for bad in ("", ".", "..", ".hidden", "../x", "a/b", "a\\b", "/abs", "a b", "shot_####",
                "a\nb", "é" * 128, None):
        with pytest.raises(BadAssign, match=r"^the server sent an output name that is not a "):
            safe_output_name(bad)


def test_inside_resolves_links_and_refuses_what_leads_out(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (work / "jobs" / "out").symlink_to(tmp_path / "outside")
    (work / "jobs" / "in").symlink_to(work / "jobs")
    (work / "loop").symlink_to(work / "loop")
    assert inside(work, "jobs", "j1", "scene.blend") == work.resolve() / "jobs/j1/scene.blend"
    assert inside(work, "jobs", "in", "j1") == work.resolve() / "jobs/j1"
    for parts in (("jobs", "out"), ("jobs", "out", "x"), ("..",), ("jobs", "..", ".."),
                  (str(tmp_path / "outside"),), ("jobs", ".."), (), ("loop", "x")):
        with pytest.raises(UnsafePath):
            inside(work, *parts)
