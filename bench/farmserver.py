"""One real bf-server for the benchmarks: started on a free loopback port, pinned to
one core, measured (RSS, CPU seconds) and stopped with everything it started.

``bench/scale_bench.py`` and ``bench/upload_bench.py`` both run theirs through this.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real bf-server process under ``root``, pinned to ``core`` (taskset where it
    exists, else the child's own affinity before it runs the server)."""

    #: when set, the server runs under ``py-spy record`` and writes collapsed stacks here
    profile_dir: Path | None = None

    def __init__(self, root: Path, core: int | None = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = root / f"server-{self.port}"
        args = [str(BIN / "bf-server"), "--data-dir", str(self.data), "--port", str(self.port),
                "--log-level", "WARNING"]
        if Server.profile_dir is not None:
            out = Server.profile_dir / f"server-{self.port}.txt"
            args = [str(BIN / "py-spy"), "record", "--format", "raw", "--rate", "200",
                    "--output", str(out), "--", *args]
        pin = None
        if core is not None and shutil.which("taskset"):
            args = ["taskset", "-c", str(core), *args]
        elif core is not None:
            def pin() -> None:  # in the child, before exec
                os.sched_setaffinity(0, {core})
        self.data.mkdir(parents=True)
        self.log = open(self.data / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=pin)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.url + "/api/info", timeout=1).close()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"bf-server exited: {(self.data / 'server.log').read_text()}")
            time.sleep(0.1)
        raise RuntimeError("bf-server did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def stop(self) -> None:
        if self.proc.poll() is None and Server.profile_dir is not None:
            # py-spy writes its stacks when the server exits: stop the server alone first
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
                for pid in kids.split():
                    os.kill(int(pid), signal.SIGTERM)
                self.proc.wait(60)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


