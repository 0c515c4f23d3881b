"""A config key no loader reads (a typo, an option of another version) is refused, named."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.errors import ConfigError
from infra.config import Section

PATH = Path("/etc/citybroker/node.toml")


def test_every_key_read_passes() -> None:
    top = Section({"listen": "a", "tls": {"cert": "c"}, "datasets": {"x": {}}}, PATH)
    top.str("listen")
    top.section("tls").str("cert")
    list(top.section("datasets"))  # a map: its keys are names
    top.reject_unknown()


def test_an_unknown_top_level_key_is_named_with_a_suggestion() -> None:
    top = Section({"listen": "a", "k_flor": 5}, PATH)
    top.str("listen")
    top.int("k_floor", 5)
    with pytest.raises(
        ConfigError, match=r"node.toml: k_flor is not a known option; did you mean k_floor\?"
    ):
        top.reject_unknown()


def test_an_unknown_key_in_a_table_is_named_with_its_table() -> None:
    top = Section({"duckdb": {"threads": 1, "memory": "1GB"}}, PATH)
    top.section("duckdb", required=False).int("threads", 1)
    with pytest.raises(ConfigError, match=r"duckdb.memory is not a known option"):
        top.reject_unknown()
