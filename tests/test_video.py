"""The job's video: Blender's movie settings mapped to FFmpeg, real FFmpeg encodes on
the node and on the server, and ``scene_video`` read inside real Blender.

The encodes run the real ``ffmpeg`` on frames this file writes (odd sizes, non-trivial
frame rates) and check the files with ``ffprobe``; every encode test runs against both
encoders (``node/encode.py`` and ``server/encode.py``), which must behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from blenderfarm.node import encode as node_encode
from blenderfarm.node.runner import scene_video as runner_scene_video
from blenderfarm.protocol import video
from blenderfarm.protocol.video import EncodeError, SceneVideo, VideoSettings
from blenderfarm.server import encode as server_encode
from scenes import needs_blender, run_blender

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg and ffprobe are not on PATH")
SCENE_VIDEO_PY = Path(runner_scene_video.__file__)

Encoder = Callable[..., Awaitable[Path]]
T = TypeVar("T")


def in_blender(test: T) -> T:
    """Marks a test that runs real Blender (skipped where there is none)."""
    for mark in needs_blender:
        test = mark(test)
    return test


# --- helpers ---------------------------------------------------------------------------


def write_frames(folder: Path, count: int, size: tuple[int, int] = (63, 47),
                 fmt: str = "PNG", mode: str = "RGB") -> list[Path]:
    """``count`` distinct frames (a colour ramp) of an odd size."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif"}[fmt]
    paths = []
    for i in range(count):
        color = (i * 37 % 256, 255 - i * 53 % 256, 90) + ((200,) if mode == "RGBA" else ())
        path = folder / f"frame_{i + 1:04d}.{ext}"
        Image.new(mode, size, color).save(path, fmt)
        paths.append(path)
    return paths


def probe(path: Path) -> dict[str, Any]:
    """ffprobe's view of a file: its container and its video stream."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
         "-show_entries", "format=format_name:stream=codec_name,pix_fmt,width,height,"
         "r_frame_rate,nb_read_packets,color_space,profile", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60).stdout
    data = json.loads(out)
    return {**data["streams"][0], "format_name": data["format"]["format_name"]}


def ffmpeg_pids(marker: str) -> list[int]:
    """FFmpeg processes whose command line names ``marker`` (a test's own folder)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().split(")")[-1].split()[0]
        except OSError:
            continue
        if cmd and os.path.basename(cmd[0]) == b"ffmpeg" and marker.encode() in b" ".join(cmd) \
                and state != "Z":
            pids.append(int(entry))
    return pids


async def wait_for_ffmpeg(marker: str, timeout: float = 20) -> int:
    for _ in range(int(timeout / 0.05)):
        pids = ffmpeg_pids(marker)
        if pids:
            return pids[0]
        await asyncio.sleep(0.05)
    raise AssertionError("FFmpeg never started")


@pytest.fixture(params=["node", "server"])
def run_encode(request: pytest.FixtureRequest) -> Encoder:
    """Encode with the node's or the server's encoder: (settings, frames, out_dir,
    watchdog=..., on_progress=...) -> the video's path."""

    async def node(settings: VideoSettings, frames: list[Path], out_dir: Path, *,
                   watchdog: float | None = 60, on_progress: Callable[[float], None] = lambda f: None
                   ) -> Path:
        out = out_dir / settings.output
        await node_encode.encode(settings, [str(p) for p in frames], str(out),
                                 on_progress=on_progress, watchdog=watchdog)
        return out

    async def server(settings: VideoSettings, frames: list[Path], out_dir: Path, *,
                     watchdog: float | None = 60,
                     on_progress: Callable[[float], None] = lambda f: None) -> Path:
        return await server_encode.encode_on_server(settings, frames, out_dir,
                                                    on_progress=on_progress, watchdog=watchdog)

    return node if request.param == "node" else server


def movie_scene(**kw: Any) -> SceneVideo:
    base: dict[str, Any] = {"fps": 25, "fps_base": 1.0, "width": 63, "height": 47,
                            "file_format": "FFMPEG", "container": "MPEG4", "codec": "H264"}
    return SceneVideo(**{**base, **kw})


# --- the mapping (pure) ------------------------------------------------------------------


def test_without_a_scene_the_video_is_an_h264_mp4_at_24_fps() -> None:
    s = VideoSettings.for_job(None, "shot", 1, 250)
    assert (s.output, s.container, s.codec, s.pix_fmt) == \
        ("shot.0001-0250.mp4", "mp4", "libx264", "yuv420p")
    assert s.rate == 24 and s.crf == video.DEFAULT_CRF and s.note == ""


def test_a_still_scene_gets_an_h264_mp4_at_its_own_rate() -> None:
    scene = SceneVideo(fps=30, fps_base=1.001, file_format="PNG")
    s = VideoSettings.for_job(scene, "shot", 1, 10)
    assert s.rate == Fraction(30000, 1001) and (s.fps_num, s.fps_den) == (30000, 1001)
    assert s.codec == "libx264" and s.output == "shot.0001-0010.mp4"


@pytest.mark.parametrize(("depth", "level", "codec", "expect"), [
    ("8", 23, "H264", {"crf": 23, "pix_fmt": "yuv420p"}),
    ("8", 17, "H264", {"crf": 17}),
    ("8", 0, "H264", {"crf": 0, "pix_fmt": "yuv444p"}),  # lossless keeps 4:4:4
    ("10", 20, "H264", {"crf": 12, "pix_fmt": "yuv420p10le"}),  # -12 + 20/51*63
    ("10", 0, "H264", {"qp": 0, "crf": None, "pix_fmt": "yuv444p10le"}),
    ("8", 23, "H265", {"crf": 28, "tag": "hvc1"}),  # Blender's H.265 table
    ("10", 32, "H265", {"crf": 34, "pix_fmt": "yuv420p10le"}),  # 37, 3 less at 10 bits
    ("8", 0, "H265", {"lossless": True, "crf": None}),
    ("8", 26, "WEBM", {"crf": 26, "codec": "libvpx-vp9", "deadline": "good"}),
])
def test_blender_quality_levels_become_the_crf_blender_passes(
        depth: str, level: int, codec: str, expect: dict[str, Any]) -> None:
    s = VideoSettings.for_job(movie_scene(codec=codec, crf=level, color_depth=depth), "s", 1, 3)
    assert {k: getattr(s, k) for k in expect} == expect


def test_constant_bitrate_passes_blenders_rates() -> None:
    scene = movie_scene(crf=-1, video_bitrate=6000, minrate=0, maxrate=9000, buffersize=1792)
    s = VideoSettings.for_job(scene, "s", 1, 3)
    args = video.ffmpeg_args(s, "%07d.png", "/out/s.mp4")
    assert s.crf is None and "-crf" not in args
    assert args[args.index("-b:v") + 1] == "6000k" and args[args.index("-maxrate") + 1] == "9000k"
    assert args[args.index("-bufsize") + 1] == str(1792 * 1024) and "-minrate" not in args


@pytest.mark.parametrize(("container", "codec", "mode", "expect"), [
    ("MKV", "FFV1", "RGBA", ("matroska", "mkv", "ffv1", "bgra")),
    ("MKV", "FFV1", "RGB", ("matroska", "mkv", "ffv1", "bgr0")),
    ("QUICKTIME", "PNG", "RGB", ("mov", "mov", "png", "rgb24")),
    ("QUICKTIME", "QTRLE", "RGBA", ("mov", "mov", "qtrle", "argb")),
    ("QUICKTIME", "PRORES", "RGB", ("mov", "mov", "prores_aw", "yuv422p10le")),
    ("AVI", "HUFFYUV", "RGB", ("avi", "avi", "huffyuv", "bgra")),
    ("OGG", "H264", "RGB", ("ogg", "ogv", "libtheora", "yuv420p")),  # OGG is Theora only
    ("WEBM", "WEBM", "RGBA", ("webm", "webm", "libvpx-vp9", "yuva420p")),
])
def test_a_movie_scene_keeps_its_container_codec_and_extension(
        container: str, codec: str, mode: str, expect: tuple[str, ...]) -> None:
    s = VideoSettings.for_job(movie_scene(container=container, codec=codec, color_mode=mode),
                              "shot", 1, 3)
    assert (s.container, s.extension, s.codec, s.pix_fmt) == expect
    assert s.output == f"shot.0001-0003.{expect[1]}"


def test_ffv1_keeps_16_bits_and_prores_its_profile() -> None:
    ffv1 = VideoSettings.for_job(movie_scene(container="MKV", codec="FFV1", color_depth="16"),
                                 "s", 1, 2)
    assert ffv1.pix_fmt == "gbrp16le"
    prores = VideoSettings.for_job(movie_scene(container="QUICKTIME", codec="PRORES",
                                               prores_profile=4, color_mode="RGBA"), "s", 1, 2)
    assert (prores.profile, prores.pix_fmt) == ("4", "yuva444p10le")


def test_b_frames_are_asked_only_of_encoders_that_take_them() -> None:
    flv = VideoSettings.for_job(movie_scene(container="FLASH", max_b_frames=2), "s", 1, 3)
    assert flv.codec == "flv" and flv.max_b_frames is None  # FLV refuses to open with -bf


def test_gop_b_frames_and_preset_come_from_the_scene() -> None:
    s = VideoSettings.for_job(movie_scene(gopsize=12, max_b_frames=2, preset="BEST"), "s", 1, 3)
    args = video.ffmpeg_args(s, "%07d.png", "/o/s.mp4")
    assert args[args.index("-g") + 1] == "12" and args[args.index("-bf") + 1] == "2"
    assert args[args.index("-preset") + 1] == "slower"


@pytest.mark.parametrize(("scene", "why"), [
    (movie_scene(codec="DV", container="AVI"), "DV takes only"),
    (movie_scene(codec="NONE"), "no video stream"),
    (movie_scene(container="DV"), "container 'DV'"),
    (movie_scene(codec="SOMETHING_NEW"), "codec 'SOMETHING_NEW'"),
])
def test_a_movie_the_farm_cannot_make_becomes_an_h264_mp4_with_a_note(
        scene: SceneVideo, why: str) -> None:
    s = VideoSettings.for_job(scene, "shot", 1, 3)
    assert (s.container, s.codec) == ("mp4", "libx264")
    assert why in s.note and "H.264 MP4 instead" in s.note


def test_sound_and_hdr_are_named_in_the_note() -> None:
    s = VideoSettings.for_job(movie_scene(audio_codec="AAC", video_hdr="REC2100_PQ"), "s", 1, 2)
    assert "no sound" in s.note and "HDR" in s.note


def test_odd_sizes_are_padded_only_where_the_pixel_format_subsamples() -> None:
    h264 = video.ffmpeg_args(VideoSettings.for_job(None, "s", 1, 2), "%07d.png", "/o/s.mp4")
    vf = h264[h264.index("-vf") + 1]
    assert vf.startswith("pad=ceil(iw/2)*2:ceil(ih/2)*2,") and "bt709" in vf
    png = VideoSettings.for_job(movie_scene(container="QUICKTIME", codec="PNG"), "s", 1, 2)
    args = video.ffmpeg_args(png, "%07d.png", "/o/s.mov")
    assert args[args.index("-vf") + 1] == "format=rgb24" and "-colorspace" not in args


def test_settings_survive_the_wire() -> None:
    for scene in (None, movie_scene(container="MKV", codec="FFV1"), movie_scene(crf=-1)):
        s = VideoSettings.for_job(scene, "shot", 5, 9)
        assert VideoSettings.from_dict(s.to_dict()) == s
    scene = movie_scene(max_b_frames=3, crf=17)
    assert SceneVideo.from_dict(scene.to_dict()) == scene


@pytest.mark.parametrize("change", [
    {"output": "../evil.mp4"}, {"output": "a/b.mp4"}, {"output": "a\\b.mp4"},
    {"output": ".hidden.mp4"}, {"output": "x.mkv"}, {"output": "c:\\x.mp4"},
    {"output": "x\n.mp4"}, {"output": ""}, {"output": "x" * 300 + ".mp4"},
    {"codec": "libevil"}, {"codec": "png; rm -rf /"}, {"container": "image2"},
    {"pix_fmt": "yuv420p -f"}, {"preset": "--help"}, {"profile": "7"}, {"tag": "avc1"},
    {"fps_num": 10**9}, {"fps_num": 100_000, "fps_den": 1}, {"fps_den": 0},
    {"crf": 99}, {"crf": True}, {"crf": "23"}, {"gop": -1}, {"bitrate": 1.5},
    {"lossless": 1}, {"extra": 1}, {"note": 5},
])
def test_video_settings_refuse_hostile_values(change: dict[str, Any]) -> None:
    good = VideoSettings.for_job(None, "shot", 1, 3).to_dict()
    with pytest.raises(ValueError):
        VideoSettings.from_dict({**good, **change})


@pytest.mark.parametrize("change", [
    {"fps": 0}, {"fps": 30000}, {"fps_base": 0}, {"fps_base": float("nan")},
    {"fps_base": "1"}, {"width": 0}, {"height": 10**6}, {"codec": "h264"},
    {"container": "MPEG4; x"}, {"crf": 64}, {"max_b_frames": 99}, {"fps": None},
])
def test_scene_video_refuses_bad_values(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SceneVideo.from_dict({**movie_scene().to_dict(), **change})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3), max_leaves=8)
field_names = st.sampled_from([f for f in VideoSettings.__dataclass_fields__]
                              + [f for f in SceneVideo.__dataclass_fields__])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=12) | json_values)
def test_from_dict_raises_nothing_but_value_error_on_random_input(data: Any) -> None:
    for cls in (VideoSettings, SceneVideo):
        with contextlib.suppress(ValueError):
            cls.from_dict(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(list(SceneVideo.__dataclass_fields__)), json_values))
def test_every_scene_that_passes_maps_to_settings_that_pass(change: dict[str, Any]) -> None:
    try:
        scene = SceneVideo.from_dict({**movie_scene().to_dict(), **change})
    except ValueError:
        return
    s = VideoSettings.for_job(scene, "shot", 1, 10)
    assert VideoSettings.from_dict(s.to_dict()) == s
    assert video.ffmpeg_args(s, "%07d.png", "/o/x")[-1] == "file:/o/x"


def test_exr_frames_are_refused_with_one_sentence() -> None:
    with pytest.raises(EncodeError) as err:
        video.input_extension(["a.exr"], [b"v/1\x01\x02\x00\x00\x00"])
    assert err.value.reason == video.BAD_INPUT and not err.value.retryable
    assert "OpenEXR" in err.value.message and "--format PNG" in err.value.message


def test_a_job_of_exr_frames_can_be_refused_its_video_at_submit() -> None:
    assert "OpenEXR" in (video.refuse_video("OPEN_EXR_MULTILAYER") or "")
    assert video.refuse_video("PNG") is None and video.refuse_video(None) is None


def test_frames_of_two_formats_are_refused() -> None:
    with pytest.raises(EncodeError, match=r"b\.jpg \(2 of 2\) is JPG, the first frame PNG"):
        video.input_extension(["a.png", "b.jpg"], [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0"])


def test_progress_lines_and_exits_read_as_sentences() -> None:
    assert video.progress_frame("frame=12\n") == 12 and video.progress_frame("fps=3") is None
    killed = video.failure(-signal.SIGKILL, "")
    assert killed.message == "FFmpeg was killed by SIGKILL while encoding the video."
    assert killed.retryable
    enc = video.failure(1, "Unknown encoder 'libx264'")
    assert enc.reason == video.NO_ENCODER and "libx264" in enc.message


# --- real FFmpeg -------------------------------------------------------------------------


@needs_ffmpeg
@pytest.mark.parametrize(("fps", "fps_base", "rate"), [(25, 1.0, "25/1"),
                                                      (30, 1.001, "30000/1001")])
async def test_odd_frames_become_an_h264_mp4_padded_to_even(
        run_encode: Encoder, tmp_path: Path, fps: int, fps_base: float, rate: str) -> None:
    frames = write_frames(tmp_path / "in", 5)
    s = VideoSettings.for_job(SceneVideo(fps=fps, fps_base=fps_base), "shot", 1, 5)
    seen: list[float] = []
    out = await run_encode(s, frames, tmp_path, on_progress=seen.append)
    info = probe(out)
    assert out.name == "shot.0001-0005.mp4" and "mp4" in info["format_name"]
    assert (info["codec_name"], info["pix_fmt"], info["width"], info["height"]) == \
        ("h264", "yuv420p", 64, 48)
    assert info["r_frame_rate"] == rate and info["nb_read_packets"] == "5"
    assert info["color_space"] == "bt709"
    assert seen and seen[-1] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", out.name]  # no leftovers


@needs_ffmpeg
async def test_frames_in_job_order_are_encoded_in_that_order(run_encode: Encoder,
                                                             tmp_path: Path) -> None:
    """A non-contiguous job (1-10x2) hands its frames in order; the video follows it."""
    frames = write_frames(tmp_path / "in", 4)
    order = [frames[3], frames[0], frames[2]]
    out = await run_encode(VideoSettings.for_job(None, "s", 1, 7), order, tmp_path)
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    size = 64 * 48 * 3
    reds = [decoded[i * size + (10 * 64 + 10) * 3] for i in range(len(decoded) // size)]
    expected = [Image.open(f).getpixel((10, 10))[0] for f in order]
    assert len(reds) == 3 and all(abs(a - b) <= 6 for a, b in zip(reds, expected, strict=True))


@needs_ffmpeg
@pytest.mark.parametrize(("scene", "fmt", "mode", "expect"), [
    (movie_scene(container="MKV", codec="FFV1", color_mode="RGBA"), "PNG", "RGBA",
     ("matroska", "ffv1", "bgra", 63, 47)),
    (movie_scene(container="QUICKTIME", codec="PNG"), "PNG", "RGB",
     ("mov", "png", "rgb24", 63, 47)),
    (movie_scene(container="MPEG4", codec="H264", crf=17), "JPEG", "RGB",
     ("mp4", "h264", "yuv420p", 64, 48)),
    (movie_scene(container="QUICKTIME", codec="PRORES", prores_profile=3), "TIFF", "RGB",
     ("mov", "prores", "yuv422p10le", 64, 48)),
])
async def test_a_movie_scenes_settings_make_the_right_stream(
        run_encode: Encoder, tmp_path: Path, scene: SceneVideo, fmt: str, mode: str,
        expect: tuple[Any, ...]) -> None:
    frames = write_frames(tmp_path / "in", 3, fmt=fmt, mode=mode)
    out = await run_encode(VideoSettings.for_job(scene, "shot", 1, 3), frames, tmp_path)
    info = probe(out)
    assert expect[0] in info["format_name"]
    assert (info["codec_name"], info["pix_fmt"], info["width"], info["height"]) == expect[1:]
    assert info["nb_read_packets"] == "3" and info["r_frame_rate"] == "25/1"
    if scene.codec == "H264":  # x264 writes the options it ran with into the stream
        assert b"crf=17.0" in out.read_bytes()


EVERY_CODEC = [  # (file_format, container, codec, crf): each mapping the farm has
    ("FFMPEG", "MPEG4", "H264", 23), ("FFMPEG", "MKV", "H264", 0), ("FFMPEG", "MKV", "H264", -1),
    ("FFMPEG", "MPEG4", "H265", 20), ("FFMPEG", "WEBM", "WEBM", 26), ("FFMPEG", "MKV", "AV1", 32),
    ("FFMPEG", "MKV", "FFV1", -1), ("FFMPEG", "QUICKTIME", "PNG", -1),
    ("FFMPEG", "QUICKTIME", "QTRLE", -1), ("FFMPEG", "QUICKTIME", "PRORES", -1),
    ("FFMPEG", "QUICKTIME", "DNXHD", -1), ("FFMPEG", "AVI", "HUFFYUV", -1),
    ("FFMPEG", "AVI", "MPEG4", 23), ("FFMPEG", "MPEG1", "MPEG1", -1),
    ("FFMPEG", "MPEG2", "MPEG2", -1), ("FFMPEG", "FLASH", "FLASH", -1),
    ("FFMPEG", "OGG", "THEORA", -1), ("AVI_JPEG", "", "", -1), ("AVI_RAW", "", "", -1),
]


@needs_ffmpeg
@pytest.mark.parametrize(("file_format", "container", "codec", "crf"), EVERY_CODEC)
async def test_every_movie_the_farm_maps_encodes(tmp_path: Path, file_format: str,
                                                 container: str, codec: str, crf: int) -> None:
    """Blender's defaults for each (gop 12, two B-frames, 6000 kbit/s): the encoder's
    own check (codec and frame count by ffprobe) passes, so the mapping is one FFmpeg
    takes. DNxHR needs 256x120 at least."""
    size = (257, 121) if codec == "DNXHD" else (63, 47)
    frames = write_frames(tmp_path / "in", 3, size=size)
    scene = movie_scene(file_format=file_format, container=container, codec=codec, crf=crf,
                        gopsize=12, max_b_frames=2, video_bitrate=6000, maxrate=9000,
                        buffersize=1792)
    s = VideoSettings.for_job(scene, "shot", 1, 3)
    assert s.note == "" or codec == "DNXHD"
    out = tmp_path / s.output
    await node_encode.encode(s, [str(f) for f in frames], str(out), on_progress=lambda f: None,
                             watchdog=60)
    assert probe(out)["codec_name"] == video.ENCODERS[s.codec]


@needs_ffmpeg
async def test_a_missing_frame_gives_one_sentence_and_no_video(run_encode: Encoder,
                                                               tmp_path: Path) -> None:
    frames = write_frames(tmp_path / "in", 3)
    frames[1].unlink()
    with pytest.raises(EncodeError) as err:
        await run_encode(VideoSettings.for_job(None, "s", 1, 3), frames, tmp_path)
    assert err.value.message == f"The frame file {frames[1]} (2 of 3) is missing."
    assert err.value.reason == video.MISSING_INPUT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@needs_ffmpeg
async def test_exr_frames_are_refused_before_ffmpeg_runs(run_encode: Encoder,
                                                         tmp_path: Path) -> None:
    exr = tmp_path / "f.exr"
    exr.write_bytes(b"v/1\x01" + bytes(100))
    with pytest.raises(EncodeError, match="OpenEXR, scene-linear"):
        await run_encode(VideoSettings.for_job(None, "s", 1, 1), [exr], tmp_path)


def slow_job(tmp_path: Path) -> tuple[VideoSettings, list[Path]]:
    """An encode that runs for many seconds: one big frame, 400 times, x264 veryslow."""
    big = tmp_path / "in" / "big.png"
    big.parent.mkdir()
    Image.effect_noise((1280, 720), 80).convert("RGB").save(big)
    s = VideoSettings.from_dict({**VideoSettings.for_job(None, "s", 1, 400).to_dict(),
                                 "preset": "veryslow"})
    return s, [big] * 400


@needs_ffmpeg
async def test_a_cancelled_encode_leaves_no_ffmpeg_and_no_file(run_encode: Encoder,
                                                               tmp_path: Path) -> None:
    s, frames = slow_job(tmp_path)
    started = asyncio.Event()
    task = asyncio.create_task(run_encode(s, frames, tmp_path,
                                          on_progress=lambda f: started.set()))
    pid = await wait_for_ffmpeg(str(tmp_path))
    await asyncio.wait_for(started.wait(), 30)
    os.kill(pid, signal.SIGSTOP)  # it cannot finish on its own now: only a kill ends it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert ffmpeg_pids(str(tmp_path)) == [] and not os.path.exists(f"/proc/{pid}/cmdline")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@needs_ffmpeg
async def test_a_killed_ffmpeg_gives_one_sentence(run_encode: Encoder, tmp_path: Path) -> None:
    s, frames = slow_job(tmp_path)
    task = asyncio.create_task(run_encode(s, frames, tmp_path))
    os.kill(await wait_for_ffmpeg(str(tmp_path)), signal.SIGKILL)
    with pytest.raises(EncodeError) as err:
        await task
    assert err.value.message == "FFmpeg was killed by SIGKILL while encoding the video."
    assert err.value.retryable and not (tmp_path / s.output).exists()


@needs_ffmpeg
async def test_the_watchdog_stops_an_ffmpeg_that_shows_no_progress(run_encode: Encoder,
                                                                   tmp_path: Path) -> None:
    s, frames = slow_job(tmp_path)
    task = asyncio.create_task(run_encode(s, frames, tmp_path, watchdog=1.5))
    pid = await wait_for_ffmpeg(str(tmp_path))
    os.kill(pid, signal.SIGSTOP)  # alive, silent: only the watchdog can tell
    with pytest.raises(EncodeError) as err:
        await asyncio.wait_for(task, 30)
    assert err.value.reason == video.WATCHDOG and "no progress for 1.5 s" in err.value.message
    assert ffmpeg_pids(str(tmp_path)) == []


@needs_ffmpeg
def test_probe_ffmpeg_says_the_version_and_nothing_without_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for probe_ in (node_encode.probe_ffmpeg, server_encode.server_ffmpeg):
        version = probe_()
        assert version and version[0].isdigit()
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no ffmpeg
    assert node_encode.probe_ffmpeg() == "" and server_encode.server_ffmpeg() == ""
    broken = tmp_path / "ffmpeg"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    assert node_encode.probe_ffmpeg() == "" and server_encode.server_ffmpeg() == ""


async def test_an_encode_without_ffmpeg_says_so(run_encode: Encoder, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    frames = write_frames(tmp_path / "in", 1)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(EncodeError) as err:
        await run_encode(VideoSettings.for_job(None, "s", 1, 1), frames, tmp_path)
    assert err.value.reason == video.NO_FFMPEG and "FFmpeg" in err.value.message


# --- real Blender ------------------------------------------------------------------------

MOVIE_SETUP = """
import bpy, sys
scene = bpy.context.scene
r = scene.render
r.fps, r.fps_base = 30, 1.001
r.resolution_x, r.resolution_y, r.resolution_percentage = 640, 360, 50
ims = r.image_settings
if hasattr(ims, "media_type"):
    ims.media_type = "VIDEO"
ims.file_format = "FFMPEG"
ff = r.ffmpeg
ff.format, ff.codec = "MKV", "FFV1"
ims.color_mode = "RGBA"
ff.constant_rate_factor = "HIGH"
ff.gopsize = 12
ff.use_max_b_frames, ff.max_b_frames = True, 2
ff.ffmpeg_preset = "BEST"
"""


def blender_scene_video(setup: str) -> dict[str, Any]:
    code = (setup + f"\nsys.path.insert(0, {str(SCENE_VIDEO_PY.parent)!r})\n"
            "import json, scene_video\n"
            "print('BFJSON:' + json.dumps(scene_video.scene_video(scene)))\n")
    proc = run_blender(["--python-expr", code], timeout=120)
    for line in proc.stdout.splitlines():
        if line.startswith("BFJSON:"):
            return json.loads(line[len("BFJSON:"):])
    raise AssertionError(proc.stdout[-3000:])


@in_blender
def test_scene_video_reads_a_movie_scene_in_real_blender() -> None:
    info = blender_scene_video(MOVIE_SETUP)
    assert {k: info[k] for k in ("fps", "width", "height", "file_format", "container", "codec",
                                 "crf", "gopsize", "max_b_frames", "preset", "color_mode")} == {
        "fps": 30, "width": 320, "height": 180, "file_format": "FFMPEG", "container": "MKV",
        "codec": "FFV1", "crf": 20, "gopsize": 12, "max_b_frames": 2, "preset": "BEST",
        "color_mode": "RGBA"}
    scene = SceneVideo.from_dict(info)
    assert scene.movie and scene.rate == Fraction(30000, 1001)
    s = VideoSettings.for_job(scene, "shot", 1, 3)
    assert (s.container, s.codec, s.pix_fmt, s.gop) == ("matroska", "ffv1", "bgra", 12)
    assert s.max_b_frames is None  # FFV1 is intra-only: no B-frames to ask for


@in_blender
def test_scene_video_of_a_still_scene_has_no_movie_settings() -> None:
    info = blender_scene_video("import bpy, sys\nscene = bpy.context.scene\n"
                               "scene.render.image_settings.file_format = 'JPEG'\n")
    assert info["file_format"] == "JPEG" and "codec" not in info
    scene = SceneVideo.from_dict(info)
    assert not scene.movie and scene.rate == 24 and (scene.width, scene.height) == (1920, 1080)


BLENDER_MOVIE = """
import bpy
scene = bpy.context.scene
r = scene.render
r.engine = "CYCLES"
scene.cycles.samples = 1
scene.cycles.use_denoising = False
r.resolution_x, r.resolution_y, r.resolution_percentage = 64, 48, 100
scene.frame_start, scene.frame_end = 1, 3
r.fps = 25
r.image_settings.file_format = "FFMPEG"
r.ffmpeg.format, r.ffmpeg.codec, r.ffmpeg.constant_rate_factor = "MPEG4", "H264", "MEDIUM"
r.filepath = "//movie/"
bpy.ops.wm.save_as_mainfile(filepath=OUT)
"""


@in_blender
@needs_ffmpeg
async def test_the_farms_movie_matches_what_blender_writes(tmp_path: Path) -> None:
    """Blender renders a 3-frame H.264 MP4 itself; the farm renders the same scene as PNG
    frames and encodes them: same container, codec, pixel format, size, rate, frames."""
    blend = tmp_path / "movie.blend"
    await asyncio.to_thread(run_blender, ["--python-expr",
                                          f"OUT = {str(blend)!r}\n" + BLENDER_MOVIE])
    await asyncio.to_thread(run_blender, [str(blend), "-a"])
    own = tmp_path / "movie" / "0001-0003.mp4"
    assert own.is_file()
    await asyncio.to_thread(run_blender, [str(blend), "-o", str(tmp_path / "png" / "f_####"),
                                          "-F", "PNG", "-a"])
    frames = sorted((tmp_path / "png").glob("f_*.png"))
    info = await asyncio.to_thread(blender_scene_video_of, blend)
    s = VideoSettings.for_job(SceneVideo.from_dict(info), "movie", 1, 3)
    farm = await server_encode.encode_on_server(s, frames, tmp_path, on_progress=lambda f: None)
    theirs, ours = probe(own), probe(farm)
    for key in ("format_name", "codec_name", "pix_fmt", "width", "height", "r_frame_rate",
                "nb_read_packets"):
        assert ours[key] == theirs[key], key
    assert farm.name == "movie.0001-0003.mp4"
    # and the pictures: both decode to the same pixels, within rounding
    mine, blenders = await asyncio.gather(asyncio.to_thread(decode_rgb, farm),
                                          asyncio.to_thread(decode_rgb, own))
    diff = np.abs(mine.astype(int) - blenders.astype(int))
    assert mine.shape == blenders.shape and diff.mean() < 1.0 and np.percentile(diff, 99) <= 4


def decode_rgb(path: Path) -> Any:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8)


def blender_scene_video_of(blend: Path) -> dict[str, Any]:
    code = (f"import bpy, sys, json\nsys.path.insert(0, {str(SCENE_VIDEO_PY.parent)!r})\n"
            "import scene_video\n"
            "print('BFJSON:' + json.dumps(scene_video.scene_video(bpy.context.scene)))\n")
    proc = run_blender([str(blend), "--python-expr", code], timeout=120)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BFJSON:"))
    return json.loads(line[len("BFJSON:"):])


MODULE_SETUP = """
import bpy, json, sys
sys.path.insert(0, sys.argv[1])
import scene_video
scene = bpy.context.scene
r = scene.render
if hasattr(r.image_settings, "media_type"):  # Blender 5: a video is a media type
    r.image_settings.media_type = "VIDEO"
r.image_settings.file_format = "FFMPEG"
ff = r.ffmpeg
ff.format, ff.codec = "QUICKTIME", "PRORES"
ff.ffmpeg_prores_profile = "4444"
prores = scene_video.scene_video(scene)
ff.format, ff.codec, ff.constant_rate_factor = "MPEG4", "H265", "HIGH"
r.image_settings.color_depth = "10"
print("BFJSON:" + json.dumps([prores, scene_video.scene_video(scene)]))
"""


def test_scene_video_reads_blender_45s_prores_and_h265(bpy45_python: str) -> None:
    """Blender 4.5's module has settings 3.4 lacks (ProRes profiles, H.265)."""
    proc = subprocess.run([bpy45_python, "-c", MODULE_SETUP, str(SCENE_VIDEO_PY.parent)],
                          capture_output=True, text=True, timeout=120, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BFJSON:")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    prores, h265 = (SceneVideo.from_dict(d) for d in json.loads(line[len("BFJSON:"):]))
    assert (prores.codec, prores.prores_profile) == ("PRORES", 4)
    p = VideoSettings.for_job(prores, "s", 1, 2)
    assert (p.container, p.codec, p.profile, p.pix_fmt) == ("mov", "prores_aw", "4", "yuv444p10le")
    assert (h265.codec, h265.crf, h265.color_depth) == ("H265", 20, "10")
    h = VideoSettings.for_job(h265, "s", 1, 2)
    assert (h.codec, h.crf, h.pix_fmt, h.tag) == ("libx265", 21, "yuv420p10le", "hvc1")
