"""``imagegen dlq``: the dead letters consumers gave up on; show one; redrive them (docs/dlq.md).

    imagegen dlq list [--since T] [--topic SOURCE] [--group G] [--json]
    imagegen dlq show ID [--json]
    imagegen dlq redrive (ID ... | --all [--since T]) [--force] [--dry-run]

Common flags: ``--key`` (else IMAGEGEN_OPERATOR_KEY, else var/stack.env), ``--database-url``
(where ``api_keys`` is), ``--bootstrap``, ``--prefix``. Every command first checks that the key
is a live operator key and reads nothing otherwise.

ID is a letter's id: its ``DeadLettered`` event id, as ``list`` prints it; a unique prefix of 6
or more characters is enough. ``redrive`` publishes the original record to its source topic for
the group that gave up on it and records the redrive; a letter redriven already is refused
unless ``--force``; ``--all`` picks every letter not redriven yet, except records that failed
again after a redrive (name those by id). ``T`` is ISO-8601 or back from now (30m, 24h, 7d).
Exit status: 0 done, 1 no such letter or a redrive refused, 2 bad input, no database or a key
that is not an operator's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any


def _fail(cmd: str, message: str, code: int) -> int:
    print(f"imagegen dlq {cmd}: {message}", file=sys.stderr)
    return code


def authorize(args: argparse.Namespace) -> str | None:
    """None when the key is an operator's, else the refusal (printed by the caller)."""
    from imagegen_runtime.dlq import NotOperator, require_operator

    from .cli import stack_setting

    key = args.key or stack_setting("OPERATOR_KEY")
    if not key:
        return "no operator key: pass --key or set IMAGEGEN_OPERATOR_KEY"
    url = args.database_url or stack_setting("DATABASE_URL")
    if not url:
        return "no database to check the key against: pass --database-url or run `make up` first"
    try:
        asyncio.run(require_operator(url, key))
    except NotOperator as exc:
        return f"refused: {exc}"
    except Exception as exc:  # the database cannot be read: refuse (fail closed)
        return f"could not check the key: {type(exc).__name__}: {exc}"
    args.key_id = key[:12]
    return None


def _since(args: argparse.Namespace) -> datetime | None:
    from .usage import parse_time

    return parse_time("--since", args.since, datetime.now(UTC)) if args.since else None


def cmd_list(args: argparse.Namespace) -> int:
    from imagegen_runtime.dlq import DlqError, list_letters

    from .cli import _bootstrap
    from .usage import UsageInputError

    if (refused := authorize(args)) is not None:
        return _fail("list", refused, 2)
    try:
        letters = list_letters(
            _bootstrap(args), args.prefix, since=_since(args), topic=args.topic, group=args.group
        )
    except (DlqError, UsageInputError) as exc:
        return _fail("list", str(exc), 2)
    if args.json:
        print(json.dumps({"letters": [x.summary() for x in letters]}, indent=2))
        return 0
    for x in letters:
        print(line(x.summary()))
    print(f"{len(letters)} dead letter(s), {sum(x.redriven for x in letters)} redriven")
    return 0


def line(s: dict[str, Any]) -> str:
    """One dead letter on one line."""
    state = "redriven" if s["redriven"] else "new"
    if s["failed_again_as"]:
        state = f"failed again as {','.join(i[:8] for i in s['failed_again_as'])}"
    again = f" (redrive {s['redrives']} of {s['redrive_of'][:8]})" if s["redrive_of"] else ""
    return (
        f"{s['id']}  {s['at'][:19]}Z  {s['source_topic']}[{s['source_partition']}]"
        f"@{s['source_offset']}  group={s['consumer_group']}  job={s['job_id'] or '-'}  "
        f"[{state}]{again}  {s['error']}"
    )


def cmd_show(args: argparse.Namespace) -> int:
    from imagegen_runtime.dlq import DlqError, NoSuchLetter, find_letter, list_letters

    from .cli import _bootstrap

    if (refused := authorize(args)) is not None:
        return _fail("show", refused, 2)
    try:
        letter = find_letter(list_letters(_bootstrap(args), args.prefix), args.id)
    except NoSuchLetter as exc:
        return _fail("show", str(exc), 1)
    except DlqError as exc:
        return _fail("show", str(exc), 2)
    detail = letter.detail()
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    print(line(letter.summary()))
    print(f"dead-lettered at {detail['where']}, key {detail['original_key']}")
    for n, error in enumerate(detail["errors"], 1):
        print(f"--- error {n} of {len(detail['errors'])}:\n{error}")
    print("--- original headers:")
    for k, v in detail["original_headers"].items():
        print(f"  {k}: {v}")
    if detail["original"] is not None:
        print("--- original envelope:")
        print(json.dumps(detail["original"], indent=2))
    else:
        print(f"--- original value (not an envelope), base64:\n{detail['original_value_b64']}")
    for r in detail["redrive_records"]:
        print(
            f"--- redrive {r['redrive']} to {r['source_topic']}[{r['redriven_partition']}]"
            f"@{r['redriven_offset']}" + (f" by {r['by']}" if r["by"] else "")
        )
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    from imagegen_runtime.dlq import AlreadyRedriven, DlqError, NoSuchLetter, redrive_many

    from .cli import _bootstrap
    from .usage import UsageInputError

    if bool(args.ids) == bool(args.all):
        return _fail("redrive", "give letter ids or --all (not both)", 2)
    if args.since and not args.all:
        return _fail("redrive", "--since: only with --all", 2)
    if (refused := authorize(args)) is not None:
        return _fail("redrive", refused, 2)
    try:
        done = asyncio.run(
            redrive_many(
                _bootstrap(args),
                args.prefix,
                None if args.all else list(args.ids),
                since=_since(args),
                force=args.force,
                dry_run=args.dry_run,
                by=args.key_id,
            )
        )
    except (NoSuchLetter, AlreadyRedriven) as exc:
        return _fail("redrive", str(exc), 1)
    except (DlqError, UsageInputError) as exc:
        return _fail("redrive", str(exc), 2)
    for r in done:
        d = r.letter.letter
        to = "" if args.dry_run else f" -> {d.source_topic}[{r.partition}]@{r.offset}"
        print(f"{r.letter.id} redrive {r.redrive} for group {d.consumer_group}{to}")
    verb = "would redrive" if args.dry_run else "redrove"
    print(f"{verb} {len(done)} dead letter(s)")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", default=None, help="an operator API key (else IMAGEGEN_OPERATOR_KEY)")
    p.add_argument("--database-url", default=None, help="where api_keys is (the key check)")
    p.add_argument("--bootstrap", default=None, help="Kafka host:port")
    p.add_argument("--prefix", default="", help="topic name prefix (test isolation)")


def add_parser(sub: Any) -> None:
    """Register ``imagegen dlq`` on the CLI's subparsers."""
    p = sub.add_parser("dlq", help="dead letters: list, show, redrive (operator key)")
    dsub = p.add_subparsers(dest="dlq_cmd", required=True)
    ls = dsub.add_parser("list", help="one line per dead letter")
    ls.add_argument("--since", default=None, help="dead-lettered since: ISO-8601 or 30m, 24h, 7d")
    ls.add_argument("--topic", default=None, help="only letters from this source topic")
    ls.add_argument("--group", default=None, help="only letters of this consumer group")
    ls.add_argument("--json", action="store_true")
    _common(ls)
    ls.set_defaults(func=cmd_list)
    sh = dsub.add_parser("show", help="one dead letter: errors, decoded original, redrives")
    sh.add_argument("id", help="the letter's id (or a unique prefix of 6+ characters)")
    sh.add_argument("--json", action="store_true")
    _common(sh)
    sh.set_defaults(func=cmd_show)
    rd = dsub.add_parser("redrive", help="republish dead letters to their source topic")
    rd.add_argument("ids", nargs="*", metavar="ID", help="letter ids (or unique prefixes)")
    rd.add_argument("--all", action="store_true", help="every letter not redriven yet")
    rd.add_argument("--since", default=None, help="with --all: dead-lettered since T")
    rd.add_argument("--force", action="store_true", help="redrive a letter redriven already")
    rd.add_argument("--dry-run", action="store_true", help="list what would be redriven")
    _common(rd)
    rd.set_defaults(func=cmd_redrive)
