"""Shared plumbing of every citybroker process: errors, gRPC helpers, storage, config, and the CLI."""
