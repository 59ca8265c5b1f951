"""Tiled renders inside Blender: one cell of a frame as a border render, and the merge.

``runner.py`` imports this file (it puts its own folder on ``sys.path``); like the
runner it runs inside Blender, so it imports only the standard library and ``bpy``
(Debian's Blender has no numpy) and never anything of blenderfarm.

A tile is one Cycles border render (``use_border`` + ``use_crop_to_border``) of cell
``index`` of a ``cols`` x ``rows`` grid (:func:`tile_rect`, the twin of
``protocol.tiles.tile_rect``), plus a margin (:func:`adaptive_margin`), written as a
lossless 32-bit float RGBA OpenEXR with the compositor off. The merge copies each
cell's pixels out of its EXR into one float frame and lets Blender's own render
pipeline save it: a copy of the scene whose compositor is only an Image node (the
merged frame) into a Composite node is rendered with ``write_still``. With no Render
Layers node Blender renders nothing and only composites, so the frame goes through
the very code a direct render's result goes through (view transform, look, exposure,
gamma, dither, the scene's format, depth and colour mode): bit for bit the same file.
``Image.save_render`` is not: it does not dither, and 8-bit files then differ.

A scene that uses the compositor tiles too: its tiles are rendered with the compositor
off as lossless 32-bit float *multilayer* EXRs, which hold every pass of every view
layer (so whatever its Render Layers nodes read). The merge assembles each pass of the
frame (:func:`assemble_passes`; this file reads and writes the EXRs itself, as bpy
cannot reach a multilayer image's passes), and runs the scene's compositor once, on
the whole frame: the copy's tree is a copy of the scene's own in which each Render
Layers node is an Image node of the merged passes of its view layer, on the same
links (:func:`composite_frame`), so Glare, Blur, Normalize, File Output... see the
whole frame as in a direct render. Refused: a Denoise node (not yet shown exact), a
Render Layers node of another scene or of a view layer that does not render.

A scene with Cycles denoising on is denoised once, at the merge, never per tile (a tile
denoised alone has seams). Its tiles render noisy, with the Denoising Data passes (and,
with adaptive sampling, the Debug Sample Count pass), as multilayer float EXRs; the merge
assembles the frame's passes and denoises each view layer's Combined with the
compositor's Denoise node exactly as Cycles' own OpenImageDenoise call does
(:func:`denoise_passes`), then saves as above (through the scene's compositor where it
has one: its Render Layers' Image is then the denoised Combined). The result equals
Cycles' own full-frame denoised render bit for bit (Blender 5.0; a sample count that is
not a power of two without adaptive sampling: within ~2e-5, see :func:`denoise_passes`).

Why a margin: Cycles seeds every pixel by its place in the frame, so a border render
of a pixel equals the full render's, except with adaptive sampling, whose convergence
filter lets a pixel that needs more samples make its neighbours take more too. At a
border the neighbours outside are missing, and after each filter pass the difference
can reach one pixel further in. A tile is therefore rendered ``passes`` pixels beyond
its cell (clamped to the frame), where ``passes`` is the number of filter passes the
scene's sampling settings allow; the merge crops the margin, learning it from the
EXR's size (:func:`cell_offset`).

It must not send events or decide retries: it raises :class:`TileError` and the
runner reports it.
"""

from __future__ import annotations

import array
import contextlib
import math
import os
import shutil
import tempfile

import bpy
from exr import (  # beside this file (runner.py puts it on the path)
    PIXEL_BYTES,
    Exr,
    read_exr,
    write_exr,
)

#: Cycles filters adaptive sampling every this many samples (Integrator::
#: get_adaptive_sampling, the same in Blender 3.0 to 5.x)
ADAPTIVE_STEP = 16
#: the scene copy the merge renders while it exists
MERGE_SCENE = "blenderfarm merge"
_FLOAT = 4  # bytes of one float32

DENOISE_MESSAGE = ("This scene's compositor has a Denoise node ({node}), which cannot run "
                   "on tiles yet: submit it without --tiles.")
OTHER_SCENE_MESSAGE = ("This scene's compositor reads the render of another scene ({other}) "
                       "in its Render Layers node {node}, which tiled renders cannot make: "
                       "submit it without --tiles.")
LAYER_MESSAGE = ("This scene's compositor reads view layer {layer!r} in its Render Layers node "
                 "{node}, and that view layer does not render: turn it on or submit it "
                 "without --tiles.")
CRYPTOMATTE_MESSAGE = ("This scene's compositor has a Cryptomatte node ({node}) that reads "
                       "another scene's render, which tiled renders cannot make: submit it "
                       "without --tiles.")
ENGINE_MESSAGE = ("Tiled renders need Cycles; this scene renders with {engine}: submit it "
                  "without --tiles.")
BORDER_MESSAGE = ("This scene renders only a region of its frame (Render Region); tiled "
                  "renders need the whole frame: turn the region off or submit it "
                  "without --tiles.")
DENOISER_MESSAGE = ("This scene denoises with {denoiser}; a tiled frame is denoised once, "
                    "at the merge, with OpenImageDenoise, which would give another "
                    "picture: set the scene's denoiser to OpenImageDenoise, or submit it "
                    "without --tiles.")
SEQUENCER_MESSAGE = ("This scene renders its video sequencer's strips, which tiled renders "
                     "cannot split: submit it without --tiles.")


class TileError(Exception):
    """A tile or merge that cannot be done; the runner turns it into an ``error`` event."""

    def __init__(self, reason: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


# --- geometry ---------------------------------------------------------------------------


def tile_rect(index: int, cols: int, rows: int, width: int, height: int
              ) -> tuple[int, int, int, int]:
    """Pixels ``(x0, y0, x1, y1)`` of cell ``index`` (ends exclusive, origin bottom left).

    Twin of ``protocol.tiles.tile_rect`` (this file imports nothing of blenderfarm);
    ``tests/test_tiles.py`` checks that the two agree."""
    if not 0 <= index < cols * rows:
        raise ValueError(f"tile {index} is not a cell of a {cols}x{rows} grid")
    col, row = index % cols, index // cols
    return (col * width // cols, row * height // rows,
            (col + 1) * width // cols, (row + 1) * height // rows)


def render_size(scene) -> tuple[int, int]:
    """The frame's pixels as Blender computes them (BKE_render_resolution: integer
    division of resolution x percentage by 100)."""
    render = scene.render
    pct = render.resolution_percentage
    return render.resolution_x * pct // 100, render.resolution_y * pct // 100


def padded_rect(rect: tuple[int, int, int, int], margin: int, width: int, height: int
                ) -> tuple[int, int, int, int]:
    """``rect`` grown by ``margin`` pixels on every side, clamped to the frame."""
    x0, y0, x1, y1 = rect
    return (max(0, x0 - margin), max(0, y0 - margin),
            min(width, x1 + margin), min(height, y1 + margin))


def cell_offset(rect: tuple[int, int, int, int], size: tuple[int, int], width: int,
                height: int) -> tuple[int, int] | None:
    """Where cell ``rect`` lies in a tile image of ``size`` rendered with some margin:
    ``(dx, dy)`` of the cell's first pixel in the tile, or None if no margin gives that
    size. The margin is not sent along: it is the one margin that explains the size (two
    margins that both do clamp to the same pixels, so either gives the same offset)."""
    for margin in range(max(width, height) + 1):
        px0, py0, px1, py1 = padded_rect(rect, margin, width, height)
        if (px1 - px0, py1 - py0) == tuple(size):
            return rect[0] - px0, rect[1] - py0
    return None


def _border_edge(pixel: int, size: int) -> float:
    # Blender turns a border float into a pixel by truncation (int)(border * size) in
    # render_init_from_main; the pixel's centre truncates to the pixel whatever the
    # float's rounding, and the frame's own edges are exactly 0 and 1.
    if pixel <= 0:
        return 0.0
    if pixel >= size:
        return 1.0
    return (pixel + 0.5) / size


def set_border(settings, scene, rect: tuple[int, int, int, int]) -> None:
    """Make the render a cropped border render of exactly the pixels ``rect``
    (``settings`` is the runner's SETTINGS, so the scene's own values come back)."""
    width, height = render_size(scene)
    render = scene.render
    x0, y0, x1, y1 = rect
    settings.set(render, "use_border", True)
    settings.set(render, "use_crop_to_border", True)
    settings.set(render, "border_min_x", _border_edge(x0, width))
    settings.set(render, "border_max_x", _border_edge(x1, width))
    settings.set(render, "border_min_y", _border_edge(y0, height))
    settings.set(render, "border_max_y", _border_edge(y1, height))


def adaptive_margin(scene) -> int:
    """Pixels a tile is rendered beyond its cell so that its cell's pixels equal the full
    render's: 0 without adaptive sampling, else the number of times Cycles filters the
    convergence map (each pass reaches one pixel further in from a border).

    Mirrors Cycles' own settings (Integrator::get_adaptive_sampling): a threshold of 0
    means max(0.001, 1/samples); min samples 0 means ceil(16 / threshold^0.3), and at
    least 4; a filter pass after every sample s >= min samples with s % 16 == 15."""
    cycles = getattr(scene, "cycles", None)
    if scene.render.engine != "CYCLES" or cycles is None \
            or not getattr(cycles, "use_adaptive_sampling", False):
        return 0
    # a view layer's own sample count may be higher (use_layer_samples); the most wins
    samples = max([int(cycles.samples)] + [int(getattr(layer, "samples", 0) or 0)
                                           for layer in scene.view_layers])
    threshold = float(cycles.adaptive_threshold) or max(0.001, 1.0 / max(1, samples))
    least = int(cycles.adaptive_min_samples)
    least = max(4, least if least else math.ceil(16.0 / threshold ** 0.3))
    if samples <= least:
        return 0
    # samples s in [least, samples - 1] with (s + 1) % 16 == 0
    return samples // ADAPTIVE_STEP - least // ADAPTIVE_STEP


# --- what can be tiled -------------------------------------------------------------------


def uses_compositor(scene) -> bool:
    """Whether a render of ``scene`` runs its compositor (Blender 5 keeps the tree in
    ``compositing_node_group``; older ones need ``use_nodes`` and a ``node_tree``)."""
    return compositor_tree(scene) is not None


def compositor_tree(scene):
    """The compositor node tree a render of ``scene`` runs, or None."""
    if not scene.render.use_compositing:
        return None
    group = getattr(scene, "compositing_node_group", None)
    if group is not None:
        return group
    if getattr(scene, "use_nodes", False):
        return getattr(scene, "node_tree", None)
    return None


def uses_sequencer(scene) -> bool:
    editor = scene.sequence_editor
    strips = getattr(editor, "strips_all", None) or getattr(editor, "sequences_all", None) \
        if editor is not None else None
    return bool(scene.render.use_sequencer and strips)


def _tree_nodes(tree, seen=None):
    """Every node of ``tree`` and of the node groups it holds, nested groups too."""
    seen = set() if seen is None else seen
    if tree is None or tree.as_pointer() in seen:
        return
    seen.add(tree.as_pointer())
    for node in tree.nodes:
        yield node
        if getattr(node, "node_tree", None) is not None:
            yield from _tree_nodes(node.node_tree, seen)


def check_compositor(scene, tree) -> None:
    """Raise TileError where the merge could not run ``tree`` as the render would: every
    Render Layers node must read a view layer of this scene that renders (its passes
    are then in the tiles), and no node may need the render itself."""
    rendered = {layer.name for layer in scene.view_layers if layer.use}
    for node in _tree_nodes(tree):
        kind, label = node.bl_idname, repr(node.name)
        if kind == "CompositorNodeDenoise" and not node.mute:
            raise TileError("tiles_compositor", DENOISE_MESSAGE.format(node=label), False)
        if kind == "CompositorNodeRLayers" and not node.mute:
            other = getattr(node, "scene", None)
            if other is not None and other.name != scene.name:
                # Blender renders that scene too, whole: the tiles hold none of it
                raise TileError("tiles_compositor", OTHER_SCENE_MESSAGE.format(
                    other=repr(other.name), node=label), False)
            if node.layer not in rendered:
                raise TileError("tiles_compositor", LAYER_MESSAGE.format(
                    layer=node.layer, node=label), False)
        if kind == "CompositorNodeCryptomatteV2" and getattr(node, "source", "") == "RENDER":
            other = getattr(node, "scene", None)
            if other is not None and other.name != scene.name:
                raise TileError("tiles_compositor", CRYPTOMATTE_MESSAGE.format(node=label),
                                False)


def check_tileable(scene) -> None:
    """Raise TileError where a tiled render could not equal the direct render."""
    engine = scene.render.engine
    if engine != "CYCLES":
        # a border render of Eevee (bloom, SSR, soft shadows, TAA) is not shown to
        # equal the full frame's pixels: refused rather than merged with seams
        name = {"BLENDER_EEVEE": "Eevee", "BLENDER_EEVEE_NEXT": "Eevee",
                "BLENDER_WORKBENCH": "Workbench"}.get(engine, engine)
        raise TileError("tiles_engine", ENGINE_MESSAGE.format(engine=name), False)
    tree = compositor_tree(scene)
    if tree is not None:
        check_compositor(scene, tree)
    if scene.render.use_border:
        raise TileError("tiles_border", BORDER_MESSAGE, False)
    if uses_sequencer(scene):
        raise TileError("tiles_sequencer", SEQUENCER_MESSAGE, False)


# --- the tile render --------------------------------------------------------------------


def tile_file_name(output_name: str, index: int, frame: int) -> str:
    return f"{output_name}.tile{index:03d}.{frame}.exr"


def tile_preview_file_name(output_name: str, index: int, frame: int) -> str:
    """protocol.tiles.tile_preview_name: the tile as an 8-bit PNG for the job page."""
    return f"{output_name}.tile{index:03d}.{frame}.preview.png"


def tile_format(scene, denoise: bool = False) -> str:
    """The format of a tile of ``scene``: with the compositor a multilayer EXR of every
    pass of every view layer (the merge runs the compositor on them), and so with
    ``denoise`` (the merge denoises with the Denoising Data passes), else RGBA."""
    return "OPEN_EXR_MULTILAYER" if denoise or uses_compositor(scene) else "OPEN_EXR"


def set_tile_output(settings, scene) -> None:
    """After the runner set the format to :func:`tile_format`: full float, lossless,
    and nothing else in the file or beside it; the compositor and burned-in stamp off
    (the merge runs them once, on the whole frame). A multilayer EXR holds every pass
    the view layers enable, so it holds whatever the compositor's Render Layers read."""
    image = scene.render.image_settings
    settings.set(image, "color_mode", "RGBA")
    settings.set(image, "color_depth", "32")
    settings.set(image, "exr_codec", "ZIP")
    for attr in ("use_preview", "use_zbuffer"):  # a .jpg beside it; a Z channel in it
        if getattr(image, attr, False):
            settings.set(image, attr, False)
    settings.set(scene.render, "use_compositing", False)
    settings.set(scene.render, "use_stamp", False)


# --- denoising: noisy tiles, one denoise at the merge ----------------------------------


def denoised_layers(scene) -> list[str]:
    """The view layers whose Combined Cycles denoises in a final render of ``scene``."""
    cycles = getattr(scene, "cycles", None)
    if scene.render.engine != "CYCLES" or not getattr(cycles, "use_denoising", False):
        return []
    return [layer.name for layer in scene.view_layers if layer.use
            and getattr(getattr(layer, "cycles", None), "use_denoising", True)]


def check_denoise(scene) -> None:
    """Raise TileError where the merge's denoise could not equal the render's: only
    OpenImageDenoise runs at the merge (a denoiser this Blender lacks reads as '', and
    the runner's OpenImageDenoise check then refuses it, as for a whole frame)."""
    if getattr(scene.cycles, "denoiser", "") == "OPTIX":
        raise TileError("tiles_denoise", DENOISER_MESSAGE.format(denoiser="OptiX"), False)


def set_tile_denoise(settings, scene) -> None:
    """Make the tile noisy, with what the merge denoises with: the Denoising Data passes
    of every denoised view layer and, with adaptive sampling, each pixel's sample count
    (the merge redoes Cycles' per-pixel rescale with it). Neither pass changes the
    Combined pass. It turns Cycles' denoising off itself, once it knows which layers."""
    adaptive = bool(getattr(scene.cycles, "use_adaptive_sampling", False))
    for name in denoised_layers(scene):
        layer_cycles = scene.view_layers[name].cycles
        settings.set(layer_cycles, "denoising_store_passes", True)
        if adaptive and hasattr(layer_cycles, "pass_debug_sample_count"):
            settings.set(layer_cycles, "pass_debug_sample_count", True)
    settings.set(scene.cycles, "use_denoising", False)


def _float_plane(passes: Exr, name: str) -> array.array:
    if dict(passes.channels).get(name) != 2:
        raise TileError("bad_input", f"The tiles of the frame have no float channel {name!r}: "
                        "they were rendered without the denoising data the merge denoises "
                        "with (by an older runner, or from another scene).", False)
    plane = array.array("f")
    plane.frombytes(bytes(passes.planes[name]))
    return plane


def _layer_samples(scene, passes: Exr, layer: str) -> int:
    """The samples Cycles took per pixel of ``layer`` (without adaptive sampling): as its
    render wrote them in the EXR's metadata (a view layer's own count included), else the
    scene's."""
    kind, raw = passes.attrs.get(f"cycles.{layer}.samples", ("", b""))
    with contextlib.suppress(ValueError):
        if kind == "string" and int(raw.rstrip(b"\0")) > 0:
            return int(raw.rstrip(b"\0"))
    return max(1, int(scene.cycles.samples))


def _f32(value: float) -> float:
    return array.array("f", [value])[0]


def _bottom_up(plane: array.array, width: int, height: int) -> array.array:
    """An EXR plane's rows (from the top) in Blender's order (from the bottom)."""
    flipped = array.array("f")
    for y in range(height - 1, -1, -1):
        flipped.extend(plane[y * width:(y + 1) * width])
    return flipped


def _image_of(name: str, planes: list[array.array], width: int, height: int):
    """A float image of ``planes`` (R, G, B[, A]; rows from the top, as in an EXR), in
    Blender's pixel order (rows from the bottom); alpha 1 without an A plane."""
    rgba = array.array("f", bytes(_FLOAT * 4 * width * height))
    if len(planes) < 4:
        rgba[3::4] = array.array("f", [1.0]) * (width * height)
    for channel, plane in enumerate(planes):
        rgba[channel::4] = _bottom_up(plane, width, height)
    image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=True)
    image.pixels.foreach_set(rgba)
    return image


def denoise_passes(scene, frame: int, passes: Exr, near: str) -> None:
    """Denoise the Combined pass of each denoised view layer in the merged ``passes``, in
    place, exactly as Cycles denoises a full-frame render (OpenImageDenoise via
    ``OIDNDenoiser``); temporary files go in a folder beside ``near``.

    Cycles hands OIDN the *sum* of the samples without adaptive sampling (its colour
    pass is not scaled: OIDN's auto-exposure makes the result nearly, not exactly, scale
    invariant), and with it the per-pixel mean; after the denoise its pass accessor
    scales the pixel by 1/samples, and with adaptive sampling by count then 1/count. The
    merge does the same in float32: RGB x N, the Denoise node (HDR, the scene's prefilter,
    quality and guiding passes, albedo and normal prefiltered as Cycles does with
    Accurate), then RGB x float32(1/N), or (RGB x c) x float32(1/c) with c each pixel's
    count (the Debug Sample Count pass holds c/N). Alpha stays the noisy alpha, as in
    Cycles. Exact for N a power of two, and with adaptive sampling; for another N the
    EXR holds sum x float32(1/N), from which x N does not always give back Cycles' sum
    (an ulp off), and OIDN's result then differs by up to ~2e-5."""
    layers = denoised_layers(scene)
    if not layers:
        return
    adaptive = bool(getattr(scene.cycles, "use_adaptive_sampling", False))
    folder = tempfile.mkdtemp(prefix=".blenderfarm-denoise-", dir=os.path.dirname(near))
    try:
        for layer in layers:
            _denoise_layer(scene, frame, passes, layer, adaptive,
                           os.path.join(folder, "denoised.exr"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _denoise_layer(scene, frame: int, passes: Exr, layer: str, adaptive: bool,
                   path: str) -> None:
    """Denoise view layer ``layer`` of ``passes`` (denoise_passes), through ``path``."""
    width, height = passes.width, passes.height
    samples = _layer_samples(scene, passes, layer)
    rgb = [_float_plane(passes, f"{layer}.Combined.{c}") for c in "RGB"]
    alpha = _float_plane(passes, f"{layer}.Combined.A")
    albedo = [_float_plane(passes, f"{layer}.Denoising Albedo.{c}") for c in "RGB"]
    normal = [_float_plane(passes, f"{layer}.Denoising Normal.{c}") for c in "XYZ"]
    counts = None
    if adaptive:
        stored = _float_plane(passes, f"{layer}.Debug Sample Count.X")
        counts = [round(value * samples) for value in stored]
        noisy = rgb  # Cycles denoises the per-pixel mean
    else:
        # float32 x an integer: the double product is exact, its rounding float32's
        noisy = [array.array("f", (value * samples for value in plane)) for plane in rgb]
    images = [_image_of("blenderfarm noisy", [*noisy, alpha], width, height),
              _image_of("blenderfarm albedo", albedo, width, height),
              _image_of("blenderfarm normal", normal, width, height)]
    try:
        result = _render_copy(scene, frame, path,
                              lambda copy: _denoise_compositor(copy, scene, images))
    finally:
        for image in images:
            bpy.data.images.remove(image)
    if "FINISHED" not in result or not os.path.isfile(path):
        raise TileError("render_failed", "Blender did not denoise the merged frame.", True)
    denoised = read_exr(path)
    if (denoised.width, denoised.height) != (width, height):
        raise TileError("render_failed", "Blender denoised the merged frame at another size.",
                        True)
    if getattr(scene.view_layers[layer].cycles, "denoising_store_passes", False):
        # the scene's own Denoising Data passes: a render then has the Noisy Image pass
        # too (the Combined before the denoise), which its compositor may read
        for channel in "RGBA":
            passes.planes[f"{layer}.Noisy Image.{channel}"] = \
                bytearray(passes.planes[f"{layer}.Combined.{channel}"])
        passes.channels = sorted({*passes.channels,
                                  *((f"{layer}.Noisy Image.{c}", 2) for c in "RGBA")})
    for channel in "RGB":
        plane = _float_plane(denoised, channel)
        if counts is None:
            scale = _f32(1.0 / samples)
            plane = array.array("f", (value * scale for value in plane))
        else:
            # Cycles' pass accessor: (pixel x count) x float32(1 / count), each rounded
            # to float32 (1.0 / c in double then float32 is float32's own quotient)
            inverse = array.array("f", (1.0 / c if c else 1.0 for c in counts))
            scaled = array.array("f", (value * c if c else value
                                       for value, c in zip(plane, counts, strict=True)))
            plane = array.array("f", (value * r for value, r in zip(scaled, inverse, strict=True)))
        passes.planes[f"{layer}.Combined.{channel}"] = bytearray(plane.tobytes())


#: Cycles' denoiser settings as the Blender 5 Denoise node's menu items name them
_PREFILTER_ITEMS = {"NONE": "None", "FAST": "Fast", "ACCURATE": "Accurate"}
_QUALITY_ITEMS = {"HIGH": "High", "BALANCED": "Balanced", "FAST": "Fast"}


def _set_denoise_node(node, scene) -> None:
    """The Denoise node as Cycles denoises: HDR, and the scene's Cycles prefilter and
    quality (the node's own default quality, Follow Scene, is the compositor's)."""
    cycles = scene.cycles
    prefilter = getattr(cycles, "denoising_prefilter", "") or "ACCURATE"
    quality = getattr(cycles, "denoising_quality", "") or "HIGH"
    inputs = {socket.name: socket for socket in node.inputs}
    if "HDR" in inputs:  # an input from Blender 4.2 on
        inputs["HDR"].default_value = True
    else:
        node.use_hdr = True
    if "Prefilter" in inputs:  # Blender 5: menu sockets, set by their items' names
        inputs["Prefilter"].default_value = _PREFILTER_ITEMS[prefilter]
        if "Quality" in inputs:
            inputs["Quality"].default_value = _QUALITY_ITEMS[quality]
    else:
        node.prefilter = prefilter
        if hasattr(node, "quality"):  # Blender 4.4 and 4.5; older ones: OIDN's default, High
            node.quality = quality


def _denoise_compositor(copy, scene, images):
    """The copy's compositor: the Denoise node on the noisy, albedo and normal images,
    into a lossless float EXR; return a node group to remove afterwards (Blender 5), or
    None."""
    image = copy.render.image_settings
    if hasattr(image, "media_type"):  # Blender 5: the format list is the media type's
        image.media_type = "IMAGE"
    image.file_format = "OPEN_EXR"
    image.color_mode, image.color_depth, image.exr_codec = "RGBA", "32", "ZIP"
    if hasattr(image, "color_management"):  # an override could convert the linear pixels
        image.color_management = "FOLLOW_SCENE"
    copy.render.use_stamp = False
    copy.render.use_multiview = False
    render = copy.render
    if hasattr(render, "compositor_denoise_device") \
            and not getattr(scene.cycles, "denoising_use_gpu", False):
        render.compositor_denoise_device = "CPU"  # where Cycles denoised
    if hasattr(render, "compositor_precision"):
        render.compositor_precision = "FULL"
    group = None
    if hasattr(copy, "compositing_node_group"):  # Blender 5: a node group
        group = bpy.data.node_groups.new(MERGE_SCENE, "CompositorNodeTree")
        group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        copy.compositing_node_group = group
        tree = group
        target = tree.nodes.new("NodeGroupOutput")
    else:
        copy.use_nodes = True
        tree = copy.node_tree
        tree.nodes.clear()
        target = tree.nodes.new("CompositorNodeComposite")
    noisy, albedo, normal = (tree.nodes.new("CompositorNodeImage") for _ in images)
    noisy.image, albedo.image, normal.image = images
    node = tree.nodes.new("CompositorNodeDenoise")
    _set_denoise_node(node, scene)
    tree.links.new(noisy.outputs["Image"], node.inputs["Image"])
    passes = getattr(scene.cycles, "denoising_input_passes", "") or "RGB_ALBEDO_NORMAL"
    if passes in ("RGB_ALBEDO", "RGB_ALBEDO_NORMAL"):
        tree.links.new(albedo.outputs["Image"], node.inputs["Albedo"])
    if passes == "RGB_ALBEDO_NORMAL":
        tree.links.new(normal.outputs["Image"], node.inputs["Normal"])
    tree.links.new(node.outputs["Image"], target.inputs["Image"])
    return group  # (the alpha that comes out is not used: Cycles keeps the noisy one)


def combined_pixels(passes: Exr, layer: str) -> array.array:
    """``layer``'s Combined pass of ``passes`` as float RGBA in Blender's pixel order."""
    width, height = passes.width, passes.height
    rgba = array.array("f", bytes(_FLOAT * 4 * width * height))
    for channel, name in enumerate("RGBA"):
        rgba[channel::4] = _bottom_up(_float_plane(passes, f"{layer}.Combined.{name}"),
                                      width, height)
    return rgba


def first_layer(scene) -> str:
    """The view layer a render without the compositor saves: the first one that renders
    (Blender's render_get_single_layer takes the result's first layer)."""
    layer = next((layer.name for layer in scene.view_layers if layer.use), None)
    if layer is None:
        raise TileError("bad_input", "The scene has no view layer that renders.", False)
    return layer


def check_grid(tiles: list[dict]) -> tuple[int, int]:
    """The grid ``(cols, rows)`` of a merge's tiles: one grid, every cell exactly once."""
    grids = {(t["cols"], t["rows"]) for t in tiles}
    if len(grids) != 1:
        raise TileError("bad_command", "The tiles of a merge must all be cells of one grid.",
                        False)
    cols, rows = grids.pop()
    indices = sorted(t["index"] for t in tiles)
    if indices != list(range(cols * rows)):
        missing = sorted(set(range(cols * rows)) - set(indices))
        what = f"tile {missing[0]} is missing" if missing else "a tile is given twice"
        raise TileError("bad_input", f"The merge cannot make the frame from a {cols}x{rows} "
                        f"grid: {what}.", False)
    return cols, rows


def _tile_missing(path: str, index: int) -> None:
    if not os.path.isfile(path):
        # a download that went wrong on this node: another node may have it
        raise TileError("bad_input", f"Tile {index} of the frame is missing ({path}).", True)


def _cell_in_tile(tile: dict, rect: tuple[int, int, int, int], size: tuple[int, int],
                  width: int, height: int) -> tuple[int, int]:
    offset = cell_offset(rect, size, width, height)
    if offset is None:
        x0, y0, x1, y1 = rect
        raise TileError("bad_input", f"Tile {tile['index']} of the frame is {size[0]}x"
                        f"{size[1]} pixels, which no margin around its cell ({x1 - x0}x"
                        f"{y1 - y0} at {x0},{y0} of a {width}x{height} frame) gives: it was "
                        "rendered at another resolution or grid.", False)
    return offset


def _read_tile(path: str, index: int) -> tuple[int, int, array.array]:
    """A tile's size and float RGBA pixels (rows from the bottom)."""
    _tile_missing(path, index)
    try:
        image = bpy.data.images.load(path, check_existing=False)
    except RuntimeError as exc:
        raise TileError("bad_input", f"Tile {index} of the frame cannot be read as an image "
                        f"({path}): {str(exc).strip()}", True) from exc
    try:
        width, height = image.size
        if width == 0 or height == 0 or not image.is_float or image.channels != 4:
            raise TileError("bad_input", f"Tile {index} of the frame is not a float RGBA "
                            f"OpenEXR the farm rendered ({path}).", False)
        pixels = array.array("f", bytes(_FLOAT * 4 * width * height))
        image.pixels.foreach_get(pixels)
        return width, height, pixels
    finally:
        bpy.data.images.remove(image)


def assemble(scene, tiles: list[dict]) -> array.array:
    """The frame's float RGBA pixels, each cell copied from its tile's EXR."""
    cols, rows = check_grid(tiles)
    width, height = render_size(scene)
    frame = array.array("f", bytes(_FLOAT * 4 * width * height))
    for tile in sorted(tiles, key=lambda t: t["index"]):
        rect = tile_rect(tile["index"], cols, rows, width, height)
        x0, y0, x1, y1 = rect
        tw, th, pixels = _read_tile(tile["path"], tile["index"])
        dx, dy = _cell_in_tile(tile, rect, (tw, th), width, height)
        run = 4 * (x1 - x0)
        for y in range(y0, y1):
            src = 4 * ((y - y0 + dy) * tw + dx)
            dst = 4 * (y * width + x0)
            frame[dst:dst + run] = pixels[src:src + run]
    return frame


def _read_pass_tile(path: str, index: int) -> Exr:
    _tile_missing(path, index)
    try:
        exr = read_exr(path)
    except (OSError, ValueError) as exc:
        raise TileError("bad_input", f"Tile {index} of the frame cannot be read as a "
                        f"multilayer OpenEXR ({path}): {exc}.", True) from exc
    # Blender names a multilayer EXR's channels <view layer>.<pass>.<channel>
    if not exr.channels or not all(name.count(".") >= 2 for name, _ in exr.channels):
        raise TileError("bad_input", f"Tile {index} of the frame is not a multilayer OpenEXR "
                        f"of the scene's passes ({path}): was it rendered without the "
                        "compositor?", False)
    return exr


def assemble_passes(scene, tiles: list[dict]) -> Exr:
    """Every pass of the frame, each cell copied from its tile's multilayer EXR."""
    cols, rows = check_grid(tiles)
    width, height = render_size(scene)
    merged: Exr | None = None
    for tile in sorted(tiles, key=lambda t: t["index"]):
        rect = tile_rect(tile["index"], cols, rows, width, height)
        x0, y0, x1, y1 = rect
        exr = _read_pass_tile(tile["path"], tile["index"])
        dx, dy = _cell_in_tile(tile, rect, (exr.width, exr.height), width, height)
        if merged is None:
            merged = Exr(width, height, exr.channels, exr.attrs,
                         {name: bytearray(PIXEL_BYTES[ptype] * width * height)
                          for name, ptype in exr.channels})
        elif exr.channels != merged.channels:
            raise TileError("bad_input", f"Tile {tile['index']} of the frame holds other "
                            "passes than tile 0: they were rendered from different "
                            "scenes.", False)
        for name, ptype in exr.channels:
            size = PIXEL_BYTES[ptype]
            src, dst, run = exr.planes[name], merged.planes[name], size * (x1 - x0)
            for y in range(y0, y1):  # y from the bottom; an EXR's rows are from the top
                at = size * ((exr.height - 1 - (y - y0 + dy)) * exr.width + dx)
                to = size * ((height - 1 - y) * width + x0)
                dst[to:to + run] = src[at:at + run]
    assert merged is not None  # check_grid: at least one tile
    return merged


def write_frame(scene, frame: int, pixels: array.array, path: str) -> set[str]:
    """Save ``pixels`` (the frame's float RGBA) to ``path`` exactly as a render of
    ``scene`` would save its result, and return the render operator's result.

    A copy of the scene (every render, colour management and output setting as the
    task set them) gets a compositor of an Image node into a Composite node and is
    rendered (:func:`_render_copy`)."""
    width, height = render_size(scene)
    image = bpy.data.images.new("blenderfarm merged", width, height, alpha=True,
                                float_buffer=True)
    try:
        image.pixels.foreach_set(pixels)
        return _render_copy(scene, frame, path, lambda copy: _merge_compositor(copy, image))
    finally:
        bpy.data.images.remove(image)


def composite_frame(scene, frame: int, passes: Exr, path: str, before_render=None
                    ) -> set[str]:
    """Run the scene's compositor once on the frame's merged ``passes`` and save its
    result to ``path`` as a render would; return the render operator's result.

    The passes become a multilayer image, and a copy of the scene renders with a copy of
    its own compositor in which each Render Layers node is an Image node of that image
    and view layer, wired to the same sockets (:func:`_passes_compositor`): every other
    node, File Output nodes too, runs on the whole frame as in a direct render.
    ``before_render(copy)`` runs just before the render (the runner confines the copy's
    File Output nodes there)."""
    folder = tempfile.mkdtemp(prefix=".blenderfarm-merge-", dir=os.path.dirname(path))
    image = None
    try:
        source = os.path.join(folder, "passes.exr")
        write_exr(source, passes)
        image = bpy.data.images.load(source, check_existing=False)
        return _render_copy(scene, frame, path,
                            lambda copy: _passes_compositor(copy, scene, image),
                            before_render)
    finally:
        if image is not None:
            bpy.data.images.remove(image)
        shutil.rmtree(folder, ignore_errors=True)


def _render_copy(scene, frame: int, path: str, build, before_render=None) -> set[str]:
    """Render a copy of ``scene`` whose compositor ``build(copy)`` made (it returns a node
    group to remove afterwards, or None) and save it to ``path`` with ``write_still``.

    With no Render Layers node Blender renders nothing and only composites, so the frame
    goes through the very code a direct render's result goes through. The copy takes
    the scene's name for the time, so the file's metadata (and a burned-in stamp) names
    the scene as a direct render does."""
    own = scene.name
    copy = group = None
    try:
        copy = scene.copy()
        copy.name = MERGE_SCENE
        group = build(copy)
        render = copy.render
        render.use_compositing, render.use_sequencer = True, False
        render.use_border = False
        render.use_file_extension = True
        render.filepath = path
        copy.frame_current = frame
        if before_render is not None:
            before_render(copy)
        # Blender keeps one Render per scene name: under the scene's name the copy
        # also reuses the scene's, and no full-frame result is left behind per merge
        scene.name = own[:50] + " (blenderfarm)"
        copy.name = own
        return bpy.ops.render.render(write_still=True, scene=copy.name)
    finally:
        if copy is not None:
            copy.name = MERGE_SCENE
            bpy.data.scenes.remove(copy)
        scene.name = own
        if group is not None:
            bpy.data.node_groups.remove(group)


def _merge_compositor(copy, image):
    """Make the copy's compositor only ``image`` into the output; return a node group
    made for it (Blender 5), to remove afterwards, or None."""
    if hasattr(copy, "compositing_node_group"):
        # Blender 5: the compositor is a node group whose Group Output is the result
        # (the colour carries its alpha).
        group = bpy.data.node_groups.new(MERGE_SCENE, "CompositorNodeTree")
        group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        source = group.nodes.new("CompositorNodeImage")
        source.image = image
        target = group.nodes.new("NodeGroupOutput")
        group.links.new(source.outputs["Image"], target.inputs["Image"])
        copy.compositing_node_group = group
        return group
    copy.use_nodes = True  # gives the copy its own tree (or its own copy of the scene's)
    tree = copy.node_tree
    tree.nodes.clear()
    source = tree.nodes.new("CompositorNodeImage")
    source.image = image
    target = tree.nodes.new("CompositorNodeComposite")
    tree.links.new(source.outputs["Image"], target.inputs["Image"])
    if "Alpha" in target.inputs:  # up to Blender 4.4; from 4.5 the colour carries it
        tree.links.new(source.outputs["Alpha"], target.inputs["Alpha"])
    return None


def _passes_compositor(copy, scene, image):
    """Turn the copy's compositor (a copy of the scene's) into one that reads ``image``,
    the merged passes, where it read the render; return a node group to remove
    afterwards (Blender 5), or None."""
    group = None
    if getattr(copy, "compositing_node_group", None) is not None:
        # Blender 5: the tree is a node group the copy shares with the scene; edit a
        # copy of it. Not yet tested on a Blender 5.
        group = copy.compositing_node_group.copy()
        copy.compositing_node_group = group
        tree = group
    else:
        tree = copy.node_tree  # scene.copy() copied the scene's embedded tree
    for node in [n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers"]:
        _replace_render_layers(tree, node, image)
    for node in [n for n in tree.nodes if n.bl_idname == "CompositorNodeCryptomatteV2"]:
        if getattr(node, "source", "") == "RENDER":
            # it reads the render's cryptomatte passes itself, not through links
            layer = node.layer_name
            node.source = "IMAGE"
            node.image = image
            with contextlib.suppress(TypeError):  # a layer the image lacks: it keeps its own
                node.layer_name = layer
    return group


def _replace_render_layers(tree, node, image) -> None:
    """An Image node of ``image`` in place of Render Layers ``node``, on the same links.
    A multilayer image's outputs are its passes by name, Combined for the Render Layers'
    Image; a link from an output whose pass the view layer does not render stays
    unlinked, as Blender ignores links from such (unavailable) sockets."""
    links = [(output.identifier, link.to_socket, link.is_muted)
             for output in node.outputs if output.enabled
             for link in output.links if link.is_valid]
    layer, location, muted = node.layer, tuple(node.location), node.mute
    name = node.name
    tree.nodes.remove(node)
    source = tree.nodes.new("CompositorNodeImage")
    source.name, source.location, source.mute = name, location, muted
    source.image = image
    try:
        source.layer = layer
    except TypeError as exc:  # check_compositor let only rendered layers through
        raise TileError("bad_input", f"The merged passes have no view layer {layer!r}: the "
                        "tiles were rendered from another scene.", False) from exc
    if getattr(source, "use_straight_alpha_output", False):
        # the pixels as stored (premultiplied), as the Render Layers node gives them
        source.use_straight_alpha_output = False
    for identifier, target, link_muted in links:
        # 3.4 names the Combined pass's output "Combined"; "Image" where a Blender does not
        names = ("Combined", "Image") if identifier == "Image" else (identifier,)
        output = next((source.outputs[n] for n in names if n in source.outputs), None)
        if output is None:
            continue
        made = tree.links.new(output, target)
        made.is_muted = link_muted
