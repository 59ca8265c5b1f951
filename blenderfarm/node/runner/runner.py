"""The render runner: a script that runs *inside* Blender and renders frames on command.

bf-node starts it as::

    blender -b --disable-autoexec --python runner.py -- --port P --secret S [--scripts] [--blend JOB.blend]

or, where the node's Blender is a Python with the ``bpy`` module (PyPI's wheels), as
``python -u runner.py -- ...`` with the same arguments: importing bpy gives the factory
settings, and ``--scripts`` stands for ``--enable-autoexec`` in both.

It connects to the agent on 127.0.0.1:P and speaks JSON lines (one UTF-8 JSON object
a line). It keeps Blender, and the loaded .blend, alive between tasks so the frames
of one job do not each pay for a Blender start and a file load. Blender's own
stdout/stderr are a log for people, never the channel.

With ``--blend`` it opens that file before its hello. Without, it is a node's warm
spare: it says hello with no file and waits for ``{"cmd": "open", "blend": PATH,
"cwd": JOB_DIR, "scripts": BOOL}``, answered by ``opened`` (or an ``error`` with reason
``bad_blend``); a spare opens one file in its life.

Agent -> runner: ``open``, ``{"cmd": "render", ...}``, ``{"cmd": "merge", ...}`` and
``{"cmd": "quit"}``. A render command with a ``tile`` (``{"index", "cols", "rows"}``)
renders that cell of its one frame as a float EXR (multilayer, with every pass, where
the scene uses the compositor), and a merge command assembles a frame's tiles into the
frame's file, running the scene's compositor once on the merged passes (see
``tiles.py``); its ``frame_done`` carries the compositor's File Output files as a
render's does.
Runner -> agent: ``hello``, ``opened``, ``frame_start``, ``progress``, ``frame_done``,
``task_done`` and ``error`` events (see ``blenderfarm/node/runner_proc.py``);
``frame_done`` carries the frame's ``path`` and the ``extras`` its compositor's File
Output nodes wrote, all in the task's output dir (see ``file_outputs.py``).

It must import only the standard library, ``bpy`` and the modules beside it
(``tiles``, ``exr``, ``file_outputs``, ``scene_video``, ``task_error``): Blender runs it as a plain file with its own Python, where neither
blenderfarm nor its dependencies exist. It
must work in Blender 3.4 to 5.x, so every newer or older API is reached through
``getattr``/``hasattr``. It reports and never decides: retries, restarts and
timeouts are the agent's business.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
import traceback

import bpy

# Blender runs this file as a plain script: its folder holds the runner's own modules
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import exr  # noqa: E402  (after the path it is found on)
import tiles  # noqa: E402
from file_outputs import (  # noqa: E402
    FILEOUT_DIR,
    MOVIE_FORMATS,
    _confined,  # noqa: F401 - tests reach it through this module
    collect_file_outputs,
    confine_file_outputs,
    file_output_name,  # noqa: F401 - tests reach it through this module
)
from scene_video import scene_video  # noqa: E402
from task_error import TaskError  # noqa: E402

PROGRESS_INTERVAL = 0.1  # seconds; at most ~10 progress messages a second
_TILES = re.compile(r"Rendered (\d+)/(\d+) Tiles")
_FRACTIONS = (
    re.compile(r"Sample (\d+)/(\d+)"),  # Cycles (of the tile being rendered, with tiles)
    re.compile(r"Rendering (\d+) / (\d+) samples"),  # Eevee
)
#: twin of protocol.jobspec.OPENGL_ENGINES (this script imports nothing of blenderfarm)
OPENGL_ENGINES = {"BLENDER_EEVEE": "Eevee", "BLENDER_EEVEE_NEXT": "Eevee",
                  "BLENDER_WORKBENCH": "Workbench"}
OPENGL_MESSAGE = (
    "The scene renders with {engine}, which needs OpenGL, and this node's Blender has none "
    "(no display and no GPU driver): run bf-node under xvfb-run or install a GPU driver "
    "on it; the farm gives the job to a node that can."
)
DENOISE_MESSAGE = (
    "The scene has Cycles denoising on, but this node's Blender has no "
    "OpenImageDenoise. Submit with --no-denoise, or add a node whose Blender can denoise."
)


class Channel:
    """The socket to the agent. Sends are locked: handlers may run on the render thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._rfile = sock.makefile("rb")

    def send(self, event: dict) -> None:
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8")
        # an agent that is gone shows as EOF in the command loop, which then quits
        with self._lock, contextlib.suppress(OSError):
            self._sock.sendall(data)

    def commands(self):
        """Yield each command until the agent says quit or closes the socket."""
        for raw in self._rfile:
            try:
                cmd = json.loads(raw.decode("utf-8"))
            except ValueError:
                cmd = None
            if not isinstance(cmd, dict):
                self.send(_error_event(None, TaskError(
                    "bad_command", "The runner got a line that is not a JSON object.", False)))
                continue
            yield cmd

    def close(self) -> None:
        try:
            self._rfile.close()
            self._sock.close()
        except OSError:
            pass


class State:
    """What the handlers need to know about the frame being rendered."""

    def __init__(self) -> None:
        self.channel: Channel | None = None
        self.frame: int | None = None
        self.written = False
        self.cancelled = False
        self.last_progress = 0.0


STATE = State()


# --- capabilities -----------------------------------------------------------------------


def has_oidn() -> bool:
    """Whether this Blender's Cycles can denoise with OpenImageDenoise."""
    try:
        import _cycles  # Cycles' C module; absent when Cycles is not built

        value = getattr(_cycles, "with_openimagedenoise", None)
        if value is not None:
            return bool(value)
    except ImportError:
        pass
    return bool(getattr(bpy.app.build_options, "openimagedenoise", False))


def has_optix() -> bool:
    try:
        import _cycles

        return any(d[1] == "OPTIX" for d in _cycles.available_devices("OPTIX"))
    except Exception:  # any failure means: no usable OptiX here
        return False


def version() -> str:
    # version_string carries suffixes ("4.2.0 LTS"); the tuple is what we compare on
    return ".".join(str(n) for n in bpy.app.version[:3])


# --- overrides --------------------------------------------------------------------------


class Settings:
    """Sets RNA properties and remembers their first value, so each task starts clean.

    Blender stays alive between tasks; without this a task without overrides would
    inherit the previous task's.
    """

    def __init__(self) -> None:
        self._saved: dict[tuple[str, str], tuple[object, object]] = {}

    def set(self, obj, attr: str, value) -> None:
        key = (repr(obj), attr)
        if key not in self._saved:
            self._saved[key] = (obj, getattr(obj, attr))
        setattr(obj, attr, value)

    def restore(self) -> None:
        # first-set order: a format is restored before the depth and mode it allows
        for (_, attr), (obj, value) in self._saved.items():
            try:
                setattr(obj, attr, value)
            except Exception as exc:  # a property some override made read-only
                print(f"blenderfarm runner: could not restore {attr}: {exc}", file=sys.stderr)
        self._saved.clear()


SETTINGS = Settings()


def _set_engine(render, wanted: str) -> None:
    """Set the engine, accepting Eevee's 4.2-4.x name and its older/newer one for each other."""
    # The engine enum is filled at run time, so bl_rna's enum_items does not list the
    # engines; trying is the only reliable test.
    aliases = {"BLENDER_EEVEE": "BLENDER_EEVEE_NEXT", "BLENDER_EEVEE_NEXT": "BLENDER_EEVEE"}
    for name in (wanted, aliases.get(wanted)):
        if name is None:
            continue
        try:
            SETTINGS.set(render, "engine", name)
            return
        except TypeError:
            continue
    raise TaskError("bad_scene", f"This node's Blender has no render engine {wanted!r}.", False)


def _media_type(fmt: str) -> str:
    """Blender 5's ``media_type`` for a still format: its format list holds only the
    formats of the media type that is set (a multilayer EXR is a media type of its own)."""
    return "MULTI_LAYER_IMAGE" if fmt == "OPEN_EXR_MULTILAYER" else "IMAGE"


def _set_format(scene, fmt: str) -> None:
    """Change only the file format. Blender's own setter keeps the colour mode and depth
    where ``fmt`` has them and picks the closest where not (RGBA -> RGB for JPEG);
    codecs and quality stay. The first values are saved first, so that restoring puts
    the media type (Blender 5) and format back before the mode and depth they allow."""
    settings = scene.render.image_settings
    media = ("media_type",) if hasattr(settings, "media_type") else ()  # Blender 5
    for attr in (*media, "file_format", "color_mode", "color_depth"):
        SETTINGS.set(settings, attr, getattr(settings, attr))
    if media:  # before the format: its list holds only the formats of the media type
        SETTINGS.set(settings, "media_type", _media_type(fmt))
    SETTINGS.set(settings, "file_format", fmt)


def _lossless_still(scene) -> None:
    """A movie scene's frames as PNG: its colour mode, 16 bits where the movie has more
    than 8 (10- and 12-bit codecs)."""
    settings = scene.render.image_settings
    deep = settings.color_depth not in ("", "8")
    _set_format(scene, "PNG")
    SETTINGS.set(settings, "color_depth", "16" if deep else "8")


def _set_denoise(scene, on: bool) -> None:
    cycles = getattr(scene, "cycles", None)
    if cycles is not None and hasattr(cycles, "use_denoising"):
        SETTINGS.set(cycles, "use_denoising", on)
    for layer in scene.view_layers:
        layer_cycles = getattr(layer, "cycles", None)
        if layer_cycles is not None and hasattr(layer_cycles, "use_denoising"):
            SETTINGS.set(layer_cycles, "use_denoising", on)


def _set_camera(scene, name: str) -> None:
    obj = scene.objects.get(name)
    if obj is None or obj.type != "CAMERA":
        cameras = sorted(o.name for o in scene.objects if o.type == "CAMERA")
        raise TaskError(
            "bad_camera",
            f"The scene {scene.name!r} has no camera object named {name!r} "
            f"(its cameras: {', '.join(cameras) or 'none'}).",
            False,
        )
    SETTINGS.set(scene, "camera", obj)


#: each scene's own persistent data setting, as its file has it (by scene name)
_FILES_PERSISTENT_DATA: dict[str, bool] = {}


def _set_persistent_data(scene, wanted) -> None:
    """Persistent data as the task wants it (None: as the file has it), set at every
    task's start. With it on, Cycles keeps the scene's BVH, shaders and images between
    the frames this Blender renders and updates only what a frame changed. Not through
    SETTINGS: its restore between tasks would turn it off, and turning it off frees that
    data (Blender's own update of the property), so a job of one-frame tasks (the
    farm's default) would build everything for every frame. Here the next task keeps
    the data when it wants it too, and frees it when it does not."""
    render = scene.render
    own = _FILES_PERSISTENT_DATA.setdefault(scene.name, bool(render.use_persistent_data))
    value = own if wanted is None else bool(wanted)
    if bool(render.use_persistent_data) != value:
        render.use_persistent_data = value


def apply_overrides(scene, overrides: dict) -> None:
    """Apply the job's overrides (keys of protocol.jobspec.Overrides) to the scene.

    Also ``threads``, which the agent adds from its own configuration. Unknown keys
    are ignored, so an older runner can serve a newer agent.
    """
    render = scene.render
    if overrides.get("engine"):
        _set_engine(render, str(overrides["engine"]).upper())
    if overrides.get("samples") is not None:
        samples = int(overrides["samples"])
        if hasattr(scene, "cycles"):
            SETTINGS.set(scene.cycles, "samples", samples)
        eevee = getattr(scene, "eevee", None)
        if eevee is not None and hasattr(eevee, "taa_render_samples"):
            SETTINGS.set(eevee, "taa_render_samples", samples)
    for key, attr in (("resolution_percent", "resolution_percentage"),
                      ("resolution_x", "resolution_x"), ("resolution_y", "resolution_y")):
        if overrides.get(key) is not None:
            SETTINGS.set(render, attr, int(overrides[key]))
    fmt = overrides.get("format")
    if fmt:
        _set_format(scene, str(fmt).upper())
    elif render.image_settings.file_format in MOVIE_FORMATS:
        _lossless_still(scene)  # every still format stays as the scene has it
    if overrides.get("camera"):
        _set_camera(scene, str(overrides["camera"]))
    if overrides.get("denoise") is not None:
        _set_denoise(scene, bool(overrides["denoise"]))
    _set_persistent_data(scene, overrides.get("persistent_data"))
    if overrides.get("threads"):  # a node setting (bf-node --threads), not a job override
        SETTINGS.set(render, "threads_mode", "FIXED")
        SETTINGS.set(render, "threads", int(overrides["threads"]))


def set_devices(scene, devices, device) -> None:
    """Enable exactly the slot's Cycles devices, and the job's device override.

    ``devices`` is the slot's ``{"type": BACKEND or "NONE", "ids": [Cycles ids]}`` (a
    CPU slot: NONE and none, so Cycles renders on the CPU whatever the scene says);
    None, from an agent before slots, leaves the preferences alone. ``device`` is the
    job's ``Overrides.device``: "GPU" or "CPU" sets the scene's ``cycles.device``, None
    keeps the scene's own. Everything set here is restored after the task (SETTINGS).
    """
    cycles = getattr(scene, "cycles", None)
    if device in ("GPU", "CPU") and cycles is not None:
        SETTINGS.set(cycles, "device", device)
    if devices is None:
        return
    addon = bpy.context.preferences.addons.get("cycles")
    if addon is None:  # no Cycles in this Blender: nothing to enable
        return
    prefs = addon.preferences
    kind = str(devices.get("type") or "NONE")
    wanted = [str(i) for i in devices.get("ids") or []]
    try:
        SETTINGS.set(prefs, "compute_device_type", kind)
    except TypeError:  # an enum this Blender's Cycles does not offer here
        # retryable: the farm tries another node (the server never gives a task back to
        # a node that failed it), and a card that vanished is this node's fault
        raise TaskError("no_device", f"This node's Blender has no {kind} devices "
                        f"(for {', '.join(wanted) or 'its slot'}).", True) from None
    if hasattr(prefs, "refresh_devices"):
        prefs.refresh_devices()
    else:  # before 3.0 get_devices() refreshed them
        prefs.get_devices()
    known = {d.id for d in prefs.devices if d.type == kind}
    missing = [i for i in wanted if i not in known]
    if missing:
        raise TaskError("no_device", f"This node's Blender has no device {missing[0]} "
                        f"(its {kind} devices: {', '.join(sorted(known)) or 'none'}).", True)
    for entry in prefs.devices:  # the CPU entry too: a GPU slot leaves the CPU to others
        SETTINGS.set(entry, "use", entry.type == kind and entry.id in wanted)


# --- checks before rendering -------------------------------------------------------------


def denoise_is_on(scene) -> bool:
    """True when Cycles will denoise the final render of at least one view layer."""
    if scene.render.engine != "CYCLES":
        return False
    cycles = getattr(scene, "cycles", None)
    if cycles is None or not getattr(cycles, "use_denoising", False):
        return False
    layers = [layer for layer in scene.view_layers if layer.use]
    if not layers:
        return True
    # the per-layer switch lives on layer.cycles where this Blender has one
    return any(getattr(getattr(layer, "cycles", None), "use_denoising", True) for layer in layers)


def can_denoise(scene, oidn: bool) -> bool:
    if oidn:
        return True
    # reading an enum whose saved value this build lacks gives '' (and a warning)
    denoiser = getattr(scene.cycles, "denoiser", "")
    return denoiser == "OPTIX" and getattr(scene.cycles, "device", "CPU") == "GPU" and has_optix()


def select_scene(name):
    if not name:
        return bpy.context.scene
    scene = bpy.data.scenes.get(name)
    if scene is None:
        names = ", ".join(sorted(s.name for s in bpy.data.scenes))
        raise TaskError("bad_scene", f"The file has no scene named {name!r} (it has: {names}).", False)
    return scene


# --- rendering --------------------------------------------------------------------------


def render_frame(channel: Channel, scene, frame: int, output_dir: str, output_name: str,
                 output_pattern: str | None = None) -> dict:
    """Render one frame to its file and return its ``frame_done`` event: the frame's
    ``path`` and the ``extras`` the File Output nodes wrote (file_output_name).

    The frame is named by Blender from ``output_pattern``, the file part of the scene's
    own output path (``shot_###``), in the task's folder; without one ``<output_name>_####``."""
    scene.frame_set(frame)
    fileout = os.path.join(output_dir, FILEOUT_DIR)
    has_file_outputs = confine_file_outputs(scene, fileout)
    path = frame_path(scene, frame, output_dir, output_name, output_pattern)
    seconds = render_to(channel, scene, frame, path)
    extras = collect_file_outputs(fileout, output_dir, output_name, frame) \
        if has_file_outputs else []
    return {"ev": "frame_done", "frame": frame, "path": path, "extras": extras,
            "seconds": round(seconds, 3)}


def frame_path(scene, frame: int, output_dir: str, output_name: str,
               output_pattern: str | None) -> str:
    """The file Blender names frame ``frame`` from ``output_pattern`` in ``output_dir``."""
    pattern = output_name + "_####" if output_pattern is None else output_pattern
    scene.render.filepath = os.path.join(output_dir, "") + pattern
    return os.path.abspath(bpy.path.abspath(scene.render.frame_path(frame=frame)))


def render_to(channel: Channel, scene, frame: int, path: str) -> float:
    """Render ``frame`` (already set) of ``scene`` to exactly ``path``; its seconds."""
    # A still render does not expand '#', so name the exact file; and remove an old
    # copy so a file left by an earlier attempt can never pass for this render's.
    scene.render.filepath = path
    if os.path.lexists(path):
        os.remove(path)
    STATE.frame, STATE.written, STATE.cancelled = frame, False, False
    channel.send({"ev": "frame_start", "frame": frame})
    started = time.monotonic()
    try:
        result = bpy.ops.render.render(write_still=True, scene=scene.name)
    except Exception as exc:  # bpy reports an operator's ERROR report as RuntimeError
        traceback.print_exc()
        message = str(exc).strip().replace("Error: ", "").splitlines()
        raise TaskError(
            "render_failed", f"Blender failed to render frame {frame}: {' '.join(message)}", True
        ) from exc
    seconds = time.monotonic() - started
    if STATE.cancelled or "FINISHED" not in result:
        raise TaskError("render_failed", f"Blender cancelled the render of frame {frame}.", True)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        # render_write tells "never saved" (output off, compositor without a
        # Composite node) apart from "saved, then gone or empty" (disk full)
        why = "the saved file is missing or empty" if STATE.written else "it saved no file"
        raise TaskError("no_output", f"Blender rendered frame {frame} but {why} ({path}).", True)
    return seconds


def _task_paths(cmd: dict) -> tuple[str, str, str | None]:
    """A render or merge command's output dir, output name and pattern, checked."""
    output_dir, output_name = cmd.get("output_dir"), cmd.get("output_name")
    pattern = cmd.get("output_pattern")
    if not isinstance(output_dir, str) or not isinstance(output_name, str) or not output_name \
            or not os.path.isabs(output_dir) \
            or not (pattern is None or isinstance(pattern, str) and "/" not in pattern):
        raise TaskError("bad_command", f"A {cmd.get('cmd')} command needs an absolute "
                        "output_dir, an output_name and no folder in its output_pattern.",
                        False)
    return output_dir, output_name, pattern


def _tile_of(cmd: dict, frames: list[int]) -> dict | None:
    """A render command's tile (None: whole frames), checked; a tile is of one frame."""
    tile = cmd.get("tile")
    if tile is None:
        return None
    if not isinstance(tile, dict) or len(frames) != 1 \
            or not all(isinstance(tile.get(k), int) for k in ("index", "cols", "rows")) \
            or not (tile["cols"] >= 1 and tile["rows"] >= 1
                    and 0 <= tile["index"] < tile["cols"] * tile["rows"]):
        raise TaskError("bad_command", "A tile render needs one frame and a tile "
                        "{index, cols, rows} that is a cell of its grid.", False)
    return tile


def prepare_scene(cmd: dict, info: dict | None = None):
    """The command's scene with the task's overrides applied (everything earlier undone);
    ``info`` gets what the job's video needs of the scene (``scene_video``), read before
    the overrides change it (a movie scene renders as PNG stills)."""
    SETTINGS.restore()
    scene = select_scene(cmd.get("scene"))
    if info is not None:
        try:
            info["video"] = scene_video(scene)
        except Exception:  # a scene read that fails must never fail the render
            traceback.print_exc()
    try:
        apply_overrides(scene, cmd.get("overrides") or {})
    except (TypeError, ValueError, AttributeError) as exc:  # bpy's "enum not found" etc.
        raise TaskError("bad_scene", f"This Blender cannot apply the overrides: {exc}", False) from exc
    return scene


def _check_tileable(scene, oidn: bool) -> bool:
    """Refuse what no tiles can make; return whether the frame is denoised at the merge.
    A denoised frame needs OpenImageDenoise (the merge denoises with it, whatever the
    node's OptiX): a node without it refuses as for a whole frame (``needs_denoise``), so
    the farm gives the job, its tiles and their merge, to nodes that have it."""
    try:
        tiles.check_tileable(scene)
        denoise = denoise_is_on(scene)
        if denoise:
            tiles.check_denoise(scene)
    except tiles.TileError as exc:
        raise TaskError(exc.reason, exc.message, exc.retryable) from None
    if denoise and not oidn:
        raise TaskError("needs_denoise", DENOISE_MESSAGE, False)
    return denoise


def render_tile(channel: Channel, scene, frame: int, tile: dict, output_dir: str,
                output_name: str, info: dict) -> dict:
    """Render one cell of ``frame`` (plus the margin adaptive sampling needs) as a float
    EXR named ``tiles.tile_file_name`` and return its ``frame_done`` event; ``info``
    gets where its pixels lie in the frame (``tile``), for the job page's preview."""
    scene.frame_set(frame)
    width, height = tiles.render_size(scene)
    cell = tiles.tile_rect(tile["index"], tile["cols"], tile["rows"], width, height)
    if cell[2] <= cell[0] or cell[3] <= cell[1]:
        raise TaskError("bad_command", f"A {tile['cols']}x{tile['rows']} grid has cells "
                        f"without pixels in a {width}x{height} frame.", False)
    rect = tiles.padded_rect(cell, tiles.adaptive_margin(scene), width, height)
    tiles.set_border(SETTINGS, scene, rect)
    path = os.path.join(output_dir, tiles.tile_file_name(output_name, tile["index"], frame))
    seconds = render_to(channel, scene, frame, path)
    size = exr.image_size(path)
    want = (rect[2] - rect[0], rect[3] - rect[1])
    if size != want:  # Blender's border rounding is not what tiles.set_border expects
        raise TaskError("render_failed", f"Blender rendered tile {tile['index']} of frame "
                        f"{frame} as {size[0]}x{size[1]} pixels, not {want[0]}x{want[1]}.",
                        False)
    info["tile"] = {"rect": list(rect), "frame": [width, height]}
    preview = os.path.join(output_dir,
                           tiles.tile_preview_file_name(output_name, tile["index"], frame))
    return {"ev": "frame_done", "frame": frame, "path": path,
            "extras": save_preview(scene, preview), "seconds": round(seconds, 3)}


def save_preview(scene, path: str) -> list[str]:
    """The render just made, as the scene's view transform shows it, in an 8-bit PNG at
    ``path``: ``[path]``, or ``[]`` where Blender could not write it (a preview is never
    worth failing a tile for). Saved after the tile's own file, so it changes nothing
    in it; the format change is undone with the task's other settings."""
    if os.path.lexists(path):
        os.remove(path)
    try:
        _set_format(scene, "PNG")
        image = scene.render.image_settings
        SETTINGS.set(image, "color_mode", "RGBA" if scene.render.film_transparent else "RGB")
        SETTINGS.set(image, "color_depth", "8")
        SETTINGS.set(image, "compression", 15)
        bpy.data.images["Render Result"].save_render(path, scene=scene)
    except Exception as exc:  # noqa: BLE001 - any failure only costs the preview
        print(f"blenderfarm runner: no preview of the tile: {exc}", file=sys.stderr)
        return []
    return [path] if os.path.isfile(path) and os.path.getsize(path) > 0 else []


def run_task(channel: Channel, cmd: dict, oidn: bool) -> None:
    with _reported(channel, cmd.get("task_id")) as task_id:
        frames = [int(f) for f in cmd.get("frames") or []]
        if not frames:
            raise TaskError("bad_command", "A render command needs frames.", False)
        output_dir, output_name, pattern = _task_paths(cmd)
        tile = _tile_of(cmd, frames)
        info: dict = {}
        scene = prepare_scene(cmd, info)
        set_devices(scene, cmd.get("devices"), (cmd.get("overrides") or {}).get("device"))
        if scene.camera is None:
            raise TaskError("bad_camera", f"The scene {scene.name!r} has no active camera; set one "
                            "in the file or submit with a camera (bf submit --camera NAME, or "
                            "the add-on's Camera field).", False)
        # before the OpenGL check: no node can tile an Eevee scene
        denoise = _check_tileable(scene, oidn) if tile is not None else False
        engine = scene.render.engine
        if engine in OPENGL_ENGINES and not cmd.get("opengl", True):
            # Blender would abort (SIGABRT) on the first frame: say why, before trying
            raise TaskError("needs_opengl", OPENGL_MESSAGE.format(engine=OPENGL_ENGINES[engine]),
                            False)
        if denoise_is_on(scene) and not can_denoise(scene, oidn):
            raise TaskError("needs_denoise", DENOISE_MESSAGE, False)
        os.makedirs(output_dir, exist_ok=True)
        scene.render.use_file_extension = True  # File Output nodes follow it too
        if tile is not None:
            _set_format(scene, tiles.tile_format(scene, denoise))
            tiles.set_tile_output(SETTINGS, scene)
            if denoise:  # noisy, with the passes the merge denoises with
                tiles.set_tile_denoise(SETTINGS, scene)
            channel.send(render_tile(channel, scene, frames[0], tile, output_dir, output_name,
                                     info))
        else:
            for frame in frames:
                channel.send(render_frame(channel, scene, frame, output_dir, output_name,
                                          pattern))
        channel.send({"ev": "task_done", "task_id": task_id, "info": info})


def _merge_tiles(cmd: dict) -> list[dict]:
    """A merge command's tiles, checked: each an absolute path and a cell of a grid."""
    given = cmd.get("tiles")
    if not isinstance(given, list) or not given:
        raise TaskError("bad_command", "A merge command needs its tiles.", False)
    for tile in given:
        if not isinstance(tile, dict) or not isinstance(tile.get("path"), str) \
                or not os.path.isabs(tile["path"]) \
                or not all(isinstance(tile.get(k), int) for k in ("index", "cols", "rows")) \
                or not (tile["cols"] >= 1 and tile["rows"] >= 1):
            raise TaskError("bad_command", "Each tile of a merge needs an absolute path and "
                            "its index, cols and rows.", False)
    return given


def merge_frame(channel: Channel, scene, frame: int, given: list[dict], output_dir: str,
                output_name: str, output_pattern: str | None, denoise: bool = False) -> dict:
    """Assemble ``frame`` from its tiles and save it as a render of it would be saved,
    under the name render_frame gives it; return its ``frame_done`` event. With
    ``denoise`` the merged passes are denoised first (tiles.denoise_passes). With the
    compositor, it runs here on the merged passes, and its File Output nodes are
    confined and collected as render_frame does (the event's ``extras``)."""
    scene.frame_set(frame)  # animated colour management, cameras bound to markers
    path = frame_path(scene, frame, output_dir, output_name, output_pattern)
    if os.path.lexists(path):
        os.remove(path)
    STATE.frame, STATE.written, STATE.cancelled = frame, False, False
    channel.send({"ev": "frame_start", "frame": frame})
    started = time.monotonic()
    fileout = os.path.join(output_dir, FILEOUT_DIR)
    confined: list[bool] = []
    try:
        if tiles.uses_compositor(scene) or denoise:
            passes = tiles.assemble_passes(scene, given)
            if denoise:  # once, on the whole frame
                tiles.denoise_passes(scene, frame, passes, path)
        if tiles.uses_compositor(scene):
            # the compositor runs here, once: its File Output nodes write as in render_frame
            result = tiles.composite_frame(
                scene, frame, passes, path,
                lambda copy: confined.append(confine_file_outputs(copy, fileout)))
        elif denoise:
            result = tiles.write_frame(scene, frame, tiles.combined_pixels(
                passes, tiles.first_layer(scene)), path)
        else:
            result = tiles.write_frame(scene, frame, tiles.assemble(scene, given), path)
    except tiles.TileError as exc:
        raise TaskError(exc.reason, exc.message, exc.retryable) from None
    except RuntimeError as exc:  # the render operator's ERROR report
        traceback.print_exc()
        message = " ".join(str(exc).strip().replace("Error: ", "").splitlines())
        raise TaskError("render_failed", f"Blender failed to save merged frame {frame}: "
                        f"{message}", True) from exc
    if STATE.cancelled or "FINISHED" not in result:
        raise TaskError("render_failed", f"Blender cancelled the merge of frame {frame}.", True)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise TaskError("no_output", f"Blender merged frame {frame} but saved no file ({path}).",
                        True)
    extras = collect_file_outputs(fileout, output_dir, output_name, frame) \
        if any(confined) else []
    return {"ev": "frame_done", "frame": frame, "path": path, "extras": extras,
            "seconds": round(time.monotonic() - started, 3)}


def run_merge(channel: Channel, cmd: dict, oidn: bool) -> None:
    """A merge command: one frame from its tiles, events as for a render of one frame."""
    with _reported(channel, cmd.get("task_id")) as task_id:
        frame = cmd.get("frame")
        if not isinstance(frame, int) or isinstance(frame, bool):
            raise TaskError("bad_command", "A merge command needs its frame.", False)
        output_dir, output_name, pattern = _task_paths(cmd)
        given = _merge_tiles(cmd)
        scene = prepare_scene(cmd)
        # the tiles were refused too; no merge can make this frame
        denoise = _check_tileable(scene, oidn)
        os.makedirs(output_dir, exist_ok=True)
        scene.render.use_file_extension = True
        channel.send(merge_frame(channel, scene, frame, given, output_dir, output_name, pattern,
                                 denoise))
        channel.send({"ev": "task_done", "task_id": task_id})


@contextlib.contextmanager
def _reported(channel: Channel, task_id):
    """Run one task's command: its TaskError, or anything else it raises, goes to the
    agent as the task's ``error`` event, and the runner serves on."""
    try:
        yield task_id
    except TaskError as exc:
        channel.send(_error_event(task_id, exc))
    except Exception as exc:  # whatever else: report it, keep serving
        traceback.print_exc()
        channel.send(_error_event(task_id, TaskError(
            "render_failed", f"The runner failed: {type(exc).__name__}: {exc}", True)))
    finally:
        STATE.frame = None


def _error_event(task_id, exc: TaskError) -> dict:
    return {"ev": "error", "task_id": task_id, "reason": exc.reason,
            "retryable": exc.retryable, "message": exc.message}


# --- handlers ---------------------------------------------------------------------------


def parse_fraction(stats: str) -> float | None:
    # Twin of runner_proc.parse_fraction: this script runs inside Blender and can import
    # nothing of blenderfarm, so the few lines live in both places.
    part = None
    for pattern in _FRACTIONS:
        m = pattern.search(stats)
        if m and int(m.group(2)) > 0:
            part = min(1.0, int(m.group(1)) / int(m.group(2)))
            break
    tiles = _TILES.search(stats)
    if tiles and int(tiles.group(2)) > 0:
        # "Rendered 11/16 Tiles, Sample 1/4000": the samples are the 12th tile's. A tile
        # whose samples are all done is counted by the next line's tiles: not twice.
        inside = part if part is not None and part < 1.0 else 0.0
        return min(1.0, (int(tiles.group(1)) + inside) / int(tiles.group(2)))
    return part


def on_stats(*args) -> None:
    # Blender 3.x calls this with (None, None); only newer versions pass the stats
    # text. For those the agent reads the same line from Blender's stdout instead.
    text = next((a for a in args if isinstance(a, str)), None)
    channel, frame = STATE.channel, STATE.frame
    if text is None or channel is None or frame is None:
        return
    now = time.monotonic()
    fraction = parse_fraction(text)
    if now - STATE.last_progress < PROGRESS_INTERVAL and fraction != 1.0:
        return
    STATE.last_progress = now
    event = {"ev": "progress", "frame": frame, "fraction": fraction or 0.0, "stats": text.strip()}
    channel.send(event)


def on_write(*_args) -> None:
    STATE.written = True


def on_cancel(*_args) -> None:
    STATE.cancelled = True


HANDLERS = (("render_stats", on_stats), ("render_write", on_write), ("render_cancel", on_cancel))


def install_handlers() -> None:
    for name, func in HANDLERS:
        getattr(bpy.app.handlers, name).append(func)


def remove_handlers() -> None:
    for name, func in HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if func in handlers:
            handlers.remove(func)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="runner.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    # the file's scripts and Python drivers may run (Blender also got --enable-autoexec)
    parser.add_argument("--scripts", action="store_true")
    parser.add_argument("--blend")  # none: a spare, which waits for an open command
    return parser.parse_args(args)


class BlendError(Exception):
    """Blender could not open the .blend; the message is Blender's own words."""


def open_blend(path: str, scripts: bool) -> None:
    """Load the job's .blend, by its path relative to the working folder (the job's
    folder on a node) where it is under it: Blender keeps the path as given, so a
    burned-in stamp and an image's "File" metadata show the project's own path
    (``./shots/shot.blend``), the same on every node, not this node's work dir. ``//``
    paths (textures, libraries) resolve as ever. Scripts in it (and Python drivers) run
    only when ``scripts`` is true: ``use_scripts`` sets Blender's auto-exec for this
    file, whatever the command line said."""
    rel = os.path.relpath(os.path.abspath(path), os.getcwd())
    if not rel.startswith(".."):
        # "./": from a base path without it Blender resolves "//../lib.blend" to "/lib.blend"
        path = "./" + rel.replace(os.sep, "/")
    try:
        bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=scripts)
    except RuntimeError as exc:
        # Blender's own words ("Cannot read file ...") are what the agent looks for
        detail = str(exc).removeprefix("Error: ").strip()
        print(f"Error: {detail}", flush=True)
        raise BlendError(detail) from exc


def open_on_command(channel: Channel, cmd: dict) -> bool:
    """A spare's ``open`` command: into the job's folder, load its file; True if it did."""
    blend, cwd = cmd.get("blend"), cmd.get("cwd")
    if not isinstance(blend, str) or not isinstance(cwd, str) or not os.path.isabs(cwd):
        channel.send(_error_event(None, TaskError(
            "bad_command", "An open command needs a blend path and an absolute cwd.", False)))
        return False
    try:
        os.chdir(cwd)
        os.environ["PWD"] = cwd  # where Blender 4.5 resolves "./" paths from
        open_blend(blend, bool(cmd.get("scripts")))
    except (BlendError, OSError) as exc:
        channel.send(_error_event(None, TaskError("bad_blend", str(exc), False)))
        return False
    channel.send({"ev": "opened", "file": bpy.data.filepath})
    return True


def serve(channel: Channel, opened: bool, oidn: bool) -> None:
    """Answer commands until quit; a spare opens its file first (open_on_command)."""
    for cmd in channel.commands():
        kind = cmd.get("cmd")
        if kind == "quit":
            break
        if kind == "open" and not opened:
            if not open_on_command(channel, cmd):
                break  # its state is unknown: the agent stops it
            opened = True
            install_handlers()  # after the load, which drops handlers that are not @persistent
        elif kind == "render" and opened:
            run_task(channel, cmd, oidn)
        elif kind == "merge" and opened:
            run_merge(channel, cmd, oidn)
        else:
            channel.send(_error_event(cmd.get("task_id"), TaskError(
                "bad_command", f"The runner cannot do {kind!r} now.", False)))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    # what --enable/--disable-autoexec set in a Blender; a bpy module has no such option
    bpy.context.preferences.filepaths.use_scripts_auto_execute = args.scripts
    if args.blend is not None:
        try:
            open_blend(args.blend, args.scripts)
        except BlendError:
            sys.exit(1)
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
    sock.settimeout(None)  # renders take as long as they take; EOF ends us
    channel = Channel(sock)
    STATE.channel = channel
    oidn = has_oidn()
    if args.blend is not None:
        install_handlers()
    try:
        channel.send({"ev": "hello", "secret": args.secret, "version": version(),
                      "oidn": oidn, "file": bpy.data.filepath})
        serve(channel, args.blend is not None, oidn)
    finally:
        remove_handlers()
        STATE.channel = None
        channel.close()
    # returning ends the --python script; in background mode Blender then quits


if __name__ == "__main__":
    main(sys.argv)
