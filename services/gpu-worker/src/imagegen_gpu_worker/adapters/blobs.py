"""Blob storage for generated images and paused jobs' saved state: the worker writes bytes,
events carry URI and sha256.

A store that cannot take bytes now (folder unwritable or gone, disk full, object store down)
raises :class:`StorageUnavailable` from ``put`` and from ``check_writable``: the worker turns it
into a failed attempt (``storage_unavailable``), and ``/readyz`` into "not ready".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


class StorageUnavailable(RuntimeError):
    """The store cannot take bytes now; the same write may succeed later (transient)."""


class BlobStore(Protocol):
    def put(self, name: str, data: bytes) -> tuple[str, str]:
        """Store ``data`` under ``name``; returns (uri, sha256 hex). Raises
        StorageUnavailable when the store cannot take it now."""
        ...

    def get(self, uri: str) -> bytes: ...

    def check_writable(self) -> None:
        """Raise StorageUnavailable, naming why, unless a write would succeed now."""
        ...


class BlobDigestMismatch(ValueError):
    """A blob's bytes do not have the sha256 its event names."""


def read_verified(store: BlobStore, uri: str, sha256: str) -> bytes:
    """The bytes of ``uri``, only if their sha256 is ``sha256``."""
    data = store.get(uri)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BlobDigestMismatch(f"{uri}: sha256 {actual}, expected {sha256}")
    return data


class LocalBlobStore:
    """Files under one folder, written atomically (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    PROBE = ".writable-probe"  # written and removed by check_writable

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        path = (self.root / name).resolve()
        if self.root not in path.parents:
            raise ValueError(f"blob name escapes the store: {name!r}")
        # unique per write: several workers share the store (and its writable probe)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:  # unwritable, not a folder, disk full, quota, read-only fs ...
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageUnavailable(f"blob store {self.root} cannot store {name}: {exc}") from exc
        return path.as_uri(), hashlib.sha256(data).hexdigest()

    def check_writable(self) -> None:
        """Write and remove a small probe file the way ``put`` writes a blob."""
        self.put(self.PROBE, b"probe")
        (self.root / self.PROBE).unlink(missing_ok=True)

    def get(self, uri: str) -> bytes:
        return Path(urlparse(uri).path).read_bytes()


class InMemoryBlobStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        uri = f"memory:///{name}"
        self.blobs[uri] = data
        return uri, hashlib.sha256(data).hexdigest()

    def get(self, uri: str) -> bytes:
        return self.blobs[uri]

    def check_writable(self) -> None:
        return None  # memory always takes bytes
