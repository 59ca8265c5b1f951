"""Short chaos runs in CI (the long ones: `python tests/chaos.py --faults 30 [--net]`,
`python tests/chaos.py --disk-full`). Set CHAOS_SEED to replay a run."""

from __future__ import annotations

import os

import pytest

from chaos import NET, Report, Skipped, run_chaos, run_disk_full
from scenes import needs_blender

pytestmark = needs_blender


def _seed() -> int:
    return int(os.environ.get("CHAOS_SEED", "2026"))


def _assert_every_frame_once(report: Report, frames: int) -> None:
    assert report.status == "completed", report.summary() + f" ({report.error})"
    assert report.frames_stored == frames and report.duplicates == 0, report.summary()
    assert report.mismatches == [], report.summary()


@pytest.mark.timeout(600)
def test_chaos_loses_no_frame(tmp_path) -> None:
    # frames long enough (128 px, 64 samples) that six faults land before the job ends,
    # also on a fast machine (24 samples at 64 px ended the job after two)
    report = run_chaos(tmp_path, seed=_seed(), frames=40, nodes=3, kills=6, res=128,
                       samples=64)
    print(report.summary())
    _assert_every_frame_once(report, 40)
    kills = [a for a in report.actions if "killed" in a]
    assert len(kills) >= 3, "the job ended before the chaos did much"


@pytest.mark.timeout(600)
def test_chaos_network_faults_lose_no_frame(tmp_path) -> None:
    """Kills mixed with dropped, delayed and partitioned node connections (a proxy per
    node), partitions both shorter and longer than the server's grace period. Frames
    of 128 px at 64 samples make a job that outlasts the faults."""
    report = run_chaos(tmp_path, seed=_seed(), frames=40, nodes=3, kills=8, res=128,
                       samples=64, net=True)
    print(report.summary())
    _assert_every_frame_once(report, 40)
    assert sum(report.faults.get(k, 0) for k in NET) >= 3, \
        "the job ended before the network faults did much: " + report.summary()


@pytest.mark.timeout(600)
def test_chaos_disk_full_mid_job(tmp_path) -> None:
    """The server's data dir fills up mid-job (a tmpfs; skipped where none can be
    mounted); once space comes back the job completes, and a restarted server still
    knows every frame."""
    try:
        report = run_disk_full(tmp_path, seed=_seed(), frames=24, nodes=2, res=128, samples=32)
    except Skipped as exc:
        pytest.skip(str(exc))
    print(report.summary())
    _assert_every_frame_once(report, 24)
    assert report.faults.get("disk_full") == 1
    after = report.after_restart
    assert after.get("status") == "completed", after
    assert after.get("outputs") == 24, after
    assert after.get("tasks_done") == after.get("tasks"), \
        f"a restarted server lost what it did while its disk was full: {after}"
