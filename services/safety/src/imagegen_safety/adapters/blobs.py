"""Reading generated images from blob storage, checked against the digest their event carries.

``file://`` URIs (the GPU worker writes to a shared directory) are read by :func:`read_blob`;
``s3://`` URIs (the worker's S3 storage) by a :class:`BlobReader` built with the bucket's
``S3Objects``. A digest mismatch is an error, never a verdict: the bytes are not the
ones the worker produced, so judging them would judge the wrong image (docs/adr/0302).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from imagegen_runtime.objectstore import S3Objects
from imagegen_schemas.common import ImageRef


class BlobIntegrityError(ValueError):
    """The stored bytes do not match the sha256 of their ImageRef."""


def read_blob(uri: str) -> bytes:
    """The bytes at ``uri``; ``file:///abs/path`` (or ``file://localhost/...``) only."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError(f"unsupported blob URI scheme {parsed.scheme!r} in {uri!r}")
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"file URI names a remote host {parsed.netloc!r}: {uri!r}")
    return Path(url2pathname(unquote(parsed.path))).read_bytes()


class BlobReader:
    """Reads ``file://`` URIs, and ``s3://`` URIs of one bucket when built with ``objects``."""

    def __init__(self, objects: S3Objects | None = None) -> None:
        self.objects = objects

    def read(self, uri: str) -> bytes:
        if urlparse(uri).scheme != "s3":
            return read_blob(uri)
        if self.objects is None:
            raise ValueError(f"an s3:// blob, but IMAGEGEN_SAFETY_STORAGE is not s3: {uri!r}")
        data = self.objects.get(self.objects.key_of(uri))
        if data is None:
            raise FileNotFoundError(f"blob missing: {uri}")
        return data

    def read_image(self, ref: ImageRef) -> bytes:
        return read_image(ref, self.read)


def read_image(ref: ImageRef, read: Callable[[str], bytes] = read_blob) -> bytes:
    """The image's bytes, once their sha256 matches ``ref.sha256``."""
    data = read(ref.uri)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise BlobIntegrityError(f"{ref.uri}: sha256 is {digest}, the event says {ref.sha256}")
    return data
