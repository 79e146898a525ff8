"""``imagegen pool``: which record answers a command, and how it is told (src/imagegen/pool.py).
The commands against a running stack: tests/e2e/test_pool.py."""

from __future__ import annotations

import pytest

from imagegen.cli import main
from imagegen.pool import answer_of
from imagegen_schemas import Envelope
from imagegen_schemas.workers import (
    LoadedModel,
    ModelEvicted,
    ModelLoaded,
    ModelLoadFailed,
    WorkerHeartbeat,
    WorkerStatus,
)

pytestmark = pytest.mark.unit
CMD = "c0ffee00-0000-4000-8000-000000000001"


def env(payload: object) -> Envelope:
    return Envelope.wrap(payload, correlation_id="w1", producer="t")  # type: ignore[arg-type]


def test_only_the_answer_to_this_command_for_this_model_counts() -> None:
    other = ModelLoaded(worker_id="w1", model=LoadedModel(model_id="m", bytes=1), load_ms=1)
    assert answer_of(env(other), CMD, "m") is None  # a job's load: no command id
    adapter = ModelEvicted(worker_id="w1", model_id="lora-a", kind="lora", command_id=CMD)
    assert answer_of(env(adapter), CMD, "m") is None  # unloaded with the model, same command
    beat = WorkerHeartbeat(
        worker_id="w1",
        status=WorkerStatus.IDLE,
        gpu_type="cpu",
        memory_total_bytes=1,
        memory_free_bytes=1,
    )
    assert answer_of(env(beat), CMD, "m") is None
    evicted = answer_of(env(ModelEvicted(worker_id="w1", model_id="m", command_id=CMD)), CMD, "m")
    assert evicted is not None and evicted.outcome == "evicted" and evicted.ok
    none = ModelEvicted(worker_id="w1", model_id="m", reason="not_resident", command_id=CMD)
    answer = answer_of(env(none), CMD, "m")
    assert answer is not None and answer.outcome == "not_resident" and answer.ok
    assert "nothing unloaded" in answer.line("w1", "m")


def test_a_refused_load_is_not_ok_and_says_why() -> None:
    failed = ModelLoadFailed(
        worker_id="w1", model_id="m", reason="does_not_fit", message="needs 9 GB", command_id=CMD
    )
    answer = answer_of(env(failed), CMD, "m")
    assert answer is not None and not answer.ok
    assert answer.line("w1", "m") == "w1 refused to load m: does_not_fit: needs 9 GB"
    resident = ModelLoaded(
        worker_id="w1",
        model=LoadedModel(model_id="m", bytes=3 << 20),
        load_ms=0,
        source="resident",
        command_id=CMD,
    )
    loaded = answer_of(env(resident), CMD, "m")
    assert loaded is not None and loaded.line("w1", "m") == (
        "loaded m on w1: already resident (nothing read), 3.0 MiB"
    )


def test_a_negative_wait_is_refused_before_anything_is_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["pool", "load", "--worker", "w1", "--model", "m", "--wait", "-1", "--key", "k"])
    assert code == 2
    assert "--wait must be >= 0" in capsys.readouterr().err


def test_an_empty_model_id_is_refused_before_anything_is_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # seen on the stack: `imagegen pool evict --model ""` was sent and answered "not resident"
    code = main(["pool", "evict", "--worker", "w1", "--model", " ", "--key", "k"])
    assert code == 2
    assert "--model must name a model" in capsys.readouterr().err


def test_load_and_evict_need_a_model_and_every_command_a_worker() -> None:
    for argv in (["pool", "load", "--worker", "w1"], ["pool", "defrag"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_the_fleet_table_says_how_long_ago_each_worker_was_heard_from() -> None:
    from imagegen.cli import _ago

    assert [_ago(s) for s in (-1.0, 12.4, 61.0, 7200.0, 200000.0)] == [
        "0s",
        "12s",
        "1m",
        "2h",
        "2d",
    ]


def test_a_database_that_cannot_be_reached_is_said_plainly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["fleet", "--database-url", "postgresql+asyncpg://u:p@127.0.0.1:1/none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "could not read the fleet projection" in err and "Traceback" not in err


def test_kafka_that_cannot_be_reached_is_exit_4_and_nothing_is_sent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from confluent_kafka import KafkaException

    import imagegen.dlq
    import imagegen.pool
    import imagegen.replay

    def down(*_: object) -> None:
        raise KafkaException("broker transport failure")

    monkeypatch.setattr(imagegen.dlq, "authorize", lambda args: None)
    monkeypatch.setattr(imagegen.pool, "_check_worker", lambda args: None)
    monkeypatch.setattr(imagegen.replay, "high_watermarks", down)
    code = main(["pool", "load", "--worker", "w1", "--model", "m", "--bootstrap", "x:1"])
    assert code == 4
    assert "nothing sent" in capsys.readouterr().err


def test_every_command_says_plainly_when_the_stack_is_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refused connection (Kafka or PostgreSQL away) is one line and exit 2, not a
    traceback; other errors keep theirs."""
    from confluent_kafka import KafkaError, KafkaException

    from imagegen.cli import unreachable

    code = main(["keys", "list", "--database-url", "postgresql+asyncpg://u:p@127.0.0.1:1/none"])
    assert code == 2
    assert "cannot reach the stack" in capsys.readouterr().err
    transport = KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))
    assert unreachable(transport)
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert unreachable(outer)
    assert not unreachable(ValueError("a bug"))


def test_the_fleet_table_marks_pinned_models_and_the_age_of_each_worker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    import imagegen.cli

    doc = {
        "worker_id": "worker-local-1",
        "state": "idle",
        "memory_used_bytes": 30 << 20,
        "memory_total_bytes": 512 << 20,
        "running_job_id": None,
        "models": [{"model_id": "shapes-demo"}, {"model_id": "tiny-sdxl"}],
        "adapters": [{"model_id": "tiny-sd15-lora-ink"}],
        "pinned": ["shapes-demo"],
        "last_seen": time.time() - 90,
    }
    monkeypatch.setattr(imagegen.cli, "load_fleet", lambda url: {"worker-local-1": doc})
    assert main(["fleet", "--database-url", "postgresql+asyncpg://u:p@h/db"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == [
        "worker-local-1",
        "idle",
        "1m",
        "30/512",
        "-",
        "shapes-demo*,",
        "tiny-sdxl",
        "(tiny-sd15-lora-ink)",
    ]
    assert out[-1] == "* pinned there by the pool (tier 1)"
