"""S3 storage against the real server that ``deploy/stack.py infra-up`` starts (S3Proxy): the
retention sweep, the gpu-worker's blobs, the api's uploads and the safety reader (docs/storage.md).
Without the server these fail in the ``s3_env``/``s3_bucket`` fixtures, naming what to run."""

from __future__ import annotations

import hashlib
import io
import time

import pytest
from PIL import Image

from imagegen_api.adapters.files import S3FileStore
from imagegen_gpu_worker.adapters.blobs import (
    S3BlobStore,
    S3ControlFiles,
    StorageUnavailable,
    read_verified,
)
from imagegen_gpu_worker.adapters.controlnets import read_image as read_control_image
from imagegen_runtime.objectstore import (
    ObjectStoreSettings,
    S3Objects,
    StoredObject,
    by_suffix,
    sweeper,
)
from imagegen_safety.adapters.blobs import BlobIntegrityError, BlobReader
from imagegen_schemas.common import ImageRef

pytestmark = pytest.mark.integration


def listed(objects: S3Objects, key: str) -> StoredObject:
    return next(o for o in objects.list(key) if o.key == key)


def put_later_than(objects: S3Objects, key: str, other: StoredObject) -> StoredObject:
    """Put ``key``, again until the server stamps it later than ``other`` (its LastModified has
    whole seconds)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        objects.put(key, b"fresh")
        obj = listed(objects, key)
        if obj.modified > other.modified:
            return obj
        time.sleep(0.1)  # the server's clock has not reached the next second yet
    raise AssertionError("the server's LastModified did not move on in 5 s")


def test_retention_sweep_deletes_old_objects_and_keeps_fresh_ones(s3_bucket: S3Objects) -> None:
    s3_bucket.put("blobs/job-1/3-0.png", b"old image")
    s3_bucket.put("blobs/job-1/3-paused-4.pt", b"old state")
    s3_bucket.put("delivery/job-1/0.png", b"another prefix")
    old = listed(s3_bucket, "blobs/job-1/3-0.png")
    fresh = put_later_than(s3_bucket, "blobs/job-2/4-0.png", old)
    images = sweeper(s3_bucket, None, "blobs/", 60, by_suffix(".png"))
    # The clock moves on: exactly 60 s after the old image was written, it is due; the fresh
    # one (written later) and the pause state (another kind) are not.
    assert images(old.modified + 60) == 1
    keys = {o.key for o in s3_bucket.list("")}
    assert keys == {"blobs/job-1/3-paused-4.pt", "blobs/job-2/4-0.png", "delivery/job-1/0.png"}
    assert images(fresh.modified + 59) == 0
    assert images(fresh.modified + 60) == 1
    states = sweeper(s3_bucket, None, "blobs/", 60, by_suffix(".pt"))
    assert states(time.time() + 3600) == 1
    assert {o.key for o in s3_bucket.list("")} == {"delivery/job-1/0.png"}


def test_worker_blobs_round_trip_as_s3_uris(s3_bucket: S3Objects) -> None:
    blobs = S3BlobStore(s3_bucket)
    blobs.check_writable()
    uri, sha = blobs.put("job-1/3-0.png", b"png bytes")
    assert uri == f"s3://{s3_bucket.bucket}/blobs/job-1/3-0.png"
    assert sha == hashlib.sha256(b"png bytes").hexdigest()
    assert read_verified(blobs, uri, sha) == b"png bytes"
    assert [o.key for o in s3_bucket.list("")] == ["blobs/job-1/3-0.png"]  # no probe left
    with pytest.raises(FileNotFoundError):
        blobs.get(f"s3://{s3_bucket.bucket}/blobs/job-1/absent.png")
    with pytest.raises(ValueError):
        blobs.put("../delivery/job-1/0.png", b"x")


def test_an_unreachable_server_is_storage_unavailable(s3_env: dict[str, str]) -> None:
    closed = ObjectStoreSettings(
        endpoint="http://127.0.0.1:9",  # discard port: nothing listens
        access_key=s3_env["IMAGEGEN_S3_ACCESS_KEY"],
        secret_key=s3_env["IMAGEGEN_S3_SECRET_KEY"],
        max_attempts=1,
        connect_timeout_s=0.5,
    )
    with pytest.raises(StorageUnavailable, match="127.0.0.1:9"):
        S3BlobStore(S3Objects(closed)).check_writable()


def test_uploads_are_stored_once_per_content_and_read_by_the_worker(s3_bucket: S3Objects) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    files = S3FileStore(s3_bucket)
    file_id = files.put(buf.getvalue())
    assert files.put(buf.getvalue()) == file_id
    assert files.exists(file_id) and not files.exists("file-" + "0" * 32)
    assert not files.exists("../blobs/x")
    assert [o.key for o in s3_bucket.list("")] == [f"files/{file_id}"]
    image = read_control_image(S3ControlFiles(s3_bucket), file_id)
    assert image.size == (8, 8) and image.getpixel((0, 0)) == (200, 10, 10)


def test_safety_reads_s3_blobs_and_checks_their_digest(s3_bucket: S3Objects) -> None:
    uri, sha = S3BlobStore(s3_bucket).put("job-1/3-0.png", b"image")
    reader = BlobReader(s3_bucket)
    ref = ImageRef(uri=uri, sha256=sha, width=64, height=64, index=0)
    assert reader.read_image(ref) == b"image"
    with pytest.raises(BlobIntegrityError):
        reader.read_image(ref.model_copy(update={"sha256": hashlib.sha256(b"x").hexdigest()}))
    with pytest.raises(ValueError, match="STORAGE is not s3"):
        BlobReader().read(uri)
