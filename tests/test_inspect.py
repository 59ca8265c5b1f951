"""POST /api/inspect: what an uploaded .blend offers, read on the server without Blender.

The scenes are real .blend files made with Blender; the server is a real bf-server
process (or the app in this process where the test changes its settings or checks
that it never blocks its loop); uploads go over real sockets. The path mapping that
decides found/missing/outside is tested as the pure logic it is.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blenderfarm.client import api as client_api
from blenderfarm.protocol.hashing import sha256_file
from blenderfarm.server import tokens
from blenderfarm.server.app import make_app
from blenderfarm.server.blend_deps import ManifestIndex, Reference, resolve_ref
from blenderfarm.server.config import ServerConfig
from procs import post_json, wait_for
from scenes import BLENDER, BlenderFailed, make_scene, run_blender

#: a test that needs a real Blender, skipped where there is none
blender = pytest.mark.skipif(BLENDER is None, reason="blender is not on PATH")

# --- the path mapping: pure -----------------------------------------------------------------


@pytest.mark.parametrize(("path", "referrer", "expected"), [
    ("//tex/wood.png", "shots/shot.blend", "shots/tex/wood.png"),
    ("//../textures/a.png", "shots/shot.blend", "textures/a.png"),
    ("//./a/../b.png", "shot.blend", "b.png"),
    ("//..\\textures\\a.png", "shots/shot.blend", "textures/a.png"),  # saved on Windows
    ("tex/a.png", "shots/shot.blend", "shots/tex/a.png"),  # as BAT resolves it
    ("//../a.png", "shot.blend", None),  # one '..' too many
    ("//../../../etc/passwd", "shots/shot.blend", None),
    ("/srv/textures/a.png", "shot.blend", None),
    ("C:\\textures\\a.png", "shot.blend", None),
    ("\\\\server\\share\\a.png", "shot.blend", None),
    ("//", "shot.blend", None),
])
def test_resolve_ref(path: str, referrer: str, expected: str | None) -> None:
    assert resolve_ref(path, referrer) == expected


def test_a_reference_is_found_missing_or_outside() -> None:
    index = ManifestIndex({"shots/shot.blend", "shots/tex/wood.png", "seq/f_0001.png",
                           "seq/f_0002.png", "udim/w.1001.png", "cache/a/1.bphys"})
    found = ("//tex/wood.png", "shots/shot.blend", False)
    assert index.locate(*found) is None
    assert index.locate("//tex/oak.png", "shots/shot.blend") == \
        Reference("//tex/oak.png", "shots/shot.blend", outside=False)
    assert index.locate("//../../x.png", "shots/shot.blend") == \
        Reference("//../../x.png", "shots/shot.blend", outside=True)
    assert index.locate("/srv/x.png", "shots/shot.blend").outside  # type: ignore[union-attr]
    # Sequences as BAT reports them: a glob, a UDIM name, a first file, a folder.
    assert index.has("seq/f_*.png", is_sequence=True)
    assert not index.has("seq/g_*.png", is_sequence=True)
    assert index.has("udim/w.<UDIM>.png", is_sequence=True)
    assert not index.has("udim/v.<UDIM>.png", is_sequence=True)
    assert index.has("seq/f_0001.png", is_sequence=True)
    assert index.has("cache/a", is_sequence=True) and index.has("cache", is_sequence=True)
    assert not index.has("cache/b", is_sequence=True)
    assert index.has("*/f_0002.png", is_sequence=True)  # a glob in a folder's name
    assert not index.has("seq", is_sequence=False)  # a folder is no file


# --- the project: two scenes, a texture, a library with its own, outside references ---------

BUILD = r"""
import bpy, os, struct, sys, zlib
project, outside = sys.argv[sys.argv.index("--") + 1:]

def png(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    raw = b"\x00" + b"\xff\x00\x00"
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

def save():
    bpy.context.preferences.filepaths.save_version = 0
    bpy.ops.wm.save_mainfile()

# A library outside the project, linked by its absolute path, with a texture of its own:
# the inspection must never open it (its texture would show up).
bpy.ops.wm.read_factory_settings(use_empty=True)
png(os.path.join(outside, "evil_tex.png"))
png(os.path.join(outside, "secret.png"))
evil = bpy.data.collections.new("Evil")
bpy.context.scene.collection.children.link(evil)
box = bpy.data.objects.new("EvilBox", bpy.data.meshes.new("EvilMesh"))
evil.objects.link(box)
mat = bpy.data.materials.new("EvilMat"); mat.use_nodes = True
img = bpy.data.images.load(os.path.join(outside, "evil_tex.png")); img.filepath = "//evil_tex.png"
mat.node_tree.nodes.new("ShaderNodeTexImage").image = img
box.data.materials.append(mat)
bpy.context.preferences.filepaths.save_version = 0
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(outside, "evil.blend"), relative_remap=True)

# The library in the project gets a texture of its own, next to it.
lib = os.path.join(project, "lib", "props.blend")
png(os.path.join(project, "lib", "tex", "wood.png"))
bpy.ops.wm.open_mainfile(filepath=lib)
img = bpy.data.images.load(os.path.join(project, "lib", "tex", "wood.png"))
img.filepath = "//tex/wood.png"
bpy.data.materials["PropMat"].node_tree.nodes.new("ShaderNodeTexImage").image = img
save()

bpy.ops.wm.open_mainfile(filepath=os.path.join(project, "shots", "shot.blend"))
alt = bpy.data.scenes.new("Alt")
alt.render.engine = "BLENDER_EEVEE"
alt.eevee.taa_render_samples = 16
alt.frame_start, alt.frame_end, alt.frame_step = 10, 40, 3
alt.render.fps, alt.render.fps_base = 30000, 1001
alt.render.resolution_x, alt.render.resolution_y = 1920, 1080
alt.render.resolution_percentage = 50
alt.render.image_settings.file_format = "JPEG"
alt.render.filepath = "//out/alt shot_####"
alt.collection.objects.link(bpy.data.objects.new("AltCam", bpy.data.cameras.new("AltCam")))
sub = bpy.data.collections.new("Sub")
alt.collection.children.link(sub)
side = bpy.data.objects.new("SideCam", bpy.data.cameras.new("SideCam"))
sub.objects.link(side)
alt.camera = side
alt.view_layers.new("Second")
secret = bpy.data.images.load(os.path.join(outside, "secret.png"))
secret.filepath = os.path.join(outside, "secret.png")  # absolute: outside the project
secret.use_fake_user = True
with bpy.data.libraries.load(os.path.join(outside, "evil.blend"), link=True,
                             relative=False) as (_src, dst):
    dst.collections = ["Evil"]
inst = bpy.data.objects.new("EvilInstance", None)
inst.instance_type = "COLLECTION"
inst.instance_collection = dst.collections[0]
bpy.data.scenes["Scene"].collection.objects.link(inst)
bpy.context.window.scene = bpy.data.scenes["Scene"]
save()
print("BUILT")
"""

FILES = ("shots/shot.blend", "lib/props.blend", "textures/checker.png", "lib/tex/wood.png")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("inspect")
    root = make_scene("textured", base).parents[1]
    proc = run_blender(["--python-expr", BUILD, "--", str(root), str(base / "outside")])
    if "BUILT" not in proc.stdout:
        raise BlenderFailed("building the inspect project", proc)
    return root


def manifest_of(root: Path, files: tuple[str, ...] = FILES) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in files}


def put(url: str, data: bytes) -> None:
    sha = hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"{url}/api/blobs/{sha}", data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status in (200, 201)


def upload(url: str, root: Path, files: tuple[str, ...] = FILES) -> dict[str, str]:
    for rel in files:
        put(url, (root / rel).read_bytes())
    return manifest_of(root, files)


def inspect(url: str, manifest: dict[str, str], blend: str = "shots/shot.blend") -> Any:
    status, body = post_json(url + "/api/inspect", {"blend": blend, "manifest": manifest})
    assert status == 200, body
    return body


def missing_paths(answer: Any) -> set[tuple[str, str, bool]]:
    return {(m["path"], m["from"], m["outside"]) for m in answer["missing"]}


def blob_files(data_dir: Path) -> list[Path]:
    """Every file of the blob store (blobs and temporary files alike)."""
    return [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]


# --- what the server reads of a real project ----------------------------------------------


@pytest.mark.blender
@blender
class TestProject:
    def test_scenes_and_what_they_reference(self, project: Path, farm_procs: Any,
                                            tmp_path: Path) -> None:
        server = farm_procs.server()
        answer = inspect(server.url, upload(server.url, project))
        assert answer["blend"] == "shots/shot.blend"
        assert answer["blender_saved"] == "3.4" and answer["scene"] == "Scene"
        alt, scene = answer["scenes"]
        assert scene == {
            "name": "Scene", "frame_start": 1, "frame_end": 3, "frame_step": 1, "fps": 24.0,
            "resolution": [64, 64], "resolution_percent": 100,
            "resolution_base": [64, 64], "engine": "CYCLES",
            "samples": 4, "output_path": "//render/frame_", "output_format": "PNG",
            "cameras": ["Camera"], "camera": "Camera", "view_layers": ["ViewLayer"],
            "spec": {"output_pattern": "frame_", "scene_format": "PNG",
                     "blender_saved": "3.4", "resolution": [64, 64]}}
        assert alt["name"] == "Alt" and alt["engine"] == "BLENDER_EEVEE"
        assert (alt["frame_start"], alt["frame_end"], alt["frame_step"]) == (10, 40, 3)
        assert alt["fps"] == pytest.approx(30000 / 1001)
        assert alt["resolution"] == [960, 540] and alt["resolution_percent"] == 50
        assert alt["resolution_base"] == [1920, 1080]  # what a % override scales
        assert alt["samples"] == 16 and alt["output_format"] == "JPEG"
        assert alt["cameras"] == ["AltCam", "SideCam"] and alt["camera"] == "SideCam"
        assert alt["view_layers"] == ["ViewLayer", "Second"]
        assert alt["spec"]["output_pattern"] == "alt_shot_####"

        # Everything of the project is there: only what lies outside it is missing, and
        # the library outside was never opened (its own texture would be listed).
        outside = project.parent / "outside"
        assert missing_paths(answer) == {
            (str(outside / "secret.png"), "shots/shot.blend", True),
            (str(outside / "evil.blend"), "shots/shot.blend", True)}
        assert answer["missing_total"] == 2
        assert list((tmp_path / "server" / "inspect").iterdir()) == []  # no scratch left

    def test_a_compressed_blend_reads_the_same(self, project: Path, farm_procs: Any,
                                                tmp_path: Path) -> None:
        import zstandard

        server = farm_procs.server()
        manifest = upload(server.url, project)
        plain = inspect(server.url, manifest)
        packed = zstandard.ZstdCompressor().compress((project / FILES[0]).read_bytes())
        put(server.url, packed)
        manifest[FILES[0]] = hashlib.sha256(packed).hexdigest()
        assert inspect(server.url, manifest) == plain
        assert list((tmp_path / "server" / "inspect").iterdir()) == []  # nor its copy

    def test_a_file_the_manifest_lacks_is_missing(self, project: Path,
                                                  farm_procs: Any) -> None:
        server = farm_procs.server()
        full = upload(server.url, project)
        no_texture = {k: v for k, v in full.items() if k != "textures/checker.png"}
        assert ("//../textures/checker.png", "shots/shot.blend", False) in \
            missing_paths(inspect(server.url, no_texture))
        # The linked library's own texture is traced, relative to the library.
        no_wood = {k: v for k, v in full.items() if k != "lib/tex/wood.png"}
        assert ("//tex/wood.png", "lib/props.blend", False) in \
            missing_paths(inspect(server.url, no_wood))
        # A library the manifest lacks is missing, and what it would need is not asked.
        no_lib = {k: v for k, v in full.items() if k != "lib/props.blend"}
        got = missing_paths(inspect(server.url, no_lib))
        assert ("//../lib/props.blend", "shots/shot.blend", False) in got
        assert not any(m[1] == "lib/props.blend" for m in got)

    def test_a_damaged_library_is_named(self, project: Path, farm_procs: Any) -> None:
        server = farm_procs.server()
        manifest = upload(server.url, project)
        lib = (project / "lib" / "props.blend").read_bytes()
        cut = lib[: len(lib) // 2]
        put(server.url, cut)
        manifest["lib/props.blend"] = hashlib.sha256(cut).hexdigest()
        status, body = post_json(server.url + "/api/inspect", {"blend": "shots/shot.blend",
                                                          "manifest": manifest})
        assert status == 400 and body["error"]["code"] == "corrupt_blend", body
        assert body["error"]["message"].startswith("lib/props.blend is damaged")
        assert body["error"]["data"] == {"path": "lib/props.blend"}
        data_dir = Path(server.log_path).parent
        assert blob_files(data_dir) and not (data_dir / "blobs" / manifest[
            "lib/props.blend"][:2] / manifest["lib/props.blend"]).exists()
        assert (data_dir / "blobs" / manifest[FILES[0]][:2] / manifest[FILES[0]]).exists()

    def test_the_spec_fields_are_what_bf_submit_sends(
            self, project: Path, farm_procs: Any, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        from blenderfarm.client.cli import main

        server = farm_procs.server()
        sent: list[dict[str, Any]] = []
        create = client_api.Client.create_job

        def recording(self: client_api.Client, spec: dict[str, Any]) -> dict[str, Any]:
            sent.append(spec)
            return create(self, spec)

        monkeypatch.setattr(client_api.Client, "create_job", recording)
        shot = str(project / "shots" / "shot.blend")
        for extra in ([], ["--scene", "Alt"]):
            assert main(["submit", shot, "--server", server.url, "--frames", "1", "--paused",
                         "--json", *extra]) == 0, capsys.readouterr().err
        answer = inspect(server.url, upload(server.url, project))
        by_name = {s["name"]: s for s in answer["scenes"]}
        for spec, scene in zip(sent, ("Scene", "Alt"), strict=True):
            fields = by_name[scene]["spec"]
            assert fields == {k: spec.get(k) for k in fields}, scene
            assert all(v is not None for v in fields.values())


# --- refusals ---------------------------------------------------------------------------------


def _refusal(url: str, data: bytes, name: str = "shot.blend") -> tuple[int, Any, str]:
    put(url, data)
    sha = hashlib.sha256(data).hexdigest()
    status, body = post_json(url + "/api/inspect", {"blend": name, "manifest": {name: sha}})
    return status, body["error"], sha


def _one_sentence(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    assert ". " not in message.rstrip(".")


@pytest.mark.blender
@blender
def test_a_truncated_blend_is_refused_and_its_blob_is_gone(project: Path,
                                                           farm_procs: Any) -> None:
    server = farm_procs.server()
    data = (project / "shots" / "shot.blend").read_bytes()
    cut = data[: len(data) // 2]
    status, error, sha = _refusal(server.url, cut)
    assert status == 400 and error["code"] == "corrupt_blend", error
    assert "shot.blend" in error["message"]
    _one_sentence(error["message"])
    data_dir = Path(server.log_path).parent
    assert not (data_dir / "blobs" / sha[:2] / sha).exists()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.url}/api/blobs/{sha}", timeout=10)
    assert info.value.code == 404


def test_a_refused_blob_that_a_job_holds_is_kept(farm_procs: Any) -> None:
    server = farm_procs.server()
    junk = b"BLENDER-v304" + b"\x00" * 40  # a header, then nothing a reader can use
    put(server.url, junk)
    sha = hashlib.sha256(junk).hexdigest()
    status, _ = post_json(server.url + "/api/jobs", {"blend": "a.blend", "manifest": {"a.blend": sha},
                                                "frames": "1", "paused": True})
    assert status == 201
    status, error, _ = _refusal(server.url, junk, "b.blend")
    assert status == 400 and error["code"] == "corrupt_blend", error
    assert (Path(server.log_path).parent / "blobs" / sha[:2] / sha).exists()


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 40


@pytest.mark.parametrize("data", [PNG, gzip.compress(PNG), gzip.compress(b"BLEND" * 20), b""],
                         ids=["png", "gzip-png", "gzip-text", "empty"])
def test_what_is_no_blend_is_refused_as_such(farm_procs: Any, data: bytes) -> None:
    server = farm_procs.server()
    status, error, sha = _refusal(server.url, data, "textures/fake.blend")
    assert status == 400 and error["code"] == "not_blend", error
    assert error["message"].startswith("textures/fake.blend is not a .blend file")
    _one_sentence(error["message"])
    assert not (Path(server.log_path).parent / "blobs" / sha[:2] / sha).exists()


def test_bad_requests(farm_procs: Any) -> None:
    server = farm_procs.server()
    put(server.url, b"x")
    sha = hashlib.sha256(b"x").hexdigest()
    cases = [
        ({"blend": "a.blend", "manifest": {"b.blend": sha}}, "invalid_spec", "blend"),
        ({"blend": "a.png", "manifest": {"a.png": sha}}, "invalid_spec", "blend"),
        ({"blend": "../a.blend", "manifest": {"a.blend": sha}}, "invalid_spec", "blend"),
        ({"blend": "a.blend", "manifest": {"a.blend": sha, "a.blend/x": sha}},
         "invalid_spec", "manifest['a.blend']"),
        ({"blend": "a.blend", "manifest": {"a.blend": "0" * 64}}, "missing_blobs", "manifest"),
        ({"blend": "a.blend", "manifest": {"a.blend": sha}, "frames": "1"}, "bad_request",
         "frames"),
    ]
    for body, code, field in cases:
        status, reply = post_json(server.url + "/api/inspect", body)
        assert status == 400 and reply["error"]["code"] == code, (body, reply)
        assert reply["error"]["field"] == field, (body, reply)
    _, reply = post_json(server.url + "/api/inspect", cases[4][0])
    assert reply["error"]["data"]["missing"] == ["0" * 64]


# --- the worker's limits, on the app in this process (its settings changed) -------------------


async def _in_process(tmp_path: Path, **settings: Any) -> TestClient:
    client = TestClient(TestServer(make_app(ServerConfig(data_dir=tmp_path / "data",
                                                         **settings)), host="127.0.0.1"))
    await client.start_server()
    return client


async def _put_and_inspect(client: TestClient, data: bytes,
                           headers: dict[str, str] | None = None) -> tuple[int, Any]:
    sha = hashlib.sha256(data).hexdigest()
    resp = await client.put(f"/api/blobs/{sha}", data=data, headers=headers)
    assert resp.status == 201, await resp.text()
    resp = await client.post("/api/inspect", json={"blend": "a.blend", "manifest": {"a.blend": sha}},
                             headers=headers)
    return resp.status, await resp.json()


async def test_a_read_past_the_timeout_is_stopped_and_refused(tmp_path: Path) -> None:
    client = await _in_process(tmp_path, inspect_timeout=0.01)  # less than Python's start
    try:
        status, body = await _put_and_inspect(client, b"BLENDER-v304" + b"\x00" * 64)
        assert status == 400 and body["error"]["code"] == "inspect_timeout", body
        assert "a.blend" in body["error"]["message"]
        _one_sentence(body["error"]["message"])
        assert list((tmp_path / "data" / "inspect").iterdir()) == []  # no scratch left
        assert blob_files(tmp_path / "data") == []
    finally:
        await client.close()


async def test_a_blend_that_unpacks_without_end_is_refused(tmp_path: Path) -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"BLENDER-v304" + b"\x00" * (64 << 20))
    assert len(bomb) < 1 << 20
    client = await _in_process(tmp_path, inspect_unpacked=8 << 20)
    try:
        status, body = await _put_and_inspect(client, bomb)
        assert status == 400 and body["error"]["code"] == "inspect_too_large", body
        _one_sentence(body["error"]["message"])
        assert not any((tmp_path / "data" / "inspect").rglob("*"))
    finally:
        await client.close()


async def test_a_read_past_the_memory_cap_is_refused(tmp_path: Path) -> None:
    # 12 MiB of address space: the worker cannot even import BAT, and says so.
    client = await _in_process(tmp_path, inspect_memory=12 << 20)
    try:
        status, body = await _put_and_inspect(client, b"BLENDER-v304" + b"\x00" * 64)
        assert status == 400 and body["error"]["code"] == "inspect_too_large", body
        assert "inspect_memory" in body["error"]["message"]
        _one_sentence(body["error"]["message"])
    finally:
        await client.close()


async def test_whoever_may_submit_may_inspect(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _, user = await asyncio.to_thread(tokens.create, data / "farm.db", "user", "al")
    _, node = await asyncio.to_thread(tokens.create, data / "farm.db", "node", "n")
    client = await _in_process(tmp_path)
    body = {"blend": "a.blend", "manifest": {"a.blend": "0" * 64}}
    try:
        for headers, status in (({}, 401), ({"Authorization": f"Bearer {node}"}, 403)):
            for path in ("/api/jobs", "/api/inspect"):
                resp = await client.post(path, json=body, headers=headers)
                assert resp.status == status, (path, headers)
        got, reply = await _put_and_inspect(client, b"\x89PNG", {"Authorization": f"Bearer {user}"})
        assert got == 400 and reply["error"]["code"] == "not_blend"
    finally:
        await client.close()


@pytest.mark.blender
@blender
async def test_the_server_reads_without_blocking_its_loop(project: Path, tmp_path: Path) -> None:
    # The autouse guard fails this test should the handler block the server's loop.
    client = await _in_process(tmp_path)
    try:
        manifest = manifest_of(project)
        for rel in FILES:
            resp = await client.put(f"/api/blobs/{manifest[rel]}", data=(project / rel).read_bytes())
            assert resp.status == 201
        resp = await client.post("/api/inspect", json={"blend": "shots/shot.blend",
                                                        "manifest": manifest})
        assert resp.status == 200 and len((await resp.json())["scenes"]) == 2
    finally:
        await client.close()


@pytest.mark.blender
@blender
async def test_damaged_bytes_get_an_answer_never_a_fault(project: Path, tmp_path: Path) -> None:
    """Bytes flipped anywhere (BAT may loop on a damaged DNA: the timeout ends that):
    each answer is the file's settings or one of the refusals, and the server goes on."""
    import random

    client = await _in_process(tmp_path, inspect_timeout=5)
    data = (project / FILES[0]).read_bytes()
    rnd = random.Random(15)
    try:
        for _ in range(8):
            damaged = bytearray(data)
            for _ in range(rnd.randint(1, 40)):
                damaged[rnd.randrange(12, len(data))] = rnd.randrange(256)
            status, body = await _put_and_inspect(client, bytes(damaged))
            if status != 200:
                assert status == 400, body
                assert body["error"]["code"] in ("corrupt_blend", "no_scene",
                                                 "inspect_timeout"), body
                _one_sentence(body["error"]["message"])
        status, body = await _put_and_inspect(client, data)
        assert status == 200 and len(body["scenes"]) == 2
    finally:
        await client.close()


# --- an upload cut halfway leaves nothing --------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_cut_halfway_leaves_no_blob_and_no_temp_file(farm_procs: Any,
                                                               chunked: bool) -> None:
    server = farm_procs.server()
    data_dir = Path(server.log_path).parent
    body = bytes(range(256)) * 8192  # 2 MiB: more than one batch of the store
    sha = hashlib.sha256(body).hexdigest()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
        sock.sendall(f"PUT /api/blobs/{sha} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Type: application/octet-stream\r\n{length}\r\n\r\n".encode())
        half = body[: len(body) // 2]
        sock.sendall(b"%x\r\n%s\r\n" % (len(half), half) if chunked else half)
        # the server has the first half on its disk, as a temporary file
        wait_for(lambda: blob_files(data_dir), 10, "the upload's temporary file")
    wait_for(lambda: not blob_files(data_dir), 10, "the cut upload's files to go")
    time.sleep(0.5)  # nothing comes back later either
    assert blob_files(data_dir) == []
    resp = urllib.request.urlopen(urllib.request.Request(
        f"{server.url}/api/blobs/missing", data=json.dumps({"hashes": [sha]}).encode(),
        headers={"Content-Type": "application/json"}), timeout=10)
    assert json.loads(resp.read())["missing"] == [sha]
