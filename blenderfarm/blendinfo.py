"""What a .blend offers a submitter, read without Blender: its scenes and their settings.

``bf submit`` reads the frame range, output path and size of the scene it submits;
the server reads every scene of an uploaded file for the dashboard's "New job" form
(:func:`blend_info`). Both read with blender-asset-tracer's (BAT's) .blend reader, so
neither needs Blender.

A .blend is user data, and on the server an upload from anyone: every failure to read
it is one :class:`BlendReadError` with a ``reason`` (``not_blend``, ``corrupt_blend``,
``no_scene``, ``no_file``), a field this reader cannot make sense of is None, and every
list it walks is bounded, so a cyclic one cannot hang it. It cannot bound BAT's own
parsing (BAT can loop on a damaged file): the server runs it in a process of its own
under a timeout. Pure Python plus BAT: it must never import bpy, aiohttp or any part
of the farm but ``protocol`` (the server and the client both import it, and the
add-on vendors it with the client).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from blender_asset_tracer import blendfile, bpathlib
from blender_asset_tracer.blendfile.exceptions import (
    BlendFileError,
    NoReaderImplemented,
    SegmentationFault,
)

from .protocol.blender_version import (
    BlendVersionError,
    format_version,
    parse_header,
    read_header,
)
from .protocol.jobspec import safe_pattern

NOT_BLEND, CORRUPT, NO_SCENE, NO_FILE = "not_blend", "corrupt_blend", "no_scene", "no_file"

#: Blender's R_IMF_IMTYPE_* numbers (DNA_scene_types.h) -> the format's RNA name
IMTYPES = {0: "TARGA", 1: "IRIS", 4: "JPEG", 14: "TARGA_RAW", 15: "AVI_RAW", 16: "AVI_JPEG",
           17: "PNG", 20: "BMP", 21: "HDR", 22: "TIFF", 23: "OPEN_EXR", 24: "FFMPEG",
           26: "CINEON", 27: "DPX", 28: "OPEN_EXR_MULTILAYER", 30: "JPEG2000", 35: "WEBP"}

OB_CAMERA = 11  # Object.type of a camera (DNA_object_types.h)
IDP_INT, IDP_GROUP = 1, 6  # IDProperty.type (DNA_ID.h)
#: items read of any one list (scenes, objects, view layers): a file with more is
#: shown cut short, and a crafted cycle ends here
MAX_ITEMS = 10_000
#: scenes described by :func:`blend_info`, and names in each list of a scene (cameras,
#: view layers): what a form can offer, and a bound on the answer's size
MAX_SCENES = 100
MAX_NAMES = 1000

# What BAT's reader raises on damaged bytes: besides its own errors, whatever a bad
# length or offset makes struct, bytes.decode or a list index raise on the way.
DAMAGED = (BlendFileError, SegmentationFault, NoReaderImplemented, struct.error, EOFError,
           IndexError, KeyError, ValueError, AssertionError)

T = TypeVar("T")


class BlendReadError(Exception):
    """A .blend this reader cannot use; ``path`` is the file at fault, ``reason`` one of
    ``not_blend``, ``corrupt_blend``, ``no_scene``, ``no_file``."""

    def __init__(self, message: str, path: str | os.PathLike[str], reason: str = CORRUPT) -> None:
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path)
        self.reason = reason


def check_blend(blend_path: str | os.PathLike[str]) -> pathlib.Path:
    """The .blend's absolute path once it names a file; BlendReadError (no_file)."""
    blend = bpathlib.make_absolute(pathlib.Path(blend_path))
    if not blend.is_file():
        raise BlendReadError(f"no such .blend file: {blend}", blend, NO_FILE)
    return blend


@contextlib.contextmanager
def reading(blend: pathlib.Path) -> Iterator[None]:
    """Turn any failure to parse a .blend (or a library it links) into BlendReadError."""
    try:
        yield
    except BlendReadError:
        raise
    except (*DAMAGED, OSError) as exc:
        path = getattr(exc, "filepath", None) or blend
        detail = str(exc) if isinstance(exc, BlendFileError) else f"{type(exc).__name__}: {exc}"
        raise BlendReadError(f"not a readable .blend file ({detail})", path) from exc


def saved_by(blend: pathlib.Path) -> str:
    """``"MAJOR.MINOR"`` of the Blender that saved ``blend``, from its header (plain, gzip
    or zstd); BlendReadError ``not_blend`` for bytes that are no .blend at all, also
    inside a compressed file, and ``corrupt_blend`` for a compressed file cut short."""
    try:
        with open(blend, "rb") as f:
            head = read_header(f)
    except (OSError, EOFError) as exc:  # gzip's BadGzipFile is an OSError
        raise BlendReadError(f"a damaged compressed file ({exc})", blend) from exc
    except BlendVersionError as exc:  # zstd's own errors, or no zstandard module
        raise BlendReadError(str(exc), blend) from exc
    try:
        return format_version(parse_header(head))
    except BlendVersionError as exc:
        reason = NOT_BLEND if not head.startswith(b"BLENDER") else CORRUPT
        raise BlendReadError(str(exc), blend, reason) from exc


# --- one scene, as bf submit reads it -----------------------------------------------------


@contextlib.contextmanager
def scene_block(blend_path: str | os.PathLike[str], scene: str | None) -> Iterator[Any]:
    """The scene's block (``scene``, or the file's active scene) while the file is open;
    BlendReadError for a missing or unreadable file or an unknown scene."""
    blend = check_blend(blend_path)
    with reading(blend), blendfile.BlendFile(blend) as bfile:
        block = find_scene(bfile, scene)
        if block is None:
            what = f"no scene named {scene!r}" if scene else "no scene"
            raise BlendReadError(f"{what} in {blend.name}", blend, NO_SCENE)
        yield block


def scene_frame_range(
    blend_path: str | os.PathLike[str], scene: str | None = None
) -> tuple[int, int]:
    """The frame range (start, end) of ``scene``, or of the file's active scene."""
    with scene_block(blend_path, scene) as block:
        return int(block.get((b"r", b"sfra"))), int(block.get((b"r", b"efra")))


def scene_output(
    blend_path: str | os.PathLike[str], scene: str | None = None
) -> tuple[str, str | None]:
    """The output path (``//render/shot_###``) and file format (``"PNG"``, ``"FFMPEG"``;
    None for one this reader does not know) of ``scene`` or the file's active scene."""
    with scene_block(blend_path, scene) as block:
        return block.get((b"r", b"pic"), as_str=True), _format(block)


def scene_resolution(
    blend_path: str | os.PathLike[str], scene: str | None = None,
    percent: int | None = None
) -> list[int] | None:
    """The render size in pixels of ``scene`` or the file's active scene (its resolution
    times its percentage, or ``percent`` where given, as Blender computes it); None
    where this reader cannot tell."""
    try:
        with scene_block(blend_path, scene) as block:
            return _resolution(block, percent)
    except (BlendReadError, TypeError):
        return None


def find_scene(bfile: blendfile.BlendFile, name: str | None) -> Any:
    """The scene block named ``name``, or (None) the file's active scene; None if none."""
    scenes = bfile.find_blocks_from_code(b"SC")
    if name is not None:
        for block in scenes:
            if _id_name(block) == name:
                return block
        return None
    for glob in bfile.find_blocks_from_code(b"GLOB"):
        current = glob.get_pointer(b"curscene", default=None)
        if current is not None:
            return current
    return scenes[0] if scenes else None


def _id_name(block: Any) -> str:
    # ID names carry a two-letter type prefix: b"SCScene".
    return str(block.get((b"id", b"name"), as_str=True))[2:]


def _format(block: Any) -> str | None:
    imtype = block.get((b"r", b"im_format", b"imtype"))
    return IMTYPES.get(int.from_bytes(imtype, "little") if isinstance(imtype, bytes)
                       else int(imtype))


def _resolution(block: Any, percent: int | None = None) -> list[int] | None:
    x, y = int(block.get((b"r", b"xsch"))), int(block.get((b"r", b"ysch")))
    size = percent or int(block.get((b"r", b"size")))
    w, h = x * size // 100, y * size // 100
    return [w, h] if w > 0 and h > 0 else None


# --- every scene, for a submit form ----------------------------------------------------------


def blend_info(blend_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything a submit form needs of a .blend: the Blender that saved it, the active
    scene and each scene's settings, with the fields ``bf submit`` would put into the
    job's spec for that scene under ``"spec"``::

        {"blender_saved": "3.4", "scene": "Scene", "scenes": [
            {"name", "frame_start", "frame_end", "frame_step", "fps", "resolution",
             "resolution_percent", "resolution_base", "engine", "samples", "output_path", "output_format",
             "cameras", "camera", "view_layers",
             "spec": {"output_pattern", "scene_format", "blender_saved", "resolution"}}]}

    A field this reader cannot make sense of is None. BlendReadError when the file is
    no .blend, is damaged, or holds no scene.
    """
    blend = check_blend(blend_path)
    saved = saved_by(blend)
    with reading(blend), blendfile.BlendFile(blend) as bfile:
        blocks = bfile.find_blocks_from_code(b"SC")
        if not blocks:
            raise BlendReadError(f"{blend.name} holds no scene", blend, NO_SCENE)
        active = find_scene(bfile, None)
        scenes = sorted((describe_scene(b, saved) for b in blocks[:MAX_SCENES]),
                        key=lambda s: s["name"] or "")
        active_name = _safely(lambda: _id_name(active)) if active is not None else None
    return {"blender_saved": saved, "scene": active_name or scenes[0]["name"],
            "scenes": scenes}


def describe_scene(block: Any, blender_saved: str | None) -> dict[str, Any]:
    """One scene's settings (each None where unreadable) and its spec fields."""
    r = _safely

    def fps() -> float | None:
        base = float(block.get((b"r", b"frs_sec_base")))
        return int(block.get((b"r", b"frs_sec"))) / base if base > 0 else None

    out_path = r(lambda: str(block.get((b"r", b"pic"), as_str=True)))
    out_format = r(lambda: _format(block))
    resolution = r(lambda: _resolution(block))
    engine = r(lambda: str(block.get((b"r", b"engine"), as_str=True)) or None)
    return {
        "name": r(lambda: _id_name(block)),
        "frame_start": r(lambda: int(block.get((b"r", b"sfra")))),
        "frame_end": r(lambda: int(block.get((b"r", b"efra")))),
        "frame_step": r(lambda: int(block.get((b"r", b"frame_step")))),
        "fps": r(fps),
        "resolution": resolution,
        "resolution_percent": r(lambda: int(block.get((b"r", b"size")))),
        # at 100 %: what a resolution % override scales (as bf's scene_resolution does)
        "resolution_base": r(lambda: _resolution(block, 100)),
        "engine": engine,
        "samples": r(lambda: _samples(block, engine)),
        "output_path": out_path,
        "output_format": out_format,
        "cameras": r(lambda: _cameras(block)) or [],
        "camera": r(lambda: _camera(block)),
        "view_layers": r(lambda: [str(v.get(b"name", as_str=True)) for v in
                                  _listbase(block.get_pointer((b"view_layers", b"first")))]
                         [:MAX_NAMES]) or [],
        # What bf submit derives from the file for the spec of a job of this scene.
        "spec": {
            "output_pattern": safe_pattern(out_path) if out_path is not None else None,
            "scene_format": out_format,
            "blender_saved": blender_saved,
            "resolution": resolution,
        },
    }


def _safely(read: Callable[[], T]) -> T | None:
    """``read()``, or None where the bytes make no sense to it (a field this Blender's
    DNA lacks, a pointer into nothing)."""
    try:
        return read()
    except (*DAMAGED, OSError, TypeError, AttributeError):
        return None


def _samples(scene: Any, engine: str | None) -> int | None:
    """The scene's render samples for its engine: Cycles keeps its settings in the
    scene's ID properties (its ``system_properties`` from Blender 5.0), and only those
    set away from their default are saved (None here); Eevee in ``eevee``."""
    if engine == "CYCLES":
        for field in (b"system_properties", b"properties"):
            group = scene.get_pointer((b"id", field), default=None)
            cycles = _idprop(group, "cycles", IDP_GROUP)
            samples = _idprop(cycles, "samples", IDP_INT)
            if samples is not None:
                return int(samples.get((b"data", b"val")))
        return None
    if engine in ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"):
        return int(scene.get((b"eevee", b"taa_render_samples")))
    return None


def _idprop(group: Any, name: str, kind: int) -> Any:
    """The child ``name`` of type ``kind`` of the ID property group ``group``, or None."""
    if group is None or _safely(lambda: group.get(b"type")) != IDP_GROUP:
        return None
    for child in _listbase(group.get_pointer((b"data", b"group", b"first"))):
        if child.get(b"name", as_str=True) == name and child.get(b"type") == kind:
            return child
    return None


def _camera(scene: Any) -> str | None:
    camera = scene.get_pointer(b"camera")
    return _id_name(camera) if camera is not None else None


def _cameras(scene: Any) -> list[str]:
    """Names of the camera objects in the scene's collections (local ones: a linked
    collection's objects live in its library, where this reader does not go)."""
    names: list[str] = []
    seen: set[int] = set()
    todo = [scene.get_pointer(b"master_collection")]
    while todo and len(seen) < MAX_ITEMS:
        coll = todo.pop()
        if coll is None or coll.addr_old in seen or coll.code == b"ID":
            continue
        seen.add(coll.addr_old)
        for item in _listbase(coll.get_pointer((b"gobject", b"first"))):
            ob = item.get_pointer(b"ob")
            if ob is not None and ob.code == b"OB" and ob.get(b"type") == OB_CAMERA:
                names.append(_id_name(ob))
        todo.extend(child.get_pointer(b"collection") for child in
                    _listbase(coll.get_pointer((b"children", b"first"))))
    return sorted(set(names))[:MAX_NAMES]


def _listbase(first: Any) -> Iterator[Any]:
    """The items of a ListBase from its first, at most :data:`MAX_ITEMS`, each once."""
    seen: set[int] = set()
    item = first
    while item is not None and item.addr_old not in seen and len(seen) < MAX_ITEMS:
        seen.add(item.addr_old)
        yield item
        item = item.get_pointer(b"next")
