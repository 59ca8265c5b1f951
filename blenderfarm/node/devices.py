"""A node's GPUs and slots: which card each Cycles device is, and how the node's
devices are cut into slots (what runs one task at a time).

Pure functions, no I/O and no ``bpy``: the probe (:mod:`.blender`) lists each Blender's
Cycles devices by backend, :func:`gpu_key` names the physical card behind each entry
(one card shows up once per backend that drives it, CUDA and OptiX say, and once per
Blender of the node), :func:`slot_layout` turns a ``slots`` setting into the hello's
``SlotCaps``, and :func:`slot_devices` says which Cycles devices a slot's runner
enables in a given Blender.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..protocol import messages as m

#: the ``slots`` settings: one task per GPU, one task on all GPUs together, CPU only
SLOT_MODES = ("per-gpu", "all-gpus", "cpu")
#: the backend a GPU slot renders with when a card has several: the fastest first
#: (OptiX is CUDA with the RT cores)
BACKEND_ORDER = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
#: Cycles names an OptiX device after its CUDA device, plus this
_OPTIX_SUFFIX = "_OptiX"
#: Cycles ends a CUDA, HIP or oneAPI device's id with the card's PCI address
_PCI = re.compile(r"_([0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-9A-Fa-f])?)$")
MAX_CPU_SLOTS = 64  # the protocol's bound on slots


class SlotError(ValueError):
    """A ``slots`` setting this node cannot have; the message says why, in one sentence."""


def gpu_key(device_type: str, device_id: str) -> str:
    """The card behind a Cycles device entry: its PCI address where Cycles' id ends
    with one (``CUDA_NVIDIA H200_0000:01:00`` and its ``..._OptiX`` twin are
    ``pci:0000:01:00``), else the id without its backend's prefix and OptiX's suffix.
    The same for every Blender of the node, as Cycles makes ids the same way in each."""
    core = device_id.removesuffix(_OPTIX_SUFFIX)
    found = _PCI.search(core)
    if found is not None:
        return "pci:" + found.group(1).lower()
    for prefix in (device_type, "CUDA"):  # an OptiX id starts with CUDA_
        if core.startswith(prefix + "_"):
            return core[len(prefix) + 1:]
    return core


def devices_of(entries: Iterable[dict[str, str]]) -> list[m.Device]:
    """Probe entries (``type``, ``id``, ``name``) as the protocol's devices, each with
    its card's key."""
    return [m.Device(type=e["type"], id=e["id"], name=e.get("name", ""),
                     gpu=gpu_key(e["type"], e["id"])) for e in entries]


def cards(device_lists: Iterable[Sequence[m.Device]]) -> list[str]:
    """The node's cards (``gpu`` keys), each once, in the order the Blenders list them."""
    return list(dict.fromkeys(d.gpu for devices in device_lists for d in devices))


def check_slots(mode: object, cpu_slots: object) -> None:
    """Refuse, in one sentence, a ``slots`` or ``cpu_slots`` setting no node can have
    (whether it has the GPUs a setting needs is :func:`slot_layout`'s business)."""
    if mode is not None and mode not in SLOT_MODES:
        raise SlotError(f"slots must be one of {', '.join(SLOT_MODES)}, not {mode!r}")
    if isinstance(cpu_slots, bool) or not isinstance(cpu_slots, int) or \
            not 1 <= cpu_slots <= MAX_CPU_SLOTS:
        raise SlotError(f"cpu_slots must be a whole number from 1 to {MAX_CPU_SLOTS}, "
                        f"not {cpu_slots!r}")


def slot_layout(mode: str | None, gpus: Sequence[str], *, cpu_slot: bool = False,
                cpu_slots: int = 1) -> list[m.SlotCaps]:
    """The node's slots for a ``slots`` setting (None: ``per-gpu`` with GPUs, else
    ``cpu``) and its cards. ``cpu_slot`` adds CPU slots beside GPU slots; ``cpu_slots``
    is how many CPU slots there are where there are any (ids ``cpu``, ``cpu1``, ...)."""
    check_slots(mode, cpu_slots)
    if mode is None:
        mode = "per-gpu" if gpus else "cpu"
    if mode != "cpu" and not gpus:
        raise SlotError(f"slots = {mode} needs a GPU, and no Blender of this node lists one "
                        "(Cycles sees no CUDA, OptiX, HIP, oneAPI or Metal device): "
                        "use slots = cpu")
    slots: list[m.SlotCaps] = []
    if mode == "per-gpu":
        slots = [m.SlotCaps(id=f"gpu{n}", device="GPU", gpus=[g]) for n, g in enumerate(gpus)]
    elif mode == "all-gpus":
        slots = [m.SlotCaps(id="gpus", device="GPU", gpus=list(gpus))]
    if mode == "cpu" or cpu_slot:
        slots += [m.SlotCaps(id="cpu" if n == 0 else f"cpu{n}") for n in range(cpu_slots)]
    if len(slots) > MAX_CPU_SLOTS:
        raise SlotError(f"this layout makes {len(slots)} slots; a node has at most "
                        f"{MAX_CPU_SLOTS}")
    return slots


def cpu_threads(threads: int, slots: Sequence[m.SlotCaps]) -> int:
    """The render threads of each CPU slot: the node's ``threads`` shared among them."""
    count = sum(1 for s in slots if s.device == "CPU")
    return max(1, threads // max(1, count))


def slot_devices(slot: m.SlotCaps, devices: Sequence[m.Device]) -> tuple[str, list[str]]:
    """``(compute_device_type, Cycles ids)`` a slot's runner enables in a Blender with
    ``devices``: ``("NONE", [])`` for a CPU slot; for a GPU slot the first backend of
    :data:`BACKEND_ORDER` that drives every one of its cards, with their ids. A card
    this Blender does not list leaves the id of another Blender's entry out: the
    runner then says which device it lacks."""
    if slot.device != "GPU":
        return "NONE", []
    for backend in BACKEND_ORDER:
        ids = {d.gpu: d.id for d in devices if d.type == backend}
        if all(g in ids for g in slot.gpus):
            return backend, [ids[g] for g in slot.gpus]
    # no backend of this Blender drives them all: name them by their first backend here,
    # or by the card key, so the runner's error names what is missing
    backend = next((d.type for d in devices if d.gpu in slot.gpus), BACKEND_ORDER[1])
    by_card = {d.gpu: d.id for d in devices if d.type == backend}
    return backend, [by_card.get(g, g) for g in slot.gpus]
