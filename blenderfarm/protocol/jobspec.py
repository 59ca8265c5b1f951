"""The job spec: what a user submits, and its validation.

``validate_spec(data)`` turns untrusted JSON into a :class:`JobSpec` or raises
:class:`SpecError` naming the offending field's path (``overrides.samples``).
Everything here is pure: the server, the client and the add-on share it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .blender_version import normal_pin, normal_saved
from .frames import FrameRangeError, parse_frames
from .hashing import is_sha256
from .paths import PathError, is_utf8, normalize_relpath
from .tiles import MAX_TILES

#: the formats ``overrides.format`` (``bf submit --format``, the add-on's Format) offers;
#: only the format changes, the scene's colour mode, depth and codecs stay where the
#: format has them
FORMATS = ("PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER", "TIFF")
DEVICES = ("CPU", "GPU")  # overrides.device: what Cycles renders with
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH")
#: engines that draw with OpenGL: a node renders them only with a display (xvfb) or a GPU
#: driver (its hello's ``blender.opengl``); the runner keeps a twin of this list
OPENGL_ENGINES = ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH")
#: every still format Blender 3.4 to 5.x writes, with its file extensions as Blender's
#: own rule has them (``image_format.cc``): a name already ending in one of them keeps
#: it, otherwise the first is added. JPEG 2000 ends in ``.j2c`` with the J2K codec.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "OPEN_EXR": (".exr",),
    "OPEN_EXR_MULTILAYER": (".exr",), "TIFF": (".tif", ".tiff"), "HDR": (".hdr",),
    "DPX": (".dpx",), "CINEON": (".cin",), "TARGA": (".tga",), "TARGA_RAW": (".tga",),
    "BMP": (".bmp",), "IRIS": (".rgb",), "WEBP": (".webp",), "JPEG2000": (".jp2", ".j2c"),
}
STILL_FORMATS = tuple(EXTENSIONS)
#: movie formats: the farm renders such a scene's frames as lossless stills (PNG) and
#: says so on the job; encoding the movie is another task's work
MOVIE_FORMATS = ("FFMPEG", "AVI_JPEG", "AVI_RAW")
#: the file part of a scene's output path (``shot_###``): characters every file system
#: and URL takes, '#' for the frame's digits, at most this many bytes
MAX_PATTERN_BYTES = 120
MAX_MANIFEST = 100_000
MAX_NAME = 200
#: tasks in one job: each costs the server memory (about 600 bytes) and rows; a longer
#: shot renders in chunks of several frames
MAX_TASKS = 100_000
#: node tags (``bf-node --tag gpu``) and the tags a job requires: the alphabet of ids
#: (letters, digits, ``_ . -``, not starting with ``.`` or ``-``), at most this long
TAG_MAX = 64
MAX_TAGS = 32  # tags on one node or one job
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_tag(value: object) -> bool:
    """Whether ``value`` is a valid tag (of a node or of a job)."""
    return isinstance(value, str) and 0 < len(value) <= TAG_MAX and \
        _TAG.fullmatch(value) is not None


class SpecError(ValueError):
    """An invalid job spec; ``path`` names the field (dotted), ``message`` says why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass
class Overrides:
    """Render settings the node applies on top of the scene's own. None = keep the scene's."""

    engine: str | None = None
    samples: int | None = None
    resolution_percent: int | None = None
    resolution_x: int | None = None
    resolution_y: int | None = None
    format: str | None = None
    camera: str | None = None
    denoise: bool | None = None
    #: "CPU" or "GPU" (DEVICES): what Cycles renders with; None: the scene's own setting
    #: (on a GPU slot, its GPUs; on a CPU slot, the CPU)
    device: str | None = None
    #: Cycles' persistent data (``render.use_persistent_data``): a node keeps the
    #: scene's BVH and images between the frames of a task; None: the scene's setting
    persistent_data: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict (a deep copy): this runs for every task assigned.
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class JobSpec:
    name: str
    blend: str
    manifest: dict[str, str]
    frames: str
    scene: str | None = None
    chunk: int = 1
    priority: int = 50
    overrides: Overrides = field(default_factory=Overrides)
    paused: bool = False
    #: let Blender run Python inside the .blend (drivers, startup scripts); only nodes
    #: started with --allow-scripts honour it
    scripts: bool = False
    #: an http(s) URL POSTed {"event", "job"} when this job completes or fails
    webhook: str | None = None
    #: who submits, for fair sharing between users of equal priority; on a farm with
    #: tokens the server uses the token's name instead
    user: str | None = None
    #: tags a node must all have to get this job's tasks (``bf-node --tag gpu``)
    tags: list[str] = field(default_factory=list)
    #: the file part of the scene's output path, frames named from it as Blender names
    #: them (``frame_`` -> ``frame_0001.png``, ``shot_###`` -> ``shot_001.png``, ``""``
    #: -> ``0001.png``); None (older specs) names them ``<job>_0001.png``
    output_pattern: str | None = None
    #: the scene's own output format as the submitter read it (one of STILL_FORMATS or
    #: MOVIE_FORMATS); only for the job's notes, the node reads the scene itself
    scene_format: str | None = None

    @property
    def notes(self) -> list[str]:
        """What the job's view should say about how the farm renders it."""
        if self.scene_format in MOVIE_FORMATS and self.overrides.format is None:
            then = ("and encodes the movie from them when they are done" if self.video else
                    "(submit with --video, or tick Video, for the movie made from them)")
            return [f"The scene's output is a movie ({self.scene_format}): the farm renders "
                    f"its frames as lossless PNG stills {then}."]
        return []
    #: the Blender that saved the main .blend, "MAJOR.MINOR": nodes with an older one do
    #: not get it (None: a spec from before, any node); see protocol/blender_version.py
    blender_saved: str | None = None
    #: a pin that replaces that rule: ">=4.5" (4.5 or newer) or "4.5" (4.5.x only)
    blender: str | None = None
    #: split each frame into this many tiles, merged by one task per frame (1 or None:
    #: whole frames); ``"auto"`` is resolved by the server at submit (protocol.tiles)
    tiles: int | str | None = None
    #: also make a video of the frames (an encode task after every render)
    video: bool = False
    #: the scene's resolution as the submitter read it (after its percentage), for
    #: ``tiles: "auto"``; None: unknown
    resolution: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overrides"] = self.overrides.to_dict()
        return d


def _int(data: dict[str, Any], key: str, path: str, lo: int, hi: int, default: int | None) -> Any:
    value = data.get(key)
    if value is None:  # absent or null: the default (null for an override)
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path + key, "must be an integer")
    if not lo <= value <= hi:
        raise SpecError(path + key, f"must be between {lo} and {hi}")
    return value


def _str(data: dict[str, Any], key: str, path: str, choices: tuple[str, ...] | None = None,
         max_len: int = MAX_NAME) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path + key, "must be a non-empty string")
    if len(value) > max_len:
        raise SpecError(path + key, f"longer than {max_len} characters")
    if not is_utf8(value):
        raise SpecError(path + key, "is not valid UTF-8 (a lone surrogate)")
    if choices is not None:
        value = value.upper()
        if value not in choices:
            raise SpecError(path + key, f"must be one of {', '.join(choices)}")
    return value


def validate_overrides(data: Any) -> Overrides:
    if data is None:
        return Overrides()
    if not isinstance(data, dict):
        raise SpecError("overrides", "must be an object")
    known = set(Overrides.__dataclass_fields__)
    for key in data:
        if key not in known:
            raise SpecError(f"overrides.{key}", "unknown override")
    p = "overrides."
    for flag in ("denoise", "persistent_data"):
        value = data.get(flag)
        if value is not None and not isinstance(value, bool):
            raise SpecError(p + flag, "must be true, false or null")
    return Overrides(
        engine=_str(data, "engine", p, ENGINES),
        samples=_int(data, "samples", p, 1, 1_000_000, None),
        resolution_percent=_int(data, "resolution_percent", p, 1, 1000, None),
        resolution_x=_int(data, "resolution_x", p, 4, 65536, None),
        resolution_y=_int(data, "resolution_y", p, 4, 65536, None),
        format=_str(data, "format", p, FORMATS),
        camera=_str(data, "camera", p, max_len=64),
        denoise=data.get("denoise"),
        device=_str(data, "device", p, DEVICES),
        persistent_data=data.get("persistent_data"),
    )


def validate_manifest(data: Any) -> dict[str, str]:
    if not isinstance(data, dict) or not data:
        raise SpecError("manifest", "must be a non-empty object of path -> sha256")
    if len(data) > MAX_MANIFEST:
        raise SpecError("manifest", f"more than {MAX_MANIFEST} files")
    out: dict[str, str] = {}
    for raw, digest in data.items():
        try:
            path = normalize_relpath(raw)
        except PathError as exc:
            raise SpecError(f"manifest[{raw!r}]", str(exc)) from exc
        if not is_sha256(digest):
            raise SpecError(f"manifest[{raw!r}]", "must be a lowercase hex sha256")
        if path in out:
            raise SpecError(f"manifest[{raw!r}]", "path given twice")
        out[path] = digest
    return out


def validate_spec(data: Any) -> JobSpec:
    """Check untrusted input and return a normalised JobSpec, or raise SpecError."""
    if not isinstance(data, dict):
        raise SpecError("", "job spec must be a JSON object")
    known = set(JobSpec.__dataclass_fields__)
    for key in data:
        if key not in known:
            raise SpecError(key, "unknown field")
    manifest = validate_manifest(data.get("manifest"))
    blend_raw = data.get("blend")
    if not isinstance(blend_raw, str):
        raise SpecError("blend", "must name the main .blend file of the manifest")
    try:
        blend = normalize_relpath(blend_raw)
    except PathError as exc:
        raise SpecError("blend", str(exc)) from exc
    if blend not in manifest:
        raise SpecError("blend", f"{blend!r} is not in the manifest")
    if not blend.lower().endswith(".blend"):
        raise SpecError("blend", "must be a .blend file")
    frames = data.get("frames")
    if not isinstance(frames, str) or not frames.isascii():
        raise SpecError("frames", "must be a frame range such as '1-250' or '1-10,20,30-40x2'")
    try:
        count = len(parse_frames(frames))
    except FrameRangeError as exc:
        raise SpecError("frames", str(exc)) from exc
    name = _str(data, "name", "") or blend.rsplit("/", 1)[-1][: -len(".blend")]
    if any(ord(c) < 32 for c in name):
        raise SpecError("name", "control character in name")
    for flag in ("paused", "scripts", "video"):
        if not isinstance(data.get(flag, False), bool):
            raise SpecError(flag, "must be true or false")
    chunk = _int(data, "chunk", "", 1, 10_000, 1)
    if -(-count // chunk) > MAX_TASKS:
        raise SpecError("chunk", f"{count} frames in chunks of {chunk} make more than "
                        f"{MAX_TASKS} tasks; use a chunk of at least {-(-count // MAX_TASKS)}")
    return JobSpec(
        name=name,
        blend=blend,
        manifest=manifest,
        frames=frames.strip(),
        scene=_str(data, "scene", "", max_len=64),
        chunk=chunk,
        priority=_int(data, "priority", "", 0, 100, 50),
        overrides=validate_overrides(data.get("overrides")),
        paused=data.get("paused", False),
        scripts=data.get("scripts", False),
        webhook=_webhook(data.get("webhook")),
        user=_str(data, "user", "", max_len=64),
        tags=validate_tags(data.get("tags")),
        output_pattern=_pattern(data.get("output_pattern")),
        scene_format=_str(data, "scene_format", "", STILL_FORMATS + MOVIE_FORMATS),
        blender_saved=_version(data, "blender_saved", normal_saved),
        blender=_version(data, "blender", normal_pin),
        tiles=_tiles(data.get("tiles"), count),
        video=data.get("video", False),
        resolution=_resolution(data.get("resolution")),
    )


def _tiles(value: Any, frames: int) -> int | str | None:
    """``tiles``: None, ``"auto"`` or 1..MAX_TILES, frames x tiles within MAX_TASKS."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TILES:
        raise SpecError("tiles", f"must be \"auto\" or an integer from 1 to {MAX_TILES}")
    if frames * (value + (value > 1)) > MAX_TASKS:
        raise SpecError("tiles", f"{frames} frames in {value} tiles make more than "
                        f"{MAX_TASKS} tasks; tile fewer frames per job")
    return value


def _resolution(value: Any) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or \
            any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65536
                for v in value):
        raise SpecError("resolution", "must be [width, height] in pixels")
    return list(value)


def _version(data: dict[str, Any], key: str, normal: Callable[[str], str]) -> str | None:
    """A Blender version field (``blender_saved``, ``blender``) in ``normal``'s form."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 16:
        raise SpecError(key, "must be a string such as \"4.5\"")
    try:
        return normal(value.replace(" ", ""))
    except ValueError as exc:
        raise SpecError(key, str(exc)) from exc


def validate_tags(value: Any) -> list[str]:
    """A job's required tags: a list of distinct tags, order kept (null: none)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError("tags", "must be a list of tags such as [\"gpu\"]")
    if len(value) > MAX_TAGS:
        raise SpecError("tags", f"more than {MAX_TAGS} tags")
    for i, tag in enumerate(value):
        if not is_tag(tag):
            raise SpecError(f"tags[{i}]", f"must be a tag of 1 to {TAG_MAX} letters, digits, "
                            "'_', '.' or '-' (not starting with '.' or '-')")
    return list(dict.fromkeys(value))


def pattern_problem(value: object) -> str | None:
    """Why ``value`` cannot be an output pattern (the file part of an output path),
    or None when it can. ``""`` can: Blender names such frames ``0001.png``."""
    if not isinstance(value, str):
        return "must be a string"
    if len(value.encode("utf-8", "replace")) > MAX_PATTERN_BYTES:
        return f"longer than {MAX_PATTERN_BYTES} bytes"
    if value.startswith("."):
        return "must not start with a dot (a hidden file)"
    bad = sorted({c for c in value if not (c.isalnum() or c in "_-.#")})
    if bad:
        return (f"has characters a file name on the farm cannot hold ({''.join(bad)!r}); "
                "use letters, digits, '_', '-', '.' and '#'")
    return None


def safe_pattern(path: str) -> str:
    """The output pattern for a scene whose output path is ``path`` (``//render/shot_###``):
    its file part, characters the farm's names cannot hold made ``_``. For submitters
    (``bf submit``, the add-on), which read the path from the scene."""
    file_part = path.replace("\\", "/").rsplit("/", 1)[-1]
    safe = "".join(c if c.isalnum() or c in "_-.#" else "_" for c in file_part).lstrip(".")
    while len(safe.encode("utf-8")) > MAX_PATTERN_BYTES:
        safe = safe[:-1]
    return safe


def _pattern(value: Any) -> str | None:
    if value is None:
        return None
    problem = pattern_problem(value)
    if problem is not None:
        raise SpecError("output_pattern", problem)
    assert isinstance(value, str)
    return value


def _webhook(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or \
            len(value) > 2000 or any(c.isspace() for c in value) or not is_utf8(value):
        raise SpecError("webhook", "must be an http:// or https:// URL")
    return value


def output_stem(job_name: str) -> str:
    """A file-name-safe stem for a job's frames: ``<stem>_0001.png``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_name).strip("._")
    # at most 80 characters and 120 bytes: a file name (with the frame, a File Output
    # node's part and the extension) stays within the 255 bytes file systems allow
    safe = safe[:80]
    while len(safe.encode("utf-8")) > 120:
        safe = safe[:-1]
    return safe.strip("._") or "frame"
