"""Control images: the rules for a ``data:`` URI and the id of a stored file (pure; ADR 0706).

A ControlNet's ``image_uri`` is either a ``data:image/<png|jpeg|webp>;base64,...`` URI, whose
decoded bytes may be at most the server's cap (4 MiB by default), or the id ``POST /v1/files``
answered. A file's id is its content's: ``file-`` and the first 32 hex digits of its sha256, so
the event can carry it (image URIs in events are at most 2048 characters) and a worker can check
the bytes it reads against it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")
MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp")
PURPOSE = "control_image"  # the one purpose POST /v1/files takes
MAX_SIDE = 4096  # pixels, either side of a control image
DATA_URI = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[^;,]*)*),", re.ASCII)


def file_id(data: bytes) -> str:
    """The id of a stored file with these bytes."""
    return "file-" + hashlib.sha256(data).hexdigest()[:32]


def encoded_limit(max_bytes: int) -> int:
    """The longest base64 text of at most ``max_bytes`` bytes (with padding)."""
    return 4 * ((max_bytes + 2) // 3)


def decode_data_uri(uri: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """The bytes of a ``data:`` URI and None, or None and why it cannot be taken."""
    found = DATA_URI.match(uri)
    if found is None:
        return None, "is not a data: URI (data:image/png;base64,...)"
    media_type = found["type"].lower()
    if media_type not in MEDIA_TYPES:
        return None, f"media type {media_type!r} is not one of {', '.join(MEDIA_TYPES)}"
    if ";base64" not in found["params"].lower().split(",")[0]:
        return None, "must be base64-encoded (data:image/png;base64,...)"
    payload = uri[found.end() :]
    if len(payload) > encoded_limit(max_bytes):
        return None, f"the image is larger than {max_bytes} bytes (the server's cap)"
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        return None, f"undecodable base64: {exc}"
    if len(data) > max_bytes:
        return None, f"the image is larger than {max_bytes} bytes (the server's cap)"
    if not data:
        return None, "the image is empty"
    return data, None
