"""The `imagegen` operator CLI.

    imagegen topics create [--prefix P]   create the catalog's topics (idempotent)
    imagegen topics list                  the catalog: topic, key, partitions, retention, events
    imagegen generate "a prompt" --out file.png [--model --steps --seed --guidance ...]
    imagegen replay --job ID              one job's trace id and timeline, read from the topics
    imagegen replay --rebuild --verify    rebuild the projection from offset 0, compare with live
    imagegen keys create|list|revoke|rotate   API keys and roles (see `imagegen keys --help`)
    imagegen fleet [--json]               the pool-manager's fleet projection: each worker's
                                          state, models, adapters, memory and in-flight jobs
    imagegen simulate ...                 the fleet simulator (see docs/scheduling.md)
    imagegen models register --id ID --family F (--path P | --hub REPO_ID)
                                          register a real checkpoint (see docs/models.md)
    imagegen usage --user U --since T [--until T] [--json]   a user's usage ledger (docs/usage.md)
    imagegen webhooks secret|redeliver    webhook secrets, resend dead letters (docs/webhooks.md)
    imagegen dlq list|show|redrive        dead letters, operator key only (docs/dlq.md)
    imagegen pool load|evict|defrag --worker W [--model M]   a pool command by hand, and the
                                          worker's answer (operator key; ADR 0718)

Connection settings come from flags, else IMAGEGEN_KAFKA_BOOTSTRAP / IMAGEGEN_DATABASE_URL,
else the local stack's var/stack.env.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

STACK_ENV = Path(__file__).resolve().parents[2] / "var" / "stack.env"


def stack_setting(name: str, default: str | None = None) -> str | None:
    """``IMAGEGEN_<name>`` from the environment, else from the local stack's var/stack.env."""
    value = os.environ.get(f"IMAGEGEN_{name}")
    if value:
        return value
    if STACK_ENV.exists():
        for line in STACK_ENV.read_text().splitlines():
            key, _, val = line.partition("=")
            if key == f"IMAGEGEN_{name}":
                return val
    return default


def _bootstrap(args: argparse.Namespace) -> str:
    return args.bootstrap or stack_setting("KAFKA_BOOTSTRAP", "127.0.0.1:29092") or ""


def load_fleet(url: str) -> dict[str, dict[str, Any]]:
    """The pool-manager's persisted fleet projection, one document per worker (by id); empty
    before the pool-manager's first write."""
    from imagegen_pool_manager.adapters.fleet_store import PgFleetStore
    from imagegen_runtime.db import make_engine

    async def load() -> dict[str, dict[str, Any]]:
        engine = make_engine(url, pool_size=1)
        try:
            store = PgFleetStore(engine)
            await store.create_tables()  # an empty fleet before the pool-manager's first write
            return await store.load()
        finally:
            await engine.dispose()

    return asyncio.run(load())


def _ago(seconds: float) -> str:
    """How long ago a worker was last heard from, for the fleet table (``12s``, ``5m``,
    ``3h``, ``2d``)."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def cmd_fleet(args: argparse.Namespace) -> int:
    import json

    url = args.database_url or stack_setting("DATABASE_URL")
    if not url:
        print("no database: pass --database-url or run `make up` first", file=sys.stderr)
        return 2

    try:
        docs = load_fleet(url)
    except Exception as exc:  # the database is down or unreachable: say so, no traceback
        print(
            f"could not read the fleet projection from the database: {type(exc).__name__}: "
            f"{exc} (is the stack up? `make status`)",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps({"workers": list(docs.values())}, indent=2, sort_keys=True))
        return 0
    if not docs:
        print("no workers yet (the pool-manager writes the fleet once it has caught up)")
        return 0
    import time

    mib = 1 << 20
    print(
        f"{'WORKER':<18} {'STATE':<6} {'SEEN':>8} {'USED/TOTAL MiB':>15}  {'JOB':<12} "
        "MODELS (ADAPTERS)"
    )
    now = time.time()
    for doc in docs.values():
        pinned = set(doc.get("pinned", ()))
        models = (
            ", ".join(
                m["model_id"] + ("*" if m["model_id"] in pinned else "") for m in doc["models"]
            )
            or "-"
        )
        adapters = ", ".join(m["model_id"] for m in doc["adapters"])
        memory = f"{doc['memory_used_bytes'] // mib}/{doc['memory_total_bytes'] // mib}"
        job = (doc["running_job_id"] or "-")[:12]
        seen = _ago(now - float(doc.get("last_seen") or 0.0))
        line = (
            f"{doc['worker_id']:<18} {doc['state']:<6} {seen:>8} {memory:>15}  {job:<12} {models}"
        )
        print(line + (f" ({adapters})" if adapters else ""))
    if any(doc.get("pinned") for doc in docs.values()):
        print("* pinned there by the pool (tier 1)")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from imagegen_schemas import TOPICS

    if args.action == "list":
        for t in TOPICS:
            retention = "forever" if t.retention_ms < 0 else f"{t.retention_ms // 86_400_000}d"
            events = ", ".join(e.event_type for e in t.events)
            print(
                f"{t.name:<30} key={t.key:<9} partitions={t.partitions:<2} "
                f"{'compact' if t.compacted else retention:<8} {events}"
            )
        return 0
    from imagegen_runtime.kafka import ensure_topics, wait_for_kafka

    wait_for_kafka(_bootstrap(args), timeout_s=30)
    created = ensure_topics(_bootstrap(args), args.prefix)
    print(f"created {len(created)} topics" + (": " + ", ".join(created) if created else ""))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate

    api = args.api or stack_setting("API_URL", "http://127.0.0.1:8000") or ""
    key = args.key or stack_setting("API_KEY")
    if not key:
        print(
            "no API key: pass --key, set IMAGEGEN_API_KEY, or run `make up` (it creates one)",
            file=sys.stderr,
        )
        return 2
    body = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "num_images": 1}
    given = {
        "model": args.model,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "scheduler": args.scheduler,
    }
    body.update({name: value for name, value in given.items() if value is not None})
    generate(api, key, body, Path(args.out))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from . import replay

    bootstrap = _bootstrap(args)
    if args.job:
        records = replay.job_timeline(bootstrap, args.job, prefix=args.prefix)
        replay.print_trace(replay.job_trace(records))
        replay.print_timeline(records)
        return 0
    if not args.rebuild:
        print("say --job ID or --rebuild [--verify]", file=sys.stderr)
        return 2
    url = args.database_url or stack_setting("DATABASE_URL")
    if not url:
        print("no database: pass --database-url or run `make up` first", file=sys.stderr)
        return 2
    report = asyncio.run(replay.rebuild_and_verify(bootstrap, url, keep=not args.verify))
    print(
        f"replayed {report.records} records; compared {report.compared} jobs: "
        f"{report.equal} equal, {len(report.differences)} different"
        + (f", {report.skipped_moving} still changing (left out)" if report.skipped_moving else "")
    )
    for line in report.differences[:20]:
        print("  DIFF", line)
    if report.unreplayable:
        print(f"{len(report.unreplayable)} records could not be replayed (left out, as live):")
        for line in report.unreplayable[:20]:
            print("  SKIP", line)
    print("side effects sent: 0 (replay has no publisher, blob store or HTTP client)")
    if args.verify:
        print(
            "VERIFIED: rebuilt projection equals the live one"
            if report.ok
            else "MISMATCH: rebuilt projection differs from the live one"
        )
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        from imagegen_fleet_sim.cli import main as simulate

        return int(simulate(argv[1:]) or 0)
    parser = argparse.ArgumentParser(
        prog="imagegen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    topics = sub.add_parser("topics", help="create or list the catalog's topics")
    topics.add_argument("action", choices=["create", "list"])
    topics.add_argument("--prefix", default="", help="topic name prefix (test isolation)")
    topics.add_argument("--bootstrap", default=None, help="Kafka host:port")
    topics.set_defaults(func=cmd_topics)
    gen = sub.add_parser("generate", help="generate an image through the running stack")
    gen.add_argument("prompt")
    gen.add_argument("--out", default="out/image.png")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--model", default=None)
    gen.add_argument("--steps", type=int, default=None, help="default: the model's")
    gen.add_argument("--guidance", type=float, default=None, help="default: the model's")
    gen.add_argument("--scheduler", default=None, help="default: ddim, or the model's first")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--api", default=None, help="API base URL")
    gen.add_argument("--key", default=None, help="API key")
    gen.set_defaults(func=cmd_generate)
    rp = sub.add_parser("replay", help="replay events: a job's timeline, or rebuild and verify")
    rp.add_argument("--job", default=None, help="print this job's timeline")
    rp.add_argument("--rebuild", action="store_true", help="rebuild projections from offset 0")
    rp.add_argument(
        "--verify",
        action="store_true",
        help="compare the rebuild with the live projection (then drop it)",
    )
    rp.add_argument("--bootstrap", default=None)
    rp.add_argument("--database-url", default=None)
    rp.add_argument("--prefix", default="", help="topic name prefix (test isolation)")
    rp.set_defaults(func=cmd_replay)
    from .keys import add_parser as add_keys_parser

    add_keys_parser(sub)
    fleet = sub.add_parser("fleet", help="the pool-manager's fleet projection")
    fleet.add_argument("--json", action="store_true", help='as JSON: {"workers": [...]}')
    fleet.add_argument("--database-url", default=None)
    fleet.set_defaults(func=cmd_fleet)
    sub.add_parser("simulate", help="fleet simulator; `imagegen simulate --help`")
    from .models import add_parser as add_models_parser

    add_models_parser(sub)
    from .usage import add_parser as add_usage_parser

    add_usage_parser(sub)
    from .webhooks import add_parser as add_webhooks_parser

    add_webhooks_parser(sub)
    from .dlq import add_parser as add_dlq_parser

    add_dlq_parser(sub)
    from .pool import add_parser as add_pool_parser

    add_pool_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        if not unreachable(exc):
            raise
        print(
            f"imagegen {args.command}: cannot reach the stack: {type(exc).__name__}: {exc} "
            "(is it up? `make up`, `make status`; `--help` names the flags that point elsewhere)",
            file=sys.stderr,
        )
        return 2


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says Kafka or PostgreSQL cannot be reached: a
    refused or timed-out connection, a broker transport failure. Anything else is a bug and
    keeps its traceback."""
    from confluent_kafka import KafkaException

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError):
            return True
        if isinstance(seen, KafkaException) and "transport" in str(seen).lower():
            return True
        if type(seen).__name__ in ("CannotConnectNowError", "ConnectionDoesNotExistError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


if __name__ == "__main__":
    raise SystemExit(main())
