"""Shared fixtures: real servers and nodes as processes, Blender and its test scenes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from procs import NodeProc, ServerProc, free_port, nodes_online, wait_for  # noqa: E402


@pytest.fixture
def farm_procs(tmp_path: Path) -> Iterator:
    """Factory: ``server()`` and ``node(name)`` start real processes; all die in teardown."""
    started: list = []

    class Farm:
        server_proc: ServerProc | None = None

        def server(self, port: int | None = None, data_dir: Path | None = None) -> ServerProc:
            proc = ServerProc(data_dir or tmp_path / "server", port or free_port())
            proc.start()
            started.append(proc)
            self.server_proc = proc
            return proc

        def node(self, name: str, extra: list[str] | None = None) -> NodeProc:
            assert self.server_proc is not None
            proc = NodeProc(self.server_proc.url, tmp_path / f"node-{name}", name, extra)
            proc.start()
            started.append(proc)
            return proc

        def wait_nodes(self, count: int, timeout: float = 60) -> None:
            assert self.server_proc is not None
            url = self.server_proc.url
            wait_for(lambda: nodes_online(url) >= count, timeout, f"{count} node(s) online")

    try:
        yield Farm()
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(autouse=True)
def no_blocking(request: pytest.FixtureRequest) -> Iterator:
    """Fail any test in which the server blocks its event loop (as aiohttp's own suite
    does): every test, since a server in the test's own process is guarded this way and
    one in a subprocess is not touched. Only calls made from ``blenderfarm.server``
    code on a running loop count. A test marked ``blocking_ok`` is exempt, with its
    reason in the mark."""
    if request.node.get_closest_marker("blocking_ok") is not None:
        yield None
        return
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx("blenderfarm.server") as bb:
        yield bb


def bpy_python(version: str) -> str:
    """The python of the ``bpy`` venv of Blender ``version`` ("4.5", "5.0"), made once by
    tests/bpy_env.sh (from pip's cache when it holds the wheels, else downloaded); skips
    the test, saying why, when it cannot be made."""
    env_script = Path(__file__).parent / "bpy_env.sh"
    proc = subprocess.run(["bash", str(env_script), version], capture_output=True, text=True,
                          timeout=900, check=False)
    if proc.returncode != 0:
        pytest.skip(f"no Blender {version} bpy venv: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def bpy45_python() -> str:
    """The python of the Blender 4.5 ``bpy`` venv (the add-on tests)."""
    return bpy_python("4.5")


@pytest.fixture(scope="session")
def bpy50_python() -> str:
    """The python of the Blender 5.0 ``bpy`` venv (nodes that render with the module)."""
    return bpy_python("5.0")
