"""Attacks, each as a test through real gRPC servers (port 0 or free ports, mTLS) that fails when its
defence is removed. The integration fixtures (`wire`, `fresh_wire`, `by_mode`) are shared here."""

from tests.integration.conftest import by_mode_fixture, fresh_wire, wire

__all__ = ["by_mode_fixture", "fresh_wire", "wire"]
