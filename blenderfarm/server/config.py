"""bf-server settings: defaults, then a TOML file, then command-line flags."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs

DEFAULT_PORT = 8765


class ConfigError(ValueError):
    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path(platformdirs.user_data_dir("blenderfarm", appauthor=False))
    #: seconds a disconnected node keeps its tasks before they are requeued
    grace_period: float = 30.0
    #: failures of one task before it (and its job) fail
    max_attempts: int = 3
    #: failed tasks of one job after which a node gets no more of that job
    blocklist_after: int = 3
    #: websocket ping interval; a node silent for twice this is dropped
    heartbeat: float = 10.0
    #: tasks a node may hold beyond the one it renders (downloads ahead)
    prefetch: int = 1
    #: largest accepted blob upload, bytes
    max_blob_size: int = 64 * 1024**3
    log_level: str = "INFO"
    #: POSTed a JSON {"event", "job"} when any job completes or fails (jobs may add their own)
    webhook_url: str | None = None
    #: seconds a connection may take to send a request's headers, and stay idle between
    #: requests, before it is closed
    header_timeout: float = 30.0
    #: seconds a request body (an upload, a JSON body) may go without sending a byte
    #: before it is answered 408 and its connection closed
    body_timeout: float = 60.0
    #: seconds a node's websocket may stay open before its hello
    hello_timeout: float = 15.0
    #: uploads that run at once; more wait up to body_timeout for a turn, then get 503
    max_uploads: int = 32
    #: open connections the server accepts; more are closed at once (0: from the
    #: process's file-descriptor limit, less a reserve for the database and files)
    max_connections: int = 0
    #: days an offline node's record is kept after it was last seen (with no task held)
    node_retention_days: float = 30.0
    #: node records kept at most; past that the longest-offline ones are forgotten
    max_nodes: int = 10_000
    #: bytes of a task's log kept: its first quarter and its last three quarters
    max_log_bytes: int = 4 * 1024 * 1024
    #: addresses or networks of reverse proxies in front of the server, whose
    #: X-Forwarded-For names the client (comma-separated in the environment)
    trusted_proxies: tuple[str, ...] = ()
    #: whether every user may read every job's outputs and logs (else only its owner
    #: and admins); everyone sees the job list either way
    share_outputs: bool = True
    #: hosts or networks a job's own webhook may reach besides public addresses
    #: (``["hooks.studio.lan", "10.1.0.0/16"]``); the server-wide webhook_url goes anywhere
    webhook_allow: tuple[str, ...] = ()
    #: seconds one reading of an uploaded .blend (POST /api/inspect) may take before it
    #: is stopped and the file refused
    inspect_timeout: float = 30.0
    #: bytes of memory (address space) the process reading one .blend may use
    inspect_memory: int = 2 * 1024**3
    #: bytes the process reading one .blend may write: a compressed .blend is read
    #: from a decompressed copy, and a crafted one could unpack without end
    inspect_unpacked: int = 8 * 1024**3
    #: .blend files read at once; more wait up to body_timeout for a turn, then get 503
    max_inspects: int = 2

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any],
             environ: dict[str, str] | None = None) -> ServerConfig:
        """Defaults, then the TOML file (``--config``, else ``server.toml`` in the user
        config folder when it exists), then ``BLENDERFARM_SERVER_<KEY>`` variables, then
        flags (``overrides``)."""
        values: dict[str, Any] = {}
        if path is None and default_path().exists():
            path = default_path()
        if path is not None:
            try:
                with open(path, "rb") as f:
                    values.update(tomllib.load(f).get("server", {}))
            except FileNotFoundError as exc:
                raise ConfigError(f"config file not found: {path}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        known = {f.name: f for f in fields(cls)}
        env = os.environ if environ is None else environ
        for name in known:
            raw = env.get(f"BLENDERFARM_SERVER_{name.upper()}")
            if raw is not None:
                values[name] = _parse_env(name, raw, cls.__dataclass_fields__[name].default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}", key)
        cfg = cls(**values)
        cfg.data_dir = Path(cfg.data_dir).expanduser().resolve()
        for key in ("trusted_proxies", "webhook_allow"):
            listed = getattr(cfg, key)
            setattr(cfg, key, tuple([listed] if isinstance(listed, str) else listed))
        for net in cfg.trusted_proxies:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ConfigError(f"trusted_proxies: {net!r} is not an address or network",
                                  "trusted_proxies") from exc
        return cfg


def default_path() -> Path:
    return Path(platformdirs.user_config_dir("blenderfarm", appauthor=False)) / "server.toml"


def _parse_env(name: str, raw: str, default: Any) -> Any:
    """Environment values are text: read them as the type of the setting's default."""
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, tuple):
            return tuple(x.strip() for x in raw.split(",") if x.strip())
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as exc:
        raise ConfigError(f"BLENDERFARM_SERVER_{name.upper()}={raw!r} is not a number",
                          name) from exc
    return raw
