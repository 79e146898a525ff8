"""Signed links: sign/verify, the expiry boundary, and every kind of tampering."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from imagegen_delivery.domain.links import LinkCheck, file_path, sign, signed_url, verify

pytestmark = pytest.mark.unit
KEY = b"k" * 32
PATH = "/files/job-1/0.png"
EXP = 1_700_003_600


def test_a_fresh_link_verifies() -> None:
    assert verify(PATH, EXP, sign(PATH, EXP, KEY), KEY, now=EXP - 3600) is LinkCheck.OK


def test_signature_is_url_safe_and_unpadded() -> None:
    sig = sign(PATH, EXP, KEY)
    assert len(sig) == 43 and set(sig) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (EXP - 1, LinkCheck.OK),  # the last second it works
        (EXP, LinkCheck.EXPIRED),  # expires_at itself is already too late
        (EXP + 1, LinkCheck.EXPIRED),
    ],
)
def test_expiry_boundary(now: int, expected: LinkCheck) -> None:
    assert verify(PATH, EXP, sign(PATH, EXP, KEY), KEY, now=now) is expected


@pytest.mark.parametrize(
    ("path", "exp", "key"),
    [
        ("/files/job-1/1.png", EXP, KEY),  # another image of the job
        ("/files/job-2/0.png", EXP, KEY),  # another job
        (PATH, EXP + 86400, KEY),  # a longer life
        (PATH, EXP, b"x" * 32),  # another key
    ],
)
def test_any_change_breaks_the_signature(path: str, exp: int, key: bytes) -> None:
    sig = sign(PATH, EXP, KEY)
    assert verify(path, exp, sig, key, now=EXP - 10) is LinkCheck.BAD_SIGNATURE


def test_a_bad_signature_wins_over_expiry() -> None:
    # A forged exp on an old link must read as forged, not merely as expired.
    assert verify(PATH, EXP, sign(PATH, EXP - 1, KEY), KEY, now=EXP + 5) is LinkCheck.BAD_SIGNATURE


@pytest.mark.parametrize("sig", ["", "A" * 43, "é" * 43, sign(PATH, EXP, KEY) + "="])
def test_garbage_signatures_are_refused_without_raising(sig: str) -> None:
    assert verify(PATH, EXP, sig, KEY, now=EXP - 10) is LinkCheck.BAD_SIGNATURE


def test_signed_url_carries_exp_and_sig_for_the_canonical_path() -> None:
    url = signed_url("https://dl.example.com/", "job-1", 0, EXP, KEY)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}" == "https://dl.example.com"
    assert parts.path == PATH
    assert query == {"exp": [str(EXP)], "sig": [sign(PATH, EXP, KEY)]}


@pytest.mark.parametrize(
    ("job_id", "index"),
    [
        ("..", 0),
        ("a/b", 0),
        (".delivery", 0),
        ("a.b", 0),
        ("", 0),
        ("a" * 129, 0),
        ("job", -1),
        ("job", 10_000),
    ],
)
def test_file_path_refuses_unsafe_names(job_id: str, index: int) -> None:
    with pytest.raises(ValueError):
        file_path(job_id, index)
