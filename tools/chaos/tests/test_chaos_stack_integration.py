"""The soak's stack handle against the real PostgreSQL: each user's webhook secret comes from
``imagegen webhooks secret``, and it is the secret delivery signs that user's calls with."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imagegen_chaos.stack import ChaosStack
from imagegen_chaos.webhooks import verify
from imagegen_delivery.adapters.webhook_store import PgWebhookStore
from imagegen_delivery.domain.webhook import webhook_headers
from imagegen_runtime.db import make_engine

pytestmark = pytest.mark.integration


def test_a_users_webhook_secret_is_made_once_and_verifies_what_delivery_signs(
    infra,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    (tmp_path / "stack.env").write_text(f"IMAGEGEN_DATABASE_URL={infra.database_url}\n")
    st = ChaosStack(tmp_path)
    user = f"chaos-{uuid.uuid4().hex[:8]}-u0"
    secret = st.webhook_secret(user)
    assert secret.startswith("whsec_") and st.webhook_secret(user) == secret

    async def delivery_secrets() -> list[str]:
        engine = make_engine(infra.database_url, pool_size=1)
        try:
            return await PgWebhookStore(engine).secrets(user, datetime.now(UTC))
        finally:
            await engine.dispose()

    signing = asyncio.run(delivery_secrets())
    assert signing == [secret]
    body = '{"event_id":"e1","job_id":"j1","type":"generation.failed"}'
    headers = webhook_headers("e1", datetime.now(UTC), body, signing)
    assert verify([secret], body.encode(), headers)
    assert not verify([st.webhook_secret(f"{user}x")], body.encode(), headers)
