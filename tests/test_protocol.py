"""The contract: codec round-trips, decoder robustness, frame ranges, spec validation."""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blenderfarm.protocol import messages as m
from blenderfarm.protocol.frames import (
    MAX_FRAME,
    FrameRangeError,
    chunk_frames,
    format_frames,
    parse_frames,
)
from blenderfarm.protocol.jobspec import SpecError, safe_pattern, validate_spec
from blenderfarm.protocol.paths import PathError, normalize_relpath

SHA = "a" * 64
text = st.text(max_size=30)
ints = st.integers(min_value=-(2**31), max_value=2**31)


def _strategy(hint):
    """Values that fit a field's annotation as messages.py declares it (its bounds too)."""
    base, limit = hint, None
    if typing.get_origin(hint) is typing.Annotated:
        base, *extra = typing.get_args(hint)
        if "json" in extra:
            return st.dictionaries(text, st.none() | ints | text, max_size=5)
        if "id" in extra:
            return st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
        limit = next((e for e in extra if isinstance(e, m.Limit)), None)
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(base) if a is not type(None)]
        return st.none() | _strategy(typing.Annotated[inner, limit] if limit else inner)
    if base is str:
        return st.text(max_size=min(30, limit.hi) if limit else 30)
    if base is int:
        lo, hi = (limit.lo, limit.hi) if limit else (-(2**31), 2**31)
        return st.integers(max(lo, -(2**31)), min(hi, 2**31))
    if base is float:
        lo, hi = (limit.lo, limit.hi) if limit else (-1e9, 1e9)
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if base is bool:
        return st.booleans()
    if origin is list:
        return st.lists(_strategy(typing.get_args(base)[0]), max_size=4)
    if origin is dict:
        k, v = typing.get_args(base)
        return st.dictionaries(_strategy(k), _strategy(v), max_size=4)
    if dataclasses.is_dataclass(base):
        return _message_strategy(base)
    raise AssertionError(f"no strategy for {hint}")


def _message_strategy(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


all_messages = st.one_of([_message_strategy(c) for c in m.REGISTRY.values()])


@given(all_messages)
def test_every_message_round_trips(msg: m.Message) -> None:
    assert m.decode(m.encode(msg)) == msg


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(m.ProtocolError):
        m.decode(data)


@given(all_messages, st.data())
def test_corrupted_messages_raise_only_protocol_error(msg: m.Message, data) -> None:
    raw = bytearray(m.encode(msg))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(m.ProtocolError):
        m.decode(bytes(raw))


@pytest.mark.parametrize("bad", [
    b"", b"\xc1", b"\x91\x01", b"\x81\xa1t\x01", b"\x81\xa1t\xa5bogus",
    m.encode(m.Ack(task_id="x"))[:-1],
])
def test_malformed_frames(bad: bytes) -> None:
    with pytest.raises(m.ProtocolError):
        m.decode(bad)


def test_wrong_field_type_and_missing_field() -> None:
    import msgpack

    with pytest.raises(m.ProtocolError, match="'task_id' must be a string"):
        m.decode(msgpack.packb({"t": "ack", "task_id": 5}))
    with pytest.raises(m.ProtocolError, match="'task_id' is missing"):
        m.decode(msgpack.packb({"t": "progress"}))
    with pytest.raises(m.ProtocolError, match="unknown message type"):
        m.decode(m.encode(m.Ack(task_id="x")), allowed=m.NODE_MESSAGES)


def test_frame_grammar() -> None:
    assert parse_frames("1-10,20,30-40x2") == [*range(1, 11), 20, *range(30, 41, 2)]
    assert parse_frames("5") == [5]
    assert parse_frames(" 3 - 1 x 1 ".replace("3 - 1", "1 - 3")) == [1, 2, 3]
    assert parse_frames("1-3,2-4") == [1, 2, 3, 4]
    for bad in ["", "a", "1-", "5-1", "1-10x0", f"0-{MAX_FRAME + 1}", "1,,2", "--3", "-1--3",
                f"{-MAX_FRAME - 1}-0", "3--1", "- 3"]:
        with pytest.raises(FrameRangeError):
            parse_frames(bad)


def test_negative_frames_are_blender_frames_too() -> None:
    assert parse_frames("-5--1") == [-5, -4, -3, -2, -1]
    assert parse_frames("-3-3") == [-3, -2, -1, 0, 1, 2, 3]
    assert parse_frames("-3") == [-3]
    assert parse_frames("-4-4x4, 10") == [-4, 0, 4, 10]
    assert parse_frames(f"{-MAX_FRAME}") == [-MAX_FRAME]
    assert format_frames([-5, -4, -3, 0, 2, 3]) == "-5--3,0,2-3"
    assert parse_frames(validate_spec(_spec(frames="-5--1")).frames) == [-5, -4, -3, -2, -1]


@given(st.lists(st.integers(-5000, 5000), min_size=1, max_size=200))
def test_format_parse_round_trip_with_negative_frames(frames: list[int]) -> None:
    assert parse_frames(format_frames(frames)) == sorted(set(frames))


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=200))
def test_format_parse_round_trip(frames: list[int]) -> None:
    assert parse_frames(format_frames(frames)) == sorted(set(frames))


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 50))
def test_ranges_match_python_range(a: int, length: int, step: int) -> None:
    assert parse_frames(f"{a}-{a + length}x{step}") == list(range(a, a + length + 1, step))


@given(st.lists(st.integers(0, 100), max_size=100, unique=True), st.integers(1, 20))
def test_chunks_cover_frames_in_order(frames: list[int], size: int) -> None:
    chunks = chunk_frames(sorted(frames), size)
    assert [f for c in chunks for f in c] == sorted(frames)
    assert all(1 <= len(c) <= size for c in chunks)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../x", "C:/x", "c:x", "a\x00b",
                                 "", "con.txt", "a/NUL", "\\\\server\\share"])
def test_hostile_paths(bad: str) -> None:
    with pytest.raises(PathError):
        normalize_relpath(bad)


def test_paths_are_normalised() -> None:
    assert normalize_relpath("a\\b/./c.png") == "a/b/c.png"
    assert normalize_relpath("./shots//s.blend") == "shots/s.blend"


def _spec(**kw):
    base = {"blend": "s.blend", "manifest": {"s.blend": SHA}, "frames": "1-3"}
    base.update(kw)
    return base


def test_valid_spec_defaults() -> None:
    spec = validate_spec(_spec())
    assert (spec.name, spec.chunk, spec.priority, spec.overrides.denoise) == ("s", 1, 50, None)
    assert spec.output_pattern is None and spec.scene_format is None and spec.notes == []


def test_a_spec_names_frames_with_the_scenes_pattern() -> None:
    for pattern in ["", "frame_", "shot_###", "a_##_b", "Szene-1.v2#", "ünï_"]:
        assert validate_spec(_spec(output_pattern=pattern)).output_pattern == pattern
    for bad in ["a/b", ".hidden", "a b", "x" * 121, 5, "a:b", "{scene}"]:
        with pytest.raises(SpecError) as info:
            validate_spec(_spec(output_pattern=bad))
        assert info.value.path == "output_pattern"
    # what the submitters send: the file part of the scene's path, made safe
    assert [safe_pattern(p) for p in ("//render/frame_", "/tmp/", "C:\\r\\shot_###",
                                       "//out/my shot.###", "//.x", "")] == \
        ["frame_", "", "shot_###", "my_shot.###", "x", ""]


def test_more_formats_are_offered_and_a_movie_scene_gets_a_note() -> None:
    for fmt in ("OPEN_EXR_MULTILAYER", "TIFF", "png"):
        assert validate_spec(_spec(overrides={"format": fmt})).overrides.format == fmt.upper()
    movie = validate_spec(_spec(scene_format="FFMPEG"))
    assert movie.notes and "lossless PNG" in movie.notes[0] and "FFMPEG" in movie.notes[0]
    assert validate_spec(_spec(scene_format="FFMPEG", overrides={"format": "TIFF"})).notes == []
    assert validate_spec(_spec(scene_format="DPX")).notes == []
    with pytest.raises(SpecError, match="scene_format"):
        validate_spec(_spec(scene_format="GIF"))


@pytest.mark.parametrize("change, field", [
    ({"frames": "x"}, "frames"), ({"chunk": 0}, "chunk"), ({"priority": 101}, "priority"),
    ({"blend": "other.blend"}, "blend"), ({"manifest": {}}, "manifest"),
    ({"manifest": {"../s.blend": SHA}}, "manifest['../s.blend']"),
    ({"manifest": {"s.blend": "xyz"}}, "manifest['s.blend']"),
    ({"overrides": {"samples": 0}}, "overrides.samples"),
    ({"overrides": {"format": "GIF"}}, "overrides.format"),
    ({"overrides": {"denoise": "yes"}}, "overrides.denoise"),
    ({"overrides": {"bogus": 1}}, "overrides.bogus"), ({"bogus": 1}, "bogus"),
    ({"chunk": True}, "chunk"), ({"tags": "gpu"}, "tags"), ({"tags": ["gpu", "-x"]}, "tags[1]"),
    ({"tags": ["a b"]}, "tags[0]"), ({"tags": ["x" * 65]}, "tags[0]"), ({"tags": [7]}, "tags[0]"),
    ({"tags": [f"t{i}" for i in range(33)]}, "tags"),
])
def test_spec_errors_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(_spec(**change))
    assert info.value.path == field


def test_a_job_requires_its_tags_once_each_in_order() -> None:
    assert validate_spec(_spec(tags=["gpu", "ssd", "gpu"])).tags == ["gpu", "ssd"]
    assert validate_spec(_spec()).tags == [] and validate_spec(_spec(tags=None)).tags == []


def test_a_hello_with_a_tag_outside_the_alphabet_is_refused() -> None:
    for bad in ("", "a b", "-x", "x" * 65, "caf\u00e9/gpu"):
        raw = m.encode(m.Hello(protocol=1, name="n", uid="u", tags=["gpu", bad]))
        with pytest.raises(m.ProtocolError, match=r"'tags\[1\]'"):
            m.decode(raw)
    raw = m.encode(m.Hello(protocol=1, name="n", uid="u", blender=m.BlenderCaps(opengl=True)))
    assert m.decode(raw).blender.opengl is True  # type: ignore[attr-defined]


def test_linking_a_file_twice_leaves_no_twin(tmp_path) -> None:
    from blenderfarm.protocol.hashing import link_or_copy

    src = tmp_path / "blob"
    src.write_bytes(b"a frame")
    dest = tmp_path / "job" / "shot_0001.png"
    for _ in range(3):  # frame_done, task_done, a late report
        link_or_copy(src, dest)
    assert dest.read_bytes() == b"a frame"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["shot_0001.png"]
    other = tmp_path / "other"
    other.write_bytes(b"another frame")
    link_or_copy(other, dest)  # a new render of the frame replaces it
    assert dest.read_bytes() == b"another frame"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["shot_0001.png"]
