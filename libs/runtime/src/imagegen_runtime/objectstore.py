"""Object storage shared by the services: S3 settings and client, ``s3://`` URIs, retention sweeps.

Local files stay the default (each service's ``STORAGE=local``); with ``STORAGE=s3`` a service
reads the connection from ``IMAGEGEN_S3_*`` (:class:`ObjectStoreSettings`) and keeps its objects
in one bucket under its own prefix (docs/storage.md):

- ``blobs/``    the gpu-worker's generated images and pause states (read by safety and delivery),
- ``delivery/`` the delivery store (approved images and one record per job),
- ``files/``    control images uploaded through the api (read by the gpu-workers).

Retention (docs/adr/0410): a sweeper deletes what is older than its retention. It runs inside the
service that owns the prefix, on the local folder or the bucket alike, with an injectable clock so
tests can move time. The S3 server we run (s3proxy) has no lifecycle rules, so the sweeper is the
one mechanism for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from .settings import ObjectStoreSettings as ObjectStoreSettings  # re-exported
from .settings import load_settings

log = logging.getLogger(__name__)

Storage = Literal["local", "s3"]

# The prefixes of the one bucket (see the module docstring).
BLOBS_PREFIX = "blobs/"
DELIVERY_PREFIX = "delivery/"
FILES_PREFIX = "files/"


class ObjectStoreUnavailable(RuntimeError):
    """The object store did not answer or refused a request (transient: retry later)."""


def make_client(settings: ObjectStoreSettings, *, public: bool = False) -> Any:
    """A botocore S3 client; ``public`` signs for ``public_endpoint`` (presigned links)."""
    endpoint = (settings.public_endpoint or settings.endpoint) if public else settings.endpoint
    config = Config(
        region_name=settings.region,
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        # Only the checksums S3 requires: S3-compatible servers differ on the newer defaults.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=settings.access_key.get_secret_value(),
        aws_secret_access_key=settings.secret_key.get_secret_value(),
        config=config,
    )


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); ValueError for anything else."""
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key or parts.query or parts.fragment:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parts.netloc, key


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: float  # unix seconds


def _not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class S3Objects:
    """The few S3 calls the services make, on one bucket; errors become our exceptions."""

    def __init__(self, settings: ObjectStoreSettings, client: Any = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client if client is not None else make_client(settings)
        self._public: Any = None

    def uri(self, key: str) -> str:
        return s3_uri(self.bucket, key)

    def key_of(self, uri: str) -> str:
        """The key of an ``s3://`` URI in this bucket; ValueError for another bucket or scheme."""
        bucket, key = parse_s3_uri(uri)
        if bucket != self.bucket:
            raise ValueError(f"object in bucket {bucket!r}, this store reads {self.bucket!r}")
        return key

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _not_found(exc):
                raise ObjectStoreUnavailable(f"bucket {self.bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreUnavailable(f"object store {self.settings.endpoint}: {exc}") from exc
        with contextlib.suppress(ClientError):  # a concurrent creator won: fine
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreUnavailable(f"put s3://{self.bucket}/{key}: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            return bytes(resp["Body"].read())
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise ObjectStoreUnavailable(f"get s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreUnavailable(f"get s3://{self.bucket}/{key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if _not_found(exc):
                return False
            raise ObjectStoreUnavailable(f"head s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreUnavailable(f"head s3://{self.bucket}/{key}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreUnavailable(f"delete s3://{self.bucket}/{key}: {exc}") from exc

    def list(self, prefix: str) -> Iterator[StoredObject]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield StoredObject(
                        obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp()
                    )
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreUnavailable(f"list s3://{self.bucket}/{prefix}: {exc}") from exc

    def presigned_get(self, key: str, expires_in_s: int, content_type: str | None = None) -> str:
        """A GET link valid ``expires_in_s`` seconds from now (signed locally, no request)."""
        if self._public is None:
            self._public = make_client(self.settings, public=True)
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if content_type:
            params["ResponseContentType"] = content_type
        return str(
            self._public.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in_s)
        )


# ---- retention -----------------------------------------------------------------------------------
Clock = Callable[[], float]


Match = Callable[[str], bool]  # which names (relative path or key) a sweep may delete


def by_suffix(*suffixes: str) -> Match:
    return lambda name: name.endswith(suffixes)


def sweep_local(root: Path, max_age_s: float, now: float, match: Match | None = None) -> int:
    """Delete files under ``root`` last modified at or before ``now - max_age_s`` (and whose
    path relative to ``root`` ``match`` accepts); then the folders left empty. Returns how many
    files went. A missing ``root`` has nothing to sweep."""
    cutoff = now - max_age_s
    removed = 0
    if not root.is_dir():
        return 0
    for dirpath, _dirs, filenames in os.walk(root, topdown=False):
        folder = Path(dirpath)
        for name in filenames:
            path = folder / name
            if match is not None and not match(path.relative_to(root).as_posix()):
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
        if folder != root:
            with contextlib.suppress(OSError):  # not empty, or gone: both fine
                folder.rmdir()
    return removed


def sweep_s3(
    objects: S3Objects, prefix: str, max_age_s: float, now: float, match: Match | None = None
) -> int:
    """Delete objects under ``prefix`` last modified at or before ``now - max_age_s`` (and whose
    key after the prefix ``match`` accepts)."""
    cutoff = now - max_age_s
    removed = 0
    for obj in list(objects.list(prefix)):
        if match is not None and not match(obj.key[len(prefix) :]):
            continue
        if obj.modified <= cutoff:
            objects.delete(obj.key)
            removed += 1
    return removed


Sweep = Callable[[float], int]  # now -> objects deleted


def sweeper_task(
    name: str, sweeps: list[Sweep], interval_s: float, clock: Clock = time.time
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """A service task running every sweep at start and then every ``interval_s`` until stopped.
    A failing sweep is logged and tried again next round (storage may be briefly away)."""

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for sweep in sweeps:
                try:
                    n = await asyncio.to_thread(sweep, clock())
                    if n:
                        log.info("retention %s: deleted %d objects", name, n)
                except Exception:
                    log.exception("retention %s: sweep failed; trying again next round", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    run.__qualname__ = f"retention_sweeper[{name}]"
    return run


# ---- wiring (the services' bootstraps) ---------------------------------------------------------
def object_store(storage: Storage) -> S3Objects | None:
    """The bucket for ``storage == "s3"`` (``IMAGEGEN_S3_*`` read now: a wrong or missing one
    stops the service with a line naming it), else None (local files)."""
    if storage != "s3":
        return None
    return S3Objects(load_settings(ObjectStoreSettings))


def sweeper(
    objects: S3Objects | None,
    root: Path | None,
    prefix: str,
    max_age_s: float,
    match: Match | None = None,
) -> Sweep:
    """The retention sweep of one kind of object: under ``prefix`` of the bucket when
    ``objects`` is set, else under the local folder ``root``."""
    if objects is not None:
        return lambda now: sweep_s3(objects, prefix, max_age_s, now, match)
    if root is None:
        raise ValueError("a local retention sweep needs its folder")
    folder = root
    return lambda now: sweep_local(folder, max_age_s, now, match)
