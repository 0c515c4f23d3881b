"""X.509 certificates as a party holds them: when they are valid, and whether a key file belongs
to its certificate. Pure: the caller reads the files and says what time it is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from domain.errors import ConfigError


@dataclass(frozen=True)
class CertificateInfo:
    """The parts of a certificate that say who it names and when it is valid."""

    subject: str
    not_before: datetime
    not_after: datetime
    public_der: bytes

    def problem_at(self, now: datetime) -> str | None:
        """Why the certificate cannot be used at `now` (expired, not yet valid), else None."""
        if now > self.not_after:
            return f"expired on {self.not_after:%Y-%m-%d %H:%M} UTC"
        if now < self.not_before:
            return f"is not valid before {self.not_before:%Y-%m-%d %H:%M} UTC"
        return None


def read_certificate(pem: bytes, where: str) -> CertificateInfo:
    """The first certificate in `pem`; ConfigError naming `where` if there is none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(
            f"{where} is not a PEM certificate", reason="CERTIFICATE_INVALID"
        ) from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateInfo(
        subject=str(names[0].value) if names else cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        public_der=_public_der(cert.public_key()),
    )


def _public_der(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def check_tls_pair(cert_pem: bytes, key_pem: bytes, where: str, now: datetime) -> CertificateInfo:
    """The certificate, if it is valid at `now` and `key_pem` is its private key; else a one-line
    ConfigError naming `where` (the certificate file) and the problem."""
    info = read_certificate(cert_pem, where)
    problem = info.problem_at(now)
    if problem is not None:
        raise ConfigError(f"TLS certificate {where} {problem}", reason="CERTIFICATE_EXPIRED")
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"the TLS key of {where} is not an unencrypted PEM private key",
            reason="KEY_FILE_INVALID",
        ) from None
    if _public_der(key.public_key()) != info.public_der:
        raise ConfigError(
            f"the TLS key file does not hold the private key of {where}",
            reason="KEY_FILE_INVALID",
        )
    return info
