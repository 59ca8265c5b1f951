"""Checking rendered files: real images pass, truncated or foreign bytes fail cleanly.

Real frames from Blender are checked in test_runner.py; here Pillow writes real
PNG and JPEG files, which are then cut short, emptied and fuzzed.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from blenderfarm.node.outputs import EXR_MAGIC, BadOutput, check_image, frame_file_name
from blenderfarm.protocol.jobspec import STILL_FORMATS
from scenes import BLENDER, run_blender


def _image(tmp_path: Path, name: str, fmt: str) -> Path:
    path = tmp_path / name
    Image.new("RGB", (64, 64), (200, 30, 90)).save(path, fmt)
    return path


@pytest.mark.parametrize(("name", "pil", "ours"), [("a.png", "PNG", "PNG"),
                                                   ("a.jpg", "JPEG", "JPEG")])
def test_real_images_pass_and_truncated_ones_fail(tmp_path: Path, name: str, pil: str,
                                                  ours: str) -> None:
    path = _image(tmp_path, name, pil)
    assert check_image(str(path)) == ours
    assert check_image(str(path), expected=ours) == ours
    data = path.read_bytes()
    for cut in (1, 12, len(data) // 2):
        path.write_bytes(data[:-cut])
        with pytest.raises(BadOutput, match="truncated") as err:
            check_image(str(path))
        assert err.value.path == str(path)


def test_wrong_format_is_bad_when_a_format_is_expected(tmp_path: Path) -> None:
    path = _image(tmp_path, "a.png", "PNG")
    with pytest.raises(BadOutput, match="asked for JPEG"):
        check_image(str(path), expected="JPEG")


def test_exr_is_recognised_by_its_magic(tmp_path: Path) -> None:
    path = tmp_path / "a.exr"
    path.write_bytes(EXR_MAGIC + b"\x02\x00\x00\x00" + b"channels\x00chlist\x00" + bytes(64))
    assert check_image(str(path)) == "OPEN_EXR"
    path.write_bytes(EXR_MAGIC + b"\x02")
    with pytest.raises(BadOutput, match="truncated"):
        check_image(str(path))


def test_missing_empty_folder_and_foreign_files_are_bad(tmp_path: Path) -> None:
    with pytest.raises(BadOutput, match="does not exist"):
        check_image(str(tmp_path / "none.png"))
    with pytest.raises(BadOutput, match="folder"):
        check_image(str(tmp_path))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(BadOutput, match="empty"):
        check_image(str(empty))
    text = tmp_path / "log.png"
    text.write_text("Error: out of memory\n")
    with pytest.raises(BadOutput, match="not an image in a format Blender writes"):
        check_image(str(text))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200),
                 st.binary(max_size=200).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                 st.binary(max_size=200).map(lambda b: b"\xff\xd8" + b),
                 st.binary(max_size=200).map(lambda b: EXR_MAGIC + b)))
def test_random_bytes_give_a_format_or_bad_output(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz"
    path.write_bytes(data)
    with contextlib.suppress(BadOutput):  # the documented failure; anything else fails
        assert check_image(str(path)) in STILL_FORMATS


def test_frame_file_name_matches_blender() -> None:
    assert frame_file_name("shot", 1, "PNG") == "shot_0001.png"
    assert frame_file_name("shot", 250, "JPEG") == "shot_0250.jpg"
    assert frame_file_name("shot", 12345, "OPEN_EXR") == "shot_12345.exr"
    assert frame_file_name("shot", 1, "TIFF") == "shot_0001.tif"
    assert frame_file_name("shot", -1, "PNG") == "shot_-0001.png"  # as Blender writes it
    with pytest.raises(ValueError, match="unknown output format"):
        frame_file_name("shot", 1, "GIF")
    assert os.path.splitext(frame_file_name("a", 0, "PNG"))[0] == "a_0000"


# Runs in Blender: one 16x16 frame in every still format this Blender writes, each
# format's file named after it; a format this build cannot save is left out.
WRITE_ALL = textwrap.dedent("""
    import bpy, sys
    out = sys.argv[-1]
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x = scene.render.resolution_y = 16
    scene.render.resolution_percentage = 100
    settings = scene.render.image_settings
    for fmt in sys.argv[-2].split(","):
        settings.file_format = fmt
        scene.render.filepath = out + "/" + fmt
        try:
            bpy.ops.render.render(write_still=True)
        except RuntimeError:  # Debian's 3.4 cannot save JPEG 2000
            print("BFSKIP", fmt)
""")


@pytest.mark.blender
@pytest.mark.skipif(BLENDER is None, reason="blender is not on PATH")
def test_every_format_blender_writes_passes_and_cut_ones_fail(tmp_path: Path) -> None:
    run_blender(["--python-expr", WRITE_ALL, "--", ",".join(STILL_FORMATS), str(tmp_path)])
    written = {p.stem: p for p in tmp_path.iterdir()}
    skipped = set(STILL_FORMATS) - set(written)
    assert skipped <= {"JPEG2000"}, skipped
    kinds = {"OPEN_EXR_MULTILAYER": "OPEN_EXR", "TARGA_RAW": "TARGA"}
    for fmt, path in written.items():
        assert check_image(str(path)) == kinds.get(fmt, fmt), fmt
        assert check_image(str(path), expected=fmt) == kinds.get(fmt, fmt)
    # formats that say how long they are, or end in a trailer, catch a cut file
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "DPX"):
        data = written[fmt].read_bytes()
        written[fmt].write_bytes(data[: len(data) // 2] if fmt != "DPX" else data[:1000])
        with pytest.raises(BadOutput):
            check_image(str(written[fmt]))
