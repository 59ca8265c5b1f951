"""A short chaos run in CI (the long one: `python tests/chaos.py --kills 30`)."""

from __future__ import annotations

import os

import pytest

from chaos import run_chaos
from scenes import needs_blender

pytestmark = needs_blender


@pytest.mark.timeout(600)
def test_chaos_loses_no_frame(tmp_path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "2026"))
    report = run_chaos(tmp_path, seed=seed, frames=40, nodes=3, kills=6)
    print(report.summary())
    assert report.status == "completed", report.summary()
    assert report.frames_stored == 40 and report.duplicates == 0
    assert report.mismatches == [], report.summary()
    kills = [a for a in report.actions if "killed" in a]
    assert len(kills) >= 3, "the job ended before the chaos did much"
