"""Packing real projects with BAT: every dependency travels, and the pack renders the same.

The end-to-end claims render with real Blender after the original project is gone,
so a pack that still pointed at the artist's files would fail here.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from blender_asset_tracer.pack import transfer

from blenderfarm.client.pack import (
    PackError,
    PackResult,
    UploadStats,
    _PromptCopier,
    build_spec,
    pack_project,
    scene_frame_range,
    upload_missing,
)
from blenderfarm.protocol.hashing import sha256_bytes, sha256_file
from blenderfarm.protocol.jobspec import SpecError, validate_spec
from scenes import (
    BLENDER,
    BlenderFailed,
    make_scene,
    needs_blender,
    read_rgba,
    render_frames,
    run_blender,
    textured_colors,
)

EXPECTED = {"shots/shot.blend", "textures/checker.png", "lib/props.blend"}


@pytest.fixture(scope="module")
def textured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pristine ``textured`` project; tests that change files copy it first."""
    return make_scene("textured", tmp_path_factory.mktemp("textured")).parents[1]


@pytest.fixture(scope="module")
def original_frame(textured: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    (path,) = render_frames(textured / "shots" / "shot.blend", [1],
                            tmp_path_factory.mktemp("original"))
    return read_rgba(path)


@pytest.fixture
def project(textured: Path, tmp_path: Path) -> Path:
    """A private copy of the project, free to change or delete."""
    return Path(shutil.copytree(textured, tmp_path / "artist" / "project"))


def render_packed(packed: PackResult, out: Path) -> Any:
    (path,) = render_frames(packed.root / packed.blend, [1], out)
    assert textured_colors(path)["yellow"] > 300, "the texture is not in the packed render"
    return read_rgba(path)


class TestTexturedProject:
    pytestmark = needs_blender

    def test_manifest_holds_every_dependency(self, project: Path, tmp_path: Path) -> None:
        packed = pack_project(project / "shots" / "shot.blend", workdir=tmp_path / "pack")
        assert set(packed.manifest) == EXPECTED
        assert packed.blend == "shots/shot.blend"
        assert packed.missing == []
        assert packed.project_root == project
        for rel, digest in packed.manifest.items():
            assert digest == sha256_file(project / rel)
            assert packed.sizes[rel] == (project / rel).stat().st_size
        assert not (packed.root / "pack-info.txt").exists()

    def test_pack_renders_like_the_original(self, project: Path, tmp_path: Path,
                                            original_frame: Any) -> None:
        packed = pack_project(project / "shots" / "shot.blend", workdir=tmp_path / "pack")
        shutil.rmtree(project)  # the pack must not lean on the artist's files
        assert np.array_equal(render_packed(packed, tmp_path / "out"), original_frame)

    def test_files_outside_the_project_root(self, project: Path, tmp_path: Path,
                                            original_frame: Any) -> None:
        # With the shot's own folder as the root, the texture and the library lie
        # outside it: BAT copies them under _outside_project/ and rewrites the paths.
        packed = pack_project(project / "shots" / "shot.blend",
                              project_root=project / "shots", workdir=tmp_path / "pack")
        assert packed.blend == "shot.blend"
        outside = sorted(r for r in packed.manifest if r.startswith("_outside_project/"))
        assert [r.rsplit("/", 1)[1] for r in outside] == ["props.blend", "checker.png"]
        assert packed.manifest["shot.blend"] != sha256_file(project / "shots" / "shot.blend")
        shutil.rmtree(project)
        assert np.array_equal(render_packed(packed, tmp_path / "out"), original_frame)

    @pytest.mark.parametrize("root", [None, "shots"])
    def test_by_reference_matches_a_full_copy(self, project: Path, tmp_path: Path,
                                              root: str | None) -> None:
        shot = project / "shots" / "shot.blend"
        proot = project / root if root else None
        full = pack_project(shot, project_root=proot, workdir=tmp_path / "full")
        light = pack_project(shot, project_root=proot, workdir=tmp_path / "light", copy=False)
        assert light.manifest == full.manifest and light.sizes == full.sizes
        assert light.blend == full.blend
        # Only .blend files were copied; the texture is read from the artist's folder.
        copied = {p.name for p in light.root.rglob("*") if p.is_file()}
        assert copied == {"shot.blend", "props.blend"}
        texture = next(r for r in light.manifest if r.endswith("checker.png"))
        assert light.path_of(texture) == project / "textures" / "checker.png"
        for rel, digest in light.manifest.items():
            assert sha256_file(light.path_of(rel)) == digest

    def test_missing_texture_is_reported(self, project: Path, tmp_path: Path) -> None:
        texture = project / "textures" / "checker.png"
        texture.unlink()
        packed = pack_project(project / "shots" / "shot.blend", workdir=tmp_path / "pack")
        assert packed.missing == [str(texture)]
        assert set(packed.manifest) == EXPECTED - {"textures/checker.png"}

    def test_scene_frame_range(self, textured: Path) -> None:
        shot = textured / "shots" / "shot.blend"
        assert scene_frame_range(shot) == (1, 3)
        assert scene_frame_range(shot, "Scene") == (1, 3)
        with pytest.raises(PackError, match="no scene named"):
            scene_frame_range(shot, "Nope")

    def test_workdir_must_be_empty(self, project: Path, tmp_path: Path) -> None:
        (tmp_path / "pack").mkdir()
        (tmp_path / "pack" / "stale.txt").write_text("old")
        with pytest.raises(PackError, match="empty"):
            pack_project(project / "shots" / "shot.blend", workdir=tmp_path / "pack")

    def test_damaged_blend_is_one_error(self, project: Path, tmp_path: Path) -> None:
        # Flips bytes in the first half only: BAT 1.23 can loop forever on a damaged
        # DNA name (it sits at the end of the file), which no caller can catch.
        shot = project / "shots" / "shot.blend"
        data = shot.read_bytes()
        rnd = random.Random(7)
        for i in range(16):
            damaged = bytearray(data)
            for _ in range(rnd.randint(1, 30)):
                damaged[rnd.randrange(12, len(data) // 2)] = rnd.randrange(256)
            if i % 3 == 0:
                damaged = damaged[: rnd.randrange(12, len(data))]
            shot.write_bytes(damaged)
            try:
                pack_project(shot, workdir=tmp_path / f"pack{i}")
                scene_frame_range(shot)
            except PackError as exc:
                assert "shot.blend" in exc.path or "props.blend" in exc.path

    @pytest.mark.timeout(120)  # a copier that misses the error takes the file again forever
    def test_a_file_that_cannot_be_copied_stops_the_pack(self, project: Path,
                                                         tmp_path: Path) -> None:
        # A named pipe passes BAT's checks (it exists, it has a size) and then fails to
        # copy, even for root; with copy=False it would only be referenced, not copied.
        texture = project / "textures" / "checker.png"
        texture.unlink()
        os.mkfifo(texture)
        with pytest.raises(PackError) as info:
            pack_project(project / "shots" / "shot.blend", workdir=tmp_path / "pack")
        assert info.value.message.startswith("cannot copy the project: ")
        assert str(texture) in info.value.message

    def test_spec_from_a_real_pack(self, project: Path, tmp_path: Path) -> None:
        packed = pack_project(project / "shots" / "shot.blend", workdir=tmp_path / "pack")
        spec = build_spec(packed, frames="1-3", chunk=2, overrides={"samples": 2})
        assert validate_spec(spec).blend == "shots/shot.blend"
        assert spec["manifest"] == packed.manifest and spec["name"] == "shot"


ZSTD_MAGIC, GZIP_MAGIC = b"\x28\xb5\x2f\xfd", b"\x1f\x8b"


def save_compressed(blend: Path, how: str) -> None:
    """Save ``blend`` again with absolute paths (which packing rewrites), compressed:
    ``zstd`` as Blender 3.0+ saves it, ``gzip`` as Blender 2.x did."""
    script = ("import bpy; bpy.ops.file.make_paths_absolute(); "
              "bpy.ops.wm.save_as_mainfile(filepath=bpy.data.filepath, "
              f"compress={how == 'zstd'}, relative_remap=False)")
    proc = run_blender([str(blend), "--python-expr", script])
    if proc.returncode != 0:
        raise BlenderFailed(f"saving {blend} compressed", proc)
    if how == "gzip":
        blend.write_bytes(gzip.compress(blend.read_bytes()))
    assert blend.read_bytes().startswith(ZSTD_MAGIC if how == "zstd" else GZIP_MAGIC)


def submit_json(capsys: pytest.CaptureFixture[str], args: list[str]) -> Any:
    from blenderfarm.client.cli import main

    assert main(["submit", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("how", ["zstd", "gzip"])
@pytest.mark.blender
@pytest.mark.skipif(BLENDER is None, reason="blender is not on PATH")
def test_a_compressed_blend_whose_paths_are_rewritten_packs_the_same_bytes_every_time(
        project: Path, tmp_path: Path, farm_procs: Any, capsys: pytest.CaptureFixture[str],
        original_frame: Any, how: str) -> None:
    # BAT writes a .blend it rewrites gzip-compressed, stamped with the time and its
    # temporary file's random name: every submit of an unchanged project uploaded it again.
    shot = project / "shots" / "shot.blend"
    save_compressed(shot, how)
    first = pack_project(shot, workdir=tmp_path / "one")
    second = pack_project(shot, workdir=tmp_path / "two")
    assert first.blend == "shot.blend"
    assert first.manifest["shot.blend"] != sha256_file(shot), "packing rewrote no path"
    assert any(r.startswith("_outside_project/") for r in first.manifest)
    assert first.manifest == second.manifest and first.sizes == second.sizes
    for rel in first.manifest:
        assert (first.root / rel).read_bytes() == (second.root / rel).read_bytes(), rel
    # Compressed the way the artist saved it (a Blender older than 3.0 reads no zstd).
    assert (first.root / "shot.blend").read_bytes()[:4] == shot.read_bytes()[:4]

    server = farm_procs.server()
    args = [str(shot), "--server", server.url, "--frames", "1", "--paused"]
    once = submit_json(capsys, args)
    assert once["upload"]["files_sent"] == len(first.manifest)
    again = submit_json(capsys, args)
    assert again["upload"]["files_sent"] == 0 and again["upload"]["bytes_sent"] == 0

    shutil.rmtree(project)  # the pack finds its texture and library inside itself
    assert np.array_equal(render_packed(first, tmp_path / "out"), original_frame)


def test_not_a_blend_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.blend"
    junk.write_bytes(b"this is not a blend file" * 10)
    with pytest.raises(PackError, match="not a readable .blend") as info:
        pack_project(junk, workdir=tmp_path / "pack")
    assert info.value.path == str(junk)
    with pytest.raises(PackError):
        scene_frame_range(junk)


def test_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="no such .blend"):
        pack_project(tmp_path / "nope.blend", workdir=tmp_path / "pack")


# --- the copy loop: pure, no Blender ------------------------------------------------------


class _RenamedPrivates(_PromptCopier):
    """BAT as a release that renames its private error event would be: the public
    ``has_error`` and ``error_set`` work, ``_FileTransferer__error`` is gone."""

    def __init__(self) -> None:
        super().__init__()
        delattr(self, "_FileTransferer__error")
        self._failed = threading.Event()

    @property
    def has_error(self) -> bool:
        return self._failed.is_set()

    def error_set(self, message: str) -> None:
        self._failed.set()


def _queued(copier: _PromptCopier, root: Path, count: int) -> _PromptCopier:
    for i in range(count):
        copier.queue.put((root / f"f{i}", root / "pack" / f"f{i}", transfer.Action.COPY))
    copier.done.set()  # everything queued: the loop would otherwise wait for more
    return copier


def test_a_transfer_error_stops_the_copy_loop_whatever_bat_names_its_privates(
        tmp_path: Path) -> None:
    copier = _queued(_RenamedPrivates(), tmp_path, 3)
    copier.error_set("Error transferring f0 to pack/f0")
    assert list(copier.iter_queue()) == []
    assert copier.queue.qsize() == 3  # left for BAT to report as not transferred


def test_an_abort_stops_the_copy_loop(tmp_path: Path) -> None:
    copier = _queued(_PromptCopier(), tmp_path, 2)
    copier.abort()
    assert list(copier.iter_queue()) == []
    fresh = _queued(_PromptCopier(), tmp_path, 2)
    assert len(list(fresh.iter_queue())) == 2


# --- build_spec and upload_missing: pure, no Blender ------------------------------------------

A, B = sha256_bytes(b"a"), sha256_bytes(b"b")
BLEND = b"BLENDER-v304REND"  # a .blend's header: build_spec reads which Blender saved it


def fake_pack(root: Path, blend: bytes = b"a") -> PackResult:
    files = {"shots/shot.blend": blend, "tex/one.png": b"b", "tex/same-as-one.png": b"b"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return PackResult(root=root, blend="shots/shot.blend",
                      manifest={r: sha256_bytes(d) for r, d in files.items()},
                      missing=[], sizes={r: len(d) for r, d in files.items()})


def test_build_spec_normalises(tmp_path: Path) -> None:
    spec = build_spec(fake_pack(tmp_path, BLEND), name="My shot", frames=" 1-10x2 ",
                      priority=70, overrides={"format": "open_exr", "samples": None,
                                              "denoise": False}, scene="Scene", paused=True)
    assert spec["frames"] == "1-10x2"
    assert spec["overrides"] == {"format": "OPEN_EXR", "denoise": False}
    assert (spec["name"], spec["priority"], spec["scene"], spec["paused"]) == (
        "My shot", 70, "Scene", True)
    assert spec["blender_saved"] == "3.4" and spec["blender"] is None


def test_build_spec_says_a_blend_without_a_header_cannot_be_placed(tmp_path: Path) -> None:
    packed = fake_pack(tmp_path, b"not a blend")
    with pytest.raises(PackError, match="cannot tell which Blender saved it"):
        build_spec(packed, frames="1")
    assert build_spec(packed, frames="1", blender_saved="4.5")["blender_saved"] == "4.5"


@pytest.mark.parametrize(("kwargs", "path"), [
    ({"frames": "10-1"}, "frames"),
    ({"frames": "1-x"}, "frames"),
    ({"frames": "1", "priority": 101}, "priority"),
    ({"frames": "1", "chunk": 0}, "chunk"),
    ({"frames": "1", "overrides": {"format": "FFMPEG"}}, "overrides.format"),  # a movie
    ({"frames": "1", "overrides": {"samples": 0}}, "overrides.samples"),
    ({"frames": "1", "overrides": {"bogus": 1}}, "overrides.bogus"),
    ({"frames": "1", "name": "a\nb"}, "name"),
])
def test_build_spec_rejects(tmp_path: Path, kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as info:
        build_spec(fake_pack(tmp_path, BLEND), **kwargs)
    assert info.value.path == path


class RecordingServer:
    """Stands in for api.Client in this unit test of the dedupe logic only."""

    def __init__(self, stored: set[str]) -> None:
        self.stored = stored
        self.asked: list[list[str]] = []
        self.put: list[str] = []

    def missing_blobs(self, hashes: list[str]) -> list[str]:
        self.asked.append(list(hashes))
        return [h for h in hashes if h not in self.stored]

    def put_blob(self, sha: str, path: Path, on_bytes: Any = None) -> dict[str, Any]:
        assert sha256_file(path) == sha
        self.put.append(sha)
        if on_bytes is not None:
            on_bytes(path.stat().st_size)
        return {"sha256": sha, "size": path.stat().st_size}


def test_upload_sends_each_missing_hash_once(tmp_path: Path) -> None:
    server = RecordingServer(stored=set())
    seen: list[tuple[int, int]] = []
    stats = upload_missing(server, fake_pack(tmp_path),  # type: ignore[arg-type]
                           on_progress=lambda sent, total: seen.append((sent, total)))
    assert sorted(server.put) == sorted([A, B])
    assert sorted(server.asked[0]) == sorted([A, B])
    assert stats == UploadStats(files_sent=2, bytes_sent=2, files_skipped=1, bytes_skipped=1)
    assert seen[-1] == (2, 2)


def test_upload_skips_what_the_server_has(tmp_path: Path) -> None:
    server = RecordingServer(stored={A, B})
    stats = upload_missing(server, fake_pack(tmp_path))  # type: ignore[arg-type]
    assert server.put == []
    assert stats == UploadStats(files_sent=0, bytes_sent=0, files_skipped=3, bytes_skipped=3)


def _project(root: Path, sizes: list[int]) -> PackResult:
    rng = random.Random(7)
    manifest, lengths = {}, {}
    for i, size in enumerate(sizes):
        rel = "scene.blend" if i == 0 else f"tex/t{i:02d}.png"
        data = rng.randbytes(size)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        manifest[rel], lengths[rel] = sha256_bytes(data), size
    return PackResult(root=root, blend="scene.blend", manifest=manifest, missing=[],
                      sizes=lengths)


def test_parallel_upload_to_a_real_server_stores_every_file(farm_procs, tmp_path: Path) -> None:
    from blenderfarm.client.api import Client

    server = farm_procs.server()
    packed = _project(tmp_path / "p", [3 << 20, 1 << 20, 700_000, 5, 64_000, 2 << 20, 0, 9_999])
    seen: list[int] = []
    client = Client(server.url)
    stats = upload_missing(client, packed, on_progress=lambda sent, _t: seen.append(sent),
                           connections=3)
    assert stats.files_sent == 8 and stats.bytes_sent == packed.total_bytes
    assert seen == sorted(seen) and seen[-1] == packed.total_bytes  # only ever forward
    assert client.missing_blobs(list(packed.manifest.values())) == []
    again = upload_missing(client, packed, connections=3)
    assert again.files_sent == 0 and again.bytes_skipped == packed.total_bytes


def test_a_failed_file_stops_the_parallel_upload_and_names_the_error(farm_procs,
                                                                      tmp_path: Path) -> None:
    from blenderfarm.client.api import ApiError, Client

    server = farm_procs.server()
    packed = _project(tmp_path / "p", [1 << 20] * 6)
    (tmp_path / "p" / "tex" / "t03.png").write_bytes(b"changed after hashing")
    client = Client(server.url)
    with pytest.raises(ApiError) as info:
        upload_missing(client, packed, connections=3)
    assert "hash" in str(info.value)
    bad = packed.manifest["tex/t03.png"]
    assert bad in client.missing_blobs([bad])  # nothing half-stored under that name
