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
import math
import os

import bpy

#: Cycles filters adaptive sampling every this many samples (Integrator::
#: get_adaptive_sampling, the same in Blender 3.0 to 5.x)
ADAPTIVE_STEP = 16
#: the scene copy the merge renders while it exists
MERGE_SCENE = "blenderfarm merge"
_FLOAT = 4  # bytes of one float32

COMPOSITOR_MESSAGE = ("This scene uses the compositor, which tiled renders cannot run yet; "
                      "submit it without --tiles.")
ENGINE_MESSAGE = ("Tiled renders need Cycles; this scene renders with {engine}: submit it "
                  "without --tiles.")
BORDER_MESSAGE = ("This scene renders only a region of its frame (Render Region); tiled "
                  "renders need the whole frame: turn the region off or submit it "
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
    if not scene.render.use_compositing:
        return False
    if getattr(scene, "compositing_node_group", None) is not None:
        return True
    return bool(getattr(scene, "use_nodes", False) and getattr(scene, "node_tree", None))


def uses_sequencer(scene) -> bool:
    editor = scene.sequence_editor
    strips = getattr(editor, "strips_all", None) or getattr(editor, "sequences_all", None) \
        if editor is not None else None
    return bool(scene.render.use_sequencer and strips)


def check_tileable(scene) -> None:
    """Raise TileError where a tiled render could not equal the direct render."""
    engine = scene.render.engine
    if engine != "CYCLES":
        # a border render of Eevee (bloom, SSR, soft shadows, TAA) is not shown to
        # equal the full frame's pixels: refused rather than merged with seams
        name = {"BLENDER_EEVEE": "Eevee", "BLENDER_EEVEE_NEXT": "Eevee",
                "BLENDER_WORKBENCH": "Workbench"}.get(engine, engine)
        raise TileError("tiles_engine", ENGINE_MESSAGE.format(engine=name), False)
    if uses_compositor(scene):
        raise TileError("tiles_compositor", COMPOSITOR_MESSAGE, False)
    if scene.render.use_border:
        raise TileError("tiles_border", BORDER_MESSAGE, False)
    if uses_sequencer(scene):
        raise TileError("tiles_sequencer", SEQUENCER_MESSAGE, False)


# --- the tile render --------------------------------------------------------------------


def tile_file_name(output_name: str, index: int, frame: int) -> str:
    return f"{output_name}.tile{index:03d}.{frame}.exr"


def set_tile_output(settings, scene) -> None:
    """After the runner set the format to OPEN_EXR: full float RGBA, lossless, and
    nothing else in the file or beside it; the compositor and burned-in stamp off
    (the merge runs them once, on the whole frame)."""
    image = scene.render.image_settings
    settings.set(image, "color_mode", "RGBA")
    settings.set(image, "color_depth", "32")
    settings.set(image, "exr_codec", "ZIP")
    for attr in ("use_preview", "use_zbuffer"):  # a .jpg beside it; a Z channel in it
        if getattr(image, attr, False):
            settings.set(image, attr, False)
    settings.set(scene.render, "use_compositing", False)
    settings.set(scene.render, "use_stamp", False)


def image_size(path: str) -> tuple[int, int]:
    """The pixel size of an image file as Blender reads it ((0, 0): unreadable)."""
    image = bpy.data.images.load(path, check_existing=False)
    try:
        return tuple(image.size)  # type: ignore[return-value]
    finally:
        bpy.data.images.remove(image)


# --- the merge --------------------------------------------------------------------------


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


def _read_tile(path: str, index: int) -> tuple[int, int, array.array]:
    """A tile's size and float RGBA pixels (rows from the bottom)."""
    if not os.path.isfile(path):
        # a download that went wrong on this node: another node may have it
        raise TileError("bad_input", f"Tile {index} of the frame is missing ({path}).", True)
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
        offset = cell_offset(rect, (tw, th), width, height)
        if offset is None:
            raise TileError("bad_input", f"Tile {tile['index']} of the frame is {tw}x{th} "
                            f"pixels, which no margin around its cell ({x1 - x0}x{y1 - y0} "
                            f"at {x0},{y0} of a {width}x{height} frame) gives: it was "
                            "rendered at another resolution or grid.", False)
        dx, dy = offset
        run = 4 * (x1 - x0)
        for y in range(y0, y1):
            src = 4 * ((y - y0 + dy) * tw + dx)
            dst = 4 * (y * width + x0)
            frame[dst:dst + run] = pixels[src:src + run]
    return frame


def write_frame(scene, frame: int, pixels: array.array, path: str) -> set[str]:
    """Save ``pixels`` (the frame's float RGBA) to ``path`` exactly as a render of
    ``scene`` would save its result, and return the render operator's result.

    A copy of the scene (every render, colour management and output setting as the
    task set them) gets a compositor of an Image node into a Composite node and is
    rendered: Blender renders nothing (no Render Layers node) and saves the composite
    through its render pipeline. The copy takes the scene's name for the time, so the
    file's metadata (and a burned-in stamp) names the scene as a direct render does."""
    width, height = render_size(scene)
    image = bpy.data.images.new("blenderfarm merged", width, height, alpha=True,
                                float_buffer=True)
    own = scene.name
    copy = group = None
    try:
        image.pixels.foreach_set(pixels)
        copy = scene.copy()
        copy.name = MERGE_SCENE
        group = _merge_compositor(copy, image)
        render = copy.render
        render.use_compositing, render.use_sequencer = True, False
        render.use_border = False
        render.use_file_extension = True
        render.filepath = path
        copy.frame_current = frame
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
        bpy.data.images.remove(image)


def _merge_compositor(copy, image):
    """Make the copy's compositor only ``image`` into the output; return a node group
    made for it (Blender 5), to remove afterwards, or None."""
    if hasattr(copy, "compositing_node_group"):
        # Blender 5: the compositor is a node group whose Group Output is the result
        # (the colour carries its alpha). Not yet tested on a Blender 5.
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
    tree.links.new(source.outputs["Alpha"], target.inputs["Alpha"])
    return None
