"""One bf-node per work dir: a second one refuses to start, a killed one frees the dir.

Two nodes on one work dir share its ``node-id``, so on the server each connection
replaces the other and tasks render twice. These start real ``bf-node`` processes.
The server URL points at a port nobody listens on and Blender is a script that only
answers the probe: the lock must be taken before either matters, and the first node
keeps running (reconnecting) while the second is refused.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from blenderfarm.node.workdir import WorkDirBusy, lock_work_dir
from procs import NodeProc, free_port, wait_for

PROBE = ('BLENDERFARM_PROBE:{"version": "4.2.0", "oidn": false, '
         '"cycles_devices": ["CPU"], "threads": 1}')


@pytest.fixture
def fake_blender(tmp_path: Path) -> Path:
    path = tmp_path / "blender"
    path.write_text(f"#!/bin/sh\necho '{PROBE}'\n")
    path.chmod(0o755)
    return path


def _started(node: NodeProc) -> bool:
    """The node printed its banner: it holds the lock and is dialling the server."""
    return node.alive and "Blender 4.2.0 at" in node.text()


def test_a_second_node_on_one_work_dir_is_refused_and_a_killed_one_frees_it(
        tmp_path: Path, fake_blender: Path) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    work = tmp_path / "work"
    extra = ["--blender", str(fake_blender)]
    nodes = [NodeProc(server, work, name, extra, tmp_path / f"{name}.log")
             for name in ("first", "second", "third")]
    first, second, third = nodes
    try:
        first.start()
        wait_for(lambda: _started(first), 30, "the first node to start")

        second.start()
        assert second.popen is not None and first.popen is not None
        try:
            code = second.popen.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the second node on the same work dir kept running:\n" + second.text())
        assert code == 1
        expected = (f"bf-node: another bf-node (pid {first.popen.pid}) is using the work dir "
                    f"{work.resolve()}; give each node on a machine its own --work-dir")
        assert expected in second.text()
        assert "Blender 4.2.0" not in second.text(), "refused before probing Blender"
        assert first.alive, "the first node must keep running:\n" + first.text()

        # kill -9 leaves node.lock behind with a dead pid in it; the flock is gone with it
        first.kill9()
        third.start()
        wait_for(lambda: _started(third), 30, "a new node to take the freed work dir")
        assert third.popen is not None
        assert re.match(rf"{third.popen.pid}\b", (work / "node.lock").read_text())
    finally:
        for node in nodes:
            node.stop()


def test_the_lock_refuses_a_second_holder_until_released(tmp_path: Path) -> None:
    work = tmp_path / "new" / "work"  # created by the lock
    with lock_work_dir(work):
        # flock is per open file: a second open in this same process is refused too
        with pytest.raises(WorkDirBusy) as info:
            lock_work_dir(work)
        assert info.value.pid == os.getpid()
        assert str(info.value) == (f"another bf-node (pid {os.getpid()}) is using the work dir "
                                   f"{work}; give each node on a machine its own --work-dir")
    lock_work_dir(work).release()


def test_a_lock_file_without_a_pid_still_refuses_clearly(tmp_path: Path) -> None:
    """The holder may not have written its pid yet (or its disk is full)."""
    with lock_work_dir(tmp_path):
        (tmp_path / "node.lock").write_text("")
        with pytest.raises(WorkDirBusy, match=r"^another bf-node is using the work dir "):
            lock_work_dir(tmp_path)
