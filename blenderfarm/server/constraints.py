"""What a node's slot must have to run a job's tasks, and why a queued job has no node.

Pure functions of the in-memory records, no I/O: :func:`match` is the dispatcher's
choice for one slot (which of the node's Blenders runs the task there, or none),
:func:`lacks` the node-level filter (no slot and Blender of the node fits),
:func:`waiting_reason` explains in one sentence, for the job's JSON (``waiting``),
``bf show`` and the job's page, why no online node takes a queued job, and
:func:`can_run` says node by node. They share the checks, so the explanation cannot
drift from the decision. None changes anything.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..protocol import messages as m
from ..protocol.blender_version import describe_need, needs, satisfies
from .models import Job, NodeRecord

#: what a node may lack for a job: first the node's own (in this order), then a slot's
#: and its Blenders' (PAIR_CHECKS, in this order)
DISABLED, BLOCKLISTED, TAGS, DEVICE, BLENDER, OPENGL, OIDN, GPUS = (
    "disabled", "blocklisted", "tags", "device", "blender", "opengl", "oidn", "gpus")
PAIR_CHECKS = (DEVICE, BLENDER, OPENGL, OIDN, GPUS)

OPENGL_HINT = ("needs OpenGL: run bf-node under xvfb-run, or install a GPU driver, on a "
               "node")
#: how many online nodes a job's view lists in ``nodes``
NODES_SHOWN = 50


def match(job: Job, rec: NodeRecord, slot: m.SlotCaps) -> int | None:
    """The index of the Blender of ``rec`` that runs ``job``'s tasks in ``slot``: the
    oldest that fits (the closest to the artist's), or None when none does."""
    if _node_lacks(job, rec) is not None or _slot_lacks(job, slot) is not None:
        return None
    for i in rec.blender_order:
        if _blender_lacks(job, rec, i, slot) is None:
            return i
    return None


def lacks(job: Job, rec: NodeRecord) -> str | None:
    """What ``rec`` lacks to run ``job``'s tasks in any of its slots (a constant above),
    or None when a slot and Blender of it fit. Of several slots and Blenders, the reason
    of the one that came closest (the furthest in :data:`PAIR_CHECKS`). Drained nodes are
    not refused here: they keep what they hold and may be offered it again (dispatch
    skips them for new work)."""
    why = _node_lacks(job, rec)
    if why is not None:
        return why
    closest = DEVICE
    for slot in rec.slots:
        if _slot_lacks(job, slot) is not None:
            continue
        for i in rec.blender_order:
            why = _blender_lacks(job, rec, i, slot)
            if why is None:
                return None
            closest = max(closest, why, key=PAIR_CHECKS.index)
    return closest


def _node_lacks(job: Job, rec: NodeRecord) -> str | None:
    if rec.disabled:
        return DISABLED
    if rec.uid in job.blocklist:
        return BLOCKLISTED
    if job.spec.tags and lacks_tags(job.spec.tags, rec):
        return TAGS
    return None


def _slot_lacks(job: Job, slot: m.SlotCaps) -> str | None:
    """A job that asks for the GPU runs only on GPU slots, one that asks for the CPU only
    on CPU slots; one that asks for neither (the scene's own setting) on any."""
    device = job.spec.overrides.device
    return DEVICE if device is not None and device != slot.device else None


def _blender_lacks(job: Job, rec: NodeRecord, index: int, slot: m.SlotCaps) -> str | None:
    blender = rec.blenders[index]
    need = blender_need(job)
    if need is not None and not satisfies(rec.blender_keys[index], need):
        return BLENDER
    if job.needs_opengl and not blender.opengl:
        return OPENGL
    if job.needs_oidn and not blender.oidn:
        return OIDN
    # A GPU slot is there to render with its GPUs, whatever the job asks: a Blender that
    # does not see them would leave them idle and render on the CPU, which the node's CPU
    # slots already use.
    if slot.device == "GPU" and not sees(blender, slot.gpus):
        return GPUS
    return None


def sees(blender: m.BlenderCaps, gpus: Collection[str]) -> bool:
    """Whether ``blender`` has a Cycles device on every GPU of ``gpus``."""
    have = {d.gpu for d in blender.devices}
    return all(g in have for g in gpus)


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
    reasons = _missing(job, online)
    if not reasons:
        kinds = {lacks(job, n) for n in online}
        if kinds == {BLOCKLISTED}:
            reasons.append("every online node failed it too often and is blocklisted for "
                           "it (fix the cause, then bf requeue it)")
        elif kinds == {DISABLED}:
            reasons.append("every online node is disabled")
        else:
            reasons.append("no online node has everything it needs at once (tags, device, "
                           "Blender version, OpenGL, OpenImageDenoise) in one slot and "
                           "Blender, or the others are disabled or blocklisted for it")
    return "; ".join(reasons)


def _missing(job: Job, online: Collection[NodeRecord]) -> list[str]:
    """Each thing ``job`` needs that no node of ``online`` has at all, in words."""
    reasons: list[str] = []
    tags = job.spec.tags
    if tags and all(lacks_tags(tags, n) for n in online):
        absent = [t for t in tags if not any(t in n.tags for n in online)]
        reasons.append(f"no online node has the tag{'s' if len(absent) > 1 else ''} "
                       f"{', '.join(absent)}" if absent else
                       f"no online node has all of the tags {', '.join(tags)}")
    device = job.spec.overrides.device
    slots = [(n, s) for n in online for s in n.slots]
    if device is not None and not any(s.device == device for _n, s in slots):
        reasons.append("needs a GPU: no online node has a GPU slot" if device == "GPU" else
                       "needs the CPU: no online node has a CPU slot (every slot renders "
                       "on GPUs)")
    elif device == "GPU" and not any(sees(b, s.gpus) for n, s in slots
                                     if s.device == "GPU" for b in n.blenders):
        reasons.append("needs a GPU: no online node's Blender sees the GPUs of its GPU slot")
    need = blender_need(job)
    if need is not None and all(_lacks_version(job, n) for n in online):
        have = sorted({b.version for n in online for b in n.blenders},
                      key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
        reasons.append(f"needs {describe_need(need)}; online nodes have "
                       f"{', '.join(v or 'an unknown version' for v in have)}")
    blenders = [b for n in online for b in n.blenders]
    if job.needs_opengl and not any(b.opengl for b in blenders):
        reasons.append(f"no online node can render Eevee or Workbench ({OPENGL_HINT})")
    if job.needs_oidn and not any(b.oidn for b in blenders):
        reasons.append("no online node's Blender has OpenImageDenoise (resubmit with "
                       "--no-denoise, or add a node whose Blender can denoise)")
    return reasons


def can_run(job: Job, online: Collection[NodeRecord]) -> list[dict[str, Any]]:
    """Node by node (the first :data:`NODES_SHOWN` of ``online``, by name), whether it
    can take ``job``'s tasks and, when not, why: the same checks as :func:`lacks`."""
    shown = sorted(online, key=lambda n: (n.name, n.uid))[:NODES_SHOWN]
    out = []
    for rec in shown:
        why = lacks(job, rec)
        text = _WHY[why](job, rec) if why is not None else (
            "drained: finishes what it holds, takes nothing new" if rec.drained else None)
        out.append({"id": rec.uid, "name": rec.name, "can": why is None and not rec.drained,
                    "why": text})
    return out


def _why_tags(job: Job, rec: NodeRecord) -> str:
    missing = lacks_tags(job.spec.tags, rec)
    return f"lacks the tag{'s' if len(missing) > 1 else ''} {', '.join(missing)}"


def _why_device(job: Job, rec: NodeRecord) -> str:
    return "has no GPU slot" if job.spec.overrides.device == "GPU" else "has no CPU slot"


def _why_blender(job: Job, rec: NodeRecord) -> str:
    need = blender_need(job)
    versions = ", ".join(b.version or "an unknown version" for b in rec.blenders)
    return f"has Blender {versions}; needs {describe_need(need)}" if need else "Blender"


_WHY = {
    DISABLED: lambda _j, _r: "disabled",
    BLOCKLISTED: lambda _j, _r: "failed it too often (blocklisted for this job)",
    TAGS: _why_tags,
    DEVICE: _why_device,
    BLENDER: _why_blender,
    OPENGL: lambda _j, _r: "cannot render Eevee or Workbench (no OpenGL)",
    OIDN: lambda _j, _r: "no Blender of it has OpenImageDenoise",
    GPUS: lambda _j, _r: "no Blender of it sees the GPUs of its GPU slots",
}


def blender_need(job: Job) -> tuple[tuple[int, int], bool] | None:
    """What ``job`` needs of a node's Blender: its pin, else the Blender that saved its
    .blend or newer; None for a spec without either (from before: any node)."""
    return needs(job.spec.blender_saved, job.spec.blender)


def _lacks_version(job: Job, rec: NodeRecord) -> bool:
    """Whether no Blender of ``rec`` is within what ``job`` needs (one that cannot open the
    file: a newer Blender's .blend crashes an older one, or does not open at all)."""
    need = blender_need(job)
    return need is not None and not any(satisfies(k, need) for k in rec.blender_keys)


def lacks_tags(tags: list[str], rec: NodeRecord) -> list[str]:
    """The tags of ``tags`` that ``rec`` does not have."""
    have = rec.tags
    return [t for t in tags if t not in have]
