"""The scale benchmark's harness, small: a real bf-server, simulated nodes over real
websockets. Checks what does not depend on the machine's speed: every task completes,
priorities are never inverted, users of equal priority share the nodes. The speed
targets themselves live in ``make bench`` (docs/benchmarks.md), not here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import scale_bench as sb  # noqa: E402


async def test_many_nodes_finish_every_task_and_dashboards_follow(tmp_path: Path) -> None:
    r = await sb.scenario_a(tmp_path, nodes=30, frames=600, paced_frames=300,
                            paced_rate=600.0, watchers=2, files=50)
    assert r["errors"] == []
    assert r["events_received"] > 0 and r["event_frames"] <= r["events_received"]
    assert r["latency_p50_ms"] == r["latency_p50_ms"]  # measured (not NaN)


async def test_priorities_hold_and_users_share_the_farm(tmp_path: Path) -> None:
    r = await sb.scenario_c(tmp_path, nodes=100, jobs=40, frames=100, users=10, delay=0.005)
    assert r["errors"] == [] and r["no_assign_time"] == 0
    assert r["priority_inversions"] == 0
    assert r["worst_share_dev_pct"] is not None and r["worst_share_dev_pct"] <= 20, r["shares"]


async def test_a_huge_job_is_accepted_and_starts(tmp_path: Path) -> None:
    r = await sb.scenario_d(tmp_path, nodes=3, frames=20_000)
    assert r["tasks"] == 20_000
    assert r["first_assign_after_s"] is not None


def test_the_inversion_count_sees_an_inversion() -> None:
    # (assigned, priority, user, finished): the 50 went first while the 70 waited
    assert sb.count_inversions([(0.0, 70, "a", 1.0), (0.5, 50, "b", 1.0)]) == 0
    assert sb.count_inversions([(0.0, 50, "b", 1.0), (0.5, 70, "a", 1.0)]) == 1
