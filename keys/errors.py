"""Errors of the keys package, in the families of domain.errors."""

from domain.errors import ConfigError, VerificationError


class KeyFileError(ConfigError):
    default_reason = "KEY_FILE_INVALID"


class SignatureError(VerificationError):
    default_reason = "SIGNATURE_INVALID"


__all__ = ["KeyFileError", "SignatureError", "VerificationError"]
