"""The job's video: what a render learns of its scene, how the encode task encodes, and
the FFmpeg command line that does it.

A render reports its scene as it was before the farm's overrides (:class:`SceneVideo`,
in ``TaskDone.info["video"]``); the server turns that into :class:`VideoSettings`
(:meth:`VideoSettings.for_job`) and sends them in the encode task's ``Assign.video``;
whoever encodes (a node, or the server itself when no node has FFmpeg) validates them
again and runs :func:`ffmpeg_args`' command. A scene whose own output is a movie gets
its own container, codec and quality; every other job gets an H.264 MP4. Blender's
movie writer (``imbuf/movie/intern/movie_write.cc``) is the reference for the mapping:
its pixel format per codec and colour mode, its CRF per quality level (remapped for
H.265 and 10-bit H.264), its preset names. What the CLI cannot match is said in
``VideoSettings.note``.

Pure: no I/O, no subprocess, no bpy. The two encoders (``node/encode.py``,
``server/encode.py``) run processes and read files; everything they decide (which
frames FFmpeg can read, what a progress line says, what an exit means, whether the
file is right) is decided here, once. Both ``from_dict`` take untrusted dicts and raise
nothing but ValueError.
"""

from __future__ import annotations

import re
import signal
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

from .jobspec import MOVIE_FORMATS

MAX_FPS = 1000  # frames a second, at most (Blender's fps field goes to 32767)
MAX_SIZE = 65536  # pixels a side, as the job spec's resolution
DEFAULT_GOP = 18  # Blender's gop size when a scene's output is switched to FFmpeg
DEFAULT_CRF = 23  # Blender's default quality, MEDIUM
DEFAULT_WATCHDOG = 300.0  # seconds an encode may show no progress before it is stopped
TAIL_LINES = 40  # of FFmpeg's messages, kept for an error report

# Failure reasons of an encode (EncodeError.reason)
NO_FFMPEG, MISSING_INPUT, BAD_INPUT = "no_ffmpeg", "missing_input", "bad_input"
FFMPEG_FAILED, NO_ENCODER, WATCHDOG = "ffmpeg_failed", "no_encoder", "watchdog"
BAD_OUTPUT, BAD_SETTINGS = "bad_output", "bad_settings"


class EncodeError(Exception):
    """An encode that failed: one sentence for the user, a reason for the server."""

    def __init__(self, message: str, reason: str, retryable: bool, log_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retryable = retryable
        self.log_tail = log_tail


# --- what Blender's movie settings become --------------------------------------------

#: ``render.ffmpeg.format`` -> (FFmpeg muxer, extension Blender gives the file)
CONTAINERS = {
    "MPEG4": ("mp4", "mp4"), "MKV": ("matroska", "mkv"), "QUICKTIME": ("mov", "mov"),
    "AVI": ("avi", "avi"), "WEBM": ("webm", "webm"), "OGG": ("ogg", "ogv"),
    "MPEG1": ("mpeg", "mpg"), "MPEG2": ("dvd", "dvd"), "FLASH": ("flv", "flv"),
}
EXTENSION = {muxer: ext for muxer, ext in CONTAINERS.values()}
#: containers that take one codec only, whatever the scene's codec says (as Blender does)
FORCED_CODEC = {"OGG": "THEORA", "MPEG1": "MPEG1", "MPEG2": "MPEG2", "FLASH": "FLASH"}
#: FFmpeg encoder -> the codec ffprobe reports for its stream
ENCODERS = {
    "libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9", "libaom-av1": "av1",
    "ffv1": "ffv1", "png": "png", "qtrle": "qtrle", "prores_aw": "prores",
    "prores_ks": "prores", "dnxhd": "dnxhd", "huffyuv": "huffyuv", "mpeg4": "mpeg4",
    "mpeg1video": "mpeg1video", "mpeg2video": "mpeg2video", "flv": "flv1",
    "libtheora": "theora", "mjpeg": "mjpeg", "rawvideo": "rawvideo",
}
#: encoders that take B-frames (MJPEG and FLV refuse to open with ``-bf``)
B_FRAMES = ("libx264", "libx265", "mpeg4", "mpeg1video", "mpeg2video")
PIX_FMTS = (
    "yuv420p", "yuv420p10le", "yuv420p12le", "yuv422p", "yuv422p10le", "yuv444p",
    "yuv444p10le", "yuv444p12le", "yuva420p", "yuva444p10le", "yuvj420p", "gray",
    "gray10le", "gray12le", "gray16le", "rgb24", "rgba", "argb", "bgra", "bgr0", "bgr24",
    "gbrp10le", "gbrp12le", "gbrp16le", "gbrap10le", "gbrap12le", "gbrap16le",
)
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow")
#: ``ffmpeg_preset`` -> x264/x265 preset, VP9 deadline, libaom cpu-used (Blender's own)
PRESETS = {"BEST": ("slower", "best", 4), "GOOD": ("medium", "good", 6),
           "REALTIME": ("superfast", "realtime", 8)}
PROFILES = ("", "0", "1", "2", "3", "4", "5", "dnxhr_hq")  # ProRes 0..5, DNxHR HQ


def _deep(scene: SceneVideo) -> str:
    """"10" or "12" where the scene asks for more than 8 bits a channel, else ""."""
    return scene.color_depth if scene.color_depth in ("10", "12") else ""


def _rate_control(scene: SceneVideo, codec: str) -> dict[str, Any]:
    """Blender's quality settings for a codec that has a CRF: the CRF it passes (its
    level's H.264 value, remapped for H.265 and 10-bit H.264; lossless as each encoder
    spells it), or a bitrate when the scene has constant bitrate."""
    if scene.crf < 0:
        return _bitrate(scene)
    deep = _deep(scene)
    if codec == "mpeg4":  # MPEG-4 part 2 has no CRF: a constant quantiser near it
        return {"qscale": max(2, min(31, round(2 + scene.crf * 29 / 51)))}
    if scene.crf == 0:
        if codec == "libx264" and deep:
            return {"qp": 0}
        if codec in ("libx265", "libvpx-vp9"):
            return {"lossless": True}
        return {"crf": 0}
    crf = scene.crf
    if codec == "libx264" and deep:
        crf = max(0, int(-12 + crf / 51 * 63))
    elif codec == "libx265":
        h265 = {17: 20, 20: 24, 23: 28, 26: 31, 29: 34, 32: 37}
        crf = h265.get(crf, crf) - (3 if deep and crf in h265 else 0)
    return {"crf": crf}


def _bitrate(scene: SceneVideo) -> dict[str, Any]:
    return {"bitrate": scene.video_bitrate, "minrate": scene.minrate,
            "maxrate": scene.maxrate, "bufsize": scene.buffersize}


def _ffmpeg_codec(scene: SceneVideo, codec: str) -> dict[str, Any] | str:
    """The encoder, pixel format and options Blender uses for ``codec`` (a
    ``render.ffmpeg.codec``), or why the farm cannot make it."""
    mode, deep = scene.color_mode, _deep(scene)
    x264, deadline, cpu_used = PRESETS.get(scene.preset, PRESETS["GOOD"])
    lossless = scene.crf == 0
    if codec == "H264":
        pix = "yuv444p" if lossless else "yuv420p"
        return {"codec": "libx264", "pix_fmt": pix + ("10le" if deep else ""),
                "preset": x264, **_rate_control(scene, "libx264")}
    if codec == "H265":
        pix = "yuv444p" if lossless else "yuv420p"
        return {"codec": "libx265", "pix_fmt": pix + (deep + "le" if deep else ""),
                "preset": x264, "tag": "hvc1", **_rate_control(scene, "libx265")}
    if codec == "WEBM":
        pix = "yuva420p" if mode == "RGBA" else "yuv444p" if lossless else "yuv420p"
        return {"codec": "libvpx-vp9", "pix_fmt": pix, "deadline": deadline,
                **_rate_control(scene, "libvpx-vp9")}
    if codec == "AV1":
        pix = "yuv444p" if lossless else "yuv420p"
        return {"codec": "libaom-av1", "pix_fmt": pix + (deep + "le" if deep else ""),
                "cpu_used": cpu_used, **_rate_control(scene, "libaom-av1")}
    if codec == "FFV1":
        bits = scene.color_depth if scene.color_depth in ("10", "12", "16") else ""
        pix = {"BW": "gray", "RGBA": "gbrap"}.get(mode, "gbrp")
        eight = {"BW": "gray", "RGBA": "bgra"}.get(mode, "bgr0")
        return {"codec": "ffv1", "pix_fmt": f"{pix}{bits}le" if bits else eight}
    if codec in ("PNG", "QTRLE"):
        alpha = "rgba" if codec == "PNG" else "argb"
        return {"codec": codec.lower(),
                "pix_fmt": {"BW": "gray", "RGBA": alpha}.get(mode, "rgb24")}
    if codec == "PRORES":
        profile = scene.prores_profile if 0 <= scene.prores_profile <= 5 else 3
        big = scene.width * scene.height > 3840 * 2160
        pix = "yuv422p10le" if profile <= 3 else \
            "yuva444p10le" if mode == "RGBA" else "yuv444p10le"
        return {"codec": "prores_ks" if mode == "RGBA" and big else "prores_aw",
                "pix_fmt": pix, "profile": str(profile)}
    if codec == "DNXHD":
        return {"codec": "dnxhd", "pix_fmt": "yuv422p", "profile": "dnxhr_hq",
                "note": "DNxHD became DNxHR HQ, which takes any size from 256x120 (DNxHD "
                        "takes only the sizes and bitrates of its broadcast table)."}
    if codec == "HUFFYUV":
        return {"codec": "huffyuv", "pix_fmt": "bgra"}
    simple = {"MPEG4": "mpeg4", "MPEG1": "mpeg1video", "MPEG2": "mpeg2video",
              "FLASH": "flv", "THEORA": "libtheora"}
    if codec in simple:
        control = _rate_control(scene, "mpeg4") if codec == "MPEG4" else _bitrate(scene)
        return {"codec": simple[codec], "pix_fmt": "yuv420p", **control}
    if codec == "DV":
        return "DV takes only 720x576 or 720x480 frames"
    if codec == "NONE":
        return "the scene's movie has no video stream (codec None)"
    return f"the farm does not know the scene's codec {codec!r}"


def _movie(scene: SceneVideo) -> dict[str, Any] | str:
    """VideoSettings' fields for a movie scene, or why the farm cannot make its movie."""
    if scene.file_format == "AVI_JPEG":  # Blender's own AVI writer, quality as for JPEG
        return {"container": "avi", "codec": "mjpeg", "pix_fmt": "yuvj420p",
                "qscale": max(2, min(31, round(2 + (100 - scene.quality) * 29 / 100)))}
    if scene.file_format == "AVI_RAW":
        return {"container": "avi", "codec": "rawvideo", "pix_fmt": "bgr24"}
    if scene.container not in CONTAINERS:
        return f"the farm does not know the scene's container {scene.container!r}"
    codec = _ffmpeg_codec(scene, FORCED_CODEC.get(scene.container, scene.codec))
    if isinstance(codec, str):
        return codec
    if scene.gopsize > 0:
        codec["gop"] = scene.gopsize
    if scene.max_b_frames is not None and codec["codec"] in B_FRAMES:
        codec["max_b_frames"] = scene.max_b_frames
    return {"container": CONTAINERS[scene.container][0], **codec}


# --- the two records -----------------------------------------------------------------

_TOKEN = re.compile(r"[A-Z0-9_]{0,32}")  # a Blender enum identifier


def _get(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any,
         optional: bool = False) -> Any:
    """``data[name]`` if it is a ``kind`` (None too, where ``optional``); ``default``
    where absent, and absent is an error where there is no default. Bools are not
    numbers here."""
    if name not in data:
        if default is None and not optional:
            raise ValueError(f"{name} is missing")
        return default
    value = data[name]
    if value is None and optional:
        return None
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ValueError(f"{name} must be {getattr(kind, '__name__', 'a number')}")
    return value


def _int(data: dict[str, Any], name: str, lo: int, hi: int, default: Any = 0,
         optional: bool = False) -> Any:
    value = _get(data, name, int, default, optional)
    if value is not None and not lo <= value <= hi:
        raise ValueError(f"{name} must be from {lo} to {hi}")
    return value


def _token(data: dict[str, Any], name: str, default: str, pattern: re.Pattern[str] = _TOKEN
           ) -> str:
    value = _get(data, name, str, default)
    if not pattern.fullmatch(value):
        raise ValueError(f"{name} is not a Blender setting's name")
    return str(value)


def _dict(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("video settings must be a map")
    return data


@dataclass(frozen=True)
class SceneVideo:
    """What a render learns of its scene for the video, as the scene has it before the
    farm's overrides: its frame rate, render size, output format and (a movie) Blender's
    ffmpeg settings. ``crf`` is the H.264 CRF of ``constant_rate_factor`` (-1: constant
    bitrate); ``max_b_frames`` None: ``use_max_b_frames`` off."""

    fps: int = 24
    fps_base: float = 1.0
    width: int = 1920
    height: int = 1080
    file_format: str = "PNG"
    container: str = ""
    codec: str = ""
    crf: int = DEFAULT_CRF
    preset: str = "GOOD"
    video_bitrate: int = 0  # kbit/s, as minrate and maxrate
    minrate: int = 0
    maxrate: int = 0
    buffersize: int = 0  # kbit of 1024
    gopsize: int = DEFAULT_GOP
    max_b_frames: int | None = None
    color_mode: str = "RGB"
    color_depth: str = "8"
    prores_profile: int = 3
    quality: int = 90  # image_settings.quality (AVI_JPEG)
    audio_codec: str = "NONE"
    video_hdr: str = "NONE"

    @property
    def movie(self) -> bool:
        return self.file_format in MOVIE_FORMATS

    @property
    def rate(self) -> Fraction:
        """Frames a second, exactly: 30 / 1.001 is 30000/1001 (Blender's own reduction)."""
        return (Fraction(self.fps) / Fraction(repr(round(self.fps_base, 6)))
                ).limit_denominator(1_000_000)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SceneVideo:
        d = _dict(data)
        base = _get(d, "fps_base", (int, float), None)
        if not 1e-5 <= base <= 1e6:  # NaN too
            raise ValueError("fps_base must be a number from 0.00001 to 1000000")
        scene = cls(
            fps=_int(d, "fps", 1, 32767, None), fps_base=float(base),
            width=_int(d, "width", 1, MAX_SIZE, None), height=_int(d, "height", 1, MAX_SIZE, None),
            file_format=_token(d, "file_format", "PNG"), container=_token(d, "container", ""),
            codec=_token(d, "codec", ""), crf=_int(d, "crf", -1, 63, DEFAULT_CRF),
            preset=_token(d, "preset", "GOOD"),
            **{k: _int(d, k, 0, 10_000_000) for k in
               ("video_bitrate", "minrate", "maxrate", "buffersize")},
            gopsize=_int(d, "gopsize", 0, 100_000, DEFAULT_GOP),
            max_b_frames=_int(d, "max_b_frames", 0, 16, None, True),
            color_mode=_token(d, "color_mode", "RGB"),
            color_depth=_token(d, "color_depth", "8", re.compile(r"[0-9]{0,2}")),
            prores_profile=_int(d, "prores_profile", -1, 16, 3),
            quality=_int(d, "quality", 0, 100, 90),
            audio_codec=_token(d, "audio_codec", "NONE"), video_hdr=_token(d, "video_hdr", "NONE"),
        )
        if scene.rate > MAX_FPS:
            raise ValueError(f"the frame rate is over {MAX_FPS} frames a second")
        return scene


@dataclass(frozen=True)
class VideoSettings:
    """How to encode a job's video: FFmpeg's muxer and encoder and their options, the
    frame rate as a fraction and the file's name (no folder). Rates in kbit/s (bufsize
    in kbit of 1024, Blender's unit); 0 or None: the option is left out."""

    output: str
    container: str = "mp4"
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    fps_num: int = 24
    fps_den: int = 1
    crf: int | None = DEFAULT_CRF
    qp: int | None = None
    qscale: int | None = None
    lossless: bool = False
    bitrate: int = 0
    minrate: int = 0
    maxrate: int = 0
    bufsize: int = 0
    gop: int = DEFAULT_GOP
    max_b_frames: int | None = None
    preset: str = "medium"
    deadline: str = ""
    cpu_used: int | None = None
    profile: str = ""
    tag: str = ""
    #: what differs from the movie Blender would write (for the job's notes)
    note: str = ""

    @property
    def extension(self) -> str:
        return EXTENSION[self.container]

    @property
    def rate(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    @classmethod
    def for_job(cls, scene: SceneVideo | None, stem: str, first: int, last: int
                ) -> VideoSettings:
        """The video of frames ``first``..``last`` of a job whose render reported
        ``scene`` (None: nothing known, so 24 fps). A movie scene gets its own movie
        where the farm can make it, else an H.264 MP4 and a note saying why. Raises
        ValueError only for a ``stem`` that cannot name a file."""
        rate = scene.rate if scene is not None else Fraction(24)
        fields_: dict[str, Any] = {}
        notes: list[str] = []
        if scene is not None and scene.movie:
            movie = _movie(scene)
            if isinstance(movie, str):
                notes.append(f"The scene's movie could not be made ({movie}): the farm "
                             "made an H.264 MP4 instead.")
            else:
                notes += [movie.pop("note")] if "note" in movie else []
                fields_ = {"crf": None, "gop": 0, "preset": "", **movie}
            if scene.audio_codec != "NONE":
                notes.append("The video has no sound: the farm renders pictures only.")
            if scene.video_hdr != "NONE":
                notes.append("HDR is not applied: the frames are display-referred PNG.")
        container = fields_.get("container", "mp4")
        name = f"{stem}.{first:04d}-{last:04d}.{EXTENSION[container]}"
        return cls.from_dict({"output": name, **fields_, "fps_num": rate.numerator,
                              "fps_den": rate.denominator, "note": " ".join(notes)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> VideoSettings:
        """Checked settings from an untrusted dict: every name from the lists FFmpeg is
        known to take, every number in range, a file name with no folder."""
        d = _dict(data)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown video settings: {', '.join(sorted(map(str, unknown)))}")
        output = _get(d, "output", str, "")
        if not 1 <= len(output) <= 255 or output.startswith(".") or \
                any(c in output for c in "/\\:") or any(ord(c) < 32 for c in output):
            raise ValueError("output must be a file name with no folder")
        choices = {"container": EXTENSION, "codec": ENCODERS, "pix_fmt": PIX_FMTS,
                   "preset": ("", *X264_PRESETS), "deadline": ("", "good", "best", "realtime"),
                   "profile": PROFILES, "tag": ("", "hvc1")}
        picked = {k: _get(d, k, str, getattr(cls, k)) for k in choices}
        for key, allowed in choices.items():
            if picked[key] not in allowed:
                raise ValueError(f"{key} {picked[key]!r} is not one the farm encodes with")
        if not output.endswith("." + EXTENSION[picked["container"]]):
            raise ValueError(f"output must end in .{EXTENSION[picked['container']]}")
        settings = cls(
            output=output, **picked,
            fps_num=_int(d, "fps_num", 1, 1_000_000, 24), fps_den=_int(d, "fps_den", 1, 1_000_000, 1),
            crf=_int(d, "crf", 0, 63, DEFAULT_CRF, True), qp=_int(d, "qp", 0, 255, None, True),
            qscale=_int(d, "qscale", 1, 31, None, True), lossless=_get(d, "lossless", bool, False),
            **{k: _int(d, k, 0, 10_000_000) for k in ("bitrate", "minrate", "maxrate", "bufsize")},
            gop=_int(d, "gop", 0, 100_000, DEFAULT_GOP), max_b_frames=_int(d, "max_b_frames", 0, 16, None, True),
            cpu_used=_int(d, "cpu_used", 0, 8, None, True), note=_get(d, "note", str, "")[:1000],
        )
        if not Fraction(1, 1000) <= settings.rate <= MAX_FPS:
            raise ValueError(f"the frame rate must be from 1/1000 to {MAX_FPS} frames a second")
        return settings


# --- the command line ------------------------------------------------------------------

LINK_DIGITS = 7  # the numbered links to a video's frames: 0000000.png, 0000001.png, ...


def input_pattern(ext: str) -> str:
    """The image2 pattern of the numbered links (relative: FFmpeg runs in their folder,
    so no '%' in a folder's name is read as part of the pattern)."""
    return f"%0{LINK_DIGITS}d.{ext}"


def link_name(index: int, ext: str) -> str:
    return f"{index:0{LINK_DIGITS}d}.{ext}"


def _subsampled(pix_fmt: str) -> bool:
    return pix_fmt.startswith("yuv") and ("420" in pix_fmt or "422" in pix_fmt)


def ffmpeg_args(settings: VideoSettings, list_file_or_pattern: str, out_path: str
                ) -> list[str]:
    """FFmpeg's command line (no shell) that encodes the frames ``list_file_or_pattern``
    names (an image2 pattern, :func:`input_pattern`, of links numbered in frame order
    from 0) into ``out_path``. The image2 demuxer reads frames at exactly the job's
    rate, which a concat list (durations in seconds) cannot say for 30000/1001.

    Subsampled formats (4:2:0, 4:2:2) need even sizes: the frame is padded by a black
    row or column. RGB becomes YUV with BT.709 in TV range, tagged so, as Blender's
    writer does. Progress goes to stdout (``-progress pipe:1``), messages to stderr."""
    s = settings
    pix = s.pix_fmt
    chain = ["pad=ceil(iw/2)*2:ceil(ih/2)*2"] if _subsampled(pix) else []
    yuv = pix.startswith("yuv")
    full = pix.startswith("yuvj")
    if yuv:
        chain.append(f"scale=out_color_matrix=bt709:out_range={'pc' if full else 'tv'}")
    chain.append(f"format={pix}")
    args = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning",
            "-progress", "pipe:1", "-y",
            "-f", "image2", "-framerate", f"{s.fps_num}/{s.fps_den}", "-start_number", "0",
            "-i", list_file_or_pattern,
            "-map", "0:v:0", "-an", "-sn", "-dn", "-map_metadata", "-1",
            "-vf", ",".join(chain), "-c:v", s.codec, "-pix_fmt", pix]
    if yuv and not full:
        args += ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
                 "-color_range", "tv"]
    if s.crf is not None:
        args += ["-crf", str(s.crf)]
        if s.codec == "libvpx-vp9" and not s.bitrate:
            args += ["-b:v", "0"]  # VP9 is in constant quality only with no bitrate
    for flag, value, unit in (("-qp", s.qp, ""), ("-q:v", s.qscale, ""),
                              ("-b:v", s.bitrate, "k"), ("-minrate", s.minrate, "k"),
                              ("-maxrate", s.maxrate, "k"), ("-g", s.gop, ""),
                              ("-bf", s.max_b_frames, ""), ("-cpu-used", s.cpu_used, "")):
        if value or value == 0 and flag in ("-qp", "-bf", "-cpu-used"):
            args += [flag, f"{value}{unit}"]
    if s.bufsize:
        args += ["-bufsize", str(s.bufsize * 1024)]
    for flag, text in (("-preset", s.preset), ("-deadline", s.deadline),
                       ("-profile:v", s.profile), ("-tag:v", s.tag)):
        if text:
            args += [flag, text]
    if s.codec == "libaom-av1":
        args += ["-row-mt", "1"]
    if s.codec == "libx265":
        args += ["-x265-params", "log-level=1" + (":lossless=1" if s.lossless else "")]
    elif s.lossless:
        args += ["-lossless", "1"]
    if s.container in ("mp4", "mov"):
        args += ["-movflags", "+faststart"]  # plays in a browser before it has all loaded
    return [*args, "-f", s.container, "file:" + out_path]


def ffprobe_args(path: str) -> list[str]:
    """ffprobe's command line that describes the video stream of ``path`` (as JSON)."""
    return ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
            "-show_entries", "stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_packets",
            "-of", "json", "file:" + path]


# --- reading the frames, FFmpeg's output and its file ------------------------------------

HEAD_BYTES = 16  # of each frame, enough to tell its format
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"II*\x00", "tif"),
          (b"MM\x00*", "tif"), (b"BM", "bmp"), (b"\x00\x00\x00\x0cjP  ", "jp2"),
          (b"\xff\x4f\xff\x51", "j2c"), (b"SDPX", "dpx"), (b"XPDS", "dpx"),
          (b"\x01\xda", "sgi"), (b"v/1\x01", "exr"), (b"#?RADIANCE", "hdr"),
          (b"#?RGBE", "hdr"))
#: formats FFmpeg reads whose extension alone says (Targa has no magic number)
_BY_EXTENSION = {"tga": "tga"}
LINEAR_MESSAGE = (
    "The job's frames are {kind}, scene-linear light before Blender's view transform, "
    "which FFmpeg cannot turn into the picture Blender shows; render the job as PNG "
    "(bf submit --format PNG) to get its video.")


def refuse_video(frame_format: str | None) -> str | None:
    """Why a job whose frames are ``frame_format`` (a Blender file format: the job's
    format override, else its scene's) can have no video, None if it can: for a check
    at submit, before any frame is rendered."""
    if frame_format in ("OPEN_EXR", "OPEN_EXR_MULTILAYER", "HDR"):
        kind = "Radiance HDR" if frame_format == "HDR" else "OpenEXR"
        return LINEAR_MESSAGE.format(kind=kind)
    return None


def sniff_format(head: bytes, path: str = "") -> str | None:
    """The image2 extension of a frame from its first bytes (its name's, for Targa)."""
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return _BY_EXTENSION.get(path.rsplit(".", 1)[-1].lower()) if "." in path else None


def input_extension(paths: list[str], heads: list[bytes | None]) -> str:
    """The one format of a video's frames (``heads``: each frame's first bytes, None
    where the file is missing), or EncodeError saying which frame is wrong and how."""
    if not paths:
        raise EncodeError("The video has no frames to encode.", BAD_INPUT, False)
    exts: list[str] = []
    for i, (path, head) in enumerate(zip(paths, heads, strict=True)):
        where = f"frame file {path} ({i + 1} of {len(paths)})"
        if head is None:
            raise EncodeError(f"The {where} is missing.", MISSING_INPUT, True)
        ext = sniff_format(head, path)
        if ext in ("exr", "hdr"):
            kind = "OpenEXR" if ext == "exr" else "Radiance HDR"
            raise EncodeError(LINEAR_MESSAGE.format(kind=kind), BAD_INPUT, False)
        if ext is None:
            raise EncodeError(f"The {where} is {'empty' if not head else 'not an image FFmpeg reads'}.",
                              BAD_INPUT, False)
        if exts and ext != exts[0]:
            raise EncodeError(f"The {where} is {ext.upper()}, the first frame "
                              f"{exts[0].upper()}: a video's frames must share one format.",
                              BAD_INPUT, False)
        exts.append(ext)
    return exts[0]


def progress_frame(line: str) -> int | None:
    """The frames FFmpeg has encoded so far, from a ``-progress`` line (``frame=12``)."""
    key, _, value = line.strip().partition("=")
    return int(value) if key == "frame" and value.isdigit() else None


def failure(returncode: int, tail: str) -> EncodeError:
    """What an FFmpeg that exited ``returncode`` (negative: killed by that signal) with
    ``tail`` as its last messages means, as one sentence."""
    last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
        return EncodeError(f"FFmpeg {how} while encoding the video.", FFMPEG_FAILED, True, tail)
    if "Unknown encoder" in tail or "Encoder not found" in tail:
        return EncodeError(f"This FFmpeg cannot encode the video: {last}", NO_ENCODER, True, tail)
    if "No space left" in tail:
        return EncodeError("The disk filled up while FFmpeg wrote the video.", FFMPEG_FAILED,
                           True, tail)
    return EncodeError(f"FFmpeg exited with code {returncode} while encoding the video"
                       + (f": {last}" if last else "."), FFMPEG_FAILED, False, tail)


def check_probe(settings: VideoSettings, probe: Any, frames: int) -> str | None:
    """What is wrong with the file FFmpeg wrote, from ffprobe's JSON (None: nothing)."""
    streams = probe.get("streams") if isinstance(probe, dict) else None
    if not isinstance(streams, list) or not streams or not isinstance(streams[0], dict):
        return "the file FFmpeg wrote has no video stream"
    stream = streams[0]
    want = ENCODERS[settings.codec]
    if stream.get("codec_name") != want:
        return f"the file's video is {stream.get('codec_name')}, not {want}"
    packets = str(stream.get("nb_read_packets", ""))
    if packets.isdigit() and int(packets) != frames:
        return f"the file holds {packets} frames, not {frames}"
    return None


def parse_version(text: str) -> str:
    """``ffmpeg -version``'s first line's version ("5.1.6-0+deb12u1"), "" if none."""
    m = re.match(r"\s*ffmpeg version (\S+)", text)
    return m.group(1)[:64] if m else ""
