"""Schemathesis over the API's own OpenAPI document (issue 14): generated requests, valid and
not, to every operation; no answer may be a server error, and every documented answer must
match its schema. Bounded (``MAX_EXAMPLES`` per operation, derandomised) so CI runs it each time.

The app runs on the in-memory fakes (they pass the same contract tests as PostgreSQL and Kafka),
with a pro key and the limits of the plans in force.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
import schemathesis
from api_testkit import CATALOG, make_app, make_deps
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from imagegen_api.adapters.files import LocalFileStore
from imagegen_api.adapters.limiter import InMemoryLimiter
from imagegen_api.adapters.memory import InMemoryAccounts
from imagegen_api.domain.limits import with_overrides
from imagegen_schemas import Plan

pytestmark = pytest.mark.unit
MAX_EXAMPLES = 25

_accounts = InMemoryAccounts()
KEY = asyncio.run(_accounts.create_key("schemathesis", Plan.PRO))
# Limits high enough that generated requests reach the routes (429s are tested elsewhere).
_deps = make_deps(
    accounts=_accounts,
    catalog=CATALOG,
    limiter=InMemoryLimiter(),
    limits=with_overrides({"pro": {"burst": 10**6, "active_jobs": 10**6}}),
    openai_timeout_s=0.05,
    files=LocalFileStore(Path(tempfile.mkdtemp(prefix="imagegen-schemathesis-"))),
)
APP = make_app(_deps)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_answers_match_the_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[not_a_server_error, response_schema_conformance],
    )
