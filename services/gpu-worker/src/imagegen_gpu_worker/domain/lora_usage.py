"""Which LoRAs of a tier-1 model are pre-merged, and which jobs run fused (issue 12, ADR 0704).

Pure: the worker records the LoRAs of each job it runs on a tier-1 model in :class:`LoraUsage`
(per model, a window of the last ``window_jobs`` jobs within ``window_s`` seconds); the ``top``
most used are the model's pre-merged set. A job runs fused when its LoRAs are exactly one LoRA of
that set at a non-zero weight (:func:`fused_choice`); every other job (none, several, weight 0)
runs on the adapter path.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PremergeSettings:
    enabled: bool = True  # off: LoRAs are only ever toggled adapters (ADR 0704 as before)
    top: int = 5  # how many of a tier-1 model's most used LoRAs are pre-merged
    window_s: float = 86400.0  # uses older than this do not count
    window_jobs: int = 1000  # only the model's last this many jobs count


def fused_choice(loras: tuple[tuple[str, float], ...]) -> tuple[str, float] | None:
    """(LoRA id, weight) when ``loras`` name exactly one LoRA (named twice: its weights added)
    at a non-zero weight; None otherwise (no LoRA, several, or weight 0: the adapter path, whose
    weight 0 is the base model byte for byte)."""
    names = {name for name, _ in loras}
    if len(names) != 1:
        return None
    weight = sum(float(w) for _, w in loras)
    return None if weight == 0.0 else (next(iter(names)), weight)


@dataclass
class LoraUsage:
    """The LoRAs each model's recent jobs used (a job counts each LoRA it names once)."""

    settings: PremergeSettings = field(default_factory=PremergeSettings)
    # model id -> (time, LoRA ids) of its recent jobs, oldest first
    _jobs: dict[str, deque[tuple[float, frozenset[str]]]] = field(default_factory=dict)

    def record(self, model_id: str, loras: tuple[tuple[str, float], ...], now: float) -> None:
        """A job of ``model_id`` with ``loras`` ran at ``now`` (a job without LoRAs counts in
        the window of the last jobs too)."""
        jobs = self._jobs.setdefault(model_id, deque(maxlen=self.settings.window_jobs))
        jobs.append((now, frozenset(name for name, _ in loras)))
        self._expire(jobs, now)

    def top(self, model_id: str, now: float) -> list[str]:
        """The model's ``top`` most used LoRAs in the window, most used first (ties: the most
        recently used first, then by id)."""
        jobs = self._jobs.get(model_id)
        if not jobs:
            return []
        self._expire(jobs, now)
        counts: Counter[str] = Counter()
        last: dict[str, int] = {}
        for i, (_, names) in enumerate(jobs):
            for name in names:
                counts[name] += 1
                last[name] = i
        ranked = sorted(counts, key=lambda name: (-counts[name], -last[name], name))
        return ranked[: self.settings.top]

    def counts(self, model_id: str, now: float) -> dict[str, int]:
        """Uses per LoRA of ``model_id`` in the window (for reports and tests)."""
        jobs = self._jobs.get(model_id)
        if not jobs:
            return {}
        self._expire(jobs, now)
        return dict(Counter(name for _, names in jobs for name in names))

    def _expire(self, jobs: deque[tuple[float, frozenset[str]]], now: float) -> None:
        while jobs and jobs[0][0] < now - self.settings.window_s:
            jobs.popleft()
