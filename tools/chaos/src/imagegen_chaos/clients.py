"""The soak's clients: several users (mixed plans) submitting jobs as a real client would.

A submission is retried with the same Idempotency-Key and the same body after a 5xx, a 409
(still in flight), a 429, or no answer at all, until ``give_up_s``; every answer is recorded.
A ``Tracker`` follows the terminal topics so the number of jobs in flight stays bounded.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from .history import Answer, Submission

PLAN_TIER = {"free": "relax", "pro": "fast", "turbo": "turbo"}
PROMPTS = (
    "a red circle",
    "a blue square on a white background",
    "two green triangles",
    "a yellow star above a purple circle",
    "an orange square left of a blue circle",
)
RETRY_STATUSES = frozenset({409, 429})


@dataclass(frozen=True)
class User:
    user_id: str
    plan: str
    key: str

    @property
    def tier(self) -> str:
        return PLAN_TIER[self.plan]


def webhook_url_for(base: str, user: User | None) -> str:
    """The webhook URL a user's jobs name: ``<base>/<user id>`` (the receiver picks the user's
    secrets by it); ``base`` itself without a user."""
    if user is None:
        return base
    return f"{base.rstrip('/')}/{quote(user.user_id, safe='')}"


@dataclass(frozen=True)
class Workload:
    jobs: int = 2000
    max_in_flight: int = 24  # accepted jobs not yet terminal (and not yet past their deadline)
    give_up_s: float = 120.0  # a client retries one submission this long, then gives up
    request_timeout_s: float = 10.0
    seeded_share: float = 0.5  # share of requests that name a seed (the rest let the server pick)
    cancel_share: float = 0.02  # share of accepted jobs the client cancels soon after
    steps: tuple[int, int] = (2, 6)
    model: str = "tiny-random"
    webhook_url: str | None = None  # the receiver's base URL; each user's jobs add /<user id>
    stale_after_s: float = 300.0  # an accepted job older than this no longer counts in flight
    max_duration_s: float = 3600.0  # stop submitting after this long, whatever is left


class Tracker:
    """Job ids with a terminal fact on the log, followed live (for pacing only; the checker
    reads the whole log again at the end)."""

    TOPICS = ("imagegen.jobs.delivered", "imagegen.jobs.ended", "imagegen.jobs.moderated")

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.terminal: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tracker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        import json

        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"imagegen-chaos-tracker-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        md = c.list_topics(timeout=60)
        c.assign(
            [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t in self.TOPICS
                for p in md.topics[t].partitions
            ]
        )
        while not self._stop.is_set():
            for msg in c.consume(200, 0.5):
                value = msg.value()
                if msg.error() or not value:
                    continue
                try:
                    env = json.loads(value)
                except ValueError:
                    continue
                t, data = env.get("type"), env.get("data") or {}
                if (
                    t in ("imagegen.image.delivered", "imagegen.generation.cancelled")
                    or (t == "imagegen.generation.failed" and data.get("terminal", True))
                    or (str(t).endswith(".moderated") and data.get("verdict") == "rejected")
                ):
                    self.terminal.add(str(env.get("correlation_id")))
        c.close()


@dataclass
class Soak:
    api_url: str
    users: list[User]
    workload: Workload
    tracker: Tracker
    seed: int
    run_id: str
    submissions: list[Submission] = field(default_factory=list)
    accepted: dict[str, float] = field(default_factory=dict)  # job id -> monotonic accept time
    _next: int = 0
    _sending: int = 0

    def in_flight(self) -> int:
        now = time.monotonic()
        live = sum(
            1
            for job, at in self.accepted.items()
            if job not in self.tracker.terminal and now - at < self.workload.stale_after_s
        )
        return live + self._sending

    def body(self, rng: random.Random, user: User | None = None) -> dict[str, Any]:
        w = self.workload
        body: dict[str, Any] = {
            "prompt": rng.choice(PROMPTS),
            "model": w.model,
            "steps": rng.randint(*w.steps),
            "num_images": 1,
        }
        if rng.random() < w.seeded_share:
            body["seed"] = rng.randrange(2**31)
        if w.webhook_url:
            body["webhook_url"] = webhook_url_for(w.webhook_url, user)
        return body

    async def run(self) -> None:
        stop_at = time.monotonic() + self.workload.max_duration_s
        async with httpx.AsyncClient(
            base_url=self.api_url, timeout=self.workload.request_timeout_s
        ) as http:
            tasks = [
                asyncio.create_task(self._user(http, u, i, stop_at))
                for i, u in enumerate(self.users)
            ]
            await asyncio.gather(*tasks)

    async def _user(self, http: httpx.AsyncClient, user: User, n: int, stop_at: float) -> None:
        rng = random.Random(f"{self.seed}-{n}")
        cancels: list[asyncio.Task[None]] = []
        while self._next < self.workload.jobs and time.monotonic() < stop_at:
            if self.in_flight() >= self.workload.max_in_flight:
                await asyncio.sleep(0.1)  # until a job in flight ends (the tracker sees it)
                continue
            self._next += 1
            self._sending += 1
            try:
                sub = await self.submit(
                    http, user, self.body(rng, user), f"{self.run_id}-{self._next}"
                )
            finally:
                self._sending -= 1
            if sub.accepted and rng.random() < self.workload.cancel_share:
                job_id = str(sub.accepted[0].body["id"])
                cancels.append(asyncio.create_task(self._cancel(http, user, sub, job_id, rng)))
            else:
                self.submissions.append(sub)
        for t in cancels:
            await t

    async def submit(
        self, http: httpx.AsyncClient, user: User, body: dict[str, Any], key: str
    ) -> Submission:
        headers = {"Authorization": f"Bearer {user.key}", "Idempotency-Key": key}
        answers: list[Answer] = []
        sent_at = time.time()
        give_up = time.monotonic() + self.workload.give_up_s
        for attempt in range(10_000):
            answer, retry_after = await _call(http, "POST", "/v1/generations", headers, body)
            answers.append(answer)
            if answer.status == 202:
                self.accepted.setdefault(str(answer.body["id"]), time.monotonic())
            done = answer.status is not None and answer.status < 500
            if (done and answer.status not in RETRY_STATUSES) or time.monotonic() > give_up:
                break
            await asyncio.sleep(retry_after or min(5.0, 0.25 * 2**attempt))  # client backoff
        return Submission(
            key, user.user_id, user.tier, sent_at, tuple(answers), webhook="webhook_url" in body
        )

    async def _cancel(
        self, http: httpx.AsyncClient, user: User, sub: Submission, job_id: str, rng: random.Random
    ) -> None:
        await asyncio.sleep(rng.uniform(0.0, 2.0))  # a client that changes its mind a bit later
        headers = {"Authorization": f"Bearer {user.key}"}
        answer = Answer(time.time(), None)
        for attempt in range(5):
            answer, _ = await _call(http, "DELETE", f"/v1/generations/{job_id}", headers, None)
            if answer.status is not None and answer.status < 500:
                break
            await asyncio.sleep(0.5 * 2**attempt)  # client backoff
        self.submissions.append(
            Submission(
                sub.idempotency_key,
                sub.user_id,
                sub.tier,
                sub.sent_at,
                sub.answers,
                sub.webhook,
                answer,
            )
        )


async def _call(
    http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], body: Any
) -> tuple[Answer, float | None]:
    try:
        r = await http.request(method, path, headers=headers, json=body)
    except httpx.TransportError as exc:
        return Answer(time.time(), None, None, repr(exc)[:300]), None
    try:
        content: Any = r.json()
    except ValueError:
        content = r.text[:2000]
    retry_after = r.headers.get("Retry-After")
    wait = float(retry_after) if retry_after and retry_after.isdigit() else None
    return Answer(time.time(), r.status_code, content), wait


async def final_reads(
    api_url: str, jobs: dict[str, str], timeout_s: float = 10.0
) -> dict[str, Answer]:
    """The API's last answer for each job (job id -> API key of its owner)."""
    out: dict[str, Answer] = {}
    sem = asyncio.Semaphore(4)
    async with httpx.AsyncClient(base_url=api_url, timeout=timeout_s) as http:

        async def one(job_id: str, key: str) -> None:
            async with sem:
                for attempt in range(4):
                    answer, _ = await _call(
                        http,
                        "GET",
                        f"/v1/generations/{job_id}",
                        {"Authorization": f"Bearer {key}"},
                        None,
                    )
                    if answer.status is not None and answer.status < 500:
                        break
                    await asyncio.sleep(0.5 * 2**attempt)  # client backoff
                if isinstance(answer.body, dict):  # keep what the checker needs
                    keep = ("id", "status", "failure", "attempt", "detail")
                    answer = Answer(answer.at, answer.status, {k: answer.body.get(k) for k in keep})
                out[job_id] = answer

        await asyncio.gather(*(one(j, k) for j, k in jobs.items()))
    return out
