"""The task graph's pure parts: the compiler's graph, tiles' arithmetic, readiness."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blenderfarm.protocol import messages as m
from blenderfarm.protocol.frames import parse_frames
from blenderfarm.protocol.jobspec import MAX_TASKS, SpecError, validate_spec
from blenderfarm.protocol.tiles import (
    MAX_TILES,
    MIN_TILE,
    auto_tiles,
    tile_grid,
    tile_name,
    tile_rect,
)
from blenderfarm.server import graph
from blenderfarm.server.compiler import compile_job, resolve_tiles
from blenderfarm.server.models import Job, Task

SHA = "a" * 64


def _spec(**kw: object):
    return validate_spec({"blend": "s.blend", "manifest": {"s.blend": SHA}, "frames": "1-3",
                          **kw})


def _job(spec) -> tuple[Job, dict[str, Task]]:
    job = Job(id="j", seq=1, spec=spec, output_name="s")
    job.frames_total = len(parse_frames(spec.frames))  # as Farm.submit counts them
    tasks = {}
    for t in compile_job("j", spec):
        tasks[t.id] = t
        job.add_task(t)
    graph.link(job, tasks)
    return job, tasks


@given(st.integers(1, MAX_TILES), st.integers(1, 4000), st.integers(1, 4000))
@settings(max_examples=300, deadline=None)
def test_tiles_cover_the_frame_exactly_once(count: int, width: int, height: int) -> None:
    cols, rows = tile_grid(count, width, height)
    assert cols * rows == count
    covered = 0
    for i in range(count):
        x0, y0, x1, y1 = tile_rect(i, cols, rows, width, height)
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
        covered += (x1 - x0) * (y1 - y0)
    assert covered == width * height  # edges shared: no gap, no overlap
    # neighbours share their edge
    if cols > 1:
        assert tile_rect(0, cols, rows, width, height)[2] == \
            tile_rect(1, cols, rows, width, height)[0]


def test_grid_cells_are_close_to_square() -> None:
    assert tile_grid(4, 1920, 1080) == (2, 2)
    assert tile_grid(6, 1920, 1080) == (3, 2)
    assert tile_grid(3, 100, 100) in ((3, 1), (1, 3))
    assert tile_grid(8, 1920, 1080) == (4, 2)
    with pytest.raises(ValueError):
        tile_grid(0)


def test_auto_tiles_gives_each_slot_several_and_no_tile_under_64_px() -> None:
    assert auto_tiles(1) == 1
    assert auto_tiles(2, 1920, 1080) == 12
    assert auto_tiles(4) == 24
    small = auto_tiles(10, 128, 128)  # at most 2x2 tiles of 64 px
    assert small == 4
    cols, rows = tile_grid(small, 128, 128)
    assert 128 // cols >= MIN_TILE and 128 // rows >= MIN_TILE
    assert auto_tiles(100, 100, 100) == 1


def test_a_tiled_job_compiles_to_tiles_and_one_merge_per_frame_then_its_video() -> None:
    job, tasks = _job(_spec(tiles=4, video=True))
    kinds = [(t.kind, t.frames, t.tile) for t in tasks.values()]
    assert kinds[:5] == [(m.RENDER, [1], 0), (m.RENDER, [1], 1), (m.RENDER, [1], 2),
                         (m.RENDER, [1], 3), (m.MERGE, [1], None)]
    merges = [t for t in tasks.values() if t.kind == m.MERGE]
    assert [t.frames for t in merges] == [[1], [2], [3]]
    assert merges[0].depends_on == [f"j-{i:05d}" for i in range(4)]
    (encode,) = [t for t in tasks.values() if t.kind == m.ENCODE]
    assert encode.depends_on == [t.id for t in merges] and encode.frames == []
    assert len(tasks) == 3 * 5 + 1
    # only tiles are ready at first
    assert [t.id for t in tasks.values() if graph.ready(t)] == \
        [t.id for t in tasks.values() if t.tile is not None]
    assert job.to_json()["tiles_total"] == 12 and job.to_json()["encode"] == "queued"


def test_whole_frames_with_a_video_encode_after_every_chunk() -> None:
    _job_, tasks = _job(_spec(frames="1-5", chunk=2, video=True))
    renders = [t for t in tasks.values() if t.kind == m.RENDER]
    assert [t.frames for t in renders] == [[1, 2], [3, 4], [5]]
    encode = tasks["j-00003"]
    assert encode.kind == m.ENCODE and encode.depends_on == [t.id for t in renders]
    assert encode.pending == 3


def test_the_same_spec_compiles_to_the_same_ids() -> None:
    spec = _spec(tiles=3, video=True)
    assert [(t.id, t.kind, t.depends_on) for t in compile_job("j", spec)] == \
        [(t.id, t.kind, t.depends_on) for t in compile_job("j", spec)]


def test_a_done_task_readies_its_dependents_once_all_their_inputs_are_done() -> None:
    job, tasks = _job(_spec(frames="1", tiles=2, video=True))
    t0, t1, merge, encode = tasks.values()
    t0.status = "done"
    assert graph.finished(job, t0, tasks) == []
    t1.status = "done"
    assert graph.finished(job, t1, tasks) == [merge]
    merge.status = "done"
    assert graph.finished(job, merge, tasks) == [encode]
    assert job.counts["tile:done"] == 2 and job.counts["merge:done"] == 1


def test_running_a_tile_again_runs_its_merge_and_the_video_again() -> None:
    job, tasks = _job(_spec(frames="1-2", tiles=2, video=True))
    first_tile = next(iter(tasks))
    again = graph.downstream(job, [first_tile], tasks)
    assert [(t.kind, t.frames) for t in again] == [(m.MERGE, [1]), (m.ENCODE, [])]


def test_tiles_are_refused_past_the_task_bound_and_out_of_range() -> None:
    with pytest.raises(SpecError, match="tiles"):
        _spec(tiles=0)
    with pytest.raises(SpecError, match="tiles"):
        _spec(tiles=MAX_TILES + 1)
    with pytest.raises(SpecError, match="tiles"):
        _spec(tiles="many")
    with pytest.raises(SpecError, match="more than"):
        _spec(frames=f"1-{MAX_TASKS // 10}", tiles=16)
    with pytest.raises(SpecError, match="resolution"):
        _spec(resolution=[0, 10])
    with pytest.raises(SpecError, match="video"):
        _spec(video="yes")


def test_auto_tiles_are_resolved_at_submit_and_one_tile_is_whole_frames() -> None:
    spec = _spec(tiles="auto", resolution=[1920, 1080])
    assert resolve_tiles(spec, 2).tiles == 12
    assert resolve_tiles(spec, 1).tiles is None
    assert resolve_tiles(_spec(tiles=1), 5).tiles is None
    assert tile_name("shot", -5, 3) == "shot.tile003.-5.exr"
