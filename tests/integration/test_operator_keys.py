"""Keys and roles on the real PostgreSQL (issue 14): `imagegen keys create|list|revoke|rotate`,
an old api_keys table migrated, and the services' operator-only endpoints checked against the
same table. Each test module uses a database of its own (the api_keys table is global)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from imagegen.cli import main as cli
from imagegen_api.adapters.accounts import PgAccounts, hash_key
from imagegen_runtime.db import make_engine
from imagegen_runtime.operator_auth import OperatorAuth, PgKeyRoles
from imagegen_runtime.service import ServiceApp
from imagegen_schemas import Plan
from tests.support.pg import fresh_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def db(infra: Any) -> AsyncIterator[str]:
    """A fresh database (dropped afterwards); its URL."""
    async with fresh_database(infra.database_url, "t_keys") as url:
        yield url


@pytest.fixture
async def accounts(db: str) -> AsyncIterator[PgAccounts]:
    engine = make_engine(db, pool_size=2)
    acc = PgAccounts(engine)
    await acc.create_tables()
    yield acc
    await engine.dispose()


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`imagegen ...` in-process (in a thread: the CLI runs its own event loop)."""

    def call() -> int:
        try:
            return cli(list(argv))
        except SystemExit as stop:
            return int(stop.code or 0)

    code = await asyncio.to_thread(call)
    out = capsys.readouterr()
    return code, out.out, out.err


async def listed(
    capsys: pytest.CaptureFixture[str], db: str, user: str
) -> dict[str, dict[str, Any]]:
    import json

    code, out, _ = await run(capsys, "keys", "list", "--user", user, "--json", "--database-url", db)
    assert code == 0
    return {k["key_id"]: k for k in json.loads(out)["keys"]}


async def test_keys_create_list_revoke_rotate(
    accounts: PgAccounts, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    user = f"u-{uuid.uuid4().hex[:6]}"
    code, out, err = await run(
        capsys, "keys", "create", "--user", user, "--plan", "turbo", "--database-url", db
    )
    assert code == 0, err
    key = out.strip()
    assert key.startswith("igk_") and len(key) == 44 and "\n" not in key
    key_id = key[:12]
    assert key_id in err and "role user" in err
    caller = await accounts.caller(key)
    assert caller is not None and (caller.user_id, caller.plan, caller.role) == (
        user,
        Plan.TURBO,
        "user",
    )

    rows = await listed(capsys, db, user)
    assert list(rows) == [key_id]
    assert rows[key_id] | {"created_at": None} == {
        "key_id": key_id,
        "user": user,
        "plan": "turbo",
        "role": "user",
        "created_at": None,
        "revoked": False,
        "revoked_at": None,
    }
    code, table, _ = await run(capsys, "keys", "list", "--user", user, "--database-url", db)
    assert code == 0 and key_id in table and key not in table and hash_key(key) not in table

    code, out, err = await run(capsys, "keys", "rotate", key_id, "--database-url", db)
    assert code == 0, err
    new = out.strip()
    assert new != key and new.startswith("igk_") and f"replaces {key_id} (revoked)" in err
    assert await accounts.caller(key) is None  # the old one is refused at once
    rotated = await accounts.caller(new)
    assert rotated is not None and (rotated.user_id, rotated.plan) == (user, Plan.TURBO)
    rows = await listed(capsys, db, user)
    assert rows[key_id]["revoked"] is True and rows[key_id]["revoked_at"]
    assert rows[new[:12]]["revoked"] is False and rows[new[:12]]["plan"] == "turbo"

    code, _, err = await run(capsys, "keys", "rotate", key_id, "--database-url", db)
    assert code == 1 and "already revoked" in err

    code, out, _ = await run(capsys, "keys", "revoke", new[:12], "--database-url", db)
    assert code == 0 and f"revoked key {new[:12]}" in out
    assert await accounts.caller(new) is None
    code, out, _ = await run(capsys, "keys", "revoke", new[:12], "--database-url", db)
    assert code == 0 and "already revoked" in out


@pytest.mark.parametrize("action", ["revoke", "rotate"])
async def test_an_unknown_key_id_is_a_clear_error(
    accounts: PgAccounts, db: str, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    code, out, err = await run(capsys, "keys", action, "igk_nosuchid", "--database-url", db)
    assert code == 1 and out == ""
    assert "no key with id 'igk_nosuchid'" in err


async def test_bad_input_names_the_field(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await run(capsys, "keys", "create", "--user", "x" * 129, "--database-url", db)
    assert code == 2 and "--user" in err
    code, _, err = await run(
        capsys, "keys", "create", "--user", "u", "--role", "admin", "--database-url", db
    )
    assert code == 2 and "--role" in err


async def test_an_operator_key_has_the_operator_role(
    accounts: PgAccounts, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    user = f"ops-{uuid.uuid4().hex[:6]}"
    args = ("--user", user, "--plan", "pro", "--role", "operator", "--database-url", db)
    code, out, _ = await run(capsys, "keys", "create", *args)
    assert code == 0
    caller = await accounts.caller(out.strip())
    assert caller is not None and caller.role == "operator"
    assert (await listed(capsys, db, user))[out.strip()[:12]]["role"] == "operator"


async def test_an_old_api_keys_table_is_migrated(infra: Any) -> None:
    """A table made before roles: its keys keep working as users and get an id to name them."""
    async with fresh_database(infra.database_url, "t_old") as url:
        engine = make_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "create table api_keys (key_hash varchar(64) primary key, user_id"
                        " varchar(128) not null, plan varchar(16) not null, created_at"
                        " timestamptz not null, revoked boolean not null)"
                    )
                )
                await conn.execute(
                    text("insert into api_keys values (:h, 'olduser', 'pro', now(), false)"),
                    {"h": hash_key("igk_old-style-key")},
                )
            accounts = PgAccounts(engine)
            await accounts.create_tables()
            await accounts.create_tables()  # idempotent
            caller = await accounts.caller("igk_old-style-key")
            assert caller is not None and (caller.user_id, caller.role) == ("olduser", "user")
            [old] = await accounts.keys("olduser")
            assert old.key_id == "old_" + hash_key("igk_old-style-key")[:12]
            assert (await accounts.revoke(old.key_id)) is not None
            assert await accounts.caller("igk_old-style-key") is None
        finally:
            await engine.dispose()


async def test_pg_key_roles_sees_roles_and_revocations(accounts: PgAccounts, db: str) -> None:
    ops = await accounts.create_key(f"o-{uuid.uuid4().hex[:6]}", Plan.PRO, "operator")
    user = await accounts.create_key(f"u-{uuid.uuid4().hex[:6]}", Plan.FREE)
    roles = PgKeyRoles.from_url(db)
    try:
        assert await roles.role(hash_key(ops)) == "operator"
        assert await roles.role(hash_key(user)) == "user"
        assert await roles.role(hash_key("igk_unknown")) is None
        await accounts.revoke(ops[:12])
        assert await roles.role(hash_key(ops)) is None
    finally:
        await roles.close()


# ---- the services' operator endpoints, against keys in the real table -------------------------
@pytest.fixture
async def keys(accounts: PgAccounts) -> dict[str, str]:
    return {
        "operator": await accounts.create_key("ops", Plan.PRO, "operator"),
        "user": await accounts.create_key("someone", Plan.PRO),
    }


def service_http(app: ServiceApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.http), base_url="http://s")


async def check(app: ServiceApp, paths: tuple[str, ...], keys: dict[str, str]) -> None:
    try:
        async with service_http(app) as c:
            for path in paths:
                assert (await c.get(path)).status_code == 401, path
                user = {"Authorization": f"Bearer {keys['user']}"}
                assert (await c.get(path, headers=user)).status_code == 403, path
                ops = {"Authorization": f"Bearer {keys['operator']}"}
                assert (await c.get(path, headers=ops)).status_code == 200, path
            assert (await c.get("/healthz")).status_code == 200
    finally:
        for close in app.on_shutdown:
            await close()


async def test_scheduler_queues_and_metrics_are_operator_only(
    infra: Any, db: str, keys: dict[str, str]
) -> None:
    from imagegen_scheduler.bootstrap import bootstrap
    from imagegen_scheduler.config import SchedulerSettings

    settings = SchedulerSettings(
        kafka_bootstrap=infra.kafka_bootstrap, auth_database_url=db, topic_prefix="unused."
    )
    await check(bootstrap(settings), ("/v1/queues", "/metrics"), keys)


async def test_pool_manager_workers_and_metrics_are_operator_only(
    infra: Any, db: str, keys: dict[str, str]
) -> None:
    from imagegen_pool_manager.bootstrap import bootstrap
    from imagegen_pool_manager.config import PoolManagerSettings

    settings = PoolManagerSettings(
        kafka_bootstrap=infra.kafka_bootstrap, database_url=db, topic_prefix="unused."
    )
    await check(bootstrap(settings), ("/v1/workers", "/metrics"), keys)


async def test_api_docs_and_metrics_are_operator_only_unless_public(
    infra: Any, db: str, keys: dict[str, str]
) -> None:
    from imagegen_api.bootstrap import bootstrap
    from imagegen_api.config import ApiSettings

    base = {"kafka_bootstrap": infra.kafka_bootstrap, "database_url": db, "topic_prefix": "x."}
    paths = ("/docs", "/redoc", "/openapi.json", "/metrics")
    await check(bootstrap(ApiSettings(**base)), paths, keys)
    public = bootstrap(ApiSettings(**base, public_docs=True))
    try:
        async with service_http(public) as c:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert (await c.get(path)).status_code == 200, path
            assert (await c.get("/metrics")).status_code == 401  # metrics stay operator-only
    finally:
        for close in public.on_shutdown:
            await close()


def test_operator_auth_reads_the_service_database_url_by_default() -> None:
    class WithDb:
        database_url = "postgresql+asyncpg://u:p@127.0.0.1:1/db"

    guard = OperatorAuth.from_settings(WithDb(), "pool-manager")
    assert isinstance(guard.roles, PgKeyRoles)
