"""bf-node settings: defaults, a TOML file's [node] table, then flags."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs


@dataclass
class NodeConfig:
    server: str = "http://127.0.0.1:8765"
    token: str | None = None
    #: the Blender(s) it renders with: a path, or a list of them (None: $BLENDER, PATH);
    #: an assign names one by its index in this list
    blender: str | list[str] | None = None
    #: how its devices are cut into slots (devices.SLOT_MODES; None: per-gpu with GPUs,
    #: else cpu), whether CPU slots sit beside GPU slots, and how many CPU slots there are
    slots: str | None = None
    cpu_slot: bool = False
    cpu_slots: int = 1
    name: str = field(default_factory=socket.gethostname)
    threads: int | None = None  # None: Blender uses every core
    work_dir: Path = Path(platformdirs.user_cache_dir("blenderfarm-node", appauthor=False))
    tags: list[str] = field(default_factory=list)
    allow_scripts: bool = False
    #: seconds without any sign of life from Blender before a render is killed (None: never)
    watchdog: float | None = 600.0
    #: keep Blender running between the tasks of a job (False: the naive one-Blender-per-task)
    persistent: bool = True
    reconnect_max: float = 10.0
    #: seconds for the server to answer the websocket upgrade, and again the hello
    handshake_timeout: float = 30.0
    #: bytes the blob cache may hold ("20G" in node.toml or --cache-size); past it the
    #: least recently used files go, never those of a task the node holds
    cache_size: int = 20 * 1024**3

    def blender_paths(self) -> list[str | None]:
        """The Blenders given, in order (``[None]``: find one as the node always did)."""
        value = self.blender
        if value is None or value == []:
            return [None]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError("blender must be a path or a list of paths, such as "
                             "['/opt/blender-4.5/blender', '/opt/blender-5.0/blender']")
        if len(value) > MAX_BLENDERS:
            raise ValueError(f"a node has at most {MAX_BLENDERS} Blenders, not {len(value)}")
        return list(value)

    @property
    def ws_url(self) -> str:
        base = self.server.rstrip("/")
        if base.startswith("https://"):
            return "wss://" + base[len("https://"):] + "/ws/node"
        if base.startswith("http://"):
            return "ws://" + base[len("http://"):] + "/ws/node"
        raise ValueError(f"server URL must start with http:// or https://: {self.server!r}")

    def node_uid(self) -> str:
        """A stable id for this node, kept in its work dir across restarts."""
        path = self.work_dir / "node-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            uid = os.urandom(8).hex()
            self.work_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(uid + "\n")
            return uid


MAX_BLENDERS = 16  # the protocol's bound on a hello's Blenders
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: object) -> int:
    """Bytes from a size such as ``20G``, ``500M``, ``1.5T`` or a plain number of bytes
    (powers of 1024); ValueError, in one sentence, for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value.strip().upper()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"cache_size must be a size such as 20G, 500M or 1T, not {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])
