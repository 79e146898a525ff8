"""Blob storage for generated images and paused jobs' saved state: the worker writes bytes,
events carry URI and sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


class BlobStore(Protocol):
    def put(self, name: str, data: bytes) -> tuple[str, str]:
        """Store ``data`` under ``name``; returns (uri, sha256 hex)."""
        ...

    def get(self, uri: str) -> bytes: ...


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

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        path = (self.root / name).resolve()
        if self.root not in path.parents:
            raise ValueError(f"blob name escapes the store: {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path.as_uri(), hashlib.sha256(data).hexdigest()

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
