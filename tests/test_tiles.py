"""Tiled renders with a real Blender: tiles rendered by the runner and merged by it
equal Blender's own full-frame render of the same scene, pixel for pixel.

One .blend made by Blender itself holds a scene per case (64x48 so that 3 and 5 tiles
split unevenly, a few Cycles samples, denoising off). Each test drives ``Runner``
directly: a direct render of the scene, its tiles, the merge, then an exact
comparison of the decoded pixels (PNG scanlines, EXR pixel blocks), never "close".
A second .blend (comp.blend) holds scenes whose compositor the merge runs once on the
tiles' merged passes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import types
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops

from blenderfarm.node.outputs import frame_file_name
from blenderfarm.node.runner_proc import Runner, RunnerError
from blenderfarm.protocol import tiles as protocol_tiles

BLENDER = shutil.which("blender") or os.environ.get("BLENDER")
#: the tests that render; the pure ones above them run without a Blender
needs_blender = pytest.mark.skipif(BLENDER is None,
                                   reason="needs a real Blender on PATH or in $BLENDER")
TILES_PY = Path(__file__).resolve().parents[1] / "blenderfarm" / "node" / "runner" / "tiles.py"
W, H = 64, 48

# Runs in Blender: tiles.blend with one scene per case. "png8" is Filmic with a look and
# exposure and the default dither (1.0), so the merge must colour-manage and dither as
# a render does; the others are linked copies with one thing changed.
MAKE_SCENES = textwrap.dedent("""
    import sys, bpy
    out = sys.argv[sys.argv.index("--") + 1]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "png8"
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 8
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    assert scene.render.dither_intensity == 1.0
    scene.view_settings.view_transform = "Filmic"
    scene.view_settings.look = "Medium High Contrast"
    scene.view_settings.exposure = 0.5
    bpy.ops.mesh.primitive_uv_sphere_add(radius=1.2, location=(-0.5, 0, 0))
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(1.5, 0.5, 0.3), rotation=(0.3, 0.5, 0.2))
    bpy.ops.object.camera_add(location=(0, -8, 0), rotation=(1.5708, 0, 0))
    scene.camera = bpy.context.object
    bpy.ops.object.light_add(type="POINT", location=(0, -3, 3))
    bpy.context.object.data.energy = 1000
    scene.world = bpy.data.worlds.new("sky")
    scene.world.color = (0.2, 0.25, 0.3)

    def variant(name):
        copy = scene.copy()
        copy.name = name
        copy.use_fake_user = True  # no window shows it: saved only with a fake user
        return copy

    variant("png16").render.image_settings.color_depth = "16"
    exr = variant("exr").render.image_settings
    exr.file_format = "OPEN_EXR"
    exr.color_depth, exr.exr_codec = "32", "ZIP"
    adaptive = variant("adaptive")
    adaptive.cycles.use_adaptive_sampling = True
    adaptive.cycles.samples = 64
    adaptive.cycles.adaptive_threshold = 0.05
    adaptive.cycles.adaptive_min_samples = 4
    variant("transparent").render.film_transparent = True
    movie = variant("movie")
    movie.render.image_settings.file_format = "FFMPEG"
    movie.render.ffmpeg.format = "MPEG4"
    variant("eevee").render.engine = "BLENDER_EEVEE"
    bpy.ops.wm.save_as_mainfile(filepath=out + "/tiles.blend")
""")

# Runs in Blender: comp.blend, a scene per compositor case, each a copy of "base" (Filmic,
# dithered 8-bit PNG, Depth, Normal and Mist passes) with its own tree; every Render
# Layers node names its scene (a copy's would name the scene it was copied from).
MAKE_COMPOSITOR_SCENES = textwrap.dedent("""
    import sys, bpy
    folder = sys.argv[sys.argv.index("--") + 1]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    base = bpy.context.scene
    base.name = "base"
    base.render.engine = "CYCLES"
    base.cycles.samples = 8
    base.cycles.use_denoising = False
    base.cycles.use_adaptive_sampling = False
    base.render.resolution_x, base.render.resolution_y = 64, 48
    base.render.resolution_percentage = 100
    base.render.image_settings.file_format = "PNG"
    base.render.image_settings.color_mode = "RGBA"
    base.render.image_settings.color_depth = "8"
    base.view_settings.view_transform = "Filmic"
    bpy.ops.mesh.primitive_uv_sphere_add(radius=1.2, location=(-0.5, 0, 0))
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(1.5, 0.5, 0.3), rotation=(0.3, 0.5, 0.2))
    bpy.context.object.name = "Cube"
    bpy.ops.object.camera_add(location=(0, -8, 0), rotation=(1.5708, 0, 0))
    base.camera = bpy.context.object
    bpy.ops.object.light_add(type="POINT", location=(0, -3, 3))
    bpy.context.object.data.energy = 1000
    base.world = bpy.data.worlds.new("sky")
    base.world.color = (0.2, 0.25, 0.3)
    base.world.mist_settings.start, base.world.mist_settings.depth = 5, 6
    layer = base.view_layers[0]
    layer.use_pass_z = layer.use_pass_normal = layer.use_pass_mist = True

    def variant(name):
        scene = base.copy()
        scene.name = name
        scene.use_fake_user = True
        scene.use_nodes = True
        tree = scene.node_tree
        tree.nodes.clear()
        layers = tree.nodes.new("CompositorNodeRLayers")
        layers.scene = scene
        return scene, tree, layers, tree.nodes.new("CompositorNodeComposite")

    def glare_blur_normal(tree, layers, out):
        glare = tree.nodes.new("CompositorNodeGlare")
        glare.glare_type, glare.quality, glare.threshold = "FOG_GLOW", "HIGH", 0.3
        blur = tree.nodes.new("CompositorNodeBlur")
        blur.use_bokeh, blur.filter_type, blur.size_x, blur.size_y = False, "GAUSS", 6, 4
        mix = tree.nodes.new("CompositorNodeMixRGB")
        mix.blend_type = "ADD"
        mix.inputs[0].default_value = 0.3
        tree.links.new(layers.outputs["Image"], glare.inputs[0])
        tree.links.new(glare.outputs[0], blur.inputs[0])
        tree.links.new(blur.outputs[0], mix.inputs[1])
        tree.links.new(layers.outputs["Normal"], mix.inputs[2])
        tree.links.new(mix.outputs[0], out.inputs["Image"])

    scene, tree, layers, out = variant("glare")
    glare_blur_normal(tree, layers, out)
    scene, tree, layers, out = variant("adaptive")
    glare_blur_normal(tree, layers, out)
    scene.cycles.use_adaptive_sampling = True
    scene.cycles.samples = 64
    scene.cycles.adaptive_threshold = 0.05
    scene.cycles.adaptive_min_samples = 4

    scene, tree, layers, out = variant("alphaover")
    scene.render.film_transparent = True
    over = tree.nodes.new("CompositorNodeAlphaOver")
    over.inputs[1].default_value = (0.8, 0.3, 0.1, 1.0)
    tree.links.new(layers.outputs["Image"], over.inputs[2])
    tree.links.new(over.outputs[0], out.inputs["Image"])

    scene, tree, layers, out = variant("depth")
    normalize = tree.nodes.new("CompositorNodeNormalize")
    tree.links.new(layers.outputs["Depth"], normalize.inputs[0])
    tree.links.new(normalize.outputs[0], out.inputs["Image"])

    scene, tree, layers, out = variant("fileout")
    tree.links.new(layers.outputs["Image"], out.inputs["Image"])
    files = tree.nodes.new("CompositorNodeOutputFile")
    files.name = "Passes"
    files.base_path = "//elsewhere/"
    files.file_slots[0].path = "beauty"
    files.file_slots.new("mist")
    tree.links.new(layers.outputs["Image"], files.inputs[0])
    tree.links.new(layers.outputs["Mist"], files.inputs[1])

    scene, tree, layers, out = variant("cryptomatte")
    layer = scene.view_layers[0]
    layer.use_pass_cryptomatte_object = True
    matte = tree.nodes.new("CompositorNodeCryptomatteV2")
    matte.scene = scene
    matte.matte_id = "Cube"
    tree.links.new(layers.outputs["Image"], matte.inputs["Image"])
    tree.links.new(matte.outputs["Image"], out.inputs["Image"])

    clip_image = bpy.data.images.new("stripes", 64, 48)
    clip_image.pixels[:] = [(i // 4 % 7) / 7 for i in range(64 * 48 * 4)]
    clip_image.filepath_raw = folder + "/stripes.png"
    clip_image.file_format = "PNG"
    clip_image.save()
    scene, tree, layers, out = variant("movieclip")
    node = tree.nodes.new("CompositorNodeMovieClip")
    node.clip = bpy.data.movieclips.load(folder + "/stripes.png")
    mix = tree.nodes.new("CompositorNodeMixRGB")
    mix.inputs[0].default_value = 0.5
    tree.links.new(layers.outputs["Image"], mix.inputs[1])
    tree.links.new(node.outputs["Image"], mix.inputs[2])
    tree.links.new(mix.outputs[0], out.inputs["Image"])

    scene, tree, layers, out = variant("otherscene")
    layers.scene = base  # Blender renders "base" too, whole, for this node
    tree.links.new(layers.outputs["Image"], out.inputs["Image"])

    scene, tree, layers, out = variant("denoise")
    denoise = tree.nodes.new("CompositorNodeDenoise")
    tree.links.new(layers.outputs["Image"], denoise.inputs["Image"])
    tree.links.new(denoise.outputs[0], out.inputs["Image"])
    bpy.ops.wm.save_as_mainfile(filepath=folder + "/comp.blend")
""")


@pytest.fixture(scope="module")
def blend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tilescenes")
    assert BLENDER is not None
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python-exit-code", "1",
                    "--python-expr", MAKE_SCENES, "--", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out / "tiles.blend"


@pytest.fixture(scope="module")
def comp_blend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compscenes")
    assert BLENDER is not None
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python-exit-code", "1",
                    "--python-expr", MAKE_COMPOSITOR_SCENES, "--", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out / "comp.blend"


@pytest.fixture
async def start_runner(tmp_path: Path):
    """Factory: start a Runner on a .blend; every one is stopped in teardown."""
    started: list[Runner] = []

    async def start(path: Path) -> Runner:
        assert BLENDER is not None
        runner = await Runner.start(BLENDER, str(path), cwd=str(path.parent),
                                    log_path=str(tmp_path / "blender.log"))
        started.append(runner)
        return runner

    yield start
    for runner in started:
        await runner.stop()
        assert not runner.alive


# --- exact pixels -------------------------------------------------------------------------


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def png_pixels(path: str) -> tuple[bytes, bytes]:
    """A PNG's header and its decompressed scanlines: equal for equal pixels, whatever
    its text chunks (dates, render time) say."""
    chunks = _chunks(Path(path).read_bytes())
    header = next(body for kind, body in chunks if kind == b"IHDR")
    return header, zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))


def exr_header(path: str) -> dict[str, tuple[str, bytes]]:
    data = Path(path).read_bytes()
    assert data[:4] == b"\x76\x2f\x31\x01", f"{path} is not an OpenEXR file"
    pos, attrs = 8, {}
    while data[pos] != 0:
        name_end = data.index(b"\0", pos)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack("<i", data[type_end + 1:type_end + 5])
        attrs[data[pos:name_end].decode()] = (data[name_end + 1:type_end].decode(),
                                              data[type_end + 5:type_end + 5 + size])
        pos = type_end + 5 + size
    attrs["_end"] = ("", struct.pack("<i", pos + 1))
    return attrs


def exr_info(path: str) -> tuple[tuple[int, int], list[tuple[str, int]], int]:
    """``((width, height), [(channel, pixel type 2=float)], compression)``."""
    attrs = exr_header(path)
    x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"][1])
    raw, channels = attrs["channels"][1], []
    while raw[0] != 0:
        end = raw.index(b"\0")
        channels.append((raw[:end].decode(), struct.unpack("<i", raw[end + 1:end + 5])[0]))
        raw = raw[end + 17:]
    return (x1 - x0 + 1, y1 - y0 + 1), channels, attrs["compression"][1][0]


def exr_pixels(path: str) -> list[bytes]:
    """An EXR's pixel blocks (each block's y and compressed data), header left out."""
    data = Path(path).read_bytes()
    attrs = exr_header(path)
    (size_x, size_y), _, compression = exr_info(path)
    lines = {0: 1, 1: 1, 2: 1, 3: 16}[compression]  # none, RLE, ZIPS, ZIP
    count = -(-size_y // lines)
    (start,) = struct.unpack("<i", attrs["_end"][1])
    offsets = struct.unpack(f"<{count}Q", data[start:start + 8 * count])
    blocks = []
    for offset in offsets:
        (size,) = struct.unpack("<i", data[offset + 4:offset + 8])
        blocks.append(data[offset:offset + 8 + size])
    return blocks


def assert_same_pixels(merged: str, direct: str) -> None:
    assert os.path.basename(merged) == os.path.basename(direct)
    if merged.endswith(".exr"):
        assert exr_info(merged) == exr_info(direct)
        assert exr_pixels(merged) == exr_pixels(direct), "the merged EXR's pixels differ"
    else:
        assert png_pixels(merged) == png_pixels(direct), "the merged PNG's pixels differ"


# --- driving the runner -------------------------------------------------------------------


async def render_direct(runner: Runner, scene: str, out: Path, frame: int = 1) -> str:
    [(_, path)] = await runner.render(f"{scene}-direct", [frame], scene=scene, overrides={},
                                      output_dir=str(out), output_name="shot",
                                      on_event=lambda e: None)
    return path


async def render_tiles(runner: Runner, scene: str, cols: int, rows: int, out: Path,
                       frame: int = 1, overrides: dict[str, Any] | None = None,
                       ) -> list[dict[str, Any]]:
    tiles = []
    for index in range(cols * rows):
        tile = {"index": index, "cols": cols, "rows": rows}
        [(done, path)] = await runner.render(
            f"{scene}-tile{index}", [frame], scene=scene, overrides=overrides or {},
            output_dir=str(out),
            output_name="shot", on_event=lambda e: None, tile=tile)
        assert done == frame and os.path.basename(path) == f"shot.tile{index:03d}.{frame}.exr"
        tiles.append({**tile, "path": path})
    return tiles


async def merge(runner: Runner, scene: str, tiles: list[dict[str, Any]], out: Path,
                frame: int = 1, events: list[dict[str, Any]] | None = None,
                overrides: dict[str, Any] | None = None) -> str:
    [(done, path)] = await runner.merge(
        f"{scene}-merge", frame, tiles, scene=scene, overrides=overrides or {},
        output_dir=str(out),
        output_name="shot", on_event=(events.append if events is not None else lambda e: None))
    assert done == frame
    return path


async def tiled_equals_direct(runner: Runner, scene: str, cols: int, rows: int,
                              tmp_path: Path) -> str:
    direct = await render_direct(runner, scene, tmp_path / "direct")
    tiles = await render_tiles(runner, scene, cols, rows, tmp_path / "tiles")
    merged = await merge(runner, scene, tiles, tmp_path / "merged")
    assert_same_pixels(merged, direct)
    return merged


# --- tests --------------------------------------------------------------------------------


def _load_runner_tiles() -> types.ModuleType:
    """runner/tiles.py outside Blender: its geometry needs no bpy, so a bare stand-in
    module lets it import."""
    spec = importlib.util.spec_from_file_location("runner_tiles_under_test", TILES_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("bpy")
    sys.modules["bpy"] = types.ModuleType("bpy")
    sys.path.insert(0, str(TILES_PY.parent))  # as runner.py does: exr.py lies beside it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TILES_PY.parent))
        if saved is None:
            del sys.modules["bpy"]
        else:
            sys.modules["bpy"] = saved
    return module


RUNNER_TILES = _load_runner_tiles()
RUNNER_EXR = sys.modules["exr"]  # runner/exr.py, as tiles.py imported it


@settings(max_examples=300, deadline=None)
@given(cols=st.integers(1, 16), rows=st.integers(1, 16), width=st.integers(1, 8000),
       height=st.integers(1, 8000), data=st.data())
def test_the_runners_tile_rect_is_the_protocols(cols: int, rows: int, width: int, height: int,
                                                data: st.DataObject) -> None:
    index = data.draw(st.integers(0, cols * rows - 1))
    assert RUNNER_TILES.tile_rect(index, cols, rows, width, height) == \
        protocol_tiles.tile_rect(index, cols, rows, width, height)


def test_the_runners_tile_rect_is_the_protocols_on_every_cell_of_auto_grids() -> None:
    for count in range(1, 65):
        for width, height in ((64, 48), (1920, 1080), (1080, 1920), (7, 5), (4096, 2160)):
            cols, rows = protocol_tiles.tile_grid(count, width, height)
            for index in range(count):
                assert RUNNER_TILES.tile_rect(index, cols, rows, width, height) == \
                    protocol_tiles.tile_rect(index, cols, rows, width, height)
    with pytest.raises(ValueError):
        RUNNER_TILES.tile_rect(6, 3, 2, 64, 48)


@settings(max_examples=300, deadline=None)
@given(cols=st.integers(1, 8), rows=st.integers(1, 8), width=st.integers(8, 500),
       height=st.integers(8, 500), margin=st.integers(0, 600), data=st.data())
def test_the_merge_finds_a_tiles_cell_from_its_size_whatever_the_margin(
        cols: int, rows: int, width: int, height: int, margin: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, cols * rows - 1))
    cell = RUNNER_TILES.tile_rect(index, cols, rows, width, height)
    x0, y0, x1, y1 = RUNNER_TILES.padded_rect(cell, margin, width, height)
    assert RUNNER_TILES.cell_offset(cell, (x1 - x0, y1 - y0), width, height) == \
        (cell[0] - x0, cell[1] - y0)
    # the whole frame is no tile of a cell that does not span it
    if (cell[2] - cell[0], cell[3] - cell[1]) != (width, height):
        assert RUNNER_TILES.cell_offset(cell, (width + 1, height), width, height) is None


def _openexr_zip(plain: bytes) -> bytes:
    """OpenEXR's ZIP block encoder (ImfZip.cpp), byte by byte: the reference the
    runner's decoder must undo."""
    half = (len(plain) + 1) // 2
    interleaved = bytearray(len(plain))
    interleaved[:half], interleaved[half:] = plain[0::2], plain[1::2]
    deltas = bytearray(interleaved)
    for i in range(len(deltas) - 1, 0, -1):
        deltas[i] = (interleaved[i] - interleaved[i - 1] + 128 + 256) & 0xFF
    return zlib.compress(bytes(deltas))


@settings(max_examples=200, deadline=None)
@given(plain=st.binary(min_size=1, max_size=3000))
def test_the_merges_zip_decoder_undoes_openexrs_zip(plain: bytes) -> None:
    assert RUNNER_EXR._unzip(_openexr_zip(plain), len(plain)) == plain


@settings(max_examples=50, deadline=None)
@given(width=st.integers(1, 9), height=st.integers(1, 9),
       names=st.lists(st.sampled_from(["ViewLayer.Combined.A", "ViewLayer.Depth.Z",
                                       "A long view layer name of forty chars.Mist.Z"]),
                      min_size=1, unique=True),
       data=st.data())
def test_the_merges_exr_writer_writes_what_its_reader_reads(
        tmp_path_factory: pytest.TempPathFactory, width: int, height: int, names: list[str],
        data: st.DataObject) -> None:
    channels = sorted((name, 2) for name in names)
    planes = {name: bytearray(data.draw(st.binary(min_size=4 * width * height,
                                                  max_size=4 * width * height)))
              for name, _ in channels}
    exr = RUNNER_EXR.Exr(width, height, channels,
                           {"note": ("string", b"kept")}, planes)
    path = str(tmp_path_factory.mktemp("exr") / "x.exr")
    RUNNER_EXR.write_exr(path, exr)
    back = RUNNER_EXR.read_exr(path)
    assert (back.width, back.height, back.channels) == (width, height, channels)
    assert back.planes == planes and back.attrs["note"] == ("string", b"kept")
    assert exr_info(path) == ((width, height), channels, 0)  # the tests' own reader agrees


@pytest.mark.parametrize("scene, cols, rows", [
    pytest.param("png8", 3, 1, id="png8-dither-filmic-3-uneven"),
    pytest.param("png16", 1, 5, id="png16-5-uneven"),
    pytest.param("exr", 2, 2, id="exr-float-2x2"),
    pytest.param("transparent", 2, 1, id="transparent-2"),
])
@pytest.mark.blender
@needs_blender
async def test_merged_tiles_equal_the_direct_render(blend: Path, tmp_path: Path, start_runner,
                                                    scene: str, cols: int, rows: int) -> None:
    runner = await start_runner(blend)
    merged = await tiled_equals_direct(runner, scene, cols, rows, tmp_path)
    if scene == "transparent":  # the film is transparent: equal alpha, no seam, really clear
        with Image.open(merged) as img:
            alpha = img.getchannel("A")
            assert alpha.getextrema() == (0, 255)


@pytest.mark.blender
@needs_blender
async def test_adaptive_sampling_tiles_merge_exactly_with_their_margin(
        blend: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(blend)
    direct = await render_direct(runner, "adaptive", tmp_path / "direct")
    for cols, rows in ((2, 2), (1, 5)):
        out = tmp_path / f"{cols}x{rows}"
        tiles = await render_tiles(runner, "adaptive", cols, rows, out / "tiles")
        # 64 samples, min 4: filter passes after samples 15, 31, 47, 63 -> a 4 px margin
        (size, _, _) = exr_info(tiles[0]["path"])
        cell = protocol_tiles.tile_rect(0, cols, rows, W, H)
        assert size == (min(W, cell[2] + 4) - cell[0], min(H, cell[3] + 4) - cell[1])
        assert_same_pixels(await merge(runner, "adaptive", tiles, out / "merged"), direct)


@pytest.mark.blender
@needs_blender
async def test_a_tile_is_a_float_exr_of_exactly_its_cell(blend: Path, tmp_path: Path,
                                                         start_runner) -> None:
    runner = await start_runner(blend)
    events: list[dict[str, Any]] = []
    out = tmp_path / "out"
    [(_, path)] = await runner.render("t", [1], scene="png8", overrides={},
                                      output_dir=str(out), output_name="shot",
                                      on_event=events.append,
                                      tile={"index": 1, "cols": 3, "rows": 1})
    assert path == str(out / "shot.tile001.1.exr")
    size, channels, compression = exr_info(path)
    assert size == (42 - 21, 48)  # columns 21..41 of 64: the middle third
    assert sorted(channels) == [("A", 2), ("B", 2), ("G", 2), ("R", 2)]  # 32-bit float
    assert compression in (0, 2, 3)  # none, ZIPS, ZIP: lossless
    preview = str(out / "shot.tile001.1.preview.png")
    assert sorted(os.listdir(out)) == ["shot.tile001.1.exr", "shot.tile001.1.preview.png"]
    done = [e for e in events if e["ev"] == "frame_done"]
    assert done == [{"ev": "frame_done", "frame": 1, "path": path, "extras": [preview],
                     "seconds": done[0]["seconds"]}]
    assert runner.last_info["video"]["fps"] == 24  # what the job's video needs of the scene
    # where the job page puts the preview: the tile's pixels in the frame
    assert runner.last_info["tile"] == {"rect": [21, 0, 42, 48], "frame": [W, H]}
    # the next plain task renders the whole frame as the file says again
    direct = await render_direct(runner, "png8", out)
    with Image.open(direct) as img:
        assert img.size == (W, H) and img.mode == "RGBA"
        cell = img.convert("RGB").crop((21, 0, 42, H))
    # the preview is the tile as the frame shows it: 8 bits through the scene's view
    # transform, equal to the frame's cell but for the dither (its noise follows the
    # pixel's place, which a cropped render counts from the tile's corner)
    with Image.open(preview) as img:
        assert img.size == (42 - 21, H) and img.mode == "RGB"
        diff = ImageChops.difference(img.convert("RGB"), cell)
        assert max(hi for _, hi in diff.getextrema()) <= 2


@pytest.mark.blender
@needs_blender
async def test_a_movie_scenes_merge_writes_what_its_direct_render_writes(
        blend: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(blend)
    direct = await render_direct(runner, "movie", tmp_path / "direct", frame=3)
    assert os.path.basename(direct) == frame_file_name("shot", 3, "PNG")
    tiles = await render_tiles(runner, "movie", 2, 1, tmp_path / "tiles", frame=3)
    events: list[dict[str, Any]] = []
    merged = await merge(runner, "movie", tiles, tmp_path / "merged", frame=3, events=events)
    assert_same_pixels(merged, direct)
    assert [e["ev"] for e in events if e["ev"] != "progress"] == ["frame_start", "frame_done"]
    assert events[-1]["path"] == merged and events[-1]["extras"] == []


@pytest.mark.blender
@needs_blender
async def test_a_missing_or_foreign_tile_fails_the_merge_clearly(blend: Path, tmp_path: Path,
                                                                 start_runner) -> None:
    runner = await start_runner(blend)
    tiles = await render_tiles(runner, "png8", 2, 1, tmp_path / "tiles")
    gone = [tiles[0], {**tiles[1], "path": str(tmp_path / "tiles" / "nope.exr")}]
    with pytest.raises(RunnerError) as err:
        await merge(runner, "png8", gone, tmp_path / "merged")
    assert err.value.reason == "bad_input" and err.value.retryable is True
    assert "Tile 1 of the frame is missing" in err.value.message
    with pytest.raises(RunnerError) as err:
        await merge(runner, "png8", tiles[:1], tmp_path / "merged")
    assert err.value.reason == "bad_input" and "tile 1 is missing" in err.value.message
    # tile 0 of a 2x1 grid passed off as tile 0 of a 3x1 grid: its size gives it away
    foreign = [{**t, "cols": 3} for t in tiles] + [{**tiles[1], "index": 2, "cols": 3}]
    with pytest.raises(RunnerError) as err:
        await merge(runner, "png8", foreign, tmp_path / "merged")
    assert err.value.reason == "bad_input" and err.value.retryable is False
    # (tile 0's 32 columns are cell 0 of a 3x1 grid with an 11 px margin: it passes)
    assert "Tile 1 of the frame is 32x48 pixels" in err.value.message
    assert not (tmp_path / "merged" / frame_file_name("shot", 1, "PNG")).exists()
    assert runner.alive  # and it merges the right tiles next
    await merge(runner, "png8", tiles, tmp_path / "merged")


@pytest.mark.blender
@needs_blender
async def test_tiles_of_eevee_or_denoised_scenes_without_oidn_are_refused(
        blend: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(blend)
    common: dict[str, Any] = {"overrides": {}, "output_dir": str(tmp_path),
                              "output_name": "shot", "on_event": lambda e: None,
                              "tile": {"index": 0, "cols": 2, "rows": 1}}
    with pytest.raises(RunnerError) as err:
        await runner.render("e", [1], scene="eevee", **common)
    assert (err.value.reason, err.value.retryable) == ("tiles_engine", False)
    assert err.value.message == ("Tiled renders need Cycles; this scene renders with Eevee: "
                                 "submit it without --tiles.")
    with pytest.raises(RunnerError) as err:
        await runner.render("two", [1, 2], scene="png8", **common)
    assert err.value.reason == "bad_command"
    # denoising: the merge denoises the whole frame with OpenImageDenoise, which Debian's
    # Blender lacks: refused as a whole frame is (the farm gives the job to OIDN nodes),
    # the tile and its merge alike (tests/test_tiles_denoise.py: where it has OIDN)
    denoise = {**common, "overrides": {"denoise": True}}
    with pytest.raises(RunnerError) as err:
        await runner.render("d", [1], scene="png8", **denoise)
    assert (err.value.reason, err.value.retryable) == ("needs_denoise", False)
    assert "OpenImageDenoise" in err.value.message
    del denoise["tile"]
    with pytest.raises(RunnerError) as err:
        await runner.merge("dm", 1, [{"path": str(tmp_path / "shot.tile000.1.exr"),
                                      "index": 0, "cols": 1, "rows": 1}],
                           scene="png8", **denoise)
    assert (err.value.reason, err.value.retryable) == ("needs_denoise", False)
    assert not list(tmp_path.glob("*.exr")) and not list(tmp_path.glob("*.png"))


@pytest.mark.blender
@needs_blender
async def test_tiles_keep_persistent_data_across_a_merge(blend: Path, tmp_path: Path,
                                                         start_runner) -> None:
    runner = await start_runner(blend)
    keep = {"persistent_data": True}
    direct = await render_direct(runner, "exr", tmp_path / "direct")
    tiles = await render_tiles(runner, "exr", 2, 1, tmp_path / "tiles", overrides=keep)
    # the merge renders a copy of the scene under the scene's name, in the scene's Render
    assert_same_pixels(await merge(runner, "exr", tiles, tmp_path / "merged", overrides=keep),
                       direct)
    again = await render_tiles(runner, "exr", 2, 1, tmp_path / "again", overrides=keep)
    assert [exr_pixels(t["path"]) for t in again] == [exr_pixels(t["path"]) for t in tiles]
    assert_same_pixels(await merge(runner, "exr", again, tmp_path / "merged2"), direct)


# --- the compositor, run once by the merge ------------------------------------------------


@pytest.mark.parametrize("scene, cols, rows", [
    pytest.param("glare", 3, 1, id="fog-glow-blur-normal-mix-3-uneven"),
    pytest.param("alphaover", 2, 1, id="alpha-over-a-colour-transparent-film"),
    pytest.param("depth", 1, 3, id="depth-normalize-3"),
    pytest.param("adaptive", 2, 2, id="adaptive-sampling-fog-glow-2x2"),
    pytest.param("cryptomatte", 2, 1, id="cryptomatte-of-the-render"),
    pytest.param("movieclip", 2, 1, id="movie-clip-mixed-in"),
])
@pytest.mark.blender
@needs_blender
async def test_the_merge_runs_the_compositor_once_and_equals_the_direct_render(
        comp_blend: Path, tmp_path: Path, start_runner, scene: str, cols: int,
        rows: int) -> None:
    runner = await start_runner(comp_blend)
    merged = await tiled_equals_direct(runner, scene, cols, rows, tmp_path)
    # the compositor did change the frame: the same scene without it differs
    plain = await render_direct(runner, "base", tmp_path / "plain")
    assert png_pixels(merged) != png_pixels(plain)


@pytest.mark.blender
@needs_blender
async def test_a_compositor_scenes_tile_is_a_float_multilayer_exr_of_every_pass(
        comp_blend: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(comp_blend)
    [tile] = await render_tiles(runner, "glare", 1, 1, tmp_path / "out")
    size, channels, compression = exr_info(tile["path"])
    assert size == (W, H) and compression in (0, 2, 3)
    names = {name for name, _ in channels}
    for pass_ in ("Combined.R", "Combined.A", "Depth.Z", "Normal.X", "Mist.Z"):
        assert f"ViewLayer.{pass_}" in names
    assert {kind for _, kind in channels} == {2}  # every pass 32-bit float
    # no frame and no File Output files (the compositor is off): only its preview
    assert sorted(os.listdir(tmp_path / "out")) == ["shot.tile000.1.exr",
                                                    "shot.tile000.1.preview.png"]


@pytest.mark.blender
@needs_blender
async def test_file_output_nodes_write_at_the_merge_what_they_write_in_a_direct_render(
        comp_blend: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(comp_blend)
    events: list[dict[str, Any]] = []
    [_] = await runner.render("d", [1], scene="fileout", overrides={},
                              output_dir=str(tmp_path / "direct"), output_name="shot",
                              on_event=events.append)
    [direct] = [e["extras"] for e in events if e["ev"] == "frame_done"]
    tile_events: list[dict[str, Any]] = []
    tiles = []
    for index in range(2):
        tile = {"index": index, "cols": 2, "rows": 1}
        [(_, path)] = await runner.render(f"t{index}", [1], scene="fileout", overrides={},
                                          output_dir=str(tmp_path / "tiles"),
                                          output_name="shot", on_event=tile_events.append,
                                          tile=tile)
        tiles.append({**tile, "path": path})
    # a tile's only extra is its preview: File Output nodes write at the merge
    assert [[os.path.basename(p) for p in e["extras"]] for e in tile_events
            if e["ev"] == "frame_done"] == [[f"shot.tile00{i}.1.preview.png"] for i in range(2)]
    events.clear()
    await merge(runner, "fileout", tiles, tmp_path / "merged", events=events)
    [merged] = [e["extras"] for e in events if e["ev"] == "frame_done"]
    assert [os.path.basename(p) for p in merged] == [os.path.basename(p) for p in direct] \
        == ["shot.Passes.beauty0001.png", "shot.Passes.mist0001.png"]
    for ours, blenders in zip(merged, direct, strict=True):
        assert png_pixels(ours) == png_pixels(blenders), f"{ours} differs"
    # confined to the task's folder: nothing beside the .blend, no work folder left
    assert not (comp_blend.parent / "elsewhere").exists()
    assert sorted(os.listdir(tmp_path / "merged")) == [
        "shot.Passes.beauty0001.png", "shot.Passes.mist0001.png", "shot_0001.png"]


@pytest.mark.blender
@needs_blender
async def test_tiles_of_a_denoise_node_or_another_scenes_render_are_refused(
        comp_blend: Path, tmp_path: Path, start_runner) -> None:
    runner = await start_runner(comp_blend)
    common: dict[str, Any] = {"overrides": {}, "output_dir": str(tmp_path),
                              "output_name": "shot", "on_event": lambda e: None,
                              "tile": {"index": 0, "cols": 2, "rows": 1}}
    with pytest.raises(RunnerError) as err:
        await runner.render("d", [1], scene="denoise", **common)
    assert (err.value.reason, err.value.retryable) == ("tiles_compositor", False)
    assert err.value.message == ("This scene's compositor has a Denoise node ('Denoise'), "
                                 "which cannot run on tiles yet: submit it without --tiles.")
    with pytest.raises(RunnerError) as err:
        await runner.render("o", [1], scene="otherscene", **common)
    assert (err.value.reason, err.value.retryable) == ("tiles_compositor", False)
    assert "another scene ('base')" in err.value.message
    assert not list(tmp_path.glob("*.exr"))  # refused before rendering
