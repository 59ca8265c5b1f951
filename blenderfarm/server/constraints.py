"""What a node must have to run a job's tasks, and why a queued job has no node.

Pure functions of the in-memory records, no I/O: :func:`lacks` is the scheduler's
filter (``Farm._may_run``), :func:`waiting_reason` explains in one sentence, for
the job's JSON (``waiting``), ``bf show`` and the job's page, why no online node
takes a queued job. They share the checks, so the explanation cannot drift from
the decision. Neither changes anything.
"""

from __future__ import annotations

from collections.abc import Collection

from ..protocol.blender_version import describe_need, needs, satisfies
from .models import Job, NodeRecord

#: what a node may lack for a job, in the order :func:`lacks` checks them
DISABLED, BLOCKLISTED, TAGS, BLENDER, OPENGL, OIDN = (
    "disabled", "blocklisted", "tags", "blender", "opengl", "oidn")

OPENGL_HINT = ("needs OpenGL: run bf-node under xvfb-run, or install a GPU driver, on a "
               "node")


def lacks(job: Job, rec: NodeRecord) -> str | None:
    """The first thing ``rec`` lacks to run ``job``'s tasks (a constant above), or None.
    Drained nodes are not refused here: they keep what they hold and may be offered it
    again (dispatch skips them for new work)."""
    if rec.disabled:
        return DISABLED
    if rec.uid in job.blocklist:
        return BLOCKLISTED
    if job.spec.tags and lacks_tags(job.spec.tags, rec):
        return TAGS
    if lacks_blender(job, rec):
        return BLENDER
    if job.needs_opengl and not rec.opengl:
        return OPENGL
    if job.needs_oidn and not rec.oidn:
        return OIDN
    return None


def may_wait(job: Job) -> bool:
    """Whether ``job`` can be waiting for a node at all: it has queued tasks and none on
    a node (a node that holds one of its tasks can run it)."""
    c = job.counts
    return job.status in ("queued", "active") and c["queued"] > 0 and \
        c["assigned"] + c["running"] == 0


def waiting_reason(job: Job, online: Collection[NodeRecord]) -> str | None:
    """Why no node of ``online`` (the connected nodes) takes ``job``'s queued tasks; None
    when one can (it may only be busy) or the job waits for nothing."""
    if not may_wait(job):
        return None
    if not online:
        return "no node is online"
    able = [n for n in online if lacks(job, n) is None]
    if any(not n.drained for n in able):
        return None
    if able:
        return ("every online node that can render it is drained (bf node enable NODE, "
                "or Enable on the Nodes page)")
    reasons: list[str] = []
    tags = job.spec.tags
    if tags and all(lacks_tags(tags, n) for n in online):
        absent = [t for t in tags if not any(t in n.tags for n in online)]
        reasons.append(f"no online node has the tag{'s' if len(absent) > 1 else ''} "
                       f"{', '.join(absent)}" if absent else
                       f"no online node has all of the tags {', '.join(tags)}")
    need = blender_need(job)
    if need is not None and all(lacks_blender(job, n) for n in online):
        have = sorted({n.blender_version for n in online},
                      key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
        reasons.append(f"needs {describe_need(need)}; online nodes have "
                       f"{', '.join(v or 'an unknown version' for v in have)}")
    if job.needs_opengl and not any(n.opengl for n in online):
        reasons.append(f"no online node can render Eevee or Workbench ({OPENGL_HINT})")
    if job.needs_oidn and not any(n.oidn for n in online):
        reasons.append("no online node's Blender has OpenImageDenoise (resubmit with "
                       "--no-denoise, or add a node whose Blender can denoise)")
    if not reasons:
        kinds = {lacks(job, n) for n in online}
        if kinds == {BLOCKLISTED}:
            reasons.append("every online node failed it too often and is blocklisted for "
                           "it (fix the cause, then bf requeue it)")
        elif kinds == {DISABLED}:
            reasons.append("every online node is disabled")
        else:
            reasons.append("no online node has everything it needs at once "
                           "(tags, Blender version, OpenGL, OpenImageDenoise), or the others are disabled "
                           "or blocklisted for it")
    return "; ".join(reasons)


def blender_need(job: Job) -> tuple[tuple[int, int], bool] | None:
    """What ``job`` needs of a node's Blender: its pin, else the Blender that saved its
    .blend or newer; None for a spec without either (from before: any node)."""
    return needs(job.spec.blender_saved, job.spec.blender)


def lacks_blender(job: Job, rec: NodeRecord) -> bool:
    """Whether ``rec``'s Blender is outside what ``job`` needs (one that cannot open the
    file: a newer Blender's .blend crashes an older one, or does not open at all)."""
    need = blender_need(job)
    return need is not None and not satisfies(rec.blender_key, need)


def lacks_tags(tags: list[str], rec: NodeRecord) -> list[str]:
    """The tags of ``tags`` that ``rec`` does not have."""
    have = rec.tags
    return [t for t in tags if t not in have]
