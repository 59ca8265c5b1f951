"""`make demo`: a whole farm on this machine renders a sample animation.

Starts bf-server and two bf-nodes (each in its own folder under ./demo-data),
makes a small animated scene with Blender, submits it with `bf submit`, shows
`bf wait`'s progress bar, downloads the frames and says where they are. Run in a
terminal, it then keeps the farm up, so its dashboard can be looked at, until Enter;
otherwise (CI, a pipe) it stops at once. It stops everything it started, even on
Ctrl-C or an error.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo-data"
BIN = Path(sys.executable).parent
FRAMES = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def blender() -> str:
    path = os.environ.get("BLENDER") or shutil.which("blender")
    if not path:
        sys.exit("demo: Blender is not installed (make demo installs Debian's blender)")
    return path


def make_scene() -> Path:
    out = DATA / "scene"
    blend = out / "anim.blend"
    if not blend.exists():
        print(f"making a {FRAMES}-frame sample animation with Blender...", flush=True)
        subprocess.run([blender(), "-b", "--factory-startup", "--python",
                        str(ROOT / "examples" / "make_scene.py"), "--", "anim", str(out),
                        "--frames", str(FRAMES), "--res", "160", "--samples", "8"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return blend


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_until_listening(log: Path, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if "listening on" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            sys.exit("demo: bf-server did not start:\n" + log.read_text(errors="replace"))
        time.sleep(0.1)
    sys.exit("demo: bf-server did not start in 20 s")


def bf(*args: str, capture: bool = False) -> str:
    result = subprocess.run([str(BIN / "bf"), *args], check=False, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise SystemExit(f"demo: `bf {' '.join(args)}` failed (exit {result.returncode})")
    return result.stdout or ""


def hold_for_dashboard(url: str, stdin: TextIO, out: TextIO) -> None:
    """In a terminal, keep the farm up until Enter (or Ctrl-D, Ctrl-C), so the
    dashboard's address printed here still answers; elsewhere return at once, since
    nobody could press Enter and `make demo` must end by itself."""
    try:
        interactive = stdin.isatty()
    except (ValueError, OSError):  # stdin closed
        interactive = False
    if not interactive:
        return
    print(f"\nDashboard: {url} \N{EM DASH} press Enter to stop", file=out, flush=True)
    try:
        stdin.readline()
    except KeyboardInterrupt:
        print(file=out)


def main() -> int:
    DATA.mkdir(exist_ok=True)
    blend = make_scene()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ["BLENDERFARM_SERVER"] = url
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server_log = DATA / "server" / "server.log"
        procs.append(start([str(BIN / "bf-server"), "--data-dir", str(DATA / "server"),
                            "--port", str(port)], server_log))
        wait_until_listening(server_log, procs[0])
        print(f"bf-server is up at {url} (log: {server_log})", flush=True)
        threads = max(1, (os.cpu_count() or 2) // 2)
        for i in (1, 2):
            work = DATA / f"node{i}"
            procs.append(start([str(BIN / "bf-node"), "--server", url, "--name", f"node{i}",
                                "--work-dir", str(work), "--threads", str(threads)],
                               work / "node.log"))
        print("started 2 render nodes (logs in demo-data/node1, demo-data/node2)", flush=True)
        out = bf("submit", str(blend), "--frames", f"1-{FRAMES}", "--name", "demo", capture=True)
        job = out.strip().splitlines()[-1]
        print(f"submitted job {job}", flush=True)
        bf("wait", job)
        frames_dir = DATA / "frames"
        bf("download", job, str(frames_dir))
        files = sorted(frames_dir.glob("*.png"))
        print(f"\n{len(files)} frames rendered by the farm are in {frames_dir}/")
        print(f"(the server also keeps them in {DATA / 'server' / 'jobs' / job}/)")
        hold_for_dashboard(url, sys.stdin, sys.stdout)
        return 0 if len(files) == FRAMES else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
