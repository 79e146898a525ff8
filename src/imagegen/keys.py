"""`imagegen keys`: create, list, revoke and rotate API keys (ADR 0610).

    imagegen keys create --user U [--plan free|pro|turbo] [--role user|operator]
    imagegen keys list [--user U] [--json]
    imagegen keys revoke KEY_ID
    imagegen keys rotate KEY_ID

A key is printed once, by create and rotate, on stdout (alone, so scripts can read it); only its
SHA-256 is stored. KEY_ID is the key's public id, its first 12 characters (``igk_`` and 8 more;
keys made before roles existed are named ``old_`` + 12 hex digits), as `keys list` shows.
A revoked key is refused by the API at once and by operator endpoints within 5 s (their cache).
Exit status: 0 done, 1 no such key (or rotate of a revoked key), 2 bad input or no database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _run(args: argparse.Namespace, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(accounts)`` on the database (tables made or migrated first); exit 2 when
    no database is named."""
    from imagegen_api.adapters.accounts import PgAccounts
    from imagegen_runtime.db import make_engine

    from .cli import stack_setting

    url = args.database_url or stack_setting("DATABASE_URL")
    if not url:
        print("no database: pass --database-url or run `make up` first", file=sys.stderr)
        raise SystemExit(2)

    async def go() -> T:
        engine = make_engine(url, pool_size=1)
        try:
            accounts = PgAccounts(engine)
            await accounts.create_tables()
            return await work(accounts)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def cmd_create(args: argparse.Namespace) -> int:
    from imagegen_api.adapters.accounts import key_id_of
    from imagegen_schemas import Plan

    if not 1 <= len(args.user) <= 128:
        print(f"--user: 1 to 128 characters, got {len(args.user)}", file=sys.stderr)
        return 2
    key = _run(args, lambda a: a.create_key(args.user, Plan(args.plan), args.role))
    print(key)
    print(
        f"key {key_id_of(key)} for user {args.user!r}, plan {args.plan}, role {args.role};"
        " shown once, only its hash is stored",
        file=sys.stderr,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = _run(args, lambda a: a.keys(args.user))
    if args.json:
        rows = [
            {
                "key_id": k.key_id,
                "user": k.user_id,
                "plan": k.plan,
                "role": k.role,
                "created_at": k.created_at.isoformat(),
                "revoked": k.revoked,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in found
        ]
        print(json.dumps({"keys": rows}, indent=2))
        return 0
    if not found:
        print("no keys" + (f" for user {args.user!r}" if args.user else ""))
        return 0
    print(f"{'KEY ID':<18} {'USER':<20} {'PLAN':<6} {'ROLE':<9} {'CREATED (UTC)':<20} REVOKED")
    for k in found:
        revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-"
        if k.revoked and not k.revoked_at:
            revoked = "yes"
        created = k.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{k.key_id:<18} {k.user_id:<20} {k.plan:<6} {k.role:<9} {created:<20} {revoked}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    done = _run(args, lambda a: a.revoke(args.key_id))
    if done is None:
        return _unknown(args)
    info, now = done
    if now:
        print(f"revoked key {info.key_id} (user {info.user_id!r}, role {info.role})")
    else:
        print(f"key {info.key_id} (user {info.user_id!r}) was already revoked")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from imagegen_api.adapters.accounts import KeyRevokedError, key_id_of

    try:
        done = _run(args, lambda a: a.rotate(args.key_id))
    except KeyRevokedError as exc:
        print(f"{exc}: nothing to rotate; make a new one with `keys create`", file=sys.stderr)
        return 1
    if done is None:
        return _unknown(args)
    key, old = done
    print(key)
    print(
        f"key {key_id_of(key)} replaces {old.key_id} (revoked) for user {old.user_id!r},"
        f" plan {old.plan}, role {old.role}; shown once",
        file=sys.stderr,
    )
    return 0


def _unknown(args: argparse.Namespace) -> int:
    print(f"no key with id {args.key_id!r} (see `imagegen keys list`)", file=sys.stderr)
    return 1


def add_parser(sub: Any) -> None:
    """The ``keys`` subcommand on the ``imagegen`` parser's subparsers."""
    keys = sub.add_parser(
        "keys",
        help="API keys: create, list, revoke, rotate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key, printed once")
    create.add_argument("--user", required=True, help="user id the key acts for")
    create.add_argument("--plan", choices=["free", "pro", "turbo"], default="free")
    create.add_argument(
        "--role",
        choices=["user", "operator"],
        default="user",
        help="operator: also admitted to /metrics, /docs and the operator views",
    )
    create.set_defaults(func=cmd_create)
    ls = actions.add_parser("list", help="keys (never their secret), oldest first")
    ls.add_argument("--user", default=None, help="only this user's keys")
    ls.add_argument("--json", action="store_true", help='as JSON: {"keys": [...]}')
    ls.set_defaults(func=cmd_list)
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    revoke.set_defaults(func=cmd_revoke)
    rotate = actions.add_parser(
        "rotate", help="a new key for the same user, plan and role; the old one revoked"
    )
    rotate.add_argument("key_id", help="the key's id, as `keys list` shows it")
    rotate.set_defaults(func=cmd_rotate)
    for p in (create, ls, revoke, rotate):
        p.add_argument("--database-url", default=None)
