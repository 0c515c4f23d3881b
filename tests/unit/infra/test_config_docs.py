"""docs/config.md is generated from the config dataclasses (scripts/gen_config_docs.py) and the
example configs in deploy/config set every option they define, read by the real loaders."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts/gen_config_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_config_docs"] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()


def test_the_reference_page_is_what_the_generator_writes_now() -> None:
    errors, reads = gen.problems()
    assert not errors
    assert (ROOT / "docs" / "config.md").read_text() == gen.render(reads), (
        "docs/config.md is stale: run .venv/bin/python scripts/gen_config_docs.py"
    )


@pytest.mark.parametrize(
    "name", ["node-aurora.toml", "node-borealis.toml", "node-cascadia.toml", "broker.toml"]
)
def test_each_example_config_sets_every_option_the_dataclasses_define(name: str) -> None:
    errors, _ = gen.problems()
    assert not [e for e in errors if name in e]
    assert (ROOT / "deploy" / "config" / name).exists()


def test_every_option_is_a_row_of_the_page() -> None:
    page = (ROOT / "docs" / "config.md").read_text()
    for _, cls, _, _ in gen.ROOTS:
        for declared in gen.declared(cls):
            shown = f"`{declared.key}`" if declared.leaf else f"`[{declared.key}]`"
            if not gen._not_read(cls.__name__, declared.key):
                assert shown in page, declared.key


def test_a_new_option_missing_from_an_example_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Take `k_floor` out of one example: the generator refuses, naming the file and the key."""
    examples = tmp_path / "config"
    examples.mkdir()
    for p in (ROOT / "deploy" / "config").glob("*.toml"):
        text = p.read_text()
        if p.name == "node-borealis.toml":
            text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("k_floor"))
        (examples / p.name).write_text(text)
    monkeypatch.setattr(gen, "EXAMPLES", examples)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    errors, _ = gen.problems()
    assert errors == ["config/node-borealis.toml does not set k_floor (NodeConfig.k_floor)"]


def test_a_key_the_loader_reads_but_no_field_declares_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(gen.ALIASES, ("BrokerConfig", "broker_id"), "broker_name")
    errors, _ = gen.problems()
    assert any("reads broker but no dataclass field declares it" in e for e in errors)
    assert any("does not set broker_name (BrokerConfig.broker_id)" in e for e in errors)


def test_an_example_key_nobody_reads_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = tmp_path / "config"
    examples.mkdir()
    for p in (ROOT / "deploy" / "config").glob("*.toml"):
        (examples / p.name).write_text(p.read_text())
    broker = examples / "broker.toml"
    broker.write_text(broker.read_text().replace("[tls]", '[tls]\nkey_password = "x"'))
    monkeypatch.setattr(gen, "EXAMPLES", examples)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    errors, _ = gen.problems()
    assert "config/broker.toml sets tls.key_password, which the loader does not read" in errors


def test_a_field_without_a_comment_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real = gen.field_comments
    monkeypatch.setattr(
        gen,
        "field_comments",
        lambda cls: {**real(cls), "k_floor": ""} if cls.__name__ == "NodeConfig" else real(cls),
    )
    errors, _ = gen.problems()
    assert "NodeConfig.k_floor (key k_floor) has no comment above it to document it" in errors


def test_the_check_mode_says_when_the_page_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "docs" / "config.md"
    stale.parent.mkdir()
    stale.write_text("# old\n")
    monkeypatch.setattr(gen, "DOC", stale)
    assert gen.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().out
