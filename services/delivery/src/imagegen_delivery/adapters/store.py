"""The delivery store: approved images under ``<job_id>/<index>.png`` plus one record per job.

``BlobStore`` is the port. :class:`LocalFileStore` keeps files on the local filesystem and reads
sources from ``file://`` URIs; :class:`S3BlobStore` keeps them in an S3 bucket under
``delivery/`` and reads sources from ``s3://`` URIs under ``blobs/`` of the same bucket;
:class:`InMemoryBlobStore` is the fake. All three pass ``tests/test_delivery_store_contract.py``
(S3 against a real server). Methods are synchronous (file or network I/O); the service layer
runs them in a thread.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

from imagegen_runtime.objectstore import BLOBS_PREFIX, DELIVERY_PREFIX, S3Objects

from ..domain.delivery import DeliveryRecord
from ..domain.links import JOB_ID, MAX_INDEX

RECORD_NAME = ".delivery.json"
_CHUNK = 1 << 20


class DigestMismatch(ValueError):
    """The bytes read from the source do not have the sha256 the event carries."""


class UnsupportedSource(ValueError):
    """The source URI is not one this store reads (scheme, host, or outside the allowed root)."""


class BlobStore(Protocol):
    def copy_in(self, job_id: str, index: int, source_uri: str, sha256: str) -> None:
        """Copy the source to ``<job_id>/<index>.png`` if its digest is ``sha256``.

        Raises DigestMismatch (nothing is stored), FileNotFoundError, or UnsupportedSource.
        A reader sees the old file or the new one, never a part.
        """
        ...

    def read(self, job_id: str, index: int) -> bytes | None:
        """The stored image, or None."""
        ...

    def read_record(self, job_id: str) -> DeliveryRecord | None: ...

    def write_record(self, record: DeliveryRecord) -> None:
        """Replace the job's record atomically."""
        ...

    def download_url(self, job_id: str, index: int, ttl_s: int) -> str | None:
        """A link that serves the stored image straight from storage for ``ttl_s`` seconds, or
        None when this service's own signed ``/files`` link is the way (local files)."""
        ...


def _check(job_id: str, index: int = 0) -> None:
    # Names come from events; refuse anything that is not one safe path segment.
    if not JOB_ID.fullmatch(job_id) or not 0 <= index <= MAX_INDEX:
        raise ValueError(f"not a storable job id/index: {job_id!r}/{index}")


class LocalFileStore:
    """Files under ``root``; every write is temp file + fsync + rename (+ fsync of the folder)."""

    def __init__(self, root: Path, *, source_root: Path | None = None) -> None:
        self.root = root.resolve()
        # When set, only sources under this folder (the worker's blob dir) may be read.
        self.source_root = source_root.resolve() if source_root is not None else None

    def _source_path(self, uri: str) -> Path:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise UnsupportedSource(f"only local file:// URIs are read: {uri!r}")
        path = Path(url2pathname(parts.path)).resolve()
        if self.source_root is not None and self.source_root not in path.parents:
            raise UnsupportedSource(f"source outside {self.source_root}: {uri!r}")
        return path

    def _write_atomically(self, dest: Path, chunks: Iterable[bytes], sha256: str | None) -> None:
        """Write ``chunks`` to ``dest`` via a temp file in the same folder; check the digest."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)  # the digest of what was written, not of a re-read
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if sha256 is not None and digest.hexdigest() != sha256:
                raise DigestMismatch(
                    f"{dest.name}: copied sha256 {digest.hexdigest()}, event says {sha256}"
                )
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)

    def copy_in(self, job_id: str, index: int, source_uri: str, sha256: str) -> None:
        _check(job_id, index)
        src = self._source_path(source_uri)
        if not src.is_file():
            raise FileNotFoundError(f"source image missing: {source_uri}")
        self._write_atomically(self.root / job_id / f"{index}.png", _read_chunks(src), sha256)

    def read(self, job_id: str, index: int) -> bytes | None:
        _check(job_id, index)
        try:
            return (self.root / job_id / f"{index}.png").read_bytes()
        except FileNotFoundError:
            return None

    def read_record(self, job_id: str) -> DeliveryRecord | None:
        _check(job_id)
        try:
            raw = (self.root / job_id / RECORD_NAME).read_bytes()
        except FileNotFoundError:
            return None
        return DeliveryRecord.model_validate_json(raw)

    def write_record(self, record: DeliveryRecord) -> None:
        _check(record.job_id)
        body = record.model_dump_json(indent=1).encode()
        self._write_atomically(self.root / record.job_id / RECORD_NAME, [body], None)

    def download_url(self, job_id: str, index: int, ttl_s: int) -> str | None:
        return None  # served by GET /files with our signed link


def _read_chunks(src: Path) -> Iterator[bytes]:
    with open(src, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the folder entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InMemoryBlobStore:
    """Fake store: ``sources`` maps URIs to bytes (tests fill it); stored files in a dict."""

    def __init__(self, sources: dict[str, bytes] | None = None) -> None:
        self.sources: dict[str, bytes] = dict(sources or {})
        self.files: dict[tuple[str, int], bytes] = {}
        self.records: dict[str, DeliveryRecord] = {}

    def copy_in(self, job_id: str, index: int, source_uri: str, sha256: str) -> None:
        _check(job_id, index)
        if source_uri not in self.sources:
            raise FileNotFoundError(f"source image missing: {source_uri}")
        data = self.sources[source_uri]
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise DigestMismatch(f"{source_uri}: sha256 {actual}, event says {sha256}")
        self.files[(job_id, index)] = data

    def read(self, job_id: str, index: int) -> bytes | None:
        _check(job_id, index)
        return self.files.get((job_id, index))

    def read_record(self, job_id: str) -> DeliveryRecord | None:
        _check(job_id)
        return self.records.get(job_id)

    def write_record(self, record: DeliveryRecord) -> None:
        _check(record.job_id)
        self.records[record.job_id] = record

    def download_url(self, job_id: str, index: int, ttl_s: int) -> str | None:
        return None


class S3BlobStore:
    """Objects ``delivery/<job_id>/<index>.png`` and ``delivery/<job_id>/.delivery.json`` in the
    bucket; sources are ``s3://<bucket>/blobs/...`` (what the gpu-worker writes with S3 storage).

    One PUT replaces an object whole, so a reader sees the old bytes or the new ones. The digest
    is checked on the bytes read from the source before anything is written. Downloads are
    presigned GET links: image bytes never pass through this service.
    """

    def __init__(self, objects: S3Objects, *, source_prefix: str = BLOBS_PREFIX) -> None:
        self.objects = objects
        self.source_prefix = source_prefix

    @staticmethod
    def _image_key(job_id: str, index: int) -> str:
        return f"{DELIVERY_PREFIX}{job_id}/{index}.png"

    def _source_key(self, uri: str) -> str:
        try:
            key = self.objects.key_of(uri)
        except ValueError as exc:
            raise UnsupportedSource(str(exc)) from exc
        if not key.startswith(self.source_prefix) or ".." in key.split("/"):
            raise UnsupportedSource(
                f"source outside s3://{self.objects.bucket}/{self.source_prefix}"
            )
        return key

    def copy_in(self, job_id: str, index: int, source_uri: str, sha256: str) -> None:
        _check(job_id, index)
        data = self.objects.get(self._source_key(source_uri))
        if data is None:
            raise FileNotFoundError(f"source image missing: {source_uri}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise DigestMismatch(f"{source_uri}: sha256 {actual}, event says {sha256}")
        self.objects.put(self._image_key(job_id, index), data, "image/png")

    def read(self, job_id: str, index: int) -> bytes | None:
        _check(job_id, index)
        return self.objects.get(self._image_key(job_id, index))

    def read_record(self, job_id: str) -> DeliveryRecord | None:
        _check(job_id)
        raw = self.objects.get(f"{DELIVERY_PREFIX}{job_id}/{RECORD_NAME}")
        return None if raw is None else DeliveryRecord.model_validate_json(raw)

    def write_record(self, record: DeliveryRecord) -> None:
        _check(record.job_id)
        body = record.model_dump_json(indent=1).encode()
        self.objects.put(
            f"{DELIVERY_PREFIX}{record.job_id}/{RECORD_NAME}", body, "application/json"
        )

    def download_url(self, job_id: str, index: int, ttl_s: int) -> str | None:
        _check(job_id, index)
        return self.objects.presigned_get(self._image_key(job_id, index), ttl_s, "image/png")
