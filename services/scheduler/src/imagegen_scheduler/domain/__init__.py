"""The scheduling policy, pure: no clock, no I/O, no Kafka/SQL/torch.

Fold events with ``evolve``, ask ``decide(state, now)`` (ours) or a baseline for decisions, and
record each decision with ``evolve(state, as_event(decision, now))`` before deciding again. The
scheduler service and the fleet simulator call exactly these functions.
"""

from .admission import Admitted, FleetCapabilities, Refused, WorkerClass, admit
from .baselines import fifo_decide, weighted_decide, weighted_warm_decide
from .config import SchedulerConfig
from .eta import estimate_waits
from .events import (
    Assign,
    Decision,
    Event,
    JobAssigned,
    JobCancelled,
    JobFinished,
    JobPreempted,
    JobQueued,
    Preempt,
    PreemptionDecided,
    Reason,
    WeightsMeasured,
    WorkerLost,
    WorkerUpdated,
    as_event,
)
from .fleet import Fleet
from .model import (
    TIERS,
    AdapterKind,
    AdapterSpec,
    JobRequest,
    ModelCatalog,
    ModelSpec,
    Tier,
    WarmLevel,
    WorkerView,
    denoise_s,
    fits,
    footprint_gb,
    load_estimate_s,
    warm_level,
)
from .policy import decide, urgency
from .queues import QueuedJob
from .state import RunningJob, SchedulerState, evolve

__all__ = [
    "TIERS",
    "AdapterKind",
    "AdapterSpec",
    "Admitted",
    "Assign",
    "Decision",
    "Event",
    "Fleet",
    "FleetCapabilities",
    "JobAssigned",
    "JobCancelled",
    "JobFinished",
    "JobPreempted",
    "JobQueued",
    "JobRequest",
    "ModelCatalog",
    "ModelSpec",
    "Preempt",
    "PreemptionDecided",
    "QueuedJob",
    "Reason",
    "Refused",
    "RunningJob",
    "SchedulerConfig",
    "SchedulerState",
    "Tier",
    "WarmLevel",
    "WorkerClass",
    "WeightsMeasured",
    "WorkerLost",
    "WorkerUpdated",
    "WorkerView",
    "admit",
    "as_event",
    "decide",
    "denoise_s",
    "estimate_waits",
    "evolve",
    "fifo_decide",
    "fits",
    "footprint_gb",
    "load_estimate_s",
    "urgency",
    "warm_level",
    "weighted_decide",
    "weighted_warm_decide",
]
