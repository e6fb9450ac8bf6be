"""Users' webhooks go to public addresses only (`chute.webhooks.address`), checked on the
addresses a name resolves to, and sent to the address checked."""

from __future__ import annotations

import pytest

from chute.webhooks.address import PrivateAddress, literal_problem, pinned


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9000/h",
        "http://127.0.0.1/h",
        "http://[::1]:8080/h",
        "http://[::ffff:127.0.0.1]/h",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.8/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0:8000/",
        "https://224.0.0.1/",
    ],
)
def test_private_addresses_are_refused(url: str) -> None:
    with pytest.raises(PrivateAddress):
        pinned(url)


def test_a_public_address_is_pinned_with_its_name_kept() -> None:
    target = pinned("http://8.8.8.8:8081/hooks?a=1")
    assert target.url == "http://8.8.8.8:8081/hooks?a=1"
    assert target.headers == {"host": "8.8.8.8:8081"}
    assert target.extensions == {}
    tls = pinned("https://[2001:4860:4860::8888]/h")
    assert tls.url == "https://[2001:4860:4860::8888]/h"
    assert tls.extensions == {}  # TLS checks the certificate against the address itself


def test_literals_are_judged_at_creation_names_later() -> None:
    assert literal_problem("http://127.0.0.1/") == "names an address that is not public"
    assert literal_problem("http://8.8.8.8/") is None
    assert literal_problem("http://localhost/") is None  # a name: checked when resolved
