"""The SSRF guard (imagegen_runtime.ssrf): every refused form, the allow-list, DNS answers."""

from __future__ import annotations

import ipaddress

import pytest

from imagegen_runtime.ssrf import AllowList, ForbiddenURL, Target, check_url, resolve

REFUSED = [
    ("ftp://example.com/x", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://example.com", "scheme"),
    ("http://user:pw@example.com/hook", "credentials"),
    ("http://user@example.com/hook", "credentials"),
    ("http://127.0.0.1:8104/metrics", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://api.localhost/hook", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "embeds"),
    ("http://[::ffff:7f00:1]/", "embeds"),
    ("http://[64:ff9b::7f00:1]/", "embeds"),
    ("http://[2002:7f00:1::]/", "embeds"),
    ("http://10.0.0.5/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://100.64.0.1/", "public"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://metadata.google.internal/", "metadata"),
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://240.0.0.1/", "reserved"),
    ("http:///nohost", "no host"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_check_url_refuses_with_a_reason(url: str, why: str) -> None:
    with pytest.raises(ForbiddenURL, match=why):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x?token=1",
        "http://93.184.216.34:8080/",
        "http://[2606:4700::1111]/",
    ],
)
def test_check_url_accepts_public_targets(url: str) -> None:
    target = check_url(url)
    assert target.scheme in ("http", "https")


def test_target_names_the_endpoint() -> None:
    assert check_url("https://Hooks.Example.com/a").endpoint == "https://hooks.example.com:443"
    assert check_url("http://[2606:4700::1111]:81/").endpoint == "http://[2606:4700::1111]:81"


def test_allow_list_lifts_the_address_check_but_not_metadata_or_credentials() -> None:
    allow = AllowList.parse("127.0.0.0/8, ::1, 169.254.0.0/16, localhost")
    assert check_url("http://127.0.0.1:9/hook", allow).ip == ipaddress.ip_address("127.0.0.1")
    assert check_url("http://[::1]:9/hook", allow).port == 9
    assert check_url("http://localhost:9/hook", allow).host == "localhost"
    with pytest.raises(ForbiddenURL, match="metadata"):
        check_url("http://169.254.169.254/", allow)
    with pytest.raises(ForbiddenURL, match="credentials"):
        check_url("http://a:b@127.0.0.1/", allow)
    with pytest.raises(ValueError, match="neither"):
        AllowList.parse("not a host!")


async def test_resolve_refuses_a_name_that_resolves_to_loopback() -> None:
    target = Target("http", "localhost", 80, None)  # as if check_url had let it through
    with pytest.raises(ForbiddenURL, match="resolves to .*loopback"):
        await resolve(target)
    assert (await resolve(target, AllowList.parse("localhost"))).is_loopback


async def test_resolve_pins_a_literal_without_dns() -> None:
    target = check_url("http://93.184.216.34/")
    assert await resolve(target) == ipaddress.ip_address("93.184.216.34")
