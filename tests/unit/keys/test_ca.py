"""The federation CA issues TLS certificates that chain to it and name the party."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from keys.ca import FederationCA


@pytest.fixture(scope="module")
def ca() -> FederationCA:
    return FederationCA.create("test-fed")


def verifier(ca: FederationCA) -> PolicyBuilder:
    return PolicyBuilder().store(Store([ca.cert]))


def test_issued_certificate_chains_to_the_ca(ca: FederationCA) -> None:
    issued = ca.issue("aurora")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)

    cert.verify_directly_issued_by(ca.cert)
    assert cert.issuer == ca.cert.subject
    # Full RFC 5280 path validation, as a TLS server and as a TLS client certificate.
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    chain = verifier(ca).build_server_verifier(loopback).verify(cert, [])
    assert chain == [cert, ca.cert]
    client = verifier(ca).build_client_verifier().verify(cert, [])
    assert client.chain == [cert, ca.cert]


def test_certificate_from_another_ca_does_not_chain(ca: FederationCA) -> None:
    impostor = FederationCA.create("test-fed")  # same name, different key
    cert = x509.load_pem_x509_certificate(impostor.issue("aurora").cert_pem)
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(ca.cert)
    with pytest.raises(VerificationError):
        verifier(ca).build_client_verifier().verify(cert, [])


def test_common_name_is_the_party_id(ca: FederationCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue("borealis.operator").cert_pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["borealis.operator"]


def test_default_sans_include_loopback_ip_and_localhost(ca: FederationCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue("aurora").cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" not in san.get_values_for_type(x509.DNSName)


def test_leaf_is_not_a_ca_and_serves_both_tls_ends(ca: FederationCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.issue("aurora").cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_issued_key_matches_the_certificate(ca: FederationCA) -> None:
    issued = ca.issue("aurora")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert_key = cert.public_key()
    assert isinstance(cert_key, ec.EllipticCurvePublicKey)
    assert key.public_key().public_numbers() == cert_key.public_numbers()


def test_written_private_key_is_owner_only(ca: FederationCA, tmp_path: Path) -> None:
    cert_path, key_path = ca.issue("aurora").write(tmp_path / "tls", "aurora")
    assert cert_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert key_path.stat().st_mode & 0o777 == 0o600
