"""A job runs only on a Blender as new as the one that saved it: the .blend header
reader (protocol/blender_version.py) on files real Blenders saved, the spec's fields,
the scheduler's rule, and a real farm where a 4.5 file waits, saying why, and never
reaches the 3.4 node."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blenderfarm.protocol import messages as m
from blenderfarm.protocol.blender_version import BlendVersionError, parse_header, saved_version
from blenderfarm.protocol.jobspec import JobSpec, SpecError, validate_spec
from blenderfarm.server.constraints import lacks, waiting_reason
from blenderfarm.server.models import Job, NodeRecord
from procs import bin_path, get_json, wait_for
from scenes import needs_blender, run_blender
from test_server import drain, farm, submit  # noqa: F401 (farm: a fixture)
from test_server import job as job_json

REPO = Path(__file__).resolve().parents[1]
SAVE = '''
import sys, bpy
out = sys.argv[-1]
bpy.ops.wm.save_as_mainfile(filepath=out + "/plain.blend", compress=False)
bpy.ops.wm.save_as_mainfile(filepath=out + "/compressed.blend", compress=True)
'''


def with_blender(test):  # the marks of tests that run Debian's Blender
    for mark in needs_blender:
        test = mark(test)
    return test


def version_of(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        return saved_version(f)


@pytest.fixture(scope="module")
def saved45(bpy45_python, tmp_path_factory) -> Path:
    """A folder with plain.blend and compressed.blend saved by the bpy 4.5 wheel."""
    out = tmp_path_factory.mktemp("saved45")
    script = out / "save.py"
    script.write_text(SAVE)
    proc = subprocess.run([bpy45_python, str(script), str(out)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


# --- the header reader ----------------------------------------------------------------------


@with_blender
def test_the_header_names_blender_34_in_plain_zstd_and_gzip_files(tmp_path) -> None:
    script = tmp_path / "save.py"
    script.write_text(SAVE)
    proc = run_blender(["--python", str(script), "--", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout
    plain, compressed = tmp_path / "plain.blend", tmp_path / "compressed.blend"
    assert compressed.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # 3.x compresses with zstd
    (tmp_path / "gzip.blend").write_bytes(gzip.compress(plain.read_bytes()))  # 2.9x's way
    for name in ("plain", "compressed", "gzip"):
        assert version_of(tmp_path / f"{name}.blend") == (3, 4), name


def test_the_header_names_blender_45_in_its_plain_and_compressed_files(saved45) -> None:
    assert version_of(saved45 / "plain.blend") == (4, 5)
    assert (saved45 / "compressed.blend").read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert version_of(saved45 / "compressed.blend") == (4, 5)


def test_both_header_formats_are_read() -> None:
    assert parse_header(b"BLENDER-v304REND") == (3, 4)
    assert parse_header(b"BLENDER_V279") == (2, 79)  # 32-bit, big-endian
    assert parse_header(b"BLENDER17-01v0500") == (5, 0)  # Blender 5's longer header
    assert parse_header(b"BLENDER17-01v0501REND") == (5, 1)
    for bad in (b"", b"BLENDER", b"BLENDER-x304", b"BLENDER-vABC", b"BLENDER18-01v0500",
                b"BLENDER17-01v05x0", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"):
        with pytest.raises(BlendVersionError):
            parse_header(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([b"", b"BLENDER", b"\x1f\x8b",
                                                b"\x28\xb5\x2f\xfd"]))
def test_random_bytes_raise_only_blend_version_error(data: bytes, prefix: bytes) -> None:
    try:
        major, minor = saved_version(io.BytesIO(prefix + data))
    except BlendVersionError:
        return
    assert 0 <= major <= 99 and 0 <= minor <= 99


# --- the spec's fields ----------------------------------------------------------------------


def _spec(**extra) -> dict:
    return {"blend": "a.blend", "manifest": {"a.blend": "a" * 64}, "frames": "1", **extra}


def test_the_spec_keeps_the_saving_blender_and_a_pin_in_one_spelling() -> None:
    spec = validate_spec(_spec(blender_saved="4.05", blender=">= 4.5"))
    assert (spec.blender_saved, spec.blender) == ("4.5", ">=4.5")
    assert validate_spec(_spec(blender="3.4")).blender == "3.4"
    old = validate_spec(_spec())  # a spec from before: no constraint
    assert old.blender_saved is None and old.blender is None
    assert validate_spec(old.to_dict()) == old


@pytest.mark.parametrize("field,value", [
    ("blender_saved", "4"), ("blender_saved", "4.5.1"), ("blender_saved", ">=4.5"),
    ("blender_saved", 4.5), ("blender_saved", ""), ("blender_saved", "100.0"),
    ("blender", ">4.5"), ("blender", "<=4.5"), ("blender", "4.x"), ("blender", "4.5-5.0"),
    ("blender", "4" * 40), ("blender", True), ("blender", "４.５"),
])
def test_a_bad_blender_version_is_refused_naming_the_field(field, value) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(_spec(**{field: value}))
    assert err.value.path == field and "4.5" in err.value.message


# --- the scheduler's rule (pure) ------------------------------------------------------------


def _job(saved: str | None = None, pin: str | None = None) -> Job:
    spec = JobSpec(name="j", blend="j.blend", manifest={"j.blend": "a" * 64}, frames="1",
                   blender_saved=saved, blender=pin)
    job = Job(id="j", seq=1, spec=spec, output_name="j")
    job.counts["queued"] = 1
    return job


def _node(uid: str, version: str) -> NodeRecord:
    return NodeRecord(uid=uid, name=uid, online=True, info={"blender": {"version": version}})


def test_a_job_goes_only_to_a_blender_as_new_as_the_one_that_saved_it() -> None:
    n34, n45, n50 = _node("a", "3.4.1"), _node("b", "4.5.3"), _node("c", "5.0.0")
    assert lacks(_job("4.5"), n34) == "blender"
    assert lacks(_job("4.5"), n45) is None and lacks(_job("4.5"), n50) is None
    assert lacks(_job("3.4"), n34) is None
    assert lacks(_job(), n34) is None  # a spec from before runs anywhere, as it did
    assert lacks(_job("4.5"), _node("d", "")) == "blender"  # a node that did not say
    # a pin replaces the rule: "4.5" is 4.5.x only, ">=4.2" that or newer
    assert lacks(_job("5.0", "4.5"), n45) is None and lacks(_job("3.4", "4.5"), n50) == "blender"
    assert lacks(_job("4.5", ">=3.4"), n34) is None and lacks(_job(None, ">=4.6"), n45)


def test_a_job_no_online_blender_can_open_says_which_it_needs_and_which_there_are() -> None:
    assert waiting_reason(_job("4.5"), [_node("a", "3.4.1")]) == \
        "needs Blender >= 4.5; online nodes have 3.4.1"
    assert waiting_reason(_job("3.4", "4.5"), [_node("b", "5.0.0"), _node("a", "3.4.1"),
                                               _node("c", "3.4.1")]) == \
        "needs Blender 4.5; online nodes have 3.4.1, 5.0.0"
    assert waiting_reason(_job("4.5"), [_node("a", "3.4.1"), _node("b", "4.5.0")]) is None


# --- the server in-process: the oldest Blender that can open it gets it --------------------


async def test_a_job_goes_to_the_oldest_blender_that_can_open_it(farm) -> None:  # noqa: F811
    new = farm.node(name="new", blender="4.5.0")
    old = farm.node(name="old", blender="3.4.1")
    assert isinstance(await new.connect(), m.Welcome)  # first: dispatch would offer it first
    assert isinstance(await old.connect(), m.Welcome)
    j34 = await submit(farm, frames="1", blender_saved="3.4")
    assert [a.job_id for a in await drain(old)] == [j34["id"]]
    assert await drain(new) == []
    j45 = await submit(farm, frames="2", blender_saved="4.5")
    assert [a.job_id for a in await drain(new)] == [j45["id"]]
    assert await drain(old) == []
    assert (await job_json(farm, j45["id"]))["blender_saved"] == "4.5"


# --- a real farm ----------------------------------------------------------------------------


def bf(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path("bf"), *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "BLENDERFARM_SERVER": server},
                          stdin=subprocess.DEVNULL, check=False)


def _waits_untouched(server: str, job_id: str) -> dict:
    job = wait_for(lambda: (j := get_json(f"{server}/api/jobs/{job_id}")["job"])["waiting"]
                   and j, 30, "the job says why it waits")
    tasks = get_json(f"{server}/api/jobs/{job_id}/tasks")["tasks"]
    assert tasks and all(t["status"] == "queued" and t["node"] is None and t["attempts"] == 0
                         for t in tasks), tasks
    return dict(job)


@with_blender
def test_a_file_from_blender_45_waits_saying_why_and_never_reaches_the_34_node(
        farm_procs, saved45) -> None:
    server = farm_procs.server()
    farm_procs.node("a")
    farm_procs.wait_nodes(1)
    proc = bf(server.url, "submit", str(saved45 / "compressed.blend"), "--frames", "1",
              "--json")
    assert proc.returncode == 0, proc.stderr
    job_id = json.loads(proc.stdout)["job"]["id"]
    job = _waits_untouched(server.url, job_id)
    assert job["blender_saved"] == "4.5"
    shown = bf(server.url, "show", job_id).stdout
    assert re.search(r"^waiting: +needs Blender >= 4\.5; online nodes have 3\.4\.\d+$",
                     shown, re.M), shown
    # A pin replaces the rule; a bad one is refused before anything is packed.
    pinned = bf(server.url, "submit", str(saved45 / "plain.blend"), "--frames", "1",
                "--blender", ">=4.6", "--json")
    assert pinned.returncode == 0, pinned.stderr
    pinned_id = json.loads(pinned.stdout)["job"]["id"]
    assert _waits_untouched(server.url, pinned_id)["waiting"].startswith(
        "needs Blender >= 4.6; online nodes have 3.4.")
    bad = bf(server.url, "submit", str(saved45 / "plain.blend"), "--blender", "4.5+")
    assert bad.returncode == 2 and "blender: must be a Blender version" in bad.stderr
    for jid in (job_id, pinned_id):
        assert bf(server.url, "cancel", jid).returncode == 0
    node = get_json(f"{server.url}/api/nodes")["nodes"][0]
    assert node["frames_rendered"] == 0 and not node.get("tasks"), node
