"""``bf-server``: start the farm's server daemon, or manage its tokens.

    bf-server [--host H] [--port P] [--data-dir D] [--config F] [--tls-cert C --tls-key K]
    bf-server token create --user|--admin|--node [--name N]   (prints the token once)
    bf-server token list | bf-server token revoke ID
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web

from ..protocol.version import __version__
from . import tokens
from .app import make_app, make_runner
from .config import DEFAULT_PORT, ConfigError, ServerConfig
from .store import StoreError

log = logging.getLogger("blenderfarm.server")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path,
                   help="where the database, blobs and outputs live (default: the platform's "
                        "user data dir; '.' keeps everything in the current directory)")
    p.add_argument("--config", type=Path, help="TOML file with a [server] table")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bf-server", description="Blenderfarm server daemon.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT})")
    _common(p)
    p.add_argument("--grace-period", type=float,
                   help="seconds a lost node keeps its tasks before they are requeued")
    p.add_argument("--max-attempts", type=int, help="failures before a task fails (default 3)")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS/WSS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--insecure", action="store_true",
                   help="allow listening beyond loopback with no tokens (anyone may use it)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--version", action="version", version=f"bf-server {__version__}")
    return p.parse_args(argv)


def parse_token_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bf-server token", description="Manage farm tokens.")
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", help="create a token and print it (once)")
    kind = c.add_mutually_exclusive_group(required=True)
    kind.add_argument("--user", action="store_const", const="user", dest="kind",
                      help="for people, bf and the add-on: the HTTP API and the dashboard")
    kind.add_argument("--admin", action="store_const", const="admin", dest="kind",
                      help="a user token that may also control every user's jobs, the "
                      "nodes and the tokens")
    kind.add_argument("--node", action="store_const", const="node", dest="kind",
                      help="for bf-node: enroll a render node")
    c.add_argument("--name", default="", help="a label to recognise it by")
    _common(c)
    ls = sub.add_parser("list", help="list tokens (never their secrets)")
    _common(ls)
    r = sub.add_parser("revoke", help="revoke a token by id")
    r.add_argument("id")
    _common(r)
    return p.parse_args(argv)


def load_config(args: argparse.Namespace, extra: dict[str, object] | None = None) -> ServerConfig:
    return ServerConfig.load(args.config, {"data_dir": args.data_dir, **(extra or {})})


def token_main(argv: list[str]) -> int:
    args = parse_token_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"bf-server: {exc}", file=sys.stderr)
        return 2
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = config.data_dir / "farm.db"
    if args.action == "create":
        kind, role = ("user", "admin") if args.kind == "admin" else (args.kind, "user")
        info, secret = tokens.create(db, kind, args.name or f"{args.kind}-token", role)
        print(f"created {args.kind} token {info.id} ({info.name}); it is shown only now:",
              file=sys.stderr)
        print(secret)
    elif args.action == "list":
        for t in tokens.list_tokens(db):
            state = "revoked " + time.strftime("%Y-%m-%d %H:%M", time.localtime(t.revoked)) \
                if t.revoked else "active"
            made = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created))
            print(f"{t.id}  {'admin' if t.admin else t.kind:<5}  {state:<24}  {made}  {t.name}")
    elif not tokens.revoke(db, args.id):
        print(f"bf-server: no active token {args.id!r}", file=sys.stderr)
        return 1
    else:
        print(f"revoked token {args.id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    args = parse_args(argv)
    try:
        config = load_config(args, {
            "host": args.host, "port": args.port, "grace_period": args.grace_period,
            "max_attempts": args.max_attempts, "log_level": args.log_level})
        tls = _tls_context(args.tls_cert, args.tls_key)
    except (ConfigError, ssl.SSLError, OSError) as exc:
        print(f"bf-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    refusal = _refuse_open_bind(config, args.insecure)
    if refusal:
        print(f"bf-server: {refusal}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(make_app(config), config, tls))
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


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _refuse_open_bind(config: ServerConfig, insecure: bool) -> str | None:
    """Beyond loopback, a farm without tokens would run anyone's code on every node."""
    if _is_loopback(config.host):
        return None
    db = config.data_dir / "farm.db"
    has_tokens = db.exists() and any(t.revoked is None for t in tokens.list_tokens(db))
    if has_tokens:
        return None
    if insecure:
        log.warning("!!! listening on %s with NO authentication (--insecure): anyone who can "
                    "reach this port can submit jobs and enroll nodes !!!", config.host)
        return None
    return (f"refusing to listen on {config.host} without tokens: create one with "
            f"`bf-server token create --user --data-dir {config.data_dir}` (and --node for "
            "each render node), or pass --insecure to run open anyway")


async def _serve(app: web.Application, config: ServerConfig, tls: ssl.SSLContext | None) -> None:
    """Listen, say where, and run until SIGINT or SIGTERM; then shut down cleanly."""
    runner = make_runner(app, config, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else config.port  # port 0 picks one
        scheme = "https" if tls else "http"
        print(f"bf-server {__version__} listening on {scheme}://{config.host}:{port}", flush=True)
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
    """Whether every address ``host`` names is a loopback one (``::1`` too: the IPv4-only
    look-up this used to make called it not loopback)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback
                               for a in found)


if __name__ == "__main__":
    sys.exit(main())
