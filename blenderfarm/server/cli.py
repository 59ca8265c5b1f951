"""``bf-server``: start the farm's server daemon."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

from ..protocol.version import __version__
from .app import make_app
from .config import DEFAULT_PORT, ConfigError, ServerConfig
from .store import StoreError

log = logging.getLogger("blenderfarm.server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bf-server", description="Blenderfarm server daemon.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--data-dir", type=Path,
                   help="where the database, blobs and outputs live (default: the platform's "
                        "user data dir; '.' keeps everything in the current directory)")
    p.add_argument("--config", type=Path, help="TOML file with a [server] table")
    p.add_argument("--grace-period", type=float,
                   help="seconds a lost node keeps its tasks before they are requeued")
    p.add_argument("--max-attempts", type=int, help="failures before a task fails (default 3)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--version", action="version", version=f"bf-server {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = ServerConfig.load(args.config, {
            "host": args.host, "port": args.port, "data_dir": args.data_dir,
            "grace_period": args.grace_period, "max_attempts": args.max_attempts,
            "log_level": args.log_level})
    except ConfigError as exc:
        print(f"bf-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not _is_loopback(config.host):
        log.warning("listening on %s without authentication: anyone who can reach this "
                    "port can submit jobs and enroll nodes", config.host)
    try:
        app = make_app(config)
    except OSError as exc:
        print(f"bf-server: cannot use data dir {config.data_dir}: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(_serve(app, config))
    except StoreError as exc:
        print(f"bf-server: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"bf-server: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(app: web.Application, config: ServerConfig) -> None:
    """Listen, say where, and run until SIGINT or SIGTERM; then shut down cleanly."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else config.port  # port 0 picks one
        print(f"bf-server {__version__} listening on http://{config.host}:{port}", flush=True)
        print(f"data dir: {config.data_dir}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
