"""What a runner reports about the models it holds (pure, torch-free).

The runner (``adapters/diffusers_runner.py``) calls its ``on_change`` with one of these for
every model it loads or unloads, and for the answer to a pool command (a model found already
resident, an eviction that found nothing to evict), in the order they happened (under its load
lock). The service layer (``service_layer/residency.py``) publishes each as ``ModelLoaded`` or
``ModelEvicted`` on ``imagegen.workers.models``, in that order (ADR 0702).
"""

from __future__ import annotations

from dataclasses import dataclass

# Where a Loaded model's weights came from: read from disk (its sha256 checked first), or
# nothing read because it was already resident (only the answer to a LoadModel command).
DISK = "disk"
RAM = "ram"  # brought back from the worker's RAM tier (ADR 0705)
RESIDENT = "resident"

# Why an Unloaded model left: to make room for another one (least recently used first), on an
# EvictModel command, because it could not be moved back to the device after a defragmentation
# (``oom``), or not at all (``not_resident``: the answer to an EvictModel for a model that was
# not loaded; nothing was unloaded).
MAKE_ROOM = "make_room"
COMMAND = "command"
OOM = "oom"
NOT_RESIDENT = "not_resident"
CORRUPTED = "corrupted"  # its files failed their sha256 check (ADR 0707)


@dataclass(frozen=True)
class Loaded:
    """A model is resident: read from disk now (``source`` disk), brought back from the worker's
    RAM tier (``ram``, ADR 0705) or found loaded (``resident``)."""

    model_id: str
    kind: str
    bytes: int
    load_ms: float
    source: str = DISK


@dataclass(frozen=True)
class Unloaded:
    """A model is not resident: unloaded now for ``reason``, or found absent (not_resident)."""

    model_id: str
    reason: str
    for_model: str | None = None  # make_room: the model it made room for
    kind: str = "base"  # or "controlnet" (a net's id), as Loaded.kind


@dataclass(frozen=True)
class Corrupted:
    """A model's file does not match its manifest's sha256 (ADR 0707): found at a load or by the
    periodic check; ``actual`` is "" for a missing file."""

    model_id: str
    file: str
    expected: str
    actual: str


ResidencyChange = Loaded | Unloaded | Corrupted
