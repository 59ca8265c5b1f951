"""Every message between a node and the server, one dataclass each.

On the wire a message is a msgpack map: ``{"t": <type>, <field>: <value>, ...}``.
:func:`encode` and :func:`decode` are the only codec; :func:`decode` raises
:class:`ProtocolError` (and nothing else) for bytes that are not a valid message,
so a receiver can answer with an ``error`` and carry on.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

MAX_MESSAGE = 16 * 1024 * 1024  # bytes; bigger frames are refused by both ends
#: The server leaves a job's manifest out of an assign when it sent it on the same
#: connection within the last this many distinct jobs; a node keeps at least as many.
MANIFESTS_REMEMBERED = 32


class ProtocolError(ValueError):
    """Bytes that do not decode to a known, well-formed message."""

    def __init__(self, message: str, type_: str | None = None) -> None:
        super().__init__(message)
        self.type = type_


@dataclass
class Message:
    T: ClassVar[str] = ""


# --- node -> server -------------------------------------------------------------------


@dataclass
class Hello(Message):
    """First frame from a node: who it is and what it can do."""

    T: ClassVar[str] = "hello"
    protocol: int
    name: str
    uid: str  # stable id the node keeps on disk, so a reconnect is the same node
    token: str | None = None
    blender: dict[str, Any] = field(default_factory=dict)  # version, path, oidn, devices
    threads: int = 1
    ram: int = 0
    gpus: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    cached_blobs: int = 0
    running: list[str] = field(default_factory=list)  # task ids held from before a reconnect
    agent_version: str = ""


@dataclass
class Progress(Message):
    T: ClassVar[str] = "progress"
    task_id: str
    frame: int | None = None
    fraction: float = 0.0  # of the whole task, 0..1
    frames_done: int = 0
    message: str = ""


@dataclass
class FrameDone(Message):
    """One output is uploaded (its blob exists on the server)."""

    T: ClassVar[str] = "frame_done"
    task_id: str
    frame: int
    sha256: str
    size: int
    name: str  # file name, e.g. shot_0001.png


@dataclass
class TaskDone(Message):
    """Every output of the task; resent after a reconnect until the server acks it."""

    T: ClassVar[str] = "task_done"
    task_id: str
    outputs: list[dict[str, Any]]  # [{frame, sha256, size, name}]
    seconds: float = 0.0


@dataclass
class TaskFailed(Message):
    T: ClassVar[str] = "task_failed"
    task_id: str
    error: str
    log_tail: str = ""
    retryable: bool = True
    reason: str = ""  # machine-readable cause: "needs_denoise", "crash", "bad_output", ...


@dataclass
class Log(Message):
    T: ClassVar[str] = "log"
    task_id: str
    text: str


# --- server -> node -------------------------------------------------------------------


@dataclass
class Welcome(Message):
    T: ClassVar[str] = "welcome"
    node_id: str
    server_version: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Assign(Message):
    """Render these frames of this job. ``manifest`` maps job paths to blob hashes; it
    is empty when this connection carried the job's manifest already (within the last
    :data:`MANIFESTS_REMEMBERED` jobs assigned on it): the node uses that one. A job of
    a studio's size has thousands of files, and a node gets many tasks of one job."""

    T: ClassVar[str] = "assign"
    task_id: str
    job_id: str
    frames: list[int]
    blend: str
    manifest: dict[str, str]
    output_name: str  # file stem, e.g. "shot" -> shot_0001.png
    scene: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    allow_scripts: bool = False


@dataclass
class Cancel(Message):
    T: ClassVar[str] = "cancel"
    task_id: str
    reason: str = ""


@dataclass
class Ack(Message):
    """The server has stored a task_done: the node may forget it."""

    T: ClassVar[str] = "ack"
    task_id: str


@dataclass
class Drain(Message):
    T: ClassVar[str] = "drain"
    enabled: bool = True


@dataclass
class Error(Message):
    T: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool = False


NODE_MESSAGES: tuple[type[Message], ...] = (Hello, Progress, FrameDone, TaskDone, TaskFailed, Log)
SERVER_MESSAGES: tuple[type[Message], ...] = (Welcome, Assign, Cancel, Ack, Drain, Error)
REGISTRY: dict[str, type[Message]] = {cls.T: cls for cls in NODE_MESSAGES + SERVER_MESSAGES}

_Check = typing.Callable[[Any], bool]


def _checker(hint: Any) -> _Check:
    """A function that tells whether a decoded value fits ``hint``; built once per field
    (the codec runs for every frame, thousands a second on a busy farm)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_checker(h) for h in typing.get_args(hint)]
        return lambda v: any(c(v) for c in options)
    if hint is type(None):
        return lambda v: v is None
    if hint is Any:
        return lambda v: True
    if hint is float:
        return lambda v: type(v) is float or (isinstance(v, int) and not isinstance(v, bool))
    if hint is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if hint is bool:
        return lambda v: v is True or v is False
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if item is Any:
            return lambda v: isinstance(v, list)
        each = _checker(item)
        return lambda v: isinstance(v, list) and all(each(x) for x in v)
    if origin is dict:
        k, val = typing.get_args(hint) or (Any, Any)
        ck, cv = _checker(k), _checker(val)
        return lambda v: isinstance(v, dict) and all(ck(a) and cv(b) for a, b in v.items())
    return lambda v: isinstance(v, hint)


@dataclass(frozen=True)
class _Field:
    name: str
    required: bool
    check: _Check


_SCHEMAS: dict[type, tuple[_Field, ...]] = {}


def _schema(cls: type) -> tuple[_Field, ...]:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = _SCHEMAS[cls] = tuple(
            _Field(f.name, f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING, _checker(hints[f.name]))
            for f in dataclasses.fields(cls))
    return schema


def encode(msg: Message) -> bytes:
    data = {"t": msg.T}
    for f in _schema(type(msg)):
        data[f.name] = getattr(msg, f.name)
    out: bytes = msgpack.packb(data, use_bin_type=True)
    return out


def decode(raw: bytes, allowed: tuple[type[Message], ...] | None = None) -> Message:
    """Decode one frame; raise ProtocolError for anything but a valid message."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProtocolError("expected a binary frame")
    if len(raw) > MAX_MESSAGE:
        raise ProtocolError(f"message larger than {MAX_MESSAGE} bytes")
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for bad bytes
        raise ProtocolError(f"not valid msgpack: {exc.__class__.__name__}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("message must be a map")
    t = data.pop("t", None)
    if not isinstance(t, str):
        raise ProtocolError("message has no type 't'")
    cls = REGISTRY.get(t)
    if cls is None or (allowed is not None and cls not in allowed):
        raise ProtocolError(f"unknown message type {t[:40]!r}", t)
    kwargs: dict[str, Any] = {}
    for f in _schema(cls):
        if f.name not in data:
            if f.required:
                raise ProtocolError(f"{t}: missing field {f.name!r}", t)
            continue
        value = data[f.name]
        if not f.check(value):
            raise ProtocolError(f"{t}: field {f.name!r} has the wrong type", t)
        kwargs[f.name] = value
    # Unknown extra fields are ignored: a newer peer may send more.
    return cls(**kwargs)
