"""Object storage pieces that need no server: s3:// URIs, settings errors, local retention sweeps
and the sweeper task (docs/storage.md). The S3 side runs against the real server in
tests/integration/test_objectstore_s3.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from imagegen_runtime.objectstore import (
    ObjectStoreSettings,
    by_suffix,
    parse_s3_uri,
    sweep_local,
    sweeper,
    sweeper_task,
)

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
DAY = 86400


def aged(path: Path, age_s: float, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def test_s3_uris_parse_and_anything_else_is_refused() -> None:
    assert parse_s3_uri("s3://imagegen/blobs/j/1-0.png") == ("imagegen", "blobs/j/1-0.png")
    for bad in ("s3://bucket", "s3:///key", "file:///tmp/x", "s3://b/k?x=1", "http://b/k"):
        with pytest.raises(ValueError, match="s3://bucket/key"):
            parse_s3_uri(bad)


def test_settings_name_the_bad_field() -> None:
    with pytest.raises(ValidationError) as err:
        ObjectStoreSettings(
            endpoint="127.0.0.1:29400", bucket="Bad_Bucket", access_key="ak", secret_key="short"
        )
    fields = {e["loc"][0] for e in err.value.errors()}
    assert fields == {"endpoint", "bucket", "access_key", "secret_key"}


def test_local_sweep_deletes_what_is_past_retention_and_keeps_the_fresh(tmp_path: Path) -> None:
    old = aged(tmp_path / "job-1" / "3-0.png", 2 * DAY)
    edge = aged(tmp_path / "job-1" / "3-1.png", DAY)  # exactly at the limit: gone
    fresh = aged(tmp_path / "job-2" / "4-0.png", DAY - 1)
    assert sweep_local(tmp_path, DAY, NOW) == 2
    assert not old.exists() and not edge.exists() and fresh.read_bytes() == b"x"
    assert not (tmp_path / "job-1").exists()  # the folder left empty goes too
    assert tmp_path.is_dir()  # the root stays


def test_local_sweep_with_a_match_touches_only_its_kind(tmp_path: Path) -> None:
    image = aged(tmp_path / "job-1" / "3-0.png", 2 * DAY)
    state = aged(tmp_path / "job-1" / "3-paused-4.pt", 2 * DAY)
    assert sweep_local(tmp_path, DAY, NOW, by_suffix(".png")) == 1
    assert not image.exists() and state.exists()
    assert sweep_local(tmp_path, 3 * DAY, NOW, by_suffix(".pt")) == 0  # a longer retention
    assert state.exists()
    assert sweep_local(tmp_path / "absent", DAY, NOW) == 0


def test_the_clock_moving_on_expires_a_file_that_was_fresh(tmp_path: Path) -> None:
    path = aged(tmp_path / "f", 0)
    sweep = sweeper(None, tmp_path, "files/", 60)
    assert sweep(NOW + 59) == 0 and path.exists()
    assert sweep(NOW + 60) == 1 and not path.exists()


def test_sweeper_task_sweeps_at_start_and_each_interval_until_stopped(tmp_path: Path) -> None:
    calls: list[float] = []
    clock = iter(range(100)).__next__

    def failing_once(now: float) -> int:
        calls.append(now)
        if len(calls) == 1:
            raise OSError("store away")  # logged, tried again next round
        return 0

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            sweeper_task("t", [failing_once], 0.01, clock=lambda: float(clock()))(stop)
        )
        while len(calls) < 3:
            await asyncio.sleep(0.005)  # yield to the task until it swept three times
        stop.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(scenario())
    assert calls[:3] == [0.0, 1.0, 2.0]


def test_delivery_refuses_a_retention_shorter_than_its_links() -> None:
    from imagegen_delivery.config import DeliverySettings

    base = {
        "kafka_bootstrap": "127.0.0.1:9092",
        "signing_key": "k" * 16,
        "database_url": "postgresql+asyncpg://u:p@127.0.0.1:1/d",
    }
    with pytest.raises(ValidationError, match="retention_images_s .* shorter than url_ttl_s"):
        DeliverySettings(**base, url_ttl_s=3600, retention_images_s=600)  # type: ignore[arg-type]
    ok = DeliverySettings(**base, url_ttl_s=3600, retention_images_s=3600)  # type: ignore[arg-type]
    assert ok.storage == "local"


def test_the_stack_keeps_the_s3_credential_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
    import stack  # deploy/stack.py

    st = stack.Stack(var=tmp_path / "var")
    conf = stack.write_s3_config(st)
    env = st.s3_env()
    assert conf.stat().st_mode & 0o777 == 0o600
    assert f"s3proxy.credential={env['IMAGEGEN_S3_SECRET_KEY']}" in conf.read_text()
    for name in ("s3_access_key", "s3_secret_key"):
        assert (tmp_path / "var" / "secrets" / name).stat().st_mode & 0o777 == 0o600
    assert st.s3_env() == env  # generated once, the same on every run
    monkeypatch.setenv("IMAGEGEN_STORAGE", "s3")
    assert stack.service_env(st, "delivery")["IMAGEGEN_DELIVERY_STORAGE"] == "s3"
    assert (
        stack.service_env(st, "gpu-worker-2")["IMAGEGEN_S3_ENDPOINT"] == env["IMAGEGEN_S3_ENDPOINT"]
    )
    assert "IMAGEGEN_S3_ENDPOINT" not in stack.service_env(st, "scheduler")
    monkeypatch.setenv("IMAGEGEN_STORAGE", "local")
    assert "IMAGEGEN_DELIVERY_STORAGE" not in stack.service_env(st, "delivery")
    monkeypatch.setenv("IMAGEGEN_STORAGE", "minio")
    with pytest.raises(SystemExit, match="IMAGEGEN_STORAGE must be local or s3"):
        stack.service_env(st, "api")
