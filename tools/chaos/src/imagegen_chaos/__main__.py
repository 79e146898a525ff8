"""``python -m imagegen_chaos run|check``; see the package docstring and docs/adr/0010."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .clients import Workload
from .faults import TARGETS, FaultPlan
from .history import History
from .soak import SoakConfig, report, run
from .stack import ROOT, ChaosStack


def _pair(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi or lo)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imagegen_chaos", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="start a separate stack, soak it under faults, check")
    r.add_argument("--jobs", type=int, default=2000)
    r.add_argument("--users", type=int, default=6, help="API keys; plans cycle free, pro, turbo")
    r.add_argument("--seed", type=int, default=0, help="seeds faults, bodies and webhook failures")
    r.add_argument(
        "--var",
        type=Path,
        default=Path(os.environ.get("IMAGEGEN_CHAOS_VAR", ROOT / "var" / "chaos")),
        help="the chaos stack's var folder (env IMAGEGEN_CHAOS_VAR); never the shared var",
    )
    r.add_argument("--kafka-port", type=int, default=29192)
    r.add_argument("--controller-port", type=int, default=29193)
    r.add_argument("--pg-port", type=int, default=25532)
    r.add_argument("--port-offset", type=int, default=100, help="added to each service port")
    r.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gpu-worker processes in the soak's stack (a local fleet); each is a fault target",
    )
    r.add_argument("--max-in-flight", type=int, default=24)
    r.add_argument("--max-duration", type=float, default=3600, help="stop submitting after (s)")
    r.add_argument("--give-up", type=float, default=120, help="a client retries this long (s)")
    r.add_argument("--seeded-share", type=float, default=0.5)
    r.add_argument("--cancel-share", type=float, default=0.02)
    r.add_argument("--steps", type=_pair, default=(2, 6), help="MIN,MAX sampler steps")
    r.add_argument("--no-faults", action="store_true", help="a baseline run without faults")
    r.add_argument("--fault-interval", type=float, default=10.0)
    r.add_argument("--fault-jitter", type=float, default=3.0)
    r.add_argument("--pause", type=_pair, default=(5, 20), help="MIN,MAX SIGSTOP seconds")
    r.add_argument("--unwritable", type=_pair, default=(5, 20), help="MIN,MAX broken-blob seconds")
    r.add_argument("--kill-share", type=float, default=0.5)
    r.add_argument("--targets", default=",".join(TARGETS), help="comma list of fault targets")
    r.add_argument("--deadline-turbo", type=float, default=180)
    r.add_argument("--deadline-fast", type=float, default=240)
    r.add_argument("--deadline-relax", type=float, default=360)
    r.add_argument("--webhook-host", default="127.0.0.1", help="address the receiver binds")
    r.add_argument("--webhook-port", type=int, default=0)
    r.add_argument(
        "--webhook-url",
        default=None,
        help="base URL jobs name, + /<user id> (default: the receiver's)",
    )
    r.add_argument("--webhook-fail-share", type=float, default=0.05, help="answered 503 on purpose")
    r.add_argument("--out", type=Path, default=None, help="default: VAR/report")
    r.add_argument("--keep-stack", action="store_true", help="leave the chaos stack running")
    r.add_argument("--reuse-stack", action="store_true", help="the chaos stack is already up")
    c = sub.add_parser("check", help="check a recorded history.json again")
    c.add_argument("history", type=Path)
    args = p.parse_args(argv)

    if args.command == "check":
        return report(History.load(args.history), args.history.parent)
    var = args.var.resolve()
    shared = (ROOT / "var").resolve()
    if var == shared:
        p.error(f"--var {var} is the shared stack's var folder")
    if not 1 <= args.workers <= 16:
        p.error(f"--workers must be 1..16, got {args.workers}")
    stack = ChaosStack(
        var,
        args.kafka_port,
        args.controller_port,
        args.pg_port,
        args.port_offset,
        workers=args.workers,
    )
    known = (*TARGETS, *stack.more_workers())
    targets = tuple(t for t in args.targets.split(",") if t)
    if args.targets == ",".join(TARGETS):  # the default: every worker of the fleet too
        targets = known
    unknown = set(targets) - set(known)
    if unknown:
        p.error(f"unknown fault targets {sorted(unknown)}; known: {', '.join(known)}")
    deadlines = {
        "turbo": args.deadline_turbo,
        "fast": args.deadline_fast,
        "relax": args.deadline_relax,
    }
    cfg = SoakConfig(
        stack=stack,
        workload=Workload(
            jobs=args.jobs,
            max_in_flight=args.max_in_flight,
            give_up_s=args.give_up,
            seeded_share=args.seeded_share,
            cancel_share=args.cancel_share,
            steps=(int(args.steps[0]), int(args.steps[1])),
            stale_after_s=max(deadlines.values()),
            max_duration_s=args.max_duration,
        ),
        faults=None
        if args.no_faults
        else FaultPlan(
            args.fault_interval,
            args.fault_jitter,
            args.pause,
            args.unwritable,
            args.kill_share,
            targets,
        ),
        deadlines_s=deadlines,
        users=args.users,
        seed=args.seed,
        webhook_host=args.webhook_host,
        webhook_port=args.webhook_port,
        webhook_url=args.webhook_url,
        webhook_fail_share=args.webhook_fail_share,
        out=args.out,
        keep_stack=args.keep_stack,
        reuse_stack=args.reuse_stack,
    )
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
