"""The delivery store contract: the fake, LocalFileStore and S3BlobStore pass the same tests
(S3BlobStore against the real S3 server that ``deploy/stack.py infra-up`` starts: those cases are
marked ``integration``; the others ``unit``).

Then a few that only the filesystem can show (atomic writes, the file:// rules, the layout), and
a few that only S3 can (its source rules, its layout, presigned download links).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from delivery_testkit import PNG, PutSource, sha

from imagegen_delivery.adapters.store import (
    BlobStore,
    DigestMismatch,
    LocalFileStore,
    S3BlobStore,
    UnsupportedSource,
)
from imagegen_delivery.domain.delivery import DeliveryRecord
from imagegen_runtime.objectstore import S3Objects
from imagegen_schemas.jobs import DeliveredImage


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
def test_copy_then_read_gives_the_same_bytes(contract_store: tuple[BlobStore, PutSource]) -> None:
    store, put = contract_store
    store.copy_in("job-1", 0, put("src/0.png", PNG), sha(PNG))
    assert store.read("job-1", 0) == PNG
    assert store.read("job-1", 1) is None
    assert store.read("job-2", 0) is None


def test_copy_is_repeatable(contract_store: tuple[BlobStore, PutSource]) -> None:
    store, put = contract_store
    uri = put("src/0.png", PNG)
    store.copy_in("job-1", 0, uri, sha(PNG))
    store.copy_in("job-1", 0, uri, sha(PNG))
    assert store.read("job-1", 0) == PNG


def test_a_digest_mismatch_is_refused_and_stores_nothing(
    contract_store: tuple[BlobStore, PutSource],
) -> None:
    store, put = contract_store
    with pytest.raises(DigestMismatch):
        store.copy_in("job-1", 0, put("src/0.png", PNG), sha(b"something else"))
    assert store.read("job-1", 0) is None


def test_a_mismatch_keeps_the_file_already_there(
    contract_store: tuple[BlobStore, PutSource],
) -> None:
    store, put = contract_store
    store.copy_in("job-1", 0, put("src/good.png", PNG), sha(PNG))
    with pytest.raises(DigestMismatch):
        store.copy_in("job-1", 0, put("src/bad.png", b"tampered"), sha(PNG))
    assert store.read("job-1", 0) == PNG


def test_a_missing_source_raises_file_not_found(
    contract_store: tuple[BlobStore, PutSource],
) -> None:
    store, put = contract_store
    uri = put("src/0.png", PNG).replace("0.png", "absent.png")
    with pytest.raises(FileNotFoundError):
        store.copy_in("job-1", 0, uri, sha(PNG))


@pytest.mark.parametrize(("job_id", "index"), [("..", 0), ("a/b", 0), (".x", 0), ("j", -1)])
def test_unsafe_names_are_refused(
    contract_store: tuple[BlobStore, PutSource], job_id: str, index: int
) -> None:
    store, put = contract_store
    uri = put("src/0.png", PNG)
    with pytest.raises(ValueError):
        store.copy_in(job_id, index, uri, sha(PNG))
    with pytest.raises(ValueError):
        store.read(job_id, index)
    if index == 0:  # a bad job id
        with pytest.raises(ValueError):
            store.read_record(job_id)


def test_records_round_trip_and_are_replaced(contract_store: tuple[BlobStore, PutSource]) -> None:
    store, _ = contract_store
    assert store.read_record("job-1") is None
    store.write_record(record())
    assert store.read_record("job-1") == record()
    done = record(webhook_done=True, webhook_status=204)
    store.write_record(done)
    assert store.read_record("job-1") == done
    assert store.read_record("job-2") is None


# ---- the filesystem only --------------------------------------------------------------------
@pytest.mark.unit
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


@pytest.mark.unit
def test_percent_encoded_file_uris_are_read(tmp_path: Path) -> None:
    src = tmp_path / "with space" / "0.png"
    src.parent.mkdir()
    src.write_bytes(PNG)
    assert "%20" in src.as_uri()
    store = LocalFileStore(tmp_path / "store")
    store.copy_in("job-1", 0, src.as_uri(), sha(PNG))
    assert store.read("job-1", 0) == PNG


@pytest.mark.unit
@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/0.png", "http://host/0.png", "file://otherhost/tmp/0.png", "/no/scheme.png"],
)
def test_only_local_file_uris_are_read(tmp_path: Path, uri: str) -> None:
    with pytest.raises(UnsupportedSource):
        LocalFileStore(tmp_path / "store").copy_in("job-1", 0, uri, sha(PNG))


@pytest.mark.unit
def test_sources_outside_the_source_root_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(PNG)
    (tmp_path / "blobs").mkdir()
    store = LocalFileStore(tmp_path / "store", source_root=tmp_path / "blobs")
    sneaky = (tmp_path / "blobs").as_uri() + "/../secret.png"
    for uri in (outside.as_uri(), sneaky):
        with pytest.raises(UnsupportedSource):
            store.copy_in("job-1", 0, uri, sha(PNG))


# ---- S3 only (the real server) --------------------------------------------------------------
@pytest.mark.integration
def test_s3_layout_is_delivery_job_index_png(s3_bucket: S3Objects) -> None:
    s3_bucket.put("blobs/src/0.png", PNG)
    store = S3BlobStore(s3_bucket)
    store.copy_in("job-1", 3, s3_bucket.uri("blobs/src/0.png"), sha(PNG))
    with pytest.raises(DigestMismatch):
        store.copy_in("job-1", 4, s3_bucket.uri("blobs/src/0.png"), sha(b"x"))
    store.write_record(record())
    keys = sorted(o.key for o in s3_bucket.list("delivery/"))
    assert keys == ["delivery/job-1/.delivery.json", "delivery/job-1/3.png"]


@pytest.mark.integration
def test_s3_reads_only_blobs_of_its_own_bucket(s3_bucket: S3Objects, tmp_path: Path) -> None:
    s3_bucket.put("delivery/job-9/0.png", PNG)  # inside the bucket, but not a worker's blob
    local = tmp_path / "0.png"
    local.write_bytes(PNG)
    store = S3BlobStore(s3_bucket)
    for uri in (
        f"s3://other-bucket/blobs/{s3_bucket.bucket}/0.png",
        s3_bucket.uri("delivery/job-9/0.png"),
        s3_bucket.uri("blobs/../delivery/job-9/0.png"),
        local.as_uri(),
        "http://127.0.0.1/0.png",
    ):
        with pytest.raises(UnsupportedSource):
            store.copy_in("job-1", 0, uri, sha(PNG))
    assert store.read("job-1", 0) is None


@pytest.mark.integration
def test_s3_download_url_serves_the_image_until_it_expires(s3_bucket: S3Objects) -> None:
    """The link a client gets is a presigned GET on the S3 server itself; a changed signature
    or an elapsed expiry is refused there, not by us."""
    s3_bucket.put("blobs/src/0.png", PNG)
    store = S3BlobStore(s3_bucket)
    store.copy_in("job-1", 0, s3_bucket.uri("blobs/src/0.png"), sha(PNG))
    url = store.download_url("job-1", 0, 2)
    assert url is not None and url.startswith(s3_bucket.settings.endpoint + "/")
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert (resp.status, resp.headers["Content-Type"], resp.read()) == (200, "image/png", PNG)
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=5)
    assert refused.value.code == 403
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the link's 2 s run out; the server then refuses it
        try:
            urllib.request.urlopen(url, timeout=5).close()
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
            break
        time.sleep(0.2)
    else:
        pytest.fail("a presigned link still served the image 10 s after a 2 s expiry")


@pytest.mark.unit
def test_local_and_fake_stores_leave_links_to_the_files_route(tmp_path: Path) -> None:
    assert LocalFileStore(tmp_path).download_url("job-1", 0, 60) is None
