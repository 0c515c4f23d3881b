"""TLS certificates checked at start-up and on reload: validity and the key that goes with them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.errors import ConfigError
from keys import timefmt
from keys.ca import FederationCA
from keys.certs import check_tls_pair

CA = FederationCA.create("test")


def test_a_valid_pair_passes() -> None:
    issued = CA.issue("aurora", days=30)
    info = check_tls_pair(issued.cert_pem, issued.key_pem, "aurora.crt", timefmt.now())
    assert info.subject == "aurora"
    assert info.not_after - timefmt.now() < timedelta(days=31)


def test_an_expired_certificate_is_refused() -> None:
    issued = CA.issue("aurora", days=0)
    with pytest.raises(ConfigError, match="aurora.crt expired on") as e:
        check_tls_pair(issued.cert_pem, issued.key_pem, "aurora.crt", timefmt.now())
    assert e.value.reason == "CERTIFICATE_EXPIRED"


def test_another_certificates_key_is_refused() -> None:
    a, b = CA.issue("aurora"), CA.issue("borealis")
    with pytest.raises(ConfigError, match="does not hold the private key"):
        check_tls_pair(a.cert_pem, b.key_pem, "aurora.crt", timefmt.now())


def test_not_a_certificate_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        check_tls_pair(b"junk", b"junk", "aurora.crt", timefmt.now())
