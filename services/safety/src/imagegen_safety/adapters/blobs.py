"""Reading generated images from blob storage, checked against the digest their event carries.

Only ``file://`` URIs exist for now (the GPU worker writes to a shared directory); an object
store adds a scheme here. A digest mismatch is an error, never a verdict: the bytes are not the
ones the worker produced, so judging them would judge the wrong image (docs/adr/0302).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

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


def read_image(ref: ImageRef) -> bytes:
    """The image's bytes, once their sha256 matches ``ref.sha256``."""
    data = read_blob(ref.uri)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise BlobIntegrityError(f"{ref.uri}: sha256 is {digest}, the event says {ref.sha256}")
    return data
