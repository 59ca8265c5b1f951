"""Every message between a node and the server, one dataclass each.

On the wire a message is a msgpack map: ``{"t": <type>, <field>: <value>, ...}``.
:func:`encode` and :func:`decode` are the only codec; :func:`decode` raises
:class:`ProtocolError` (and nothing else) for bytes that are not a valid message,
so a receiver can answer with an ``error`` and carry on.

Validation happens here, once, where the bytes enter: a decoded message holds only
what the code behind it can handle. Strings are bounded and free of lone surrogates
(they must encode again, to SQLite, JSON and msgpack); integers fit SQLite's 64 bits
or the field's own bounds; floats are finite; nested records (what a node's Blender
can do, a task's outputs) are typed dataclasses checked field by field; the few
free-form maps hold only JSON-like values of bounded size and depth.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import msgpack

from .jobspec import MAX_TAGS, TAG_MAX
from .paths import is_utf8
from .tiles import MAX_TILES

MAX_MESSAGE = 16 * 1024 * 1024  # bytes; bigger frames are refused by both ends
#: The server leaves a job's manifest out of an assign when it sent it on the same
#: connection within the last this many distinct jobs; a node keeps at least as many.
MANIFESTS_REMEMBERED = 32
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what SQLite (and msgpack's int64) can hold
MAX_TEXT = 1_000_000  # characters: the default bound of any string field
MAX_JSON_DEPTH = 8  # nesting of a free-form map
MAX_JSON_ITEMS = 10_000  # values in a free-form map, all levels together


class ProtocolError(ValueError):
    """Bytes that do not decode to a known, well-formed message."""

    def __init__(self, message: str, type_: str | None = None) -> None:
        super().__init__(message)
        self.type = type_


class Limit:
    """``Annotated[str, Limit(n)]``: at most n characters (items for a list);
    ``Annotated[int, Limit(lo, hi)]``: from lo to hi."""

    __slots__ = ("lo", "hi")

    def __init__(self, a: int, b: int | None = None) -> None:
        self.lo, self.hi = (0, a) if b is None else (a, b)

    def __repr__(self) -> str:
        return f"Limit({self.lo}, {self.hi})"


#: job, task and node ids: 1 to 128 of ``A-Z a-z 0-9 _ . -``, never starting with a
#: dot or a dash (they name files and folders on nodes and the server; no ``:``, the
#: stream separator of NTFS)
Id = Annotated[str, Limit(1, 128), "id"]
Name = Annotated[str, Limit(256)]  # names, versions, paths of a file
Count = Annotated[int, Limit(0, INT_MAX)]
Frame = Annotated[int, Limit(-1_048_574, 1_048_574)]  # Blender's MAXFRAME
Size = Annotated[int, Limit(0, INT_MAX)]
#: a free-form value: JSON-like (None, bool, int, float, str, lists, str-keyed maps),
#: bounded in depth and size
Json = Annotated[Any, "json"]
#: a node's tag (``bf-node --tag gpu``): the alphabet of ids, bounded like a job's tags
Tag = Annotated[str, Limit(1, TAG_MAX), "id"]


@dataclass
class Message:
    T: ClassVar[str] = ""


# --- records inside messages -------------------------------------------------------------


@dataclass
class Device:
    """One Cycles compute device (a GPU) a node's Blender sees, by backend: one card
    shows up once per backend that drives it (CUDA and OptiX, say)."""

    type: Name  # "CUDA", "OPTIX", "HIP", "ONEAPI", "METAL"
    id: Name  # Cycles' own id of the device (``bpy``'s ``CyclesDeviceSettings.id``)
    name: Name = ""  # "NVIDIA H200"
    #: the card it is, the same for all its backends and all Blenders of the node
    #: (the node's key, e.g. its PCI address): which slot uses it
    gpu: Name = ""


@dataclass
class BlenderCaps:
    """What a node's Blender can do (its probe), in the node's hello."""

    version: Name = ""  # "3.4.1"
    path: Annotated[str, Limit(4096)] = ""
    version_tuple: list[Count] = field(default_factory=list)
    oidn: bool = False  # Cycles can denoise with OpenImageDenoise
    #: Eevee and Workbench can render (an OpenGL context: a display, xvfb or a GPU
    #: driver); the node's probe renders a tiny frame to know
    opengl: bool = False
    cycles_devices: list[Name] = field(default_factory=lambda: ["CPU"])
    threads: Count = 1
    #: "executable" (``blender -b``) or "module" (a Python with the ``bpy`` module)
    kind: Name = "executable"
    #: its GPUs, by backend (the CPU is always there and not listed)
    devices: Annotated[list[Device], Limit(256)] = field(default_factory=list)


#: what a slot renders with: the CPU, or the GPUs it names
SLOT_DEVICES = ("CPU", "GPU")

#: what a task does (``Assign.kind``): render frames, or one tile of one frame; merge
#: the tiles of a frame into the frame; encode a job's frames into its video
RENDER, MERGE, ENCODE = "render", "merge", "encode"
TASK_KINDS = (RENDER, MERGE, ENCODE)


@dataclass
class Tile:
    """One tile of a frame: cell ``index`` of a grid ``cols`` x ``rows`` (see
    ``protocol.tiles``: counted from the bottom left, row by row)."""

    index: Annotated[int, Limit(0, MAX_TILES - 1)]
    cols: Annotated[int, Limit(1, MAX_TILES)]
    rows: Annotated[int, Limit(1, MAX_TILES)]


@dataclass
class InputRef:
    """A file an earlier task of the job made that this task reads (a tile to merge, a
    frame to encode): a blob the node downloads like the job's files."""

    sha256: Name
    size: Size
    frame: Frame
    name: Name  # the file's name as its task reported it
    tile: Tile | None = None  # the tile it is (merge inputs)


@dataclass
class SlotCaps:
    """A slot: what runs one task at a time on a node (one runner), with its devices:
    the CPU, or one or more GPUs (``Device.gpu`` keys). A node with k GPUs has k GPU
    slots when it runs one task per GPU."""

    id: Id  # "cpu", "gpu0", ...: unique on the node
    device: Name = "CPU"  # one of SLOT_DEVICES
    gpus: Annotated[list[Name], Limit(64)] = field(default_factory=list)


@dataclass
class OutputRef:
    """One output file of a task, uploaded as a blob."""

    frame: Frame
    sha256: Name
    size: Size
    name: Name  # file name, e.g. shot_0001.png


# --- node -> server -------------------------------------------------------------------


@dataclass
class Hello(Message):
    """First frame from a node: who it is and what it can do."""

    T: ClassVar[str] = "hello"
    protocol: int
    name: Name
    uid: Id  # stable id the node keeps on disk, so a reconnect is the same node
    token: Name | None = None
    #: its first Blender (for servers from before ``blenders``)
    blender: BlenderCaps = field(default_factory=BlenderCaps)
    #: every Blender it has, the first being ``blender``; [] (a node from before):
    #: ``[blender]``. An assign names one by its index here.
    blenders: Annotated[list[BlenderCaps], Limit(16)] = field(default_factory=list)
    #: its slots; [] (a node from before): one CPU slot named "0"
    slots: Annotated[list[SlotCaps], Limit(64)] = field(default_factory=list)
    threads: Count = 1
    ram: Count = 0
    gpus: Annotated[list[Name], Limit(256)] = field(default_factory=list)
    tags: Annotated[list[Tag], Limit(MAX_TAGS)] = field(default_factory=list)
    cached_blobs: Count = 0
    #: task ids held from before a reconnect
    running: Annotated[list[Id], Limit(10_000)] = field(default_factory=list)
    agent_version: Name = ""
    #: the slot each task of ``running`` is in (task id -> slot id); a task not named
    #: here is in the first slot
    holding: Annotated[dict[Id, Id], Limit(10_000)] = field(default_factory=dict)
    #: the version of FFmpeg on the node's host ("" none): it can run ``encode`` tasks
    ffmpeg: Name = ""


@dataclass
class Progress(Message):
    T: ClassVar[str] = "progress"
    task_id: Id
    frame: Frame | None = None
    fraction: float = 0.0  # of the whole task, 0..1
    frames_done: Count = 0
    message: Annotated[str, Limit(4096)] = ""


@dataclass
class FrameDone(Message):
    """One output is uploaded (its blob exists on the server)."""

    T: ClassVar[str] = "frame_done"
    task_id: Id
    frame: Frame
    sha256: Name
    size: Size
    name: Name  # file name, e.g. shot_0001.png


@dataclass
class TaskDone(Message):
    """Every output of the task; resent after a reconnect until the server acks it."""

    T: ClassVar[str] = "task_done"
    task_id: Id
    outputs: Annotated[list[OutputRef], Limit(100_000)]
    seconds: Annotated[float, Limit(0, 10**9)] = 0.0
    #: what a render learned of the scene that later tasks need (its frame rate and
    #: movie settings, for the job's video: ``protocol.video.SceneVideo``'s fields)
    info: dict[Name, Json] = field(default_factory=dict)


@dataclass
class TaskFailed(Message):
    T: ClassVar[str] = "task_failed"
    task_id: Id
    error: Annotated[str, Limit(100_000)]
    log_tail: str = ""
    retryable: bool = True
    reason: Name = ""  # machine-readable cause: "needs_denoise", "crash", "bad_output", ...


@dataclass
class Log(Message):
    T: ClassVar[str] = "log"
    task_id: Id
    text: str


# --- server -> node -------------------------------------------------------------------


@dataclass
class Welcome(Message):
    T: ClassVar[str] = "welcome"
    node_id: Id
    server_version: Name = ""
    settings: dict[Name, Json] = field(default_factory=dict)


@dataclass
class Assign(Message):
    """Run this task of this job: render its frames (``kind`` render, one ``tile`` of
    its one frame where given), merge the tiles in ``inputs`` into its frame (merge), or
    encode the frames in ``inputs`` into the job's video (encode, as ``video`` says).
    ``manifest`` maps job paths to blob hashes; it
    is empty when this connection carried the job's manifest already (within the last
    :data:`MANIFESTS_REMEMBERED` jobs assigned on it): the node uses that one. A job of
    a studio's size has thousands of files, and a node gets many tasks of one job."""

    T: ClassVar[str] = "assign"
    task_id: Id
    job_id: Id
    frames: list[Frame]
    blend: Annotated[str, Limit(1024)]
    manifest: dict[Annotated[str, Limit(1024)], Name]
    output_name: Name  # file stem, e.g. "shot" -> shot_0001.png, and File Output files
    scene: Name | None = None
    overrides: dict[Name, Json] = field(default_factory=dict)
    attempt: Count = 1
    allow_scripts: bool = False
    #: the frames' names as Blender makes them from the scene's output path
    #: (jobspec.JobSpec.output_pattern, ``shot_###``); None: ``<output_name>_####``
    output_pattern: Name | None = None
    #: the slot that runs it (one of the hello's ``slots``; "0" on a node from before)
    slot: Id = "0"
    #: which of the hello's ``blenders`` runs it (an index into that list)
    blender: Annotated[int, Limit(0, 15)] = 0
    #: one of TASK_KINDS; a node refuses a kind it does not know
    kind: Name = RENDER
    #: render: the tile of its one frame it renders (None: whole frames)
    tile: Tile | None = None
    #: merge and encode: the files they read, made by the tasks they depend on
    inputs: Annotated[list[InputRef], Limit(100_000)] = field(default_factory=list)
    #: encode: how to encode (``protocol.video.VideoSettings``' fields)
    video: dict[Name, Json] = field(default_factory=dict)


@dataclass
class Cancel(Message):
    T: ClassVar[str] = "cancel"
    task_id: Id
    reason: Annotated[str, Limit(4096)] = ""


@dataclass
class Ack(Message):
    """The server has stored a task_done: the node may forget it."""

    T: ClassVar[str] = "ack"
    task_id: Id


@dataclass
class Error(Message):
    T: ClassVar[str] = "error"
    code: Name
    message: Annotated[str, Limit(100_000)]
    fatal: bool = False


NODE_MESSAGES: tuple[type[Message], ...] = (Hello, Progress, FrameDone, TaskDone, TaskFailed, Log)
SERVER_MESSAGES: tuple[type[Message], ...] = (Welcome, Assign, Cancel, Ack, Error)
REGISTRY: dict[str, type[Message]] = {cls.T: cls for cls in NODE_MESSAGES + SERVER_MESSAGES}


# --- the codec ------------------------------------------------------------------------------


class _Bad(Exception):
    """A value that does not fit its field; ``where`` grows as it rises through records."""

    def __init__(self, why: str, where: str = "") -> None:
        super().__init__(why)
        self.why, self.where = why, where

    def inside(self, part: str) -> _Bad:
        self.where = part + self.where
        return self


_Convert = typing.Callable[[Any], Any]  # a decoded value -> the field's value, or _Bad


def _unwrap(hint: Any) -> tuple[Any, Limit | None, set[str]]:
    if typing.get_origin(hint) is Annotated:
        base, *extra = typing.get_args(hint)
        limit = next((e for e in extra if isinstance(e, Limit)), None)
        return base, limit, {e for e in extra if isinstance(e, str)}
    return hint, None, set()


_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _identifier(limit: Limit) -> _Convert:
    text = _text(limit.hi)

    def check(v: Any) -> Any:
        text(v)
        if not v or _ID.fullmatch(v) is None:
            raise _Bad("must be an id: letters, digits, '_', '.' or '-'")
        return v
    return check


def _text(limit: int) -> _Convert:
    def check(v: Any) -> Any:
        if type(v) is not str:
            raise _Bad("must be a string")
        if len(v) > limit:
            raise _Bad(f"longer than {limit} characters")
        if not is_utf8(v):
            raise _Bad("is not valid UTF-8 (a lone surrogate)")
        return v
    return check


def _integer(lo: int, hi: int) -> _Convert:
    def check(v: Any) -> Any:
        if type(v) is not int:
            raise _Bad("must be an integer")
        if not lo <= v <= hi:
            raise _Bad(f"must be between {lo} and {hi}")
        return v
    return check


def _real(lo: float, hi: float) -> _Convert:
    def check(v: Any) -> Any:
        if type(v) is int:
            v = float(v) if -2**53 <= v <= 2**53 else math.inf
        elif type(v) is not float:
            raise _Bad("must be a number")
        if not lo <= v <= hi or not math.isfinite(v):  # nan fails both
            raise _Bad("must be a finite number" + (
                f" from {lo} to {hi}" if math.isfinite(lo) and math.isfinite(hi) else ""))
        return v
    return check


def _json_value(v: Any) -> Any:
    """A free-form value: JSON-like, bounded in depth and size, strings encodable."""
    budget = [MAX_JSON_ITEMS]
    text = _text(MAX_TEXT)

    def walk(x: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Bad(f"more than {MAX_JSON_ITEMS} values")
        if depth > MAX_JSON_DEPTH:
            raise _Bad(f"nested deeper than {MAX_JSON_DEPTH}")
        if x is None or x is True or x is False:
            return
        t = type(x)
        if t is int:
            if not INT_MIN <= x <= INT_MAX:
                raise _Bad("integer out of 64-bit range")
        elif t is float:
            if not math.isfinite(x):
                raise _Bad("number is not finite")
        elif t is str:
            text(x)
        elif t is list:
            for item in x:
                walk(item, depth + 1)
        elif t is dict:
            for key, item in x.items():
                if type(key) is not str:
                    raise _Bad("map keys must be strings")
                text(key)
                walk(item, depth + 1)
        else:
            raise _Bad(f"{t.__name__} is not a JSON-like value")

    walk(v, 0)
    return v


def _converter(hint: Any) -> _Convert:
    """A function that checks a decoded value against ``hint`` and returns the field's
    value; built once per field (the codec runs for every frame, thousands a second)."""
    base, limit, marks = _unwrap(hint)
    origin = typing.get_origin(base)
    if "json" in marks or base is Any:
        return _json_value
    if "id" in marks:
        return _identifier(limit or Limit(128))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(base)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"unsupported union {base}")
        inner = _converter(Annotated[rest[0], limit] if limit else rest[0])
        return lambda v: None if v is None else inner(v)
    if base is str:
        return _text(limit.hi if limit else MAX_TEXT)
    if base is bool:
        def boolean(v: Any) -> Any:
            if v is not True and v is not False:
                raise _Bad("must be true or false")
            return v
        return boolean
    if base is int:
        return _integer(limit.lo, limit.hi) if limit else _integer(INT_MIN, INT_MAX)
    if base is float:
        return _real(limit.lo, limit.hi) if limit else _real(-math.inf, math.inf)
    if origin is list:
        (item,) = typing.get_args(base)
        each, most = _converter(item), limit.hi if limit else MAX_JSON_ITEMS * 10

        def seq(v: Any) -> Any:
            if type(v) is not list:
                raise _Bad("must be a list")
            if len(v) > most:
                raise _Bad(f"more than {most} items")
            out = []
            for i, x in enumerate(v):
                try:
                    out.append(each(x))
                except _Bad as bad:
                    raise bad.inside(f"[{i}]") from None
            return out
        return seq
    if origin is dict:
        k, val = typing.get_args(base)
        ck, cv, most = _converter(k), _converter(val), limit.hi if limit else 1_000_000

        def mapping(v: Any) -> Any:
            if type(v) is not dict:
                raise _Bad("must be a map")
            if len(v) > most:
                raise _Bad(f"more than {most} entries")
            out = {}
            for a, b in v.items():
                try:
                    out[ck(a)] = cv(b)
                except _Bad as bad:
                    raise bad.inside(f"[{str(a)[:40]!r}]") from None
            return out
        return mapping
    if dataclasses.is_dataclass(base):
        return lambda v: _record(base, v)
    raise TypeError(f"no codec for {base!r}")


@dataclass(frozen=True)
class _Field:
    name: str
    required: bool
    convert: _Convert
    record: bool  # a nested dataclass (encoded as a map)


_SCHEMAS: dict[type, tuple[_Field, ...]] = {}


def _schema(cls: type) -> tuple[_Field, ...]:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        schema = _SCHEMAS[cls] = tuple(
            _Field(f.name, f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING, _converter(hints[f.name]),
                   _has_record(hints[f.name]))
            for f in dataclasses.fields(cls))
    return schema


def _has_record(hint: Any) -> bool:
    base = _unwrap(hint)[0]
    if dataclasses.is_dataclass(base):
        return True
    return any(_has_record(a) for a in typing.get_args(base))


def _record(cls: Any, data: Any) -> Any:
    """Build a dataclass from a decoded map, field by field; raise _Bad naming the field."""
    if type(data) is not dict:
        raise _Bad("must be a map")
    kwargs: dict[str, Any] = {}
    for f in _schema(cls):
        if f.name not in data:
            if f.required:
                raise _Bad("is missing", "." + f.name)
            continue
        try:
            kwargs[f.name] = f.convert(data[f.name])
        except _Bad as bad:
            raise bad.inside("." + f.name) from None
    # Unknown extra fields are ignored: a newer peer may send more.
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    """Nested records as maps, for msgpack."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in _schema(type(value))}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode(msg: Message) -> bytes:
    """Raise ProtocolError for a message that cannot be encoded (text that is not valid
    UTF-8, an integer out of range): the message is not sent, the sender goes on."""
    data: dict[str, Any] = {"t": msg.T}
    for f in _schema(type(msg)):
        value = getattr(msg, f.name)
        data[f.name] = _plain(value) if f.record else value
    try:
        out: bytes = msgpack.packb(data, use_bin_type=True)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
        raise ProtocolError(f"{msg.T}: cannot be encoded: {exc}", msg.T) from exc
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
    try:
        msg: Message = _record(cls, data)
    except _Bad as bad:
        where = bad.where.lstrip(".")
        raise ProtocolError(f"{t}: field {where!r} {bad.why}", t) from None
    return msg
