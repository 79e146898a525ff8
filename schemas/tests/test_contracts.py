"""Contract tests: the published JSON Schemas, golden messages, headers and the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from imagegen_schemas import (
    MODELS,
    TOPIC_BY_NAME,
    TOPICS,
    Envelope,
    ce_headers,
    header_map,
    parse,
    topic_for,
)
from imagegen_schemas.export import render, schemas
from imagegen_schemas.registry import UnknownEventType

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = sorted((ROOT / "examples").glob("*.json"))

pytestmark = pytest.mark.unit


def test_committed_json_schemas_match_the_models() -> None:
    """Fails when a model changed and `make schemas` was not run (downstream would drift)."""
    expected = schemas()
    committed = {p.name: p.read_text() for p in (ROOT / "jsonschema").glob("*.json")}
    assert sorted(committed) == sorted(expected), "run `make schemas` and commit the files"
    for name, doc in expected.items():
        assert committed[name] == render(doc), f"{name} drifted: run `make schemas`"


def test_every_event_type_and_version_has_a_golden() -> None:
    have = {p.name for p in GOLDENS}
    want = {f"{t}.v{m.schema_version}.json" for t, m in MODELS.items()}
    assert want <= have, f"missing goldens: {sorted(want - have)}"


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_golden_parses_and_validates_against_its_schema(path: Path) -> None:
    raw = path.read_text()
    env = Envelope.from_json(raw)
    payload = parse(env)
    assert payload.event_type == env.type
    # The committed schema validates the golden as a consumer in another language would.
    envelope_schema = json.loads((ROOT / "jsonschema" / "envelope.json").read_text())
    jsonschema.validate(json.loads(raw), envelope_schema)
    doc = json.loads((ROOT / "jsonschema" / f"{env.type}.v{env.schema_version}.json").read_text())
    jsonschema.validate(env.data, doc)
    # Round trip is lossless (fields added since the golden was written take their defaults).
    again = Envelope.wrap(
        payload,
        correlation_id=env.correlation_id,
        producer=env.producer,
        causation_id=env.causation_id,
        occurred_at=env.occurred_at,
        event_id=env.event_id,
    )
    assert again.model_copy(update={"data": env.data}) == env
    assert parse(Envelope.from_json(again.to_json())) == payload


def test_headers_carry_cloudevents_attributes_and_trace() -> None:
    env = Envelope.from_json(GOLDENS[0].read_text())
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    h = header_map(ce_headers(env, traceparent=tp))
    assert h["ce_id"] == env.event_id
    assert h["ce_type"] == env.type
    assert h["ce_specversion"] == "1.0"
    assert h["ce_source"] == f"/imagegen/{env.producer}"
    assert h["ce_subject"] == env.correlation_id
    assert h["traceparent"] == tp


def test_unknown_type_and_future_version_are_refused() -> None:
    env = Envelope.from_json(GOLDENS[0].read_text())
    with pytest.raises(UnknownEventType):
        parse(env.model_copy(update={"type": "imagegen.nope"}))
    with pytest.raises(UnknownEventType, match="newer"):
        parse(env.model_copy(update={"schema_version": 99}))


def test_malformed_payload_is_a_validation_error() -> None:
    env = Envelope.from_json((ROOT / "examples" / "imagegen.job.scheduled.v1.json").read_text())
    with pytest.raises(ValueError):
        parse(env.model_copy(update={"data": {**env.data, "fencing_token": 0}}))


def test_catalog_is_consistent() -> None:
    names = [t.name for t in TOPICS]
    assert len(names) == len(set(names))
    placed = [m for t in TOPICS for m in t.events]
    assert len(placed) == len(set(placed)), "an event type is in two topics"
    for t in TOPICS:
        assert t.partitions >= 1
        assert t.kafka_configs()["cleanup.policy"] in {"compact", "delete"}


def test_preemption_contracts_travel_beside_the_assignment_and_the_result() -> None:
    """The worker hears pauses where it hears assignments; the scheduler folds the pause where
    it folds results (same key, same partition as the assignment's other outcomes)."""
    from imagegen_schemas import jobs

    assert topic_for(jobs.PreemptionRequested) == topic_for(jobs.JobScheduled)
    assert topic_for(jobs.GenerationPaused) == topic_for(jobs.ImageGenerated)
    assert TOPIC_BY_NAME[topic_for(jobs.GenerationPaused)].retention_ms == -1  # replayed forever


def test_an_assignment_without_resume_still_parses_and_one_with_it_round_trips() -> None:
    from imagegen_schemas import jobs

    old = parse(
        Envelope.from_json((ROOT / "examples" / "imagegen.job.scheduled.v1.json").read_text())
    )
    assert isinstance(old, jobs.JobScheduled) and old.resume is None
    resumed = old.model_copy(
        update={
            "resume": jobs.ResumeFrom(
                steps_done=4, state_uri="file:///b/j/7-paused-4.pt", state_sha256="a" * 64
            )
        }
    )
    env = Envelope.wrap(resumed, correlation_id=resumed.job_id, producer="t")
    again = parse(Envelope.from_json(env.to_json()))
    assert isinstance(again, jobs.JobScheduled) and again.resume == resumed.resume
    with pytest.raises(ValueError):  # a resume without a digest is refused
        parse(
            env.model_copy(
                update={
                    "data": {
                        **env.data,
                        "resume": {
                            "steps_done": 4,
                            "state_uri": "file:///b",
                            "state_sha256": "nope",
                        },
                    }
                }
            )
        )
