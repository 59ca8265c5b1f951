"""Slow clients against a real bf-server with the usual 1,024 file-descriptor limit.

Opens ``--slow`` uploads that each declare ``Content-Length: 100`` and send 10 bytes,
then, while they hang, times ``GET /api/info`` as another client would see it; at
the end it counts what the slow uploads were answered and the tracebacks in the
server's log. One JSON line of figures:

    python bench/slow_clients.py --slow 600
    PYTHONPATH=/path/to/other/checkout python bench/slow_clients.py   # compare a build
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BIN = Path(sys.executable).parent


def _limit_fds(n: int):
    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


async def _slow_upload(port: int, i: int) -> socket.socket | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, (f"PUT /api/blobs/{i + 1:064x} HTTP/1.1\r\nHost: x\r\n"
                                       "Content-Length: 100\r\n\r\n").encode() + b"0123456789")
    except OSError:
        sock.close()
        return None
    return sock


async def _status(sock: socket.socket, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            data = await loop.sock_recv(sock, 4096)
    except TimeoutError:
        return "no answer yet"
    except OSError:
        return "reset"
    finally:
        sock.close()
    if not data:
        return "closed"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "garbage"


async def _info(port: int, timeout: float) -> float | None:
    """Seconds for one GET /api/info on a new connection, or None past ``timeout``."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = await reader.readline()
            await reader.read()
            writer.close()
    except (TimeoutError, OSError):
        return None
    return time.perf_counter() - started if b" 200 " in head else None


async def run(args: argparse.Namespace, port: int) -> dict:
    socks = [s for s in await asyncio.gather(*(_slow_upload(port, i) for i in range(args.slow)))
             if s is not None]
    await asyncio.sleep(1.0)  # the server has taken them all in
    times = []
    for _ in range(args.probes):
        times.append(await _info(port, 5.0))
        await asyncio.sleep(0.1)
    answered = Counter(await asyncio.gather(*(_status(s, args.hold) for s in socks)))
    ok = sorted(t for t in times if t is not None)
    return {"slow_uploads": args.slow, "connected": len(socks),
            "info_answered": len(ok), "info_timeouts": len(times) - len(ok),
            "info_p50_ms": round(ok[len(ok) // 2] * 1000, 2) if ok else None,
            "info_max_ms": round(ok[-1] * 1000, 2) if ok else None,
            "slow_uploads_answered": dict(answered)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slow", type=int, default=600, help="slow uploads held open")
    ap.add_argument("--probes", type=int, default=20, help="GET /api/info while they hang")
    ap.add_argument("--fds", type=int, default=1024, help="the server's descriptor limit")
    ap.add_argument("--hold", type=float, default=70.0,
                    help="seconds to wait for the slow uploads' answers")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bf-slow-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(BIN / "bf-server"), "--data-dir", str(root / "data"),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=_limit_fds(args.fds),
                            env={**os.environ})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.1)
        figures = asyncio.run(run(args, port))
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        proc.kill()
        log.close()
    text = (root / "server.log").read_text(errors="replace")
    figures["server_tracebacks"] = text.count("Traceback (most recent call last)")
    figures["server_log_lines"] = text.count("\n")
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
