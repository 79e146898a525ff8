"""The delivery store contract: the fake and LocalFileStore pass the same tests.

Then a few that only the filesystem can show: atomic writes, the file:// rules, the layout.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from delivery_testkit import PNG, PutSource, sha

from imagegen_delivery.adapters.store import (
    BlobStore,
    DigestMismatch,
    LocalFileStore,
    UnsupportedSource,
)
from imagegen_delivery.domain.delivery import DeliveryRecord
from imagegen_schemas.jobs import DeliveredImage

pytestmark = pytest.mark.unit


def record(job_id: str = "job-1", **kw: object) -> DeliveryRecord:
    image = DeliveredImage(
        index=0,
        url="https://dl/files/job-1/0.png?exp=1&sig=s",
        sha256=sha(PNG),
        expires_at=datetime.fromtimestamp(1, UTC),
    )
    base: dict[str, object] = {
        "job_id": job_id,
        "causation_id": "c-1",
        "event_id": "e-1",
        "expires_at": 1,
        "images": (image,),
    }
    return DeliveryRecord.model_validate(base | kw)


# ---- the contract, run against both stores ------------------------------------------------------
def test_copy_then_read_gives_the_same_bytes(store_and_source: tuple[BlobStore, PutSource]) -> None:
    store, put = store_and_source
    store.copy_in("job-1", 0, put("src/0.png", PNG), sha(PNG))
    assert store.read("job-1", 0) == PNG
    assert store.read("job-1", 1) is None
    assert store.read("job-2", 0) is None


def test_copy_is_repeatable(store_and_source: tuple[BlobStore, PutSource]) -> None:
    store, put = store_and_source
    uri = put("src/0.png", PNG)
    store.copy_in("job-1", 0, uri, sha(PNG))
    store.copy_in("job-1", 0, uri, sha(PNG))
    assert store.read("job-1", 0) == PNG


def test_a_digest_mismatch_is_refused_and_stores_nothing(
    store_and_source: tuple[BlobStore, PutSource],
) -> None:
    store, put = store_and_source
    with pytest.raises(DigestMismatch):
        store.copy_in("job-1", 0, put("src/0.png", PNG), sha(b"something else"))
    assert store.read("job-1", 0) is None


def test_a_mismatch_keeps_the_file_already_there(
    store_and_source: tuple[BlobStore, PutSource],
) -> None:
    store, put = store_and_source
    store.copy_in("job-1", 0, put("src/good.png", PNG), sha(PNG))
    with pytest.raises(DigestMismatch):
        store.copy_in("job-1", 0, put("src/bad.png", b"tampered"), sha(PNG))
    assert store.read("job-1", 0) == PNG


def test_a_missing_source_raises_file_not_found(
    store_and_source: tuple[BlobStore, PutSource],
) -> None:
    store, put = store_and_source
    uri = put("src/0.png", PNG).replace("0.png", "absent.png")
    with pytest.raises(FileNotFoundError):
        store.copy_in("job-1", 0, uri, sha(PNG))


@pytest.mark.parametrize(("job_id", "index"), [("..", 0), ("a/b", 0), (".x", 0), ("j", -1)])
def test_unsafe_names_are_refused(
    store_and_source: tuple[BlobStore, PutSource], job_id: str, index: int
) -> None:
    store, put = store_and_source
    uri = put("src/0.png", PNG)
    with pytest.raises(ValueError):
        store.copy_in(job_id, index, uri, sha(PNG))
    with pytest.raises(ValueError):
        store.read(job_id, index)
    if index == 0:  # a bad job id
        with pytest.raises(ValueError):
            store.read_record(job_id)


def test_records_round_trip_and_are_replaced(store_and_source: tuple[BlobStore, PutSource]) -> None:
    store, _ = store_and_source
    assert store.read_record("job-1") is None
    store.write_record(record())
    assert store.read_record("job-1") == record()
    done = record(webhook_done=True, webhook_status=204)
    store.write_record(done)
    assert store.read_record("job-1") == done
    assert store.read_record("job-2") is None


# ---- the filesystem only --------------------------------------------------------------------
def test_layout_is_job_folder_index_png_and_no_temp_file_stays(tmp_path: Path) -> None:
    src = tmp_path / "blobs" / "0.png"
    src.parent.mkdir()
    src.write_bytes(PNG)
    store = LocalFileStore(tmp_path / "store")
    store.copy_in("job-1", 3, src.as_uri(), sha(PNG))
    with pytest.raises(DigestMismatch):
        store.copy_in("job-1", 4, src.as_uri(), sha(b"x"))
    store.write_record(record())
    assert sorted(os.listdir(tmp_path / "store" / "job-1")) == [".delivery.json", "3.png"]


def test_percent_encoded_file_uris_are_read(tmp_path: Path) -> None:
    src = tmp_path / "with space" / "0.png"
    src.parent.mkdir()
    src.write_bytes(PNG)
    assert "%20" in src.as_uri()
    store = LocalFileStore(tmp_path / "store")
    store.copy_in("job-1", 0, src.as_uri(), sha(PNG))
    assert store.read("job-1", 0) == PNG


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/0.png", "http://host/0.png", "file://otherhost/tmp/0.png", "/no/scheme.png"],
)
def test_only_local_file_uris_are_read(tmp_path: Path, uri: str) -> None:
    with pytest.raises(UnsupportedSource):
        LocalFileStore(tmp_path / "store").copy_in("job-1", 0, uri, sha(PNG))


def test_sources_outside_the_source_root_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(PNG)
    (tmp_path / "blobs").mkdir()
    store = LocalFileStore(tmp_path / "store", source_root=tmp_path / "blobs")
    sneaky = (tmp_path / "blobs").as_uri() + "/../secret.png"
    for uri in (outside.as_uri(), sneaky):
        with pytest.raises(UnsupportedSource):
            store.copy_in("job-1", 0, uri, sha(PNG))
