"""Queued jobs and one tier's queue.

Ordering inside a tier: oldest first by the time a job became schedulable (``queued_at``, the
original one for a resumed job), then fold order (``seq``). Jobs are kept in a FIFO per user,
with the users' oldest jobs in a sorted list, so that a user at their concurrency cap
(``SchedulerConfig.user_share``) is skipped in one step however many jobs they queued: a user
who floods a tier holds at most their cap of workers, and everybody else's jobs go past theirs.

Per-user rotation (``in_order(rotate=True)``, ADR 0620): a user's oldest job takes its turn as
though it had arrived no earlier than the latest time a job of that user in this tier finished
on its worker (``served``), ``max(due_since, served)``, earliest turn first; then every user's
second job in the same user order, and so on. A flooder whose job has just finished on the
worker that freed ranks behind every job that arrived before that moment; a user whose earlier
jobs were done before the new one arrived keeps plain age order. The turn counts only for a
user who queues more jobs in the tier than the per-user cap lets them run at once
(``rotate_above``, kept at ``SchedulerState.user_cap`` by ``evolve``); a user whose queued jobs
all fit under the cap keeps age order, so an ordinary user whose jobs overlap is not sent a
whole queue wait back (on seed-peak those jobs aged past the relax cold deadline and loaded
models, ADR 0620). ``served`` is a max over event times and the threshold a function of the
fleet, so neither depends on the order the events are folded in: a replayed scheduler picks the
same job.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .model import JobRequest


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A job waiting in a tier queue."""

    request: JobRequest  # what was asked
    family: str  # model family, the capability it needs
    footprint_gb: float  # VRAM it needs (model + adapters + activations)
    remaining_steps: int  # steps left; fewer than requested after a preemption
    enqueued_at: float  # start of the current stay in the queue
    waited_s: float  # time spent queued in earlier stays (before a preemption or worker loss)
    seq: int  # fold-order number; breaks every remaining tie
    attempt: int  # 1, then +1 after a lost worker

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def due_since(self) -> float:
        """When it became schedulable; its wait (and so its urgency) counts from here."""
        return self.request.queued_at

    def wait_s(self, now: float) -> float:
        """Total time queued so far, over all stays."""
        return self.waited_s + max(0.0, now - self.enqueued_at)


_Key = tuple[float, int, str]  # (due_since, seq, user_id) of a user's head job
_Turn = tuple[float, float, int, str]  # (turn, due_since, seq, user_id) of a user's head


class TierQueue:
    """One tier. Mutated only by ``evolve`` (``push``, ``remove``, ``note_served``) and by the
    service's fold (``note_served`` from result facts, ``log.py``)."""

    def __init__(self) -> None:
        self.by_user: dict[str, deque[QueuedJob]] = {}  # each user's jobs, oldest first
        self.heads: list[_Key] = []  # one key per user with queued jobs, ascending
        self.arrivals: dict[str, QueuedJob] = {}  # job id -> job in fold order (baselines)
        self.by_model: dict[str, dict[str, QueuedJob]] = {}  # base model -> its jobs, fold order
        # user -> latest time one of their jobs in this tier finished on its worker (rotation;
        # kept for users with nothing queued too)
        self.served: dict[str, float] = {}
        self.turns: list[_Turn] = []  # one key per user with queued jobs, ascending
        # the turn counts only for users with more queued jobs than this (``set_rotate_above``)
        self.rotate_above = 1

    def __len__(self) -> int:
        return len(self.arrivals)

    def push(self, job: QueuedJob, *, front: bool = False) -> None:
        """Queue a job; ``front`` puts a resumed job before its user's other jobs."""
        user = job.request.user_id
        jobs = self.by_user.setdefault(user, deque())
        if jobs:
            self._drop_head(jobs[0])
        if front:
            jobs.appendleft(job)
        else:
            jobs.append(job)
        self._add_head(jobs[0])
        self.arrivals[job.job_id] = job
        self.by_model.setdefault(job.request.model_id, {})[job.job_id] = job

    def remove(self, job_id: str, user_id: str) -> None:
        """Take a job out (assigned or cancelled)."""
        job = self.arrivals.pop(job_id, None)
        if job is not None:
            same_model = self.by_model[job.request.model_id]
            del same_model[job_id]
            if not same_model:
                del self.by_model[job.request.model_id]
        jobs = self.by_user.get(user_id)
        if not jobs:
            return
        self._drop_head(jobs[0])
        if jobs[0].job_id == job_id:
            jobs.popleft()
        else:
            for queued in jobs:
                if queued.job_id == job_id:
                    jobs.remove(queued)
                    break
        if jobs:
            self._add_head(jobs[0])
        if not jobs:
            del self.by_user[user_id]

    def replace(self, job: QueuedJob) -> None:
        """Put ``job`` in the place of the queued job with its id (the same request, a new
        footprint): its order keys (``due_since``, ``seq``, user) are unchanged."""
        old = self.arrivals.get(job.job_id)
        if old is None:
            return
        self.arrivals[job.job_id] = job
        self.by_model[job.request.model_id][job.job_id] = job
        jobs = self.by_user[job.request.user_id]
        jobs[jobs.index(old)] = job

    def note_served(self, user_id: str, at: float) -> None:
        """Record that a job of the user in this tier finished on its worker at ``at``.
        Idempotent and order-free: only the latest time counts."""
        if at <= self.served.get(user_id, float("-inf")):
            return
        jobs = self.by_user.get(user_id)
        if jobs:
            self._drop_head(jobs[0])
            self.served[user_id] = at
            self._add_head(jobs[0])
        else:
            self.served[user_id] = at

    def turn(self, job: QueuedJob) -> float:
        """When the job's turn came (rotation): ``max(due_since, served[user])`` while the user
        queues more than ``rotate_above`` jobs here, else ``due_since``."""
        user = job.request.user_id
        if len(self.by_user.get(user, ())) <= self.rotate_above:
            return job.due_since  # their queued jobs fit under the cap at once: age order
        return max(job.due_since, self.served.get(user, float("-inf")))

    def set_rotate_above(self, count: int) -> None:
        """Users take turns only while they queue more than ``count`` jobs here (the per-user
        cap, ``SchedulerState.user_cap``); re-keys the turn order when it changes."""
        if count == self.rotate_above:
            return
        self.rotate_above = count
        self.turns = sorted(self._turn(jobs[0]) for jobs in self.by_user.values())

    def oldest_due(self) -> float | None:
        """``due_since`` of the oldest queued job, or None when empty."""
        return self.heads[0][0] if self.heads else None

    def in_order(
        self, skip_user: Callable[[str], bool] | None = None, *, rotate: bool = False
    ) -> Iterator[QueuedJob]:
        """Queued jobs oldest first (``due_since``, then ``seq``), leaving out every job of the
        users for whom ``skip_user`` is true. Lazy: a caller that stops early pays only for
        what it read, and a skipped user costs one step however many jobs they queued.

        With ``rotate``, in per-user rotation order instead: each user's oldest job by its turn
        (``turn``; ties: the older job first), then each user's second job in the same user
        order, and so on."""
        if rotate:
            yield from self._in_turns(skip_user)
            return
        later: list[tuple[float, int, str, int]] = []  # users' next jobs: (due, seq, user, index)
        for due, seq, user in self.heads:
            while later and later[0][:2] < (due, seq):
                yield self._next_of(later)
            if skip_user is not None and skip_user(user):
                continue
            jobs = self.by_user[user]
            yield jobs[0]
            if len(jobs) > 1:
                heapq.heappush(later, (jobs[1].due_since, jobs[1].seq, user, 1))
        while later:
            yield self._next_of(later)

    def _in_turns(self, skip_user: Callable[[str], bool] | None) -> Iterator[QueuedJob]:
        users: list[str] = []
        for _, _, _, user in self.turns:
            if skip_user is not None and skip_user(user):
                continue
            users.append(user)
            yield self.by_user[user][0]
        depth = 1
        while users:
            users = [u for u in users if len(self.by_user[u]) > depth]
            for user in users:
                yield self.by_user[user][depth]
            depth += 1

    def _next_of(self, later: list[tuple[float, int, str, int]]) -> QueuedJob:
        _, _, user, index = heapq.heappop(later)
        jobs = self.by_user[user]
        if index + 1 < len(jobs):
            heapq.heappush(later, (jobs[index + 1].due_since, jobs[index + 1].seq, user, index + 1))
        return jobs[index]

    def _add_head(self, job: QueuedJob) -> None:
        bisect.insort(self.heads, _key(job))
        bisect.insort(self.turns, self._turn(job))

    def _drop_head(self, job: QueuedJob) -> None:
        index = bisect.bisect_left(self.heads, _key(job))
        del self.heads[index]
        index = bisect.bisect_left(self.turns, self._turn(job))
        del self.turns[index]

    def _turn(self, job: QueuedJob) -> _Turn:
        return (self.turn(job), job.due_since, job.seq, job.request.user_id)


def _key(job: QueuedJob) -> _Key:
    return (job.due_since, job.seq, job.request.user_id)
