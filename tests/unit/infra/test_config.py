"""Config sections: typed access whose errors name the file and the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from domain.errors import ConfigError
from infra.config import Section, load_toml

TOML = """
city = "aurora"
port = 7000
ratio = 0.5
debug = false
names = ["a", "b"]

[tls]
cert = "tls/aurora.crt"
database = "sqlite:///data/aurora.db"
count = "three"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(TOML)
    return path


def section(config: Path) -> Section:
    return Section(load_toml(config), config)


def test_typed_values(config: Path) -> None:
    s = section(config)
    assert s.str("city") == "aurora"
    assert s.int("port") == 7000
    assert s.float("ratio") == 0.5
    assert s.float("port") == 7000.0
    assert s.strs("names") == ["a", "b"]
    assert s.int("absent", 3) == 3
    assert s.str("absent", "") == ""


@pytest.mark.parametrize(
    ("call", "key"),
    [
        (lambda s: s.str("absent"), "absent"),
        (lambda s: s.str("port"), "port"),
        (lambda s: s.int("city"), "city"),
        (lambda s: s.int("debug"), "debug"),
        (lambda s: s.float("city"), "city"),
        (lambda s: s.strs("city"), "city"),
        (lambda s: s.section("city"), "city"),
        (lambda s: s.section("absent"), "absent"),
        (lambda s: s.section("tls").int("count"), "tls.count"),
        (lambda s: s.section("tls").str("key"), "tls.key"),
    ],
)
def test_errors_name_the_file_and_the_key(
    config: Path, call: Callable[[Section], object], key: str
) -> None:
    with pytest.raises(ConfigError) as e:
        call(section(config))
    assert f"{config}: {key} " in e.value.message


def test_optional_missing_section_is_empty(config: Path) -> None:
    assert list(section(config).section("extra", required=False)) == []


def test_relative_paths_are_relative_to_the_file(config: Path) -> None:
    tls = section(config).section("tls")
    assert tls.path_("cert") == config.parent / "tls" / "aurora.crt"
    assert (
        tls.database_url("database")
        == f"sqlite:///{(config.parent / 'data' / 'aurora.db').resolve()}"
    )


def test_absolute_and_memory_database_urls_are_kept(tmp_path: Path) -> None:
    s = Section(
        {"a": "sqlite:////abs/x.db", "m": "sqlite:///:memory:", "p": "postgresql://h/db"},
        tmp_path / "c.toml",
    )
    assert s.database_url("a") == "sqlite:////abs/x.db"
    assert s.database_url("m") == "sqlite:///:memory:"
    assert s.database_url("p") == "postgresql://h/db"


def test_environment_overrides_top_level_scalars(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYBROKER_PORT", "7100")
    monkeypatch.setenv("CITYBROKER_DEBUG", "true")
    monkeypatch.setenv("CITYBROKER_CITY", "borealis")
    s = section(config)
    assert (s.int("port"), s.data["debug"], s.str("city")) == (7100, True, "borealis")


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("city = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
