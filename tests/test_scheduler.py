"""The pure scheduler: priority, age, lazy removal, per-node filters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blenderfarm.server.scheduler import Scheduler


def test_priority_then_age() -> None:
    s = Scheduler()
    s.add_job("old", 50, 1)
    s.add_job("new", 50, 2)
    s.add_job("urgent", 90, 3)
    for job in ("old", "new", "urgent"):
        s.push(job, f"{job}-1")
        s.push(job, f"{job}-2")
    picks = [s.pick(lambda _j: True) for _ in range(6)]
    assert picks == ["urgent-1", "urgent-2", "old-1", "old-2", "new-1", "new-2"]
    assert s.pick(lambda _j: True) is None


def test_filters_and_discard() -> None:
    s = Scheduler()
    s.add_job("a", 50, 1)
    s.add_job("b", 40, 2)
    for t in ("a1", "a2"):
        s.push("a", t)
    s.push("b", "b1")
    assert s.discard("a1")
    assert s.pick(lambda j: j == "b") == "b1"
    assert s.pick(lambda _j: True, lambda t: t != "a2") is None
    assert s.pick(lambda _j: True) == "a2"
    assert s.queued == 0


def test_requeue_front_and_priority_change() -> None:
    s = Scheduler()
    s.add_job("a", 50, 1)
    s.add_job("b", 50, 2)
    s.push("a", "a1")
    s.push("b", "b1")
    s.set_priority("b", 60)
    assert s.pick(lambda _j: True) == "b1"
    s.push("a", "a0", front=True)
    assert s.pick(lambda _j: True) == "a0"
    assert s.remove_job("a") == ["a1"]
    assert s.pick(lambda _j: True) is None


@given(st.lists(st.tuples(st.sampled_from(["push", "discard", "pick"]), st.integers(0, 9))))
def test_every_pushed_task_is_picked_once(ops) -> None:
    s = Scheduler()
    s.add_job("j", 50, 1)
    queued: set[str] = set()
    for op, n in ops:
        tid = f"t{n}"
        if op == "push":
            s.push("j", tid)
            queued.add(tid)
        elif op == "discard":
            assert s.discard(tid) == (tid in queued)
            queued.discard(tid)
        else:
            got = s.pick(lambda _j: True)
            assert (got is None) == (not queued)
            if got is not None:
                assert got in queued
                queued.remove(got)
        assert s.queued == len(queued)
