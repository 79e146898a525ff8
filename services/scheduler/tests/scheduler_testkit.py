"""Small catalog, fleet and fold helpers for the scheduler's tests (no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from imagegen_scheduler.domain import (
    AdapterKind,
    AdapterSpec,
    Decision,
    Event,
    JobQueued,
    JobRequest,
    ModelCatalog,
    ModelSpec,
    SchedulerConfig,
    SchedulerState,
    Tier,
    WorkerUpdated,
    WorkerView,
    as_event,
    evolve,
)

CATALOG = ModelCatalog(
    models={
        "sdxl": ModelSpec("sdxl", "sdxl", 13.5, (8.0, 15.0), 0.28, 2.0),
        "sdxl-alt": ModelSpec("sdxl-alt", "sdxl", 13.5, (8.0, 15.0), 0.28, 2.0),
        "flux": ModelSpec("flux", "flux", 33.0, (12.0, 20.0), 0.55, 3.5),
    },
    adapters={
        "lora-a": AdapterSpec("lora-a", AdapterKind.LORA, "sdxl", 0.2, (0.5, 2.0), 0.0),
        "lora-b": AdapterSpec("lora-b", AdapterKind.LORA, "sdxl", 0.2, (0.5, 2.0), 0.0),
        "cn-canny": AdapterSpec("cn-canny", AdapterKind.CONTROLNET, "sdxl", 2.5, (2.0, 4.0), 0.2),
        "cn-depth": AdapterSpec("cn-depth", AdapterKind.CONTROLNET, "sdxl", 2.5, (2.0, 4.0), 0.2),
        "flux-lora": AdapterSpec("flux-lora", AdapterKind.LORA, "flux", 0.4, (0.5, 2.0), 0.0),
    },
)

Policy = Callable[[SchedulerState, float], list[Decision]]


def small(worker_id: str, *resident: str) -> WorkerView:
    """An A10G-like worker: 20 GB budget, SDXL only."""
    return WorkerView(worker_id, "A10G-24GB", 20.0, 1.0, frozenset({"sdxl"}), frozenset(resident))


def large(worker_id: str, *resident: str) -> WorkerView:
    """An A100-like worker: 74 GB budget, SDXL and Flux."""
    caps = frozenset({"sdxl", "flux"})
    return WorkerView(worker_id, "A100-80GB", 74.0, 1.6, caps, frozenset(resident))


def job(
    job_id: str,
    tier: Tier = Tier.RELAX,
    *,
    at: float = 0.0,
    user: str | None = None,
    model: str = "sdxl",
    adapters: tuple[str, ...] = (),
    size: int = 1024,
    batch: int = 1,
    steps: int = 30,
) -> JobRequest:
    return JobRequest(
        job_id, user or f"user-{job_id}", tier, model, adapters, size, size, batch, steps, at
    )


def state_of(events: Iterable[Event], config: SchedulerConfig | None = None) -> SchedulerState:
    """Fold events into a fresh state."""
    state = SchedulerState(config or SchedulerConfig(), CATALOG)
    for event in events:
        evolve(state, event)
    return state


def workers(*views: WorkerView) -> list[Event]:
    return [WorkerUpdated(view, 0.0) for view in views]


def queued(*requests: JobRequest) -> list[Event]:
    return [JobQueued(r, r.queued_at) for r in requests]


def decide_and_apply(state: SchedulerState, policy: Policy, now: float) -> list[Decision]:
    """One round as the service does it: decide, then fold each decision's event."""
    decisions = policy(state, now)
    for decision in decisions:
        evolve(state, as_event(decision, now))
    return decisions
