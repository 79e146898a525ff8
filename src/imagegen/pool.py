"""``imagegen pool``: send a worker a pool command by hand, and wait for its answer (ADR 0718).

    imagegen pool load  --worker W --model M [--wait S] [--json]   make M resident on W
    imagegen pool evict --worker W --model M [--wait S] [--force] [--json]   unload M from W
    imagegen pool defrag --worker W                                 compact W's device memory

The same ``LoadModel`` / ``EvictModel`` / ``DefragmentMemory`` commands the pool-manager sends
(ADR 0702), published on ``imagegen.pool.commands`` with reason ``operator``; the worker carries
them out as it does the pool's (fenced by the command's id: sending one twice does nothing
more). ``load`` and ``evict`` then wait up to ``--wait`` seconds (default 120) for the worker's
answer on ``imagegen.workers.models`` and print it: loaded (from disk, RAM, or already
resident), the load refused (``ModelLoadFailed``: does_not_fit, in_use, unknown_model,
not_a_base_model, corrupted, out_of_memory, load_error; nothing was unloaded for it), evicted,
or not resident. ``defrag`` has no answer event: the worker's next heartbeats report its
fragmentation (``imagegen fleet --json``).

Checked before anything is sent: the key is a live operator key; the worker is in the fleet
projection and not lost (a command for a worker the fleet never heard from is dead-lettered by
the pool-manager, and a lost one would not answer); ``evict`` of a model the pool pins there is
refused without ``--force`` (the pool would pin it again within a planning round: change the
model's tier instead). Common flags: ``--key`` (else IMAGEGEN_OPERATOR_KEY, else
var/stack.env), ``--database-url``, ``--bootstrap``, ``--prefix``.

Exit status: 0 done (loaded, evicted, not resident, defragmentation sent), 1 the worker refused
the load, 2 bad input (no such worker, a lost one, a pinned model without --force, a key that is
not an operator's, no database), 3 no answer within ``--wait`` (the command stays in the log;
the worker answers it when it reads it), 4 Kafka could not be reached (nothing was sent, or
the send was not acknowledged within 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from imagegen_schemas import Envelope, topic_for
from imagegen_schemas.workers import (
    DefragmentMemory,
    EvictModel,
    LoadModel,
    ModelEvicted,
    ModelLoaded,
    ModelLoadFailed,
)

REASON = "operator"
STALE_S = 60.0  # a worker the projection last heard from longer ago is not sent a command
ANSWERS = topic_for(ModelLoaded)  # imagegen.workers.models: every answer to a command


def _fail(cmd: str, message: str, code: int) -> int:
    print(f"imagegen pool {cmd}: {message}", file=sys.stderr)
    return code


@dataclass(frozen=True)
class Answer:
    """A worker's answer to one command, as the CLI reports it."""

    outcome: str  # loaded | load_failed | evicted | not_resident
    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.outcome != "load_failed"

    def line(self, worker_id: str, model_id: str) -> str:
        d = self.data
        if self.outcome == "loaded":
            source = d.get("source", "disk")
            size = (d.get("model") or {}).get("bytes", 0) / (1 << 20)
            took = (
                "already resident (nothing read)"
                if source == "resident"
                else f"from {source} in {d.get('load_ms', 0):.0f} ms"
            )
            return f"loaded {model_id} on {worker_id}: {took}, {size:.1f} MiB"
        if self.outcome == "load_failed":
            message = f": {d['message']}" if d.get("message") else ""
            return f"{worker_id} refused to load {model_id}: {d.get('reason')}{message}"
        if self.outcome == "not_resident":
            return f"{model_id} was not loaded on {worker_id}: nothing unloaded"
        return f"evicted {model_id} from {worker_id}"


def answer_of(envelope: Envelope, command_id: str, model_id: str) -> Answer | None:
    """``envelope`` as the answer to the command ``command_id`` for ``model_id``, or None when it
    answers something else (an adapter evicted with the model names the same command)."""
    data = envelope.data
    if data.get("command_id") != command_id:
        return None
    if envelope.type == ModelLoaded.event_type:
        return Answer("loaded", data)
    if envelope.type == ModelLoadFailed.event_type:
        return Answer("load_failed", data)
    if envelope.type == ModelEvicted.event_type and data.get("model_id") == model_id:
        reason = "not_resident" if data.get("reason") == "not_resident" else "evicted"
        return Answer(reason, data)
    return None


def _fleet(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from .cli import load_fleet, stack_setting

    url = args.database_url or stack_setting("DATABASE_URL")
    if not url:
        raise RuntimeError("no database: pass --database-url or run `make up` first")
    return load_fleet(url)


def _check_worker(args: argparse.Namespace) -> str | None:
    """None when the command may go to ``args.worker``, else why not."""
    fleet = _fleet(args)
    worker = fleet.get(args.worker)
    if worker is None:
        live = sorted(w for w, doc in fleet.items() if doc["state"] != "lost")
        lost = len(fleet) - len(live)
        known = (", ".join(live) or "none") + (f" ({lost} more lost)" if lost else "")
        return f"no worker {args.worker!r} in the fleet; live: {known} (`imagegen fleet`)"
    if worker["state"] == "lost":
        return (
            f"worker {args.worker!r} is lost (no heartbeat within the pool-manager's timeout): "
            "it would not answer"
        )
    silent = time.time() - float(worker.get("last_seen") or 0.0)
    if silent > STALE_S:
        return (
            f"worker {args.worker!r} was last heard from {silent:.0f} s ago (the fleet "
            "projection is not being updated: is the stack up? `make status`)"
        )
    model = getattr(args, "model", None)
    if args.pool_cmd == "evict" and model in worker.get("pinned", []) and not args.force:
        return (
            f"{model!r} is pinned on {args.worker!r} by the pool (tier 1): the pool would pin "
            "it again within a planning round; change the model's tier, or pass --force"
        )
    return None


def _wait_for_answer(
    bootstrap: str,
    topic: str,
    start: dict[tuple[str, int], int],
    command_id: str,
    model: str,
    wait_s: float,
) -> Answer | None:
    """Read ``topic`` from ``start`` (its ends before the command was sent) until the answer to
    ``command_id`` arrives, or ``wait_s`` passes."""
    from confluent_kafka import Consumer, TopicPartition

    from imagegen_runtime.kafka import decode

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "imagegen-pool-cli",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(t, p, off) for (t, p), off in start.items()])
        give_up = time.monotonic() + wait_s
        while (left := give_up - time.monotonic()) > 0:
            msg = c.poll(min(left, 1.0))  # blocks until a record arrives or the slice ends
            if msg is None or msg.error():
                continue
            try:
                envelope, _ = decode(msg)
            except Exception:  # not an envelope: the dead-letter path's business, not ours
                continue
            answer = answer_of(envelope, command_id, model)
            if answer is not None:
                return answer
    finally:
        c.close()
    return None


def cmd_command(args: argparse.Namespace) -> int:
    from imagegen_runtime.kafka import KafkaPublisher

    from .cli import _bootstrap
    from .dlq import authorize
    from .replay import high_watermarks

    cmd = args.pool_cmd
    if args.wait < 0:
        return _fail(cmd, "--wait must be >= 0 seconds", 2)
    if cmd != "defrag" and not args.model.strip():
        return _fail(cmd, "--model must name a model (`GET /v1/models` lists them)", 2)
    if (refused := authorize(args)) is not None:
        return _fail(cmd, refused, 2)
    try:
        refused = _check_worker(args)
    except Exception as exc:  # the database cannot be read
        return _fail(cmd, f"could not read the fleet: {type(exc).__name__}: {exc}", 2)
    if refused is not None:
        return _fail(cmd, refused, 2)
    command: LoadModel | EvictModel | DefragmentMemory
    if cmd == "load":
        command = LoadModel(worker_id=args.worker, model_id=args.model, reason=REASON)
    elif cmd == "evict":
        command = EvictModel(worker_id=args.worker, model_id=args.model, reason=REASON)
    else:
        command = DefragmentMemory(worker_id=args.worker, reason=REASON)
    bootstrap = _bootstrap(args)
    topic = args.prefix + ANSWERS
    waiting = cmd != "defrag" and args.wait > 0
    try:
        start = high_watermarks(bootstrap, (topic,)) if waiting else {}
    except Exception as exc:  # no broker, or no such topic: nothing sent yet
        return _fail(cmd, f"could not read {topic} on {bootstrap}: {exc!r}; nothing sent", 4)

    async def send() -> Envelope:
        publisher = KafkaPublisher(bootstrap, "imagegen-cli", args.prefix, retry_for_s=30.0)
        try:
            return await publisher.publish(command, key=args.worker)
        finally:
            await publisher.close()

    try:
        envelope = asyncio.run(send())
    except Exception as exc:  # the broker away past the publisher's retries
        return _fail(cmd, f"could not publish to Kafka at {bootstrap} within 30 s: {exc!r}", 4)
    sent = {"command": command.event_type, "command_id": envelope.event_id}
    if not waiting:
        if args.json:
            print(json.dumps({**sent, "outcome": "sent"}, indent=2))
        else:
            print(f"sent {command.event_type} to {args.worker} (command {envelope.event_id})")
        return 0
    answer = _wait_for_answer(
        bootstrap, topic, start, envelope.event_id, args.model, float(args.wait)
    )
    if answer is None:
        if args.json:
            print(json.dumps({**sent, "outcome": "no_answer"}, indent=2))
        return _fail(
            cmd,
            f"no answer from {args.worker} within {args.wait:g} s; the command "
            f"{envelope.event_id} stays in the log and is answered when the worker reads it",
            3,
        )
    if args.json:
        print(json.dumps({**sent, "outcome": answer.outcome, "answer": answer.data}, indent=2))
    elif answer.ok:
        print(answer.line(args.worker, args.model))
    if not answer.ok:
        return _fail(cmd, answer.line(args.worker, args.model), 1)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    from .dlq import _common as dlq_common

    p.add_argument("--worker", required=True, help="the worker's id (`imagegen fleet`)")
    dlq_common(p)


def add_parser(sub: Any) -> None:
    """Register ``imagegen pool`` on the CLI's subparsers."""
    p = sub.add_parser("pool", help="send a worker a pool command by hand (operator key)")
    psub = p.add_subparsers(dest="pool_cmd", required=True)
    for name, help_text in (
        ("load", "make a model resident on a worker (LoadModel) and print the answer"),
        ("evict", "unload a model from a worker (EvictModel) and print the answer"),
    ):
        c = psub.add_parser(name, help=help_text)
        c.add_argument("--model", required=True, help="a registered base model's id")
        c.add_argument(
            "--wait", type=float, default=120.0, help="seconds to wait for the answer; 0: none"
        )
        c.add_argument("--json", action="store_true")
        if name == "evict":
            c.add_argument("--force", action="store_true", help="evict a model the pool pins there")
        _common(c)
        c.set_defaults(func=cmd_command)
    d = psub.add_parser("defrag", help="compact a worker's device memory (DefragmentMemory)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(wait=0.0)
    _common(d)
    d.set_defaults(func=cmd_command)
