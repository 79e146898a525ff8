"""Blob storage for generated images and paused jobs' saved state: the worker writes bytes,
events carry URI and sha256.

:class:`LocalBlobStore` writes files (``file://`` URIs), :class:`S3BlobStore` objects under
``blobs/`` of the bucket (``s3://`` URIs; docs/storage.md).

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

from imagegen_runtime.objectstore import (
    BLOBS_PREFIX,
    FILES_PREFIX,
    ObjectStoreUnavailable,
    S3Objects,
)


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


class S3BlobStore:
    """Objects ``blobs/<name>`` in the bucket; URIs ``s3://<bucket>/blobs/<name>``. One PUT
    stores an object whole. An unreachable or refusing server is StorageUnavailable."""

    PROBE = ".writable-probe"

    def __init__(self, objects: S3Objects) -> None:
        self.objects = objects

    def _key(self, name: str) -> str:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"blob name escapes the store: {name!r}")
        return BLOBS_PREFIX + name

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        key = self._key(name)
        try:
            self.objects.put(key, data)
        except ObjectStoreUnavailable as exc:
            raise StorageUnavailable(str(exc)) from exc
        return self.objects.uri(key), hashlib.sha256(data).hexdigest()

    def get(self, uri: str) -> bytes:
        key = self.objects.key_of(uri)
        if not key.startswith(BLOBS_PREFIX):
            raise ValueError(f"not a blob of this store: {uri!r}")
        data = self.objects.get(key)
        if data is None:
            raise FileNotFoundError(f"blob missing: {uri}")
        return data

    def check_writable(self) -> None:
        """Write and remove a small probe object the way ``put`` writes a blob."""
        self.put(self.PROBE, b"probe")
        try:
            self.objects.delete(self._key(self.PROBE))
        except ObjectStoreUnavailable as exc:
            raise StorageUnavailable(str(exc)) from exc


class S3ControlFiles:
    """The api's uploaded control images, ``files/<file id>`` in the bucket (adapters.controlnets
    reads them through this when the worker's storage is S3)."""

    def __init__(self, objects: S3Objects) -> None:
        self.objects = objects

    def read(self, file_id: str) -> bytes:
        try:
            data = self.objects.get(FILES_PREFIX + file_id)
        except ObjectStoreUnavailable as exc:
            raise OSError(str(exc)) from exc
        if data is None:
            raise FileNotFoundError(f"s3://{self.objects.bucket}/{FILES_PREFIX}{file_id}")
        return data
