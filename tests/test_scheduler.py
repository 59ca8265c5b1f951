"""The pure scheduler: priority, age, lazy removal, per-node filters; what a node must
have to run a job, and why a job waits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blenderfarm.protocol.jobspec import JobSpec
from blenderfarm.server.constraints import lacks, waiting_reason
from blenderfarm.server.models import Job, NodeRecord
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


def test_equal_priority_is_shared_between_owners_not_jobs() -> None:
    """Ann queued three jobs before Bob's one: Bob still gets every other node."""
    s = Scheduler()
    for seq, (job, owner) in enumerate([("a1", "ann"), ("a2", "ann"), ("a3", "ann"),
                                        ("b1", "bob")]):
        s.add_job(job, 50, seq, owner)
        for i in range(4):
            s.push(job, f"{job}-{i}")
    owners = []
    for _ in range(8):
        tid = s.pick(lambda _j: True)
        assert tid is not None
        owner = "bob" if tid.startswith("b") else "ann"
        s.hold(owner)
        owners.append(owner)
    assert owners.count("ann") == owners.count("bob") == 4
    assert s.held("ann") == s.held("bob") == 4


def ann_and_bob() -> Scheduler:
    """Ann's job "a" (older) and Bob's "b", priority 50, one task each."""
    s = Scheduler()
    s.add_job("a", 50, 1, "ann")
    s.add_job("b", 50, 2, "bob")
    s.push("a", "a-1")
    s.push("b", "b-1")
    return s


def test_the_owner_holding_fewer_tasks_goes_first() -> None:
    s = ann_and_bob()
    for _ in range(3):
        s.hold("ann")  # ann's long renders still hold three nodes
    assert s.pick(lambda _j: True) == "b-1"
    for _ in range(3):
        s.unhold("ann")
    assert s.held("ann") == 0


def test_priority_beats_fair_share() -> None:
    s = Scheduler()
    s.add_job("urgent", 90, 1, "ann")
    s.add_job("normal", 50, 2, "bob")
    for i in range(3):
        s.push("urgent", f"u{i}")
        s.push("normal", f"n{i}")
    for _ in range(10):
        s.hold("ann")
    assert [s.pick(lambda _j: True) for _ in range(4)] == ["u0", "u1", "u2", "n0"]


def test_priority_change_moves_a_job_between_levels() -> None:
    s = ann_and_bob()
    s.set_priority("b", 80)
    assert s.pick(lambda _j: True) == "b-1"
    s.set_priority("a", 10)
    assert s.pick(lambda _j: True) == "a-1"
    assert s.pick(lambda _j: True) is None


@given(st.lists(st.tuples(st.sampled_from(["ann", "bob", "cid"]), st.sampled_from([30, 50, 70]),
                          st.integers(1, 5)), min_size=1, max_size=12),
       st.lists(st.booleans(), max_size=40))
def test_picks_follow_priority_then_least_held_owner(jobs, releases) -> None:
    """Model check: every pick comes from the highest priority with queued work, and
    from an owner who holds no more tasks than any other owner with work there."""
    s = Scheduler()
    queued: dict[str, tuple[str, int]] = {}  # task -> (owner, priority)
    held: list[str] = []  # owners of held tasks, oldest first
    for i, (owner, prio, n) in enumerate(jobs):
        s.add_job(f"j{i}", prio, i, owner)
        for k in range(n):
            s.push(f"j{i}", f"j{i}-{k}")
            queued[f"j{i}-{k}"] = (owner, prio)
    for release in releases + [False] * len(queued):
        if release and held:
            s.unhold(held.pop(0))
            continue
        tid = s.pick(lambda _j: True)
        if not queued:
            assert tid is None
            break
        assert tid is not None
        owner, prio = queued.pop(tid)
        top = max(p for _o, p in queued.values()) if queued else prio
        assert prio >= top
        rivals = {o for o, p in queued.values() if p == prio} | {owner}
        assert all(held.count(owner) <= held.count(o) for o in rivals)
        s.hold(owner)
        held.append(owner)


# --- what a node must have, and why a job waits (server/constraints.py, pure) ----------------


def _job(tags: list[str] | None = None, **kw) -> Job:
    spec = JobSpec(name="j", blend="j.blend", manifest={"j.blend": "a" * 64}, frames="1",
                   tags=tags or [])
    job = Job(id="j", seq=1, spec=spec, output_name="j", **kw)
    job.counts["queued"] = 1
    return job


def _node(uid: str, tags: list[str] | None = None, opengl: bool = False, oidn: bool = False,
          **kw) -> NodeRecord:
    return NodeRecord(uid=uid, name=uid, online=True, info={
        "tags": tags or [], "blender": {"opengl": opengl, "oidn": oidn}}, **kw)


def test_a_node_lacks_the_first_thing_the_job_needs() -> None:
    job = _job(["gpu", "ssd"], needs_opengl=True)
    assert lacks(job, _node("a", ["gpu"], opengl=True)) == "tags"
    assert lacks(job, _node("b", ["ssd", "gpu"])) == "opengl"
    assert lacks(job, _node("c", ["ssd", "gpu", "x"], opengl=True)) is None
    assert lacks(job, _node("d", ["ssd", "gpu"], opengl=True, disabled=True)) == "disabled"


def test_why_a_job_waits_names_what_no_online_node_has() -> None:
    assert waiting_reason(_job(), []) == "no node is online"
    assert waiting_reason(_job(["gpu"]), [_node("a", ["ssd"])]) == \
        "no online node has the tag gpu"
    assert waiting_reason(_job(["gpu", "ssd"]), [_node("a", ["ssd"]), _node("b", ["gpu"])]) == \
        "no online node has all of the tags gpu, ssd"
    both = waiting_reason(_job(["gpu", "x"], needs_opengl=True), [_node("a")])
    assert both is not None and both.startswith("no online node has the tags gpu, x; ")
    assert "no online node can render Eevee or Workbench" in both and "xvfb-run" in both
    assert "blocklisted" in str(waiting_reason(_job(blocklist=["a"]), [_node("a")]))
    assert "drained" in str(waiting_reason(_job(), [_node("a", drained=True)]))


def test_a_job_that_a_node_can_take_or_holds_waits_for_nothing() -> None:
    assert waiting_reason(_job(["gpu"]), [_node("a"), _node("b", ["gpu"])]) is None
    held = _job(["gpu"])
    held.counts["running"] = 1  # a node runs one of its tasks: it only waits its turn
    assert waiting_reason(held, [_node("a")]) is None
    done = _job()
    done.counts["queued"] = 0
    assert waiting_reason(done, []) is None
