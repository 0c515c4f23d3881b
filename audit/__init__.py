"""Auditor's tools: RFC 6962 Merkle math, the append-only Merkle log and C2SP signed checkpoints."""
