"""The AsyncAPI document: committed == generated (drift), valid AsyncAPI 3.0.0, complete.

The AsyncAPI 3.0.0 JSON Schema in tests/fixtures is ``schemas/3.0.0-without-$id.json`` of the npm
package @asyncapi/specs 6.11.1 (Apache-2.0), minified.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from imagegen_runtime.asyncapi import document, headers_schema, render
from imagegen_schemas import TOPICS, Envelope, ce_headers, header_map

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.json"
ASYNCAPI_SCHEMA = ROOT / "tests" / "fixtures" / "asyncapi-3.0.0.schema.json"
GOLDENS = ROOT / "schemas" / "examples"
REGENERATE = "make asyncapi  (= .venv/bin/python -m imagegen_runtime.asyncapi docs/asyncapi.json)"

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastStream warns when it overwrites a channel or schema
        return document()


def test_committed_document_matches_the_catalog_and_models(doc: dict[str, Any]) -> None:
    assert COMMITTED.exists(), f"docs/asyncapi.json is missing: run `{REGENERATE}`"
    committed = COMMITTED.read_text()
    assert committed == render(doc), (
        f"docs/asyncapi.json drifted from the topic catalog or the event models: run "
        f"`{REGENERATE}` and commit the file"
    )


def test_document_is_valid_asyncapi_3(doc: dict[str, Any]) -> None:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    assert errors == []
    # The validator does catch a broken document (the check is not vacuous).
    broken = json.loads(json.dumps(doc))
    broken["channels"][TOPICS[0].name]["bindings"]["kafka"]["partitions"] = 0
    assert list(validator.iter_errors(broken))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert len(refs) > 100
    for ref in refs:
        _resolve(doc, ref)


def test_every_topic_has_key_partitions_retention_headers_and_payloads(
    doc: dict[str, Any],
) -> None:
    assert set(doc["channels"]) == {t.name for t in TOPICS}
    for spec in TOPICS:
        channel = doc["channels"][spec.name]
        kafka = channel["bindings"]["kafka"]
        assert kafka["partitions"] == spec.partitions
        config = kafka["topicConfiguration"]
        assert config["retention.ms"] == spec.retention_ms
        assert config["cleanup.policy"] == ["compact" if spec.compacted else "delete"]
        assert channel["x-key"] == spec.key and channel["x-compression"] == "lz4"
        (ref,) = channel["messages"].values()
        message = _resolve(doc, ref["$ref"])
        assert spec.key in message["bindings"]["kafka"]["key"]["description"]
        assert message["contentType"] == "application/json"
        assert set(message["headers"]["properties"]) >= {"ce_id", "ce_type", "traceparent"}
        # The payload names exactly the topic's event types, each in its envelope.
        payload = _resolve(doc, message["payload"]["$ref"])
        envelopes = [_resolve(doc, r["$ref"]) for r in payload.get("anyOf", [])] or [payload]
        types = {e["properties"]["type"]["const"] for e in envelopes}
        assert types == {m.event_type for m in spec.events}
        for envelope in envelopes:
            assert envelope["properties"]["data"]["$ref"].startswith("#/components/schemas/")
            assert {"event_id", "correlation_id", "schema_version"} <= set(envelope["properties"])


def test_the_golden_records_validate_against_their_channel_message() -> None:
    """A consumer validating with the document accepts what we publish (value and headers)."""
    doc = json.loads(COMMITTED.read_text())
    by_type = {m.event_type: t.name for t in TOPICS for m in t.events}
    checked = 0
    for path in sorted(GOLDENS.glob("*.json")):
        record = json.loads(path.read_text())
        channel = doc["channels"][by_type[record["type"]]]
        message = _resolve(doc, next(iter(channel["messages"].values()))["$ref"])
        payload = {**_resolve(doc, message["payload"]["$ref"]), "components": doc["components"]}
        jsonschema.validate(record, payload)
        env = Envelope.from_json(path.read_text())
        headers = header_map(ce_headers(env, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"))
        headers["correlation_id"] = env.correlation_id  # what FastStream's producer adds
        jsonschema.validate(headers, message["headers"])
        checked += 1
    assert checked >= len(by_type)


def test_headers_schema_names_every_header_the_publisher_writes() -> None:
    env = Envelope.from_json(next(GOLDENS.glob("*.json")).read_text())
    traceparent = "00-" + "0" * 32 + "-" + "1" * 16 + "-01"
    written = set(header_map(ce_headers(env, traceparent=traceparent)))
    assert written <= set(headers_schema()["properties"])
