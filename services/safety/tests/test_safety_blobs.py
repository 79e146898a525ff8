"""Reading generated images from blob storage, checked against their digest."""

from __future__ import annotations

from pathlib import Path

import pytest
from safety_testkit import png, sha, store

from imagegen_safety.adapters.blobs import BlobIntegrityError, read_blob, read_image
from imagegen_schemas.common import ImageRef

pytestmark = pytest.mark.unit


def test_a_file_uri_is_read(tmp_path: Path) -> None:
    path = tmp_path / "a dir" / "0.png"
    path.parent.mkdir()
    path.write_bytes(b"bytes")
    assert read_blob(path.as_uri()) == b"bytes"  # spaces are percent-encoded in the URI
    assert read_blob("file://localhost" + str(path)) == b"bytes"


@pytest.mark.parametrize("uri", ["s3://bucket/0.png", "https://example.com/0.png", "/tmp/0.png"])
def test_other_schemes_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="unsupported blob URI scheme"):
        read_blob(uri)


def test_a_remote_file_host_is_refused() -> None:
    with pytest.raises(ValueError, match="remote host"):
        read_blob("file://fileserver/share/0.png")


def test_an_image_is_returned_when_its_digest_matches(tmp_path: Path) -> None:
    [ref] = store(tmp_path, "job-1", [png()])
    assert read_image(ref) == png()


def test_a_digest_mismatch_is_an_error(tmp_path: Path) -> None:
    [ref] = store(tmp_path, "job-1", [png()])
    wrong = ImageRef.model_validate(ref.model_dump() | {"sha256": sha(b"other")})
    with pytest.raises(BlobIntegrityError, match=sha(b"other")):
        read_image(wrong)
