"""File Output nodes, confined to the task's folder (inside Blender: stdlib and bpy only).

A compositor File Output node writes wherever its base_path says, absolute paths and
'..' included, on every node. Before each frame every such node is pointed into
<output_dir>/fileout/<node key>/, and after the frame what they wrote there is moved
next to the frame under a flat name the server can check (see file_output_name).
"""

from __future__ import annotations

import os
import re
import shutil
import stat

import bpy
from task_error import TaskError

#: Twins of protocol.jobspec's (this script can import nothing of blenderfarm): a movie
#: cannot be written one frame at a time, so its frames are rendered as lossless stills
MOVIE_FORMATS = ("FFMPEG", "AVI_JPEG", "AVI_RAW")
#: Under the task's output dir: where the compositor's File Output nodes write, one
#: folder per node, emptied before each frame.
FILEOUT_DIR = "fileout"
MAX_OUTPUT_NAME = 255  # characters; the protocol carries file names of at most 256
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LAST_NUMBER = re.compile(r"(-?\d+)\D*$")  # a '-' right before the digits is their sign



def _safe(text: str) -> str:
    """``text`` in the characters every file system and URL takes as they are, with no
    dot at either end (a hidden file; Windows drops a trailing one)."""
    return _UNSAFE.sub("_", text).strip(".") or "_"


def _confined(subpath: str) -> str:
    """``subpath`` made relative and kept inside the folder it is joined to: no root or
    drive, no part made only of dots or spaces (on Windows ``.. `` is ``..``), no ':'
    (a drive or a Windows stream), no braces (Blender 4.5+ expands ``{...}`` templates,
    and a scene or camera name may hold a '/')."""
    text = re.sub(r"[:{}]", "_", subpath.replace("\\", "/"))
    return "/".join(p for p in text.split("/") if p.rstrip(". "))


def compositor_trees(scene) -> list[tuple[str, object]]:
    """Every compositor node tree that may run when ``scene`` renders, with a label for
    its nodes: the scene's own (label ''), other scenes' (a scene strip may render them)
    and every compositor node group (groups nest; Blender runs their File Output
    nodes). Blender 5 keeps the compositor in scene.compositing_node_group, older ones
    in scene.node_tree."""
    def own(s):
        return getattr(s, "compositing_node_group", None) or getattr(s, "node_tree", None)

    found: list[tuple[str, object]] = []
    seen: set[int] = set()
    candidates = [("", own(scene))]
    candidates += [(s.name, own(s)) for s in sorted(bpy.data.scenes, key=lambda s: s.name)
                   if s != scene]
    candidates += [(g.name, g) for g in sorted(bpy.data.node_groups, key=lambda g: g.name)
                   if getattr(g, "bl_idname", "") == "CompositorNodeTree"]
    for label, tree in candidates:
        if tree is None or tree.as_pointer() in seen:
            continue
        seen.add(tree.as_pointer())
        found.append((label, tree))
    return found


def _still(settings) -> None:
    # every still format is written as the node says; a movie (which a File Output node
    # should not offer) as PNG, as the frame itself is (apply_overrides)
    if settings is None or settings.file_format not in MOVIE_FORMATS:
        return
    if hasattr(settings, "media_type"):  # Blender 5: the format list depends on it
        settings.media_type = "IMAGE"
    settings.file_format = "PNG"


def _unique(key: str, taken: set[str]) -> str:
    new, n = key, 2
    while new in taken:
        new, n = f"{key}-{n}", n + 1
    return new


def _point_node(node, folder: str) -> None:
    fmt = getattr(node, "format", None)
    _still(fmt)
    if hasattr(node, "directory"):  # Blender 5: a directory, a file name and items
        node.directory = folder + "/"
        if node.file_name != _confined(node.file_name):
            node.file_name = _confined(node.file_name)
        for item in getattr(node, "file_output_items", ()):
            if item.name != _confined(item.name):
                item.name = _confined(item.name)
            if getattr(item, "override_node_format", False):
                _still(item.format)
        return
    if fmt is not None and fmt.file_format == "OPEN_EXR_MULTILAYER":
        # one file, named by base_path's last part (its slots are layers in it)
        node.base_path = folder + "/" + _confined(node.base_path.replace("\\", "/")
                                                  .rsplit("/", 1)[-1])
    else:
        node.base_path = folder + "/"
    for slot in node.file_slots:
        # set only what changes: Blender renames a slot whose path another one has
        if slot.path != _confined(slot.path):
            slot.path = _confined(slot.path)
        if not slot.use_node_format:
            _still(slot.format)


def confine_file_outputs(scene, fileout: str) -> bool:
    """Point every File Output node into its own folder under ``fileout`` (emptied
    first); False when the file has none. Done before each frame, after frame_set:
    a frame handler of the file's scripts runs there and may have moved them."""
    shutil.rmtree(fileout, ignore_errors=True)
    keys: set[str] = set()
    any_node = False
    for label, tree in compositor_trees(scene):
        nodes = sorted((n for n in tree.nodes if n.bl_idname == "CompositorNodeOutputFile"),
                       key=lambda n: n.name)
        for node in nodes:
            key = _unique(_safe((f"{label}.{node.name}" if label else node.name)[:40]), keys)
            keys.add(key)
            try:
                _point_node(node, os.path.join(fileout, key))
            except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
                raise TaskError("bad_scene", f"The File Output node {node.name!r} cannot be "
                                f"pointed into the farm's folder: {exc}", False) from exc
            any_node = True
    if any_node:
        os.makedirs(fileout, exist_ok=True)
    return any_node


def file_output_name(output_name: str, frame: int, rel: str) -> str:
    """The farm's name for ``rel``, a file a File Output node wrote under its folder
    (``<node key>/<Blender's file name>``, where Blender's file name may hold folders
    of the slot's path).

    It is ``<output_name>.<node key>.<Blender's file name>``, its folders joined with
    dots and characters outside ``A-Z a-z 0-9 . _ -`` made ``_``: node "File Output",
    slot "Image", frame 1 of job "shot" give ``shot.File_Output.Image0001.png``. The
    frame stays where Blender puts it (at the end, or at the slot's '#'s), so each slot
    is an image sequence; where the last number before the extension (its sign a '-'
    right before it) is not the frame (a slot ``v2_#_x3``), ``.<frame, 4 digits>`` is
    added before the extension. The server checks exactly this
    (``server.outputs.names_frame``): a name of one frame can never be the name of
    another's file.
    """
    parts = rel.replace(os.sep, "/").split("/")
    base, ext = os.path.splitext(parts[-1])
    flat = ".".join(_safe(p) for p in [*parts[:-1], base])
    last = _LAST_NUMBER.search(flat)
    if last is None or int(last.group(1)) != frame:
        flat += "." + ("-" if frame < 0 else "") + f"{abs(frame):04d}"
    return f"{output_name}.{flat}{_UNSAFE.sub('_', ext)}"


def collect_file_outputs(fileout: str, output_dir: str, output_name: str,
                         frame: int) -> list[str]:
    """Move each regular file the File Output nodes wrote for ``frame`` next to the
    frame under its farm name (file_output_name); return their paths. Links and
    anything else are left behind and removed with the folder."""
    moved: list[str] = []
    names: set[str] = set()
    for root, dirs, files in os.walk(fileout):  # does not follow linked folders
        dirs.sort()
        for filename in sorted(files):
            path = os.path.join(root, filename)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            key, _, rest = os.path.relpath(path, fileout).replace(os.sep, "/").partition("/")
            name = file_output_name(output_name, frame, f"{key}/{rest}")
            n = 2
            while name in names:  # two slots "a b" and "a_b": the second's node key gets -2
                name = file_output_name(output_name, frame, f"{key}-{n}/{rest}")
                n += 1
            if len(name) > MAX_OUTPUT_NAME:
                raise TaskError("bad_scene", f"A File Output node wrote {rest!r}, whose name on "
                                f"the farm would be longer than {MAX_OUTPUT_NAME} characters; "
                                "shorten the node's name or the slot's path.", False)
            names.add(name)
            target = os.path.join(output_dir, name)
            os.replace(path, target)
            moved.append(target)
    shutil.rmtree(fileout, ignore_errors=True)
    return moved
