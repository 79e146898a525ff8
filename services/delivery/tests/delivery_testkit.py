"""Helpers of the delivery tests (a unique module name: every service has a conftest)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from imagegen_schemas import Envelope
from imagegen_schemas.common import ImageRef
from imagegen_schemas.jobs import ImageModerated, Verdict

SIGNING_KEY = "test-signing-key-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"fake image body "

# Puts a source image where a store reads from (a file, or the fake's dict); returns its URI.
PutSource = Callable[[str, bytes], str]


class FakeClock:
    """``time.time`` stand-in the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def moderated(
    job_id: str,
    put: PutSource,
    *,
    n: int = 2,
    verdict: Verdict = Verdict.ALLOWED,
    webhook_url: str | None = "https://hooks.example.com/in",
    **extra: object,
) -> ImageModerated:
    """An ImageModerated for ``n`` images whose sources exist (image i is PNG + str(i))."""
    images = tuple(
        ImageRef(
            uri=put(f"{job_id}/3-{i}.png", PNG + str(i).encode()),
            sha256=sha(PNG + str(i).encode()),
            width=64,
            height=64,
            index=i,
        )
        for i in range(n)
    )
    return ImageModerated(
        job_id=job_id,
        verdict=verdict,
        images=images,
        fencing_token=3,
        webhook_url=webhook_url,
        **extra,
    )  # type: ignore[arg-type]


def envelope_of(msg: ImageModerated) -> Envelope:
    return Envelope.wrap(msg, correlation_id=msg.job_id, producer="safety-1")
