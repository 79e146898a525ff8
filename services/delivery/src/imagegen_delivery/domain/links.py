"""Signed, expiring download links: pure functions of a path, an expiry, a key and ``now``.

A link is ``{public_base_url}/files/{job_id}/{index}.png?exp={unix seconds}&sig={signature}``.
The signature is HMAC-SHA256 over ``"{exp}\\n{path}"`` (``path`` starts with ``/files/``), encoded
as URL-safe base64 without padding, so it needs no escaping in a query string. ``exp`` is signed
with the path: changing either one breaks the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from enum import StrEnum
from urllib.parse import urlencode

# A job id is one path segment: no dots (so no "..", no hidden files), no slashes. UUIDs fit.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# The file name of image ``index`` in a job; canonical decimal, so one image has one name.
FILE_NAME = re.compile(r"(0|[1-9][0-9]{0,3})\.png")
# ``exp`` as it appears in a link: canonical unix seconds.
EXPIRES = re.compile(r"0|[1-9][0-9]{0,11}")
MAX_INDEX = 9999


class LinkCheck(StrEnum):
    """Outcome of :func:`verify`; the HTTP layer maps it to 200, 410 and 403."""

    OK = "ok"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"


def file_path(job_id: str, index: int) -> str:
    """The path of image ``index`` of ``job_id``; refuses anything that is not one safe segment."""
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"job id is not a safe path segment: {job_id!r}")
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"image index out of range 0..{MAX_INDEX}: {index}")
    return f"/files/{job_id}/{index}.png"


def sign(path: str, expires_at: int, key: bytes) -> str:
    """The signature of ``path`` valid until ``expires_at`` (unix seconds)."""
    message = f"{expires_at}\n{path}".encode()
    mac = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(path: str, exp: int, sig: str, key: bytes, now: int) -> LinkCheck:
    """Check a link. Order: the signature first, then the expiry.

    A bad signature wins over an expired one, so a forged ``exp`` is never reported as merely
    expired. The comparison takes constant time. A link works while ``now < exp``: at ``exp``
    itself it has expired.
    """
    expected = sign(path, exp, key).encode("ascii")
    if not hmac.compare_digest(expected, sig.encode("utf-8")):
        return LinkCheck.BAD_SIGNATURE
    return LinkCheck.OK if now < exp else LinkCheck.EXPIRED


def signed_url(base_url: str, job_id: str, index: int, expires_at: int, key: bytes) -> str:
    """The full link clients download image ``index`` of ``job_id`` from."""
    path = file_path(job_id, index)
    query = urlencode({"exp": expires_at, "sig": sign(path, expires_at, key)})
    return f"{base_url.rstrip('/')}{path}?{query}"
