"""Real bf-server and bf-node processes for end-to-end tests, always killed in teardown."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def bin_path(name: str) -> str:
    return str(BIN / name)


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def post_json(url: str, body: Any, token: str | None = None, timeout: float = 60
              ) -> tuple[int, Any]:
    """POST ``body`` as JSON (with a bearer ``token``); the status and the JSON answer,
    an error's included."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_ok(url: str, body: Any, token: str | None = None, timeout: float = 60) -> Any:
    """:func:`post_json` that must succeed: its answer."""
    status, answer = post_json(url, body, token, timeout)
    assert status < 400, (status, answer)
    return answer


class Proc:
    """A child process in its own process group, its output kept in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})})

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """kill -9 of the process itself (its children must cope on their own)."""
        if self.alive:
            assert self.popen is not None
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 10) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # anything left in the group
        self.popen.wait()
        self.log.close()


class ServerProc(Proc):
    def __init__(self, data_dir: Path, port: int, extra: list[str] | None = None,
                 log_path: Path | None = None) -> None:
        """``log_path`` defaults to server.log in the data dir (elsewhere: a data dir that
        is made to fill up keeps its log)."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__([bin_path("bf-server"), "--data-dir", str(data_dir), "--port", str(port),
                          "--grace-period", "3", *(extra or [])],
                         log_path or data_dir / "server.log")

    def start(self, timeout: float = 20) -> None:
        seen = len(self.text()) if self.log_path.exists() else 0  # a restart appends
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(rf"listening on https?://\S+:{self.port}\b", self.text()[seen:]):
                return
            if not self.alive:
                raise RuntimeError("bf-server exited:\n" + self.text())
            time.sleep(0.05)
        raise TimeoutError("bf-server did not start:\n" + self.text())


class NodeProc(Proc):
    def __init__(self, server_url: str, work_dir: Path, name: str, extra: list[str] | None = None,
                 log_path: Path | None = None) -> None:
        self.name = name
        work_dir.mkdir(parents=True, exist_ok=True)
        super().__init__([bin_path("bf-node"), "--server", server_url, "--work-dir", str(work_dir),
                          "--name", name, "--threads", "1", *(extra or [])],
                         log_path or work_dir / "node.log")


def blender_pids(work_dir: Path, *, spares: bool = False) -> list[int]:
    """The node's Blenders with a job open (working in a job's folder, under
    ``work_dir/jobs``) and, with ``spares``, its warm spares (working in ``work_dir``):
    found by their working folder, as a spare's command line names no job (Linux /proc)."""
    root = os.path.realpath(work_dir)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # gone, or not ours
            continue
        if b"runner.py" not in cmdline:
            continue
        if cwd.startswith(os.path.join(root, "jobs", "")) or (spares and cwd == root):
            pids.append(int(entry))
    return pids


def is_running(pid: int) -> bool:
    """True while pid exists and is not a zombie (init reaps orphans, maybe not at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def nodes_online(url: str) -> int:
    return sum(1 for n in get_json(f"{url}/api/nodes")["nodes"] if n["online"])


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``path``; None when it worked, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run mount: {exc}"
    if proc.returncode != 0:
        return f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}"
    return None


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill_disk(path: Path, leave: int = 0) -> int:
    """Write ``path`` until its file system is full, then give ``leave`` bytes back (the
    farm's own writes fill those); return the bytes the file keeps."""
    written = 0
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        while block:
            try:
                written += f.write(block) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                block = block[:len(block) // 2] if len(block) > 4096 else b""
        keep = max(0, written - leave)
        f.truncate(keep)
    return keep


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A test's small file system on ``path`` (to fill up); the test is skipped, saying
    why, where none can be mounted."""
    why = mount_tmpfs(path, size)
    if why is not None:
        import pytest

        pytest.skip(why)
    try:
        yield path
    finally:
        umount(path)
