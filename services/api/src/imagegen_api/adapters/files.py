"""The files folder the API stores control images in and the workers read (ADR 0706).

Content-addressed: a file is written once under its id (``domain.files.file_id``), atomically
(temp file, fsync, rename); the same bytes uploaded twice are one file. The folder is shared
with the workers (``IMAGEGEN_API_FILES_DIR`` and ``IMAGEGEN_GPU_WORKER_FILES_DIR`` name the
same folder; both default to ``var/files``). With S3 storage, :class:`S3FileStore` keeps them
as ``files/<id>`` in the bucket instead (docs/storage.md).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from imagegen_runtime.objectstore import FILES_PREFIX, ObjectStoreUnavailable, S3Objects

from ..domain.files import FILE_ID, MAX_SIDE, file_id

FORMATS = {"PNG", "JPEG", "WEBP"}


class LocalFileStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its id; OSError when the folder cannot take it."""
        name = file_id(data)
        path = self.root / name
        if path.is_file() and path.stat().st_size == len(data):
            os.utime(path)  # uploaded again: its retention starts again (docs/storage.md)
            return name
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return name

    def exists(self, name: str) -> bool:
        return bool(FILE_ID.fullmatch(name)) and (self.root / name).is_file()


class S3FileStore:
    """The same files as objects ``files/<file id>`` in the bucket (``IMAGEGEN_API_STORAGE=s3``);
    the workers read them there. An unreachable server is an OSError, as a full disk is."""

    def __init__(self, objects: S3Objects) -> None:
        self.objects = objects

    def put(self, data: bytes) -> str:
        name = file_id(data)
        try:  # written again when uploaded again: its retention starts again
            self.objects.put(FILES_PREFIX + name, data)
        except ObjectStoreUnavailable as exc:
            raise OSError(str(exc)) from exc
        return name

    def exists(self, name: str) -> bool:
        if not FILE_ID.fullmatch(name):
            return False
        try:
            return self.objects.exists(FILES_PREFIX + name)
        except ObjectStoreUnavailable as exc:
            raise OSError(str(exc)) from exc


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not a control image the workers can decode, else None: it must be a
    PNG, JPEG or WebP image of at most 4096 px a side that decodes completely."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in FORMATS:
                return f"a {image.format} image; send PNG, JPEG or WebP"
            if max(image.size) > MAX_SIDE:
                return f"{image.width}x{image.height} pixels; at most {MAX_SIDE} a side"
            image.load()
    except UnidentifiedImageError:
        return "undecodable: not a PNG, JPEG or WebP image"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"undecodable image: {exc}"
    return None
